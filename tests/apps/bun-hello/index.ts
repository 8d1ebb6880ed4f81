// Bun sample: an object with fetch (the other accepted shape).
export default {
  async fetch(req: Request, ctx: { env: Record<string, string>; dataDir: string }) {
    const url = new URL(req.url);
    console.log(`hit ${url.pathname}`);
    if (url.pathname === "/count") {
      const file = Bun.file(`${ctx.dataDir}/count.txt`);
      const n = (await file.exists()) ? Number(await file.text()) : 0;
      await Bun.write(`${ctx.dataDir}/count.txt`, String(n + 1));
      return Response.json({ count: n + 1 });
    }
    if (url.pathname === "/crash") setTimeout(() => process.exit(3), 10);
    return Response.json({
      runtime: "bun", path: url.pathname, query: url.search, env: ctx.env, dataDir: ctx.dataDir,
      DATA_DIR: process.env.DATA_DIR, environ: Object.keys(process.env).sort(),
    });
  },
};
