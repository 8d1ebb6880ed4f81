// Deno sample: the handler contract of SPEC section 5.
export default async function handler(req: Request, ctx: { env: Record<string, string>; dataDir: string }) {
  const url = new URL(req.url);
  console.log(`hit ${url.pathname}`);
  if (url.pathname === "/count") {
    const file = `${ctx.dataDir}/count.txt`;
    let n = 0;
    try { n = Number(await Deno.readTextFile(file)); } catch { /* first hit */ }
    await Deno.writeTextFile(file, String(n + 1));
    return Response.json({ count: n + 1 });
  }
  if (url.pathname === "/crash") setTimeout(() => Deno.exit(3), 10);
  if (url.pathname === "/read") {
    try { return new Response(await Deno.readTextFile(url.searchParams.get("path")!)); }
    catch (e) { return new Response(String(e), { status: 403 }); }
  }
  return Response.json({
    runtime: "deno", path: url.pathname, query: url.search, env: ctx.env, dataDir: ctx.dataDir,
    DATA_DIR: Deno.env.get("DATA_DIR"), environ: Object.keys(Deno.env.toObject()).sort(),
  });
}
