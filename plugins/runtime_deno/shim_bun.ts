// tee-daemon's Bun shim: serves the project's handler on 127.0.0.1:$PORT (or the unix
// socket $LISTEN_UNIX when the project network is isolated) with Bun.serve.
// The daemon generates main.ts, which imports the project's entry and calls serve().

type Handler = (req: Request, ctx: any) => Response | Promise<Response>;

export function serve(mod: any, entry: string) {
  const candidate = mod.default ?? mod.handler ?? mod;
  let handler: Handler;
  let self: any = undefined;
  let extra: Record<string, unknown> = {};
  if (typeof candidate === "function") handler = candidate;
  else if (candidate && typeof candidate.fetch === "function") {
    handler = candidate.fetch;
    self = candidate;
    // An object may bring Bun.serve options of its own (websocket handlers...).
    const { fetch: _f, port: _p, hostname: _h, unix: _u, ...rest } = candidate;
    extra = rest;
  } else {
    throw new Error(
      `${entry} must \`export default async function handler(req, ctx)\` returning a Response, ` +
        "or export default an object with a fetch(req, ctx) method",
    );
  }
  const keys = (process.env.TEE_ENV_KEYS ?? "").split(",").filter(Boolean);
  delete process.env.TEE_ENV_KEYS;
  const env: Record<string, string> = {};
  for (const k of keys) env[k] = process.env[k] ?? "";
  const ctx: any = { env: Object.freeze(env), dataDir: process.env.DATA_DIR ?? "", server: undefined };
  const server = Bun.serve({
    idleTimeout: 0, // Long streams (server-sent events) are not cut off.
    ...extra,
    // With an isolated network the daemon reaches the project over a unix socket.
    ...(process.env.LISTEN_UNIX
      ? { unix: process.env.LISTEN_UNIX }
      : { hostname: process.env.HOST || "127.0.0.1", port: Number(process.env.PORT) }),
    fetch: self === undefined ? (req: Request) => handler(req, ctx) : (req: Request) => handler.call(self, req, ctx),
  });
  ctx.server = server;
  Object.freeze(ctx);
}
