"""npm installs for the node and bun runtimes: ``package.json`` → ``npm ci`` when a
lockfile is there, else ``npm install``, with ``--ignore-scripts`` unless the operator
allows lifecycle scripts; npm is the pinned node wheel's own. Cached by `depcache`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tee_daemon.plugin import (
    BuildContext, BuildReport, DeployFailed, deps_tree_sha256, file_sha256, npm_lockfile, own_folder,
    run_build_step,
)  # fmt: skip

from tee_daemon_plugins import toolchain
from tee_daemon_plugins.depcache import BUILD_PATH, cached_install, digest

MODULES_RECORD = "deps.txt"


def npm_dependencies(ctx: BuildContext) -> Path | None:
    """The cached folder holding `node_modules` for the tree's package.json, or None."""
    tree, cache_dir, allow_scripts = ctx.tree, ctx.cache_dir, ctx.allow_lifecycle_scripts
    package = tree / "package.json"
    if not package.is_file() or package.is_symlink():
        return None
    lock = npm_lockfile(tree)  # the same rule the verifier applies (SPEC 12)
    npm = toolchain.npm_argv()
    if npm is None:
        raise DeployFailed("package.json needs npm, but no node/npm is provisioned (run make install)")
    key = digest(
        b"npm/1",
        (toolchain.version("node") or "").encode(),
        package.read_bytes(),
        lock.name.encode() if lock else b"",
        lock.read_bytes() if lock else b"",
        b"scripts" if allow_scripts else b"no-scripts",
    )

    def install(dest: Path) -> None:
        shutil.copyfile(package, dest / "package.json")
        if lock is not None:
            shutil.copyfile(lock, dest / lock.name)
        npm_cache = own_folder(cache_dir / "npm-cache", ctx)  # The project's own: never shared.
        command = "ci" if lock is not None else "install"
        argv = [*npm, command, "--no-audit", "--no-fund", "--omit=dev", "--loglevel=warn", "--no-update-notifier"]
        if not allow_scripts:
            argv.append("--ignore-scripts")
        node_root = toolchain.tool_root("node")
        env = {
            "PATH": f"{Path(npm[0]).parent}:{BUILD_PATH}",
            "HOME": str(dest),
            "npm_config_cache": str(npm_cache),
            "npm_config_update_notifier": "false",
            "LANG": "C.UTF-8",
        }
        run_build_step(
            ctx,
            f"npm {command}",
            argv,
            cwd=dest,
            env=env,
            read_only=[ctx.tree, *(p for p in (node_root,) if p is not None)],  # local packages of its own
            read_write=[dest, npm_cache],
        )
        modules = dest / "node_modules"  # Written by the build (the project's code): check, never follow.
        if modules.is_symlink() or (modules.exists() and not modules.is_dir()):
            raise DeployFailed("npm left node_modules as something other than a folder")
        modules.mkdir(exist_ok=True)

    return cached_install(ctx, key, "npm", install)


def npm_report(ctx: BuildContext, deps: Path | None, tools: dict[str, str] | None = None) -> BuildReport:
    """What `npm_dependencies` put in place, for the manifest (SPEC 12).

    Pinned only with a lockfile (`npm ci` installs exactly it and checks every
    tarball's integrity hash) and without lifecycle scripts, which may fetch anything.
    """
    toolchain_versions = {**(tools or {}), "node": toolchain.version("node"), "npm": toolchain.npm_version()}
    toolchain_versions = {k: v for k, v in toolchain_versions.items() if v}
    if deps is None:
        return BuildReport(toolchain=toolchain_versions, pinned=True)
    lock = npm_lockfile(ctx.tree)
    return BuildReport(
        toolchain=toolchain_versions,
        lock_sha256=file_sha256(lock) if lock is not None else None,
        deps_tree_sha256=deps_tree_sha256(deps / "node_modules", "node_modules"),
        pinned=lock is not None and not ctx.allow_lifecycle_scripts,
    )


def app_dir_with_modules(tree: Path, build_dir: Path, deps: Path) -> Path:
    """A copy of the tree (hard links when possible) with `node_modules` linked in.

    Node resolves packages from the importing file's folder upwards, so the modules
    must sit beside the entry; the deployed tree itself is never modified.
    """
    app = build_dir / "app"
    shutil.rmtree(app, ignore_errors=True)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(tree, app, symlinks=True, copy_function=link_or_copy)
    target = app / "node_modules"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    target.symlink_to(deps / "node_modules", target_is_directory=True)
    # The start reads where the modules are from this record of the daemon's, never by
    # following the link (SPEC 9: what a project sees comes from the daemon's records).
    (build_dir / MODULES_RECORD).write_text(str(deps) + "\n")
    return app


def installed_modules(build_dir: Path) -> list[Path]:
    """The dependency folder recorded by `app_dir_with_modules` for this build, if any."""
    record = build_dir / MODULES_RECORD
    return [Path(record.read_text().strip())] if record.is_file() else []
