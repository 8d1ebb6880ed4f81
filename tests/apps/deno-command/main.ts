// A Hono app on Deno (hono.dev/docs/getting-started/deno), with its port from $PORT.
import { Hono } from "hono";

const app = new Hono();
app.get("/", (c) => c.text("Hello Hono on Deno!"));

Deno.serve({ port: Number(Deno.env.get("PORT") ?? 8000), hostname: Deno.env.get("HOST") }, app.fetch);
