// The Fastify "Getting started" server (fastify.dev/docs/latest/Guides/Getting-Started),
// with the port from $PORT. Fastify listens on localhost by default.
const fastify = require('fastify')({ logger: true })

fastify.get('/', async (request, reply) => {
  return { hello: 'world' }
})

const start = async () => {
  try {
    await fastify.listen({ port: Number(process.env.PORT) || 3000 })
  } catch (err) {
    fastify.log.error(err)
    process.exit(1)
  }
}
start()
