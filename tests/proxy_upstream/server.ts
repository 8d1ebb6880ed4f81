// Upstream used by tests/test_proxy.py: a Deno HTTP server on a port or unix socket.
const target = Deno.args[0];
let sseRelease: (() => void) | null = null;

async function handler(req: Request): Promise<Response> {
  const url = new URL(req.url);
  if (url.pathname === "/ws") {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (e) => socket.send(e.data);
    return response;
  }
  if (url.pathname === "/hello") return new Response("hello world");
  if (url.pathname === "/headers") {
    return Response.json({
      headers: Object.fromEntries(req.headers),
      path: url.pathname,
      search: url.search,
    });
  }
  if (url.pathname === "/cookies") {
    const h = new Headers({ location: "/elsewhere?x=1" });
    h.append("set-cookie", "a=1; Path=/");
    h.append("set-cookie", "b=2; Path=/; HttpOnly");
    h.set("x-custom", "kept");
    return new Response(null, { status: 302, headers: h });
  }
  if (url.pathname === "/upload") {
    // Digest the body as it arrives; report size and sha-256.
    let size = 0, chunks = 0;
    const parts: Uint8Array[] = [];
    for await (const chunk of req.body!) { size += chunk.length; chunks++; parts.push(chunk); }
    const all = new Uint8Array(size);
    let o = 0;
    for (const p of parts) { all.set(p, o); o += p.length; }
    const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", all)))
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    return Response.json({ size, chunks, sha256: digest });
  }
  if (url.pathname === "/sse") {
    // First event now; the rest only after /sse-release is called.
    const released = new Promise<void>((r) => (sseRelease = r));
    const enc = new TextEncoder();
    const body = new ReadableStream({
      async start(c) {
        c.enqueue(enc.encode("data: first\n\n"));
        await released;
        c.enqueue(enc.encode("data: second\n\n"));
        c.close();
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  }
  if (url.pathname === "/sse-release") {
    sseRelease?.();
    return new Response("ok");
  }
  if (url.pathname === "/big") {
    const n = Number(url.searchParams.get("n") ?? "1000000");
    return new Response(new Uint8Array(n).fill(120));
  }
  return new Response("not found", { status: 404 });
}

const onListen = () => console.log("listening");
if (target.startsWith("/")) {
  Deno.serve({ path: target, onListen }, handler);
} else {
  Deno.serve({ hostname: "127.0.0.1", port: Number(target), onListen }, handler);
}
