#!/usr/bin/env bash
# Print the runtime binaries provisioned by scripts/setup-runtimes.sh as shell exports:
#
#   eval "$(scripts/runtime-paths.sh)"     # sets TEE_BUN / TEE_DENO / TEE_NODE, prepends .runtimes/bin to PATH
#
# Exits 1 (with a message on stderr) if any of them is missing: run scripts/setup-runtimes.sh.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$REPO/.runtimes/bin"
rc=0
for exe in bun deno node; do
  if [ ! -x "$BIN/$exe" ]; then
    echo "runtime-paths.sh: $BIN/$exe missing; run scripts/setup-runtimes.sh" >&2
    rc=1
  fi
done
[ "$rc" = 0 ] || exit 1
echo "export TEE_BUN='$(readlink -f "$BIN/bun")'"
echo "export TEE_DENO='$(readlink -f "$BIN/deno")'"
echo "export TEE_NODE='$(readlink -f "$BIN/node")'"
echo "export PATH='$BIN':\"\$PATH\""
