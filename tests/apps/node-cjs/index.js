// Node sample, CommonJS http style: module.exports = (req, res, env).
const fs = require("node:fs");
const path = require("node:path");

module.exports = (req, res, env) => {
  const url = new URL(req.url, "http://x");
  console.log(`hit ${url.pathname}`);
  res.setHeader("content-type", "application/json");
  if (url.pathname === "/count") {
    const file = path.join(process.env.DATA_DIR, "count.txt");
    const n = fs.existsSync(file) ? Number(fs.readFileSync(file, "utf8")) : 0;
    fs.writeFileSync(file, String(n + 1));
    return res.end(JSON.stringify({ count: n + 1 }));
  }
  if (url.pathname === "/crash") setTimeout(() => process.exit(3), 10);
  res.end(JSON.stringify({
    runtime: "node", path: url.pathname, query: url.search, env, dataDir: process.env.DATA_DIR,
    DATA_DIR: process.env.DATA_DIR, environ: Object.keys(process.env).sort(),
  }));
};
