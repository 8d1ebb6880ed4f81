"""The static runtime: the deployed folder served verbatim, in the daemon's process."""

from __future__ import annotations

from pathlib import Path

from tee_daemon.plugin import BuildReport, Detection, Instance, RuntimeInfo, StartContext, hookimpl

from .files import StaticFiles

NAME = "static"


class StaticInstance(Instance):
    def __init__(self, root: Path) -> None:
        self.app = StaticFiles(root)

    async def ready(self, timeout: float) -> None:
        return None  # Files are there once the version folder exists.

    async def stop(self) -> None:
        return None


@hookimpl
def runtime_describe() -> list[RuntimeInfo]:
    return [RuntimeInfo(name=NAME, detect_priority=0, description="files served verbatim")]


@hookimpl
def runtime_detect(tree: Path) -> Detection:
    return Detection(runtime=NAME)  # The fallback: every folder is a static site.


@hookimpl
def runtime_build(runtime: str) -> BuildReport:
    # Nothing is installed: what runs is the tree alone, so it is pinned (SPEC 12).
    return BuildReport(pinned=True)


@hookimpl
def runtime_start(runtime: str, ctx: StartContext) -> Instance:
    return StaticInstance(ctx.tree)


@hookimpl
def runtime_forward(runtime: str, instance: StaticInstance):
    return instance.app
