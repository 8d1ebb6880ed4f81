// Node sample, ES module with a fetch-style default export.
import { readFile, writeFile } from "node:fs/promises";

export default async function handler(req, ctx) {
  const url = new URL(req.url);
  console.log(`hit ${url.pathname}`);
  if (url.pathname === "/count") {
    const file = `${ctx.dataDir}/count.txt`;
    const n = Number(await readFile(file, "utf8").catch(() => "0"));
    await writeFile(file, String(n + 1));
    return Response.json({ count: n + 1 });
  }
  if (url.pathname === "/crash") setTimeout(() => process.exit(3), 10);
  return Response.json({
    runtime: "node", path: url.pathname, query: url.search, env: ctx.env, dataDir: ctx.dataDir,
    DATA_DIR: process.env.DATA_DIR, environ: Object.keys(process.env).sort(),
  });
}
