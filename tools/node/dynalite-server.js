#!/usr/bin/env node
// dynalite for the local stack, closed to web pages. dynalite answers any request carrying an
// Origin header with CORS "*", so every page the user opens could read and delete the tables on
// loopback. Browsers send Origin on cross-origin requests and on every POST; AWS SDKs never do:
// such requests are refused before dynalite sees them. Takes the arguments of dynalite's cli.js.
const argv = require('minimist')(process.argv.slice(2))
const server = require('dynalite')(argv)

const dynalite = server.listeners('request')
server.removeAllListeners('request')
server.on('request', (req, res) => {
  if (req.headers.origin !== undefined) {
    res.writeHead(403, { 'Content-Type': 'text/plain' })
    res.end('requests from web pages are refused\n')
    return
  }
  for (const listener of dynalite) listener.call(server, req, res)
})

server.listen(argv.port || 4567, argv.host || undefined, () => {
  console.log('dynalite (closed to web pages) listening at http://%s:%s', argv.host || 'localhost', server.address().port)
})
