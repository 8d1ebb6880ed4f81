"""The runtime plugin contract: the plugin author's manual.

A runtime plugin is a module or object with functions marked `@hookimpl`. Import that
marker, the contract types and the helpers from `tee_daemon.plugin`, the one module of
core that is a contract: everything else may move between releases. Built-in runtimes
are plugins like any other; third-party ones are found through the entry-point group
``tee_daemon.runtimes``::

    [project.entry-points."tee_daemon.runtimes"]
    myruntime = "my_package.plugin"

docs/PLUGINS.md walks through a whole plugin (tests/thirdparty/tee-runtime-echo). Each
hook below is documented in the same shape: what it is for, when core invokes it (which
operation, which thread, how often), its arguments (and the context fields to read),
what it returns, and an example.

Rules core enforces:

* Hooks are synchronous and are called with keyword arguments only; an implementation
  may accept fewer arguments than its spec. Core calls `runtime_build`,
  `runtime_start`, `runtime_stop` and `runtime_forget` in a worker thread, so
  blocking is fine there; `runtime_detect`, `runtime_forward` and
  `runtime_substrate` run on the event loop and must return quickly.
* `runtime_describe`, `runtime_detect` and `runtime_substrate` are called on every
  plugin. The other hooks
  are called only on the plugin that declared the runtime in `runtime_describe`, with
  the runtime's name, and the first non-None answer wins.
* Two plugins declaring the same runtime name is an error at startup, not a silent
  override. Core never loads plugin code from a deployed project.
* Auth, hashing, attestation and the transparency log are core's and are not hooks.
* A plugin reads what it needs from its arguments, never from the daemon's environment
  or by working out core's folders from a path: what it needs is a context field.
* The author's mistakes are `DeployFailed(message)`: a 4xx JSON answer with that
  message. Never put a secret (``ctx.env`` values, tokens) in a message or a log line.
"""

from __future__ import annotations

from pathlib import Path

import pluggy

from tee_daemon.kernel.contract import (
    ASGIApp, BuildContext, BuildReport, Detection, Instance, RuntimeInfo, StartContext,
)  # fmt: skip

PROJECT = "tee_daemon"
ENTRY_POINT_GROUP = "tee_daemon.runtimes"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def runtime_describe() -> list[RuntimeInfo]:
    """Declare the runtimes this plugin provides.

    Invoked by: the registry, once per plugin when the daemon starts (main thread,
    before it listens).

    Arguments: none.

    Returns: a list with one `RuntimeInfo` per runtime; a plugin may provide several
    (the Deno plugin provides ``deno`` and ``bun``). `name` is what manifests say in
    ``runtime``; `default_entry` is the entry used when the manifest names none;
    `detect_priority` orders `runtime_detect` claims (higher first: dockerfile 60,
    deno 50, bun 40, node 30, python 20, static 0); `version` and `description` are
    shown in ``GET /_api/substrate`` under ``runtimes.<name>``. A name another plugin
    already declared stops the daemon at startup.

    Example::

        @hookimpl
        def runtime_describe():
            return [RuntimeInfo(name="echo", default_entry="echo.txt", detect_priority=45,
                                version="1.0.0", description="echoes echo.txt")]
    """


@hookspec
def runtime_detect(tree: Path) -> Detection | None:
    """Claim a source tree whose manifest (and ``project.json``) names no runtime.

    Invoked by: a deploy or redeploy, after the source is fetched and hashed, on every
    plugin, once per deploy, on the event loop (look at a few files, nothing slow).

    Arguments:
        tree: the unpacked source tree. It is untrusted: read it, never execute or
            import anything from it, and do not write to it (its hash is published).

    Returns: a `Detection` naming one of this plugin's runtimes (and the entry file it
    found, or None for the runtime's `default_entry`), or None to leave the tree to
    others. When several claim a tree the runtime with the highest `detect_priority`
    wins; ``static`` claims everything at priority 0. A claim for a runtime nobody
    declared is ignored.

    Example::

        @hookimpl
        def runtime_detect(tree):
            if (tree / "echo.txt").is_file():
                return Detection(runtime="echo", entry="echo.txt")
            return None
    """


@hookspec(firstresult=True)
def runtime_build(runtime: str, ctx: BuildContext) -> BuildReport | bool | None:
    """Prepare a version to run: install dependencies, compile, check the entry exists.

    Invoked by: a deploy (``POST /_api/projects``) or redeploy (``.../<name>/redeploy``),
    once per new version, in a worker thread, before `runtime_start`; only on the
    plugin that declared ``runtime``. Not called when a redeploy finds the same commit
    and tree. Blocking is fine; ``ctx.build_timeout`` bounds a build step.

    Arguments:
        runtime: the runtime's name (one of this plugin's).
        ctx: the `BuildContext`. Read `project`, `version` and `runtime` (which
            version this is), `tree` (the source, read-only), `entry`,
            `env` (the project's env: for the build's commands, never for logs),
            `build_dir` (this version's folder: write here), `cache_dir` (the
            project's own cache for this runtime, kept across versions),
            `allow_lifecycle_scripts`, `identity` and `build_timeout` (hand the
            context to `run_build_step`, which runs a command sandboxed as the
            project), `log_path` (the build log: `project_log(ctx, ...)`),
            `kept_versions` (the versions kept after this deploy, this one included),
            `folders` (the project's folders), `daemon_id` (for names on shared
            resources), `backend`, and `command`, `image`, `port` (the manifest's,
            for the runtimes that take them; None otherwise).

    Returns: a `BuildReport` saying what was installed (toolchain versions, the
    lockfile's digest, the installed tree's id, whether the install was frozen by a
    lockfile): core publishes it in the project's manifest and, for an attested
    project, in its log entry. Returning True reports only the runtime's version and
    counts as not pinned (a build that says nothing about what it fetched cannot claim
    it was fixed by a lockfile). None (or False) means the plugin did not build it: the
    deploy fails. Raise `DeployFailed` with a message for the author when the project
    cannot be built: the answer is a 422 and the previous version keeps serving.

    Example::

        @hookimpl
        def runtime_build(runtime, ctx):
            source = ctx.tree / ctx.entry
            if not source.is_file():
                raise DeployFailed(f"{ctx.entry} not found")
            (ctx.build_dir / "echo.body").write_text(source.read_text())
            project_log(ctx, "echo: built")
            return True
    """


@hookspec(firstresult=True)
def runtime_start(runtime: str, ctx: StartContext) -> Instance | None:
    """Start a built version and return its `Instance` without waiting for it.

    Invoked by: a deploy or redeploy (after `runtime_build`), a rollback (a kept
    version, built before) and a daemon start (for each project's current version);
    in a worker thread, once per start; only on the plugin that declared
    ``runtime``. Crash restarts and cold starts after an idle stop happen inside the
    instance `start` returned, not through this hook. Core awaits
    ``instance.ready(timeout)`` before any traffic reaches it, so a slow or crashing
    start never replaces a working version.

    Arguments:
        runtime: the runtime's name.
        ctx: the `StartContext`. Read `project`, `version`, `runtime`, `tree`,
            `entry`, `build_dir` (what the build left), `env` (the project's env with
            its secrets: hand it to the project and nothing of the daemon's),
            `data_dir` (survives restarts and redeploys), `tmp_dir`, `run_dir` (this
            start's private folder, for a unix socket), `log_path` (the run log),
            `identity`, `backend` ("process" or "docker"), `kept_versions`,
            `folders`, `daemon_id`, and `command`, `image`, `port` as in
            `runtime_build`. A program is started with `start(ctx, LaunchPlan(...))`,
            which sandboxes it as the project and has it listen where core can reach
            it, never on a public interface.

    Returns: the `Instance` (None means the plugin did not start it: the deploy
    fails). Raise `DeployFailed` for the author's mistakes (a missing entry...).

    Example::

        @hookimpl
        def runtime_start(runtime, ctx):
            # argv[0] is absolute; the program binds LISTEN_UNIX or PORT from its env.
            plan = LaunchPlan(argv=[sys.executable, str(ctx.tree / ctx.entry)], cwd=ctx.tree)
            return start(ctx, plan)
    """


@hookspec(firstresult=True)
def runtime_forward(runtime: str, instance: Instance) -> ASGIApp | None:
    """Return the ASGI callable that serves this instance's traffic.

    Invoked by: core, once per instance, right after ``instance.ready()`` returned and
    before traffic switches to it, on the event loop; only on the plugin that declared
    ``runtime``. The callable then receives every request for ``/<name>/...`` (or the
    project's own host) with ``scope["path"]`` already stripped of the ``/<name>``
    prefix (``scope["root_path"]`` holds it). Keep it fast: it is the hot path.

    Arguments:
        runtime: the runtime's name.
        instance: what this plugin's `runtime_start` returned.

    Returns: an ASGI app (HTTP, and WebSocket if the runtime serves them). Process
    runtimes return `forward(instance)`, core's proxy to the program's socket;
    `proxy_to(upstream)` is the same for a socket the runtime manages itself. None
    fails the deploy. The daemon's ingress workers (``serve --workers N``) serve a
    route themselves when its app has ``ingress_spec() -> ("module:factory", [args])``
    (JSON arguments; each worker builds its own ``factory(*args)``; None: not now):
    core's proxy has it, behind scale to zero too while the instance runs. Any other
    app runs in the supervisor process, its requests passed on to it by the workers.

    Example::

        @hookimpl
        def runtime_forward(runtime, instance):
            return forward(instance)
    """


@hookspec(firstresult=True)
def runtime_stop(runtime: str, instance: Instance) -> bool | None:
    """Release what `runtime_start` acquired beyond ``instance.stop()`` (optional).

    Invoked by: a redeploy or rollback (for the replaced instance, once its requests
    drained), a delete, and a deploy that failed after its instance started (its
    record could not be written); in a worker thread, once per stopped instance,
    always after core awaited ``instance.stop()``; only on the plugin that declared
    ``runtime``. A daemon shutdown calls ``instance.detach()`` instead and not this
    hook. Implement it only for cleanup that belongs to the runtime rather than the
    instance (images, networks, bookkeeping).

    Arguments:
        runtime: the runtime's name.
        instance: the stopped instance.

    Returns: True when handled; the answer is not otherwise used. An exception is
    logged and the operation goes on.

    Example::

        @hookimpl
        def runtime_stop(runtime, instance):
            _running.discard(instance)
            return True
    """


@hookspec(firstresult=True)
def runtime_forget(runtime: str, project: str) -> bool | None:
    """A project was deleted: remove what the runtime kept for it (optional).

    Invoked by: ``DELETE /_api/projects/<name>``, after its instance was stopped and
    its folders removed, once for each runtime among the project's kept versions, in
    a worker thread; only on the plugin that declared ``runtime``. Remove images,
    networks, volumes, caches kept outside the project's folders and the like; core
    removes the project's folders (tree, build, data dir, cache, logs) itself.

    Arguments:
        runtime: the runtime's name.
        project: the deleted project's name (it may be deployed again later, from
            nothing).

    Returns: True when handled; the answer is not otherwise used. An exception is
    logged and the delete stands.

    Example::

        @hookimpl
        def runtime_forget(runtime, project):
            _served.pop(project, None)
            return True
    """


@hookspec
def runtime_substrate() -> dict | None:
    """Public facts about the runtime for ``GET /_api/substrate``.

    Invoked by: every ``GET /_api/substrate`` (unauthenticated), once on each plugin
    that declared a runtime, on the event loop: return what is already known (engine
    versions, modes), never run a command here. How projects are kept apart
    (``isolation``) is core's to state, not a plugin's.

    Arguments: none.

    Returns: a small JSON-able dict of public facts, or None. It is shown to anyone:
    never project names, paths of other projects, tokens or secrets. Core shows it as
    ``runtimes.<name>.facts`` for each of the plugin's runtimes, so a plugin can never
    overwrite a field core sets (``tee``, ``isolation``...) nor another plugin's. If
    the hook raises, core logs it and shows ``{"error": ...}`` there instead.

    Example::

        @hookimpl
        def runtime_substrate():
            return {"running": len(_running)}
    """


__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "ASGIApp",
    "BuildContext",
    "BuildReport",
    "Detection",
    "Instance",
    "RuntimeInfo",
    "StartContext",
    "hookimpl",
    "hookspec",
]
