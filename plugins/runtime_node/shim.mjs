// tee-daemon's Node shim: serves the project's entry on 127.0.0.1:$PORT (or the unix socket
// $LISTEN_UNIX when the project network is isolated) with node:http.
//   CommonJS  module.exports = (req, res, env) => ...          (Node http style)
//   ES module export default (req: Request, ctx) => Response   (fetch style)
//   an app that starts its own server (Express's app.listen(3000)): see ownServer below
import http from "node:http";
import net from "node:net";
import { once } from "node:events";
import { createRequire } from "node:module";
import { Readable } from "node:stream";
import { pathToFileURL } from "node:url";

const entry = process.env.TEE_ENTRY;
const keys = (process.env.TEE_ENV_KEYS ?? "").split(",").filter(Boolean);
delete process.env.TEE_ENTRY;
delete process.env.TEE_ENV_KEYS;
const env = {};
for (const k of keys) env[k] = process.env[k] ?? "";
Object.freeze(env);
const ctx = Object.freeze({ env, dataDir: process.env.DATA_DIR ?? "" });

// An app that starts its own server, as framework tutorials do, runs unchanged: the first
// http.Server it asks to listen (on whatever port or host it names) listens where the
// daemon expects the project instead, and serves (an export beside it is not used).
const originalListen = net.Server.prototype.listen;
let ownServer = null;
function daemonAddress() {
  return process.env.LISTEN_UNIX ? [process.env.LISTEN_UNIX] : [Number(process.env.PORT), process.env.HOST || "127.0.0.1"];
}
net.Server.prototype.listen = function (...args) {
  if (ownServer !== null || !(this instanceof http.Server)) return originalListen.apply(this, args);
  ownServer = this;
  this.keepAliveTimeout = 75_000; // Longer than the daemon's pool keeps an idle connection.
  const callback = typeof args[args.length - 1] === "function" ? [args[args.length - 1]] : [];
  return originalListen.apply(this, [...daemonAddress(), ...callback]);
};

async function load() {
  const require = createRequire(entry);
  try {
    return require(entry);
  } catch (err) {
    // An ES module with top-level await (or an old Node): load it as ESM.
    if (err && (err.code === "ERR_REQUIRE_ASYNC_MODULE" || err.code === "ERR_REQUIRE_ESM")) {
      return await import(pathToFileURL(entry).href);
    }
    throw err;
  }
}

const mod = await load();
const isEsm = mod !== null && typeof mod === "object" && mod[Symbol.toStringTag] === "Module";
let listener;
if (!isEsm && typeof mod === "function") {
  listener = (req, res) => runHttpStyle(mod, req, res);
} else {
  const exported = isEsm ? (mod.default ?? mod.handler ?? mod) : mod;
  if (typeof exported === "function") listener = fetchListener(exported, undefined);
  else if (exported && typeof exported.fetch === "function") listener = fetchListener(exported.fetch, exported);
  else if (!isEsm && exported && typeof exported.default === "function") {
    listener = (req, res) => runHttpStyle(exported.default, req, res);
  }
}
const NO_HANDLER =
  "index.js must set module.exports = (req, res, env) => ..., be an ES module whose default " +
  "export is a fetch-style (req, ctx) => Response, or start an http server (app.listen(...))";
if (listener === undefined && ownServer === null) {
  // It may still listen once it has connected to something; say what is missing meanwhile.
  setTimeout(() => ownServer === null && console.error(NO_HANDLER), 3000).unref();
  process.on("exit", () => ownServer === null && console.error(NO_HANDLER));
}

function fail(res, err) {
  console.error(err);
  if (!res.headersSent) {
    res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
    res.end("internal error in the project's handler\n");
  } else {
    res.destroy();
  }
}

function runHttpStyle(fn, req, res) {
  try {
    const out = fn(req, res, env);
    if (out && typeof out.then === "function") out.then(undefined, (err) => fail(res, err));
  } catch (err) {
    fail(res, err);
  }
}

function fetchListener(fn, self) {
  return async (req, res) => {
    try {
      const headers = new Headers();
      const raw = req.rawHeaders;
      for (let i = 0; i < raw.length; i += 2) headers.append(raw[i], raw[i + 1]);
      const controller = new AbortController();
      res.on("close", () => controller.abort());
      const hasBody = req.method !== "GET" && req.method !== "HEAD";
      const request = new Request(`http://${req.headers.host ?? "localhost"}${req.url}`, {
        method: req.method,
        headers,
        body: hasBody ? Readable.toWeb(req) : undefined,
        duplex: "half",
        signal: controller.signal,
      });
      const response = await fn.call(self, request, ctx);
      if (!(response instanceof Response)) throw new TypeError("the handler must return a Response");
      const out = [];
      response.headers.forEach((value, key) => {
        if (key !== "set-cookie") out.push(key, value);
      });
      for (const cookie of response.headers.getSetCookie()) out.push("set-cookie", cookie);
      res.writeHead(response.status, response.statusText || undefined, out);
      if (!response.body || req.method === "HEAD") {
        res.end();
        return;
      }
      res.flushHeaders();
      for await (const chunk of response.body) {
        if (res.destroyed) break;
        if (!res.write(chunk)) await once(res, "drain");
      }
      res.end();
    } catch (err) {
      fail(res, err);
    }
  };
}

let server = ownServer;
if (listener !== undefined && ownServer === null) {
  server = http.createServer({ keepAliveTimeout: 75_000, requestTimeout: 0 }, listener);
  server.headersTimeout = 0;
  // With an isolated network the daemon reaches the project over a unix socket.
  originalListen.apply(server, daemonAddress());
}
process.on("SIGTERM", () => {
  (server ?? ownServer)?.close();
  setTimeout(() => process.exit(0), 1000).unref();
});
