// The Express "Hello world" example (expressjs.com), with the port from $PORT.
const express = require('express')
const app = express()
const port = process.env.PORT || 3000

app.use(express.json())

app.get('/', (req, res) => {
  res.send('Hello World from Express!')
})

app.get('/users/:id', (req, res) => {
  res.json({ id: req.params.id, query: req.query })
})

app.post('/echo', (req, res) => {
  res.json({ received: req.body })
})

app.listen(port, () => {
  console.log(`Example app listening on port ${port}`)
})
