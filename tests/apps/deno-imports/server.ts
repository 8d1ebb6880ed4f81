// Deno sample resolving an import through deno.json's import map.
import { greet } from "@lib/greet.ts";
export default (req: Request) => new Response(greet(new URL(req.url).searchParams.get("who") ?? "world"));
