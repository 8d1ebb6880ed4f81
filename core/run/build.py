"""Build steps under the sandbox, and the daemon's own lines in a project's log.

A runtime's build may run package code (an install's scripts, a build backend), so
every command it runs goes through `run_build_step`: sandboxed as the project (its uid,
its limits, a network namespace of its own with outbound access), with a clean
environment plus the operator's network settings, and the build timeout. Plugins reach
these through `tee_daemon.plugin`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tee_daemon.kernel.contract import BuildContext, StartContext
from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.run import sandbox
from tee_daemon.run.logfiles import log_line, tail

# Operator network settings a package install may need (proxies, extra CA bundles,
# package indexes and mirrors). They go to build steps only, never to a project, and
# nothing else of the daemon's environment does (above all no TEE_DAEMON_* value).
NETWORK_ENV = tuple(
    [v for p in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY") for v in (p, p.lower())]
    + ["SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"]
    + ["PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST"]
    + ["PIP_DEFAULT_TIMEOUT", "PIP_NO_INDEX"]
    + [v for p in ("NPM_CONFIG_REGISTRY", "NPM_CONFIG_CAFILE", "NPM_CONFIG_STRICT_SSL") for v in (p, p.lower())]
    + ["DENO_CERT", "DENO_TLS_CA_STORE"]
)


def network_env() -> dict[str, str]:
    return {k: v for k in NETWORK_ENV if (v := os.environ.get(k)) and not k.startswith("TEE_DAEMON_")}


def network_paths(env: dict[str, str]) -> list[Path]:
    """Local files and folders named by the network settings (CA bundles, wheel dirs)."""
    paths = []
    for value in env.values():
        for token in value.replace(",", " ").split():
            token = token.removeprefix("file://")
            if token.startswith("/") and os.path.exists(token):
                paths.append(Path(token))
    return paths


def project_log(target: BuildContext | StartContext | Path | None, message: str) -> None:
    """A line from the daemon itself in a project's log: `target` is a log file, or a
    context (its `log_path`: the build log of a build, the run log of a start)."""
    log_line(getattr(target, "log_path", target), message)


def own_folder(path: Path, ctx: BuildContext) -> Path:
    """`path` made (if needed) and handed to the project's identity, for a build to write."""
    path.mkdir(parents=True, exist_ok=True)
    if ctx.identity is not None:
        os.chown(path, ctx.identity.uid, ctx.identity.gid)
    return path


def run_build_step(
    ctx: BuildContext,
    what: str,
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    read_only: list[Path] = (),  # type: ignore[assignment]
    read_write: list[Path] = (),  # type: ignore[assignment]
) -> None:
    """Run one build command sandboxed as the project; `DeployFailed` (its output
    included) when it fails or outlives the build timeout.

    `what` names the step in errors and the log ("npm ci"). The command sees `env`
    (plus the operator's network settings), the folders in `read_only` and
    `read_write`, the system folders, and nothing else of the machine.
    """
    net = network_env()
    env = {**net, **env}
    read_only = [*read_only, *network_paths(net)]
    log_path = ctx.log_path or cwd / ".build.log"
    if sandbox.bwrap() is None:  # The operator accepted unsandboxed projects.
        _run_unsandboxed(what, argv, cwd=cwd, env=env, log_path=log_path, timeout=ctx.build_timeout)
        return
    plan = sandbox.Plan(
        argv=argv,
        env=env,
        cwd=cwd,
        identity=ctx.identity,
        read_only=list(read_only),
        read_write=list(read_write),
        network="own" if sandbox.has_egress() else "host",
        egress=sandbox.has_egress(),
        project=ctx.project,
        unit="build",
    )
    sandbox.run(plan, what=what, log_path=log_path, timeout=ctx.build_timeout)


def _run_unsandboxed(what: str, argv: list[str], *, cwd: Path, env: dict, log_path: Path, timeout: float) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        try:
            result = subprocess.run(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise DeployFailed(f"{what} took longer than {timeout:g}s", log=tail(log_path, start)) from None
        except OSError as exc:
            raise DeployFailed(f"{what} could not run: {exc}") from None
    if result.returncode != 0:
        output = tail(log_path, start)
        raise DeployFailed(f"{what} failed (exit code {result.returncode}):\n{output}", log=output)
