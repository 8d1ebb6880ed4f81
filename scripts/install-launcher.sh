#!/usr/bin/env bash
# Put `tee-daemon` on the PATH (make install), so the README's commands work as written
# in a new shell: a link to the virtual environment's console script (its interpreter
# is named by absolute path, so it runs from anywhere without activating the venv).
#
# Where: $TEE_DAEMON_BIN_DIR if set, else /usr/local/bin when writable (root), else
# ~/.local/bin (on the PATH of a login shell in Debian's default ~/.profile once the
# folder exists). A `tee-daemon` there that is not a link is left alone.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$repo/.venv/bin/tee-daemon"
if [ ! -x "$target" ]; then
  echo "install-launcher: $target is missing: run 'make install'" >&2
  exit 1
fi

if [ -n "${TEE_DAEMON_BIN_DIR:-}" ]; then
  dir="$TEE_DAEMON_BIN_DIR"
elif [ -d /usr/local/bin ] && [ -w /usr/local/bin ]; then
  dir=/usr/local/bin
else
  dir="$HOME/.local/bin"
fi
mkdir -p "$dir"
link="$dir/tee-daemon"

if [ -e "$link" ] && [ ! -L "$link" ]; then
  echo "install-launcher: $link exists and is not a link; left as it is (remove it to use this checkout's)" >&2
  exit 0
fi
ln -sfn "$target" "$link"
echo "tee-daemon: $link -> $target"

case ":$PATH:" in
  *":$dir:"*) ;;
  *) echo "note: $dir is not on this shell's PATH; a new login shell may add it, else add it to ~/.profile" >&2 ;;
esac
