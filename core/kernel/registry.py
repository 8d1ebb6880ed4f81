"""The plugin registry: built-in runtimes, then third-party ones from entry points.

A typed facade over pluggy with one method per hook, so core never calls a hook by a
string name and never lets one runtime's plugin answer for another's.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from pathlib import Path

import pluggy

from tee_daemon.kernel import hookspecs
from tee_daemon.kernel.errors import DeployFailed, UserError
from tee_daemon.kernel.contract import (
    ASGIApp, BuildContext, BuildReport, Detection, Instance, RuntimeInfo, StartContext,
)  # fmt: skip

log = logging.getLogger(__name__)

BUILTIN_PLUGINS = (
    "tee_daemon_plugins.runtime_static",
    "tee_daemon_plugins.runtime_deno",
    "tee_daemon_plugins.runtime_node",
    "tee_daemon_plugins.runtime_python",
    "tee_daemon_plugins.runtime_dockerfile",
    "tee_daemon_plugins.runtime_command",
    "tee_daemon_plugins.runtime_image",
)


class PluginCollision(RuntimeError):
    """Two plugins claim one runtime or entry-point name: refuse to start."""


class Registry:
    def __init__(self, *, entry_points: bool = True, extra: tuple[object, ...] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        for module_name in BUILTIN_PLUGINS:
            # An import error in a built-in is a bug: let it propagate, never swallow.
            self._register(importlib.import_module(module_name), module_name)
        if entry_points and not os.environ.get("TEE_DAEMON_NO_ENTRY_POINTS"):
            self._load_entry_points()
        for plugin in extra:
            self._register(plugin, getattr(plugin, "__name__", repr(plugin)))
        self.pm.check_pending()
        self.runtimes: dict[str, RuntimeInfo] = {}
        self._owner: dict[str, object] = {}
        for plugin in self.pm.get_plugins():
            for info in self._describe(plugin):
                if info.name in self.runtimes:
                    raise PluginCollision(
                        f"runtime {info.name!r} is provided by both "
                        f"{self.pm.get_name(self._owner[info.name])} and {self.pm.get_name(plugin)}"
                    )
                self.runtimes[info.name] = info
                self._owner[info.name] = plugin

    def _register(self, plugin: object, name: str) -> None:
        # pluggy would silently skip a second plugin under a taken name: fail loudly.
        if self.pm.has_plugin(name) or self.pm.is_registered(plugin):
            raise PluginCollision(f"plugin {name!r} is registered twice")
        self.pm.register(plugin, name=name)

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            self._register(ep.load(), f"entrypoint:{ep.name}")

    def _describe(self, plugin: object) -> list[RuntimeInfo]:
        caller = self.pm.subset_hook_caller(
            "runtime_describe", [p for p in self.pm.get_plugins() if p is not plugin]
        )
        return [info for answer in caller() for info in (answer or [])]

    def _one(self, hook: str, runtime: str):
        """The hook caller limited to the plugin that owns `runtime`."""
        owner = self._owner.get(runtime)
        if owner is None:
            raise UserError(
                f"unknown runtime {runtime!r}; available: {', '.join(sorted(self.runtimes))}"
            )
        return self.pm.subset_hook_caller(hook, [p for p in self.pm.get_plugins() if p is not owner])

    # -- one method per hook -------------------------------------------------------

    def detect(self, tree: Path) -> Detection:
        claims = [d for d in self.pm.hook.runtime_detect(tree=tree) if d is not None]
        known = [d for d in claims if d.runtime in self.runtimes]
        if not known:
            raise UserError("no runtime recognises this project; set 'runtime' explicitly")
        # Explicit precedence: highest detect_priority wins; ties by name for stability.
        return max(known, key=lambda d: (self.runtimes[d.runtime].detect_priority, d.runtime))

    def build(self, ctx: BuildContext) -> BuildReport:
        """The plugin's report of what it installed (SPEC 12); a bare True reports the
        runtime's version only, not pinned."""
        answer = self._one("runtime_build", ctx.runtime)(runtime=ctx.runtime, ctx=ctx)
        if not answer:
            raise DeployFailed(f"runtime {ctx.runtime!r} could not build this project")
        if isinstance(answer, BuildReport):
            return answer
        version = self.runtimes[ctx.runtime].version
        return BuildReport(toolchain={ctx.runtime: version} if version else {})

    def start(self, ctx: StartContext) -> Instance:
        instance = self._one("runtime_start", ctx.runtime)(runtime=ctx.runtime, ctx=ctx)
        if instance is None:
            raise DeployFailed(f"runtime {ctx.runtime!r} did not start this project")
        return instance

    def forward(self, runtime: str, instance: Instance) -> ASGIApp:
        app = self._one("runtime_forward", runtime)(runtime=runtime, instance=instance)
        if app is None:
            raise DeployFailed(f"runtime {runtime!r} gave no request handler")
        return app

    def stop(self, runtime: str, instance: Instance) -> None:
        self._one("runtime_stop", runtime)(runtime=runtime, instance=instance)

    def forget(self, runtime: str, project: str) -> None:
        self._one("runtime_forget", runtime)(runtime=runtime, project=project)

    def runtime_facts(self) -> dict[str, dict]:
        """Each runtime's entry in ``GET /_api/substrate``: its version and description,
        and under ``facts`` what its plugin's `runtime_substrate` answered.

        Nested under the plugin's own runtime names, so a plugin can neither overwrite
        core's fields (``tee``, ``isolation``...) nor another plugin's.
        """
        answers: dict[object, dict] = {}
        for plugin in set(self._owner.values()):
            others = [p for p in self.pm.get_plugins() if p is not plugin]
            try:
                answer = next((a for a in self.pm.subset_hook_caller("runtime_substrate", others)() if a), None)
            except Exception:  # One plugin's bug must not take the substrate page down.
                log.exception("runtime_substrate of plugin %s failed", self.pm.get_name(plugin))
                answer = {"error": "this runtime's plugin could not report its facts (see the daemon's log)"}
            if isinstance(answer, dict):
                answers[plugin] = answer
        runtimes = {}
        for name, info in sorted(self.runtimes.items()):
            entry: dict = {"version": info.version, "description": info.description}
            if self._owner[name] in answers:
                entry["facts"] = answers[self._owner[name]]
            runtimes[name] = entry
        return runtimes

    def default_entry(self, runtime: str) -> str | None:
        return self.runtimes[runtime].default_entry if runtime in self.runtimes else None
