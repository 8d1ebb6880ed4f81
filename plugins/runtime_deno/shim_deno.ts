// tee-daemon's Deno shim: serves the project's handler on 127.0.0.1:$PORT (or the unix
// socket $LISTEN_UNIX when the project network is isolated).
// The daemon generates main.ts, which imports the project's entry and calls serve().
// deno-lint-ignore-file no-explicit-any

type Handler = (req: Request, ctx: any) => Response | Promise<Response>;

function pickHandler(mod: any, entry: string): { handler: Handler; self: any } {
  const candidate = mod.default ?? mod.handler ?? mod;
  if (typeof candidate === "function") return { handler: candidate, self: undefined };
  if (candidate && typeof candidate.fetch === "function") return { handler: candidate.fetch, self: candidate };
  throw new Error(
    `${entry} must \`export default async function handler(req, ctx)\` returning a Response, ` +
      "or export default an object with a fetch(req, ctx) method",
  );
}

export function serve(mod: any, entry: string) {
  const { handler, self } = pickHandler(mod, entry);
  const keys = (Deno.env.get("TEE_ENV_KEYS") ?? "").split(",").filter(Boolean);
  Deno.env.delete("TEE_ENV_KEYS");
  const env: Record<string, string> = {};
  for (const k of keys) env[k] = Deno.env.get(k) ?? "";
  const ctx = Object.freeze({ env: Object.freeze(env), dataDir: Deno.env.get("DATA_DIR") ?? "" });
  // With an isolated network the daemon reaches the project over a unix socket.
  const unix = Deno.env.get("LISTEN_UNIX");
  const where = unix
    ? { path: unix, onListen() {} }
    : { hostname: Deno.env.get("HOST") || "127.0.0.1", port: Number(Deno.env.get("PORT")), onListen() {} };
  Deno.serve(
    where,
    self === undefined ? (req) => handler(req, ctx) : (req) => handler.call(self, req, ctx),
  );
}
