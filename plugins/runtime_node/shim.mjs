// tee-daemon's Node shim: serves the project's entry on 127.0.0.1:$PORT (or the unix socket
// $LISTEN_UNIX when the project network is isolated) with node:http.
//   CommonJS  module.exports = (req, res, env) => ...          (Node http style)
//   ES module export default (req: Request, ctx) => Response   (fetch style)
import http from "node:http";
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
  } else {
    throw new Error(
      "index.js must set module.exports = (req, res, env) => ..., or be an ES module whose " +
        "default export is a fetch-style (req, ctx) => Response",
    );
  }
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

const server = http.createServer({ keepAliveTimeout: 75_000, requestTimeout: 0 }, listener);
server.headersTimeout = 0;
// With an isolated network the daemon reaches the project over a unix socket.
if (process.env.LISTEN_UNIX) server.listen(process.env.LISTEN_UNIX);
else server.listen(Number(process.env.PORT), process.env.HOST || "127.0.0.1");
process.on("SIGTERM", () => {
  server.close();
  setTimeout(() => process.exit(0), 1000).unref();
});
