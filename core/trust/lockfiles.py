"""Which lockfile fixes a project's dependencies, and when it fixes all of them (SPEC 12).

The rules that decide `lock_sha256` and `pinned`, shared by the runtimes (through
`tee_daemon.plugin`) and the verifier, which applies them to the published source:

- npm (node, bun): `npm-shrinkwrap.json`, else `package-lock.json` (npm's own order);
  only that file is handed to the install, and `npm ci` installs
  exactly what it lists and checks every tarball's `integrity` hash, so it pins.
- Deno: `deno.lock`, used with `--frozen` (Deno refuses to fetch anything the lockfile
  does not list, and checks each module's hash), so it pins.
- pip: `requirements.txt` pins only when every requirement is `name==version` with at
  least one `--hash=`; it is then installed with `--require-hashes`, so pip refuses any
  file (dependencies included) whose hash is not listed. Includes (`-r`, `-c`), editable
  and URL requirements cannot be checked this way: such a file does not pin.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["NPM_LOCKFILES", "file_sha256", "npm_lockfile", "requirements_pinned"]

NPM_LOCKFILES = ("npm-shrinkwrap.json", "package-lock.json")
_PINNED_REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]*\])?==[^\s;=]+")
_ALLOWED_OPTIONS = ("--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--no-binary",
                    "--only-binary", "--prefer-binary", "--trusted-host", "--require-hashes")  # fmt: skip


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def npm_lockfile(tree: Path) -> Path | None:
    """The lockfile `npm ci` would use in `tree`, or None (links are never followed)."""
    for name in NPM_LOCKFILES:
        path = tree / name
        if path.is_file() and not path.is_symlink():
            return path
    return None


def _logical_lines(text: str) -> list[str]:
    """requirements.txt lines with continuations joined and comments removed."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw)
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def requirements_pinned(text: str) -> bool:
    """Whether every requirement in a requirements.txt is `==`-pinned with a hash."""
    requirements = 0
    for line in _logical_lines(text):
        if line.startswith("-"):
            option = line.split("=", 1)[0].split()[0]
            if option not in _ALLOWED_OPTIONS:
                return False  # -r, -c, -e and the like: not checkable here
            continue
        if not _PINNED_REQUIREMENT.match(line) or "--hash=" not in line:
            return False
        requirements += 1
    return requirements > 0
