"""The Node runtime: `index.js` as `module.exports = (req, res, env)` (http style) or an
ES module whose default export is a fetch-style `(req, ctx) => Response`.

A `package.json` is installed with the pinned npm (`npm ci` with a lockfile, else
`npm install`; `--ignore-scripts` unless the operator allows lifecycle scripts), cached
by the hash of the package files; the version then runs from a hard-linked copy of its
tree with the cached `node_modules` linked in (the deployed tree is never modified).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tee_daemon import plugin
from tee_daemon.plugin import BuildContext, BuildReport, DeployFailed, Detection, Instance, LaunchPlan, RuntimeInfo, StartContext, hookimpl

from tee_daemon_plugins import toolchain
from tee_daemon_plugins.base_image import BASE_IMAGE

from . import npm

HERE = Path(__file__).resolve().parent
NAME = "node"
SHIM = "shim.mjs"


@hookimpl
def runtime_describe() -> list[RuntimeInfo]:
    npm = toolchain.npm_version()
    return [
        RuntimeInfo(
            name=NAME,
            default_entry="index.js",
            detect_priority=30,
            version=toolchain.version(NAME),
            description="Node: module.exports = (req, res, env), or an ES module exporting a fetch-style default"
            + (f"; npm {npm}" if npm else ""),
        )
    ]


@hookimpl
def runtime_detect(tree: Path) -> Detection | None:
    return Detection(runtime=NAME, entry="index.js") if (tree / "index.js").is_file() else None


def _node() -> Path:
    node = toolchain.find(NAME)
    if node is None:
        raise DeployFailed("the node runtime is not installed on this daemon (run make install)")
    return node


@hookimpl
def runtime_build(runtime: str, ctx: BuildContext) -> BuildReport:
    _node()
    entry = ctx.entry or "index.js"
    if not (ctx.tree / entry).is_file():
        raise DeployFailed(f"entry file {entry!r} is not in the project")
    modules = npm.npm_dependencies(ctx)
    if modules is not None:
        npm.app_dir_with_modules(ctx.tree, ctx.build_dir, modules)
    shutil.copyfile(HERE / SHIM, ctx.build_dir / SHIM)
    return npm.npm_report(ctx, modules)


@hookimpl
def runtime_start(runtime: str, ctx: StartContext) -> Instance:
    node = _node()
    app = ctx.build_dir / "app"
    root = app if app.is_dir() else ctx.tree
    read_only = [toolchain.tool_root(NAME) or node.parent, *npm.installed_modules(ctx.build_dir)]
    return plugin.start(
        ctx,
        LaunchPlan(
            argv=[str(node), str(ctx.build_dir / SHIM)],
            cwd=root,
            read_only=read_only,
            extra_env={"TEE_ENTRY": str(root / (ctx.entry or "index.js"))},
            image=BASE_IMAGE,
        ),
    )


@hookimpl
def runtime_forward(runtime: str, instance: Instance):
    return plugin.forward(instance)


@hookimpl
def runtime_forget(runtime: str, project: str) -> bool:
    plugin.forget(project)
    return True
