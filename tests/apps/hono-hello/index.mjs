// The Hono "Hello" example for Node.js (hono.dev/docs/getting-started/nodejs).
import { serve } from '@hono/node-server'
import { Hono } from 'hono'

const app = new Hono()

app.get('/', (c) => c.text('Hello Hono!'))
app.get('/json/:name', (c) => c.json({ hello: c.req.param('name') }))

serve({ fetch: app.fetch, port: Number(process.env.PORT) || 3000 }, (info) => {
  console.log(`Server is running on http://localhost:${info.port}`)
})
