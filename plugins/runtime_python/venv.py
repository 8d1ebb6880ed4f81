"""The python runtime's dependencies: ``requirements.txt`` → a virtual environment of
the project's own (pip from the daemon's environment, targeting the new venv's
interpreter), cached by `depcache`. A requirements.txt that pins every requirement with a
hash is installed with ``--require-hashes`` (SPEC 12): pip then refuses any file, dependencies
included, whose hash it does not list.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

from tee_daemon.plugin import (
    BuildContext, BuildReport, deps_tree_sha256, file_sha256, requirements_pinned, run_build_step,
)  # fmt: skip

from tee_daemon_plugins.depcache import BUILD_PATH, cached_install, digest


def python_roots() -> list[Path]:
    """What a sandboxed Python (this interpreter or a venv made from it) needs to read."""
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    return sorted(roots)


def python_venv(ctx: BuildContext) -> Path | None:
    """The project's own venv with requirements.txt installed (cached), or None."""
    tree = ctx.tree
    requirements = tree / "requirements.txt"
    if not requirements.is_file() or requirements.is_symlink():
        return None
    pinned = requirements_pinned(requirements.read_text(errors="replace"))
    key = digest(b"pip/2", sys.version.encode(), requirements.read_bytes())

    def install(dest: Path) -> None:
        venv = dest / "venv"
        shutil.copyfile(requirements, dest / "requirements.txt")
        # No pip cache: a package's build backend runs the requester's code, and a cache
        # shared between projects would let it plant wheels that another project's
        # install then trusts. The build may write its own install folder only.
        env = {"PATH": BUILD_PATH, "HOME": str(dest), "LANG": "C.UTF-8", "PIP_NO_CACHE_DIR": "1"}
        roots = python_roots()
        run_build_step(
            ctx,
            "creating the virtual environment",
            [sys.executable, "-m", "venv", "--without-pip", str(venv)],
            cwd=dest, env=env, read_only=[*roots, ctx.tree], read_write=[dest],
        )  # fmt: skip
        run_build_step(
            ctx,
            "pip install -r requirements.txt",
            [
                sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
                *(["--require-hashes"] if pinned else []),
                "-r", str(dest / "requirements.txt"),
            ],
            cwd=dest, env=env, read_only=[*roots, ctx.tree], read_write=[dest],
        )  # fmt: skip
        # The shim finds its server (granian) in the daemon's environment through
        # TEE_DAEMON_SITE: the daemon never writes into a folder the build wrote.

    dest = cached_install(ctx, key, "pip", install)
    return dest / "venv"


def site_packages(venv: Path) -> Path | None:
    found = sorted((venv / "lib").glob("python*/site-packages"))
    return found[0] if found else None


def venv_report(ctx: BuildContext, venv: Path | None) -> BuildReport:
    """What `python_venv` installed, for the manifest (SPEC 12): the tree id is over the
    venv's site-packages (its bin/ holds scripts whose first line names this folder)."""
    tools = {"python": ".".join(map(str, sys.version_info[:3])), "pip": importlib.metadata.version("pip")}
    if venv is None:
        return BuildReport(toolchain={"python": tools["python"]}, pinned=True)
    requirements = ctx.tree / "requirements.txt"
    pinned = requirements_pinned(requirements.read_text(errors="replace"))
    return BuildReport(
        toolchain=tools,
        lock_sha256=file_sha256(requirements) if pinned else None,
        deps_tree_sha256=deps_tree_sha256(site_packages(venv), "site-packages"),
        pinned=pinned,
    )
