"""Python sample: server-sent events and a WebSocket echo over ASGI."""

import asyncio


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})
    if scope["type"] != "http":
        return
    if scope["path"] != "/sse":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"stream sample"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(3):
        if i:
            await asyncio.sleep(0.4)
        await send({"type": "http.response.body", "body": f"data: event {i}\n\n".encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b""})
