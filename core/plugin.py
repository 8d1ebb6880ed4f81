"""The plugin API: the one module a runtime plugin imports from tee-daemon.

A runtime plugin is a module (or an object) with `@hookimpl` functions, registered by
the daemon (built-ins) or through the ``tee_daemon.runtimes`` entry-point group (third-party).
The hooks and what each receives and returns are described in
`tee_daemon.kernel.hookspecs` (the hook manual); everything a plugin needs to implement
them is here, and nothing else in core is part of the contract: core's other modules
may move or change between releases, this one keeps its names.

What core hands a plugin:

* `BuildContext` / `StartContext`: one version of one project (its tree, build folder,
  `folders` of the project, the versions core keeps, the daemon id, the backend, the
  project's own `Identity`). Plugins never compute core's disk layout from these paths
  and never read the daemon's environment: what they need is a field.

What a plugin hands back:

* `RuntimeInfo` (from `runtime_describe`), `Detection` (from `runtime_detect`), an
  `Instance` (from `runtime_start`) and an `ASGIApp` (from `runtime_forward`).
* `DeployFailed(message, log=...)` for anything the project's author must fix: the
  daemon answers it as a 4xx JSON error with `message`, never a 500.

Helpers for a runtime that runs a program (the deno, bun, node and python runtimes
are written with nothing more):

* `LaunchPlan` says *what* to run: argv, working directory, the extra folders it may
  read, extra environment. `start(ctx, plan)` decides *where* (a sandboxed process, or
  a container with ``--backend docker``) and returns the `Instance`; `forward(instance)`
  is the request handler for it; `forget(project)` drops what the backend kept for a
  deleted project; `isolation(backend)` describes the isolation for the substrate page;
  `listen_dir(ctx)` is the folder the program's unix socket lives in, if any.
* `run_build_step(ctx, what, argv, ...)` runs one build command (an install, a compile)
  sandboxed as the project, with the build timeout, failing with `DeployFailed`;
  `own_folder(path, ctx)` makes a folder the project's build may write.
* `project_log(ctx_or_path, message)` writes a line from the daemon into the project's
  log (the build log for a `BuildContext`, the run log for a `StartContext`).
* `proxy_to(upstream)` is an ASGI app forwarding HTTP and WebSockets to a unix socket
  path or a ``(host, port)`` on loopback, for a runtime that starts its server itself.
* `error_body` / `error_answer`: the SPEC's JSON error body, for a runtime that answers
  a refusal itself (the static runtime's 404 and 405).

What a build installed (SPEC 12): `runtime_build` may return a `BuildReport` (toolchain
versions, the lockfile's digest, the installed tree's id, whether a lockfile pinned it);
`deps_tree_sha256`, `file_sha256`, `npm_lockfile` and `requirements_pinned` compute its
fields by the same rules the verifier applies (``tee-daemon verify --deps``).

The container executor, for a runtime that brings its own image (the Dockerfile
runtime): core starts, watches, adopts and removes containers and owns the engine
connection and its settings (`container_spec`, `start_container`, `container_forward`,
`forget_containers`, `container_facts`, ...); the runtime builds its images.
"""

from __future__ import annotations

from tee_daemon.kernel.contract import (
    ASGIApp,
    BuildContext,
    BuildReport,
    Detection,
    Folders,
    Identity,
    Instance,
    Receive,
    RuntimeInfo,
    Scope,
    Send,
    StartContext,
)
from tee_daemon.kernel.errors import DeployFailed, error_answer, error_body
from tee_daemon.kernel.hookspecs import hookimpl
from tee_daemon.proxy.forward import proxy_to
from tee_daemon.run.build import own_folder, project_log, run_build_step
from tee_daemon.run.containers import (
    CFS_PERIOD_US,
    LABEL_RUNTIME,
    LABEL_VERSION,
    ContainerInstance,
    ContainerSpec,
    DockerConfig,
    EngineUnavailable,
    config as container_config,
    client as docker_client,
    container_daemon_id,
    container_images,
    container_spec,
    cpu_quota,
    forget_project as forget_containers,
    forward_app as container_forward,
    labels as container_labels,
    memory_bytes,
    project_network,
    short,
    start_container,
    substrate as container_facts,
)
from tee_daemon.run.launch import LaunchPlan, forget, forward, isolation, listen_dir, start
from tee_daemon.trust.depstree import deps_tree_sha256
from tee_daemon.trust.lockfiles import file_sha256, npm_lockfile, requirements_pinned

__all__ = [
    # the hook marker
    "hookimpl",
    # the contract types
    "RuntimeInfo",
    "Detection",
    "BuildContext",
    "StartContext",
    "Folders",
    "Instance",
    "Identity",
    "ASGIApp",
    "Scope",
    "Receive",
    "Send",
    # errors
    "DeployFailed",
    "error_answer",
    "error_body",
    # running a program
    "LaunchPlan",
    "start",
    "forward",
    "forget",
    "isolation",
    "listen_dir",
    "proxy_to",
    # builds and logs
    "run_build_step",
    "own_folder",
    "project_log",
    # what a build installed (SPEC 12)
    "BuildReport",
    "deps_tree_sha256",
    "file_sha256",
    "npm_lockfile",
    "requirements_pinned",
    # the container executor
    "CFS_PERIOD_US",
    "LABEL_RUNTIME",
    "LABEL_VERSION",
    "ContainerInstance",
    "ContainerSpec",
    "DockerConfig",
    "EngineUnavailable",
    "container_config",
    "container_daemon_id",
    "container_facts",
    "container_forward",
    "container_images",
    "container_labels",
    "container_spec",
    "cpu_quota",
    "docker_client",
    "forget_containers",
    "memory_bytes",
    "project_network",
    "short",
    "start_container",
]
