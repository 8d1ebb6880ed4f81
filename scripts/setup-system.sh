#!/usr/bin/env bash
# Install the Debian packages that tee-daemon's tests need (idempotent).
#
#   scripts/setup-system.sh            # install whatever is missing
#   scripts/setup-system.sh --check    # exit 1 (and list them) if any are missing
#
# Fast path: when every package is already installed this does one dpkg-query
# and exits (well under a second). Otherwise it runs `apt-get update` once and
# installs only the missing packages, without recommends, without starting any
# service (a temporary policy-rc.d stops nginx & co. from grabbing port 80).
# Output is quiet on success; on failure the apt log is printed and we exit != 0.
set -euo pipefail

PACKAGES=(
  git
  curl
  ca-certificates
  iproute2
  # container engine (dockerd + containerd + runc) and what it needs here
  docker.io
  containerd
  runc
  tini
  iptables
  xz-utils
  # browser for the UI tests (Playwright drives /usr/bin/chromium)
  chromium
  # reverse proxy / static server, load generator
  nginx-light
  wrk
  # tenant isolation (SPEC 9): the sandbox, setpriv, per-project volumes, egress NAT
  bubblewrap
  util-linux
  mount
  e2fsprogs
  busybox-static
  debootstrap
)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "setup-system.sh: must run as root (no sudo available)" >&2
    exit 1
  fi
fi

missing=()
# dpkg-query prints one line per known package; anything not "install ok installed" is missing.
while read -r name status; do
  [ "$status" = "installed" ] || missing+=("$name")
done < <(
  for p in "${PACKAGES[@]}"; do
    s=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    echo "$p ${s:-not-installed}"
  done
)

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "${1:-}" = "--check" ]; then
  echo "setup-system.sh: missing packages: ${missing[*]}" >&2
  exit 1
fi

log=$(mktemp /tmp/setup-system.XXXXXX.log)
fail() {
  echo "setup-system.sh: FAILED: $1 (missing: ${missing[*]})" >&2
  echo "----- apt log ($log) -----" >&2
  tail -n 60 "$log" >&2
  exit 1
}

export DEBIAN_FRONTEND=noninteractive
# Keep package postinst scripts from starting daemons (nginx would bind :80).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  own_policy=1
fi
cleanup() { if [ "$own_policy" = 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

echo "setup-system.sh: installing ${missing[*]}" >&2
"${SUDO[@]}" apt-get update -q >"$log" 2>&1 || fail "apt-get update"
"${SUDO[@]}" apt-get install -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}" >>"$log" 2>&1 || fail "apt-get install"

# Verify: every package must now be installed.
still=()
for p in "${missing[@]}"; do
  s=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$s" = "installed" ] || still+=("$p")
done
[ "${#still[@]}" -eq 0 ] || { missing=("${still[@]}"); fail "packages still not installed after apt-get install"; }
rm -f "$log"
