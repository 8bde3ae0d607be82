// The fast upstream of the proxy benchmarks: Node's own http server answering every
// request with a short fixed body and keep-alive. It is fast enough that the proxy in
// front of it, not the app, decides what the benchmark measures.
"use strict";
const http = require("http");

const port = Number(process.env.PORT);
if (!port) {
  console.error("upstream.js: PORT is not set");
  process.exit(2);
}
const body = Buffer.from("hello, world\n");
function reply(res, data) {
  res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": data.length });
  res.end(data);
}

// GET /pid answers the process id and GET /sleep?ms=N answers after N ms, for the
// scaling benchmark; every other request gets the fixed body at once.
const server = http.createServer((req, res) => {
  // Drain any request body so the next request on the connection parses.
  req.resume();
  if (req.url === "/pid") return reply(res, Buffer.from(String(process.pid)));
  const sleep = /^\/sleep\?ms=(\d+)$/.exec(req.url);
  if (sleep) return setTimeout(() => reply(res, body), Number(sleep[1]));
  reply(res, body);
});
// Longer than every proxy's idle upstream timeout, so that the proxy closes idle
// connections first and never writes into one the server is closing.
server.keepAliveTimeout = 120000;
server.headersTimeout = 121000;
server.listen(port, "127.0.0.1");
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
