// Deno sample: server-sent events and a WebSocket echo, through the daemon.
export default function handler(req: Request): Response {
  const url = new URL(req.url);
  if (url.pathname === "/ws") {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (event) => socket.send(event.data);
    return response;
  }
  if (url.pathname === "/sse") {
    let i = 0;
    const body = new ReadableStream({
      async pull(controller) {
        if (i === 3) return controller.close();
        if (i > 0) await new Promise((r) => setTimeout(r, 400));
        controller.enqueue(new TextEncoder().encode(`data: event ${i++}\n\n`));
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  }
  return new Response("stream sample");
}
