"""How the daemon is put together (issue 13 item 4): one `Settings`, built once at the
entry points and handed to each part; the `Daemon` assembled in one phase; the router
built around the daemon's own parts."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

from tee_daemon.daemon import Daemon
from tee_daemon.settings import HANDOFF_VAR, handoff, load_settings, worker_settings
from tee_daemon.web.app import build_app

REPO = Path(__file__).resolve().parent.parent
# Where settings may be read from flags and the environment: `serve` and the CLI client
# (its own process, reading the local daemon's settings when no --url/--token is given).
ENTRY_POINTS = {"core/settings.py", "core/cli/serve.py", "core/cli/commands.py", "core/cli/client.py"}


def _calls(path: Path, names: set[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in names:
                found.append((node.lineno, name))
    return found


def test_settings_are_read_only_at_the_entry_points():
    offenders = []
    for path in sorted([*REPO.glob("core/**/*.py"), *REPO.glob("plugins/**/*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if rel in ENTRY_POINTS or "/build/" in rel:
            continue
        offenders += [f"{rel}:{line} {name}()" for line, name in _calls(path, {"load_settings"})]
    assert not offenders, "settings read outside the entry points: " + ", ".join(offenders)


def test_serve_hands_the_worker_its_settings_without_the_token(tmp_path: Path):
    env = {
        "TEE_DAEMON_TOKEN": "a-token-that-stays-in-the-environment",
        "TEE_DAEMON_TRUSTED_PROXIES": "10.0.0.1, ::1",
        "TEE_DAEMON_MAX_REQUEST_BODY": "12345",
        "TEE_DAEMON_PROJECT_NETWORK": "shared",
    }
    settings = load_settings({"data_dir": tmp_path, "port": 9999, "base_domain": "Apps.Example"}, environ=env)
    handed = handoff(settings)
    assert list(handed) == [HANDOFF_VAR] and "a-token" not in handed[HANDOFF_VAR]
    # The worker decodes the very settings serve built (flags included), token from env.
    assert worker_settings({**handed, "TEE_DAEMON_TOKEN": env["TEE_DAEMON_TOKEN"]}) == settings
    received = worker_settings(handed)
    assert received.token is None and received.data_dir == tmp_path.resolve() and received.port == 9999
    assert received.base_domain == "apps.example" and received.trusted_proxies == frozenset({"10.0.0.1", "::1"})
    # Started without serve, a worker reads the environment as serve would.
    assert worker_settings({"TEE_DAEMON_PORT": "8123"}).port == 8123
    with pytest.raises(SystemExit):
        worker_settings({"TEE_DAEMON_PORT": "not-a-port"})


def test_the_daemon_is_whole_once_built_and_the_router_serves_its_parts(tmp_path: Path):
    settings = load_settings(
        {"data_dir": tmp_path / "data"},
        environ={"TEE_DAEMON_MAX_REQUEST_BODY": "4096", "TEE_DAEMON_TRUSTED_PROXIES": "10.1.2.3"},
    )
    daemon = Daemon(settings)
    for part in ("store", "registry", "tenancy", "routes", "metrics", "origins", "proxy_limits", "journal", "deployer", "hub"):
        assert getattr(daemon, part) is not None, part
    # One of each, shared: the deployer switches the routes the router serves, records
    # in the daemon's journal, and the proxies forward under the settings' limits.
    assert daemon.deployer.routes is daemon.routes and daemon.deployer.journal is daemon.journal
    assert daemon.routes.publisher is daemon.hub  # every route change reaches the workers
    assert daemon.deployer.settings is settings and daemon.tenancy is daemon.deployer.tenancy
    assert daemon.proxy_limits.max_request_body == 4096
    assert daemon.proxy_limits.trusted_proxies == frozenset({"10.1.2.3"})
    ingress = build_app(daemon)
    assert ingress.routes is daemon.routes and ingress.metrics is daemon.metrics
    assert ingress.origins is daemon.origins and ingress.proxy_limits is daemon.proxy_limits
    assert ingress.api.state.daemon is daemon


def test_the_settings_serve_reads_bound_the_proxies_of_the_running_daemon(fresh_daemon):
    """Over HTTP: TEE_DAEMON_MAX_REQUEST_BODY, read by `serve` and handed to its worker,
    reaches the proxy in front of a real process project (the default is 32 MiB)."""
    daemon = fresh_daemon(env={"TEE_DAEMON_MAX_REQUEST_BODY": "1000"})
    app = (REPO / "tests" / "apps" / "python-asgi" / "app.py").read_bytes()
    deployed = daemon.deploy_files("bounded", {"app.py": app}, runtime="python")
    assert deployed.status_code == 201, deployed.text
    small = httpx.post(f"{daemon.url}/bounded/echo", content=b"x" * 1000, timeout=30)
    assert small.status_code == 200 and small.json()["path"] == "/echo"
    big = httpx.post(f"{daemon.url}/bounded/echo", content=b"x" * 1001, timeout=30)
    assert big.status_code == 413 and big.json() == {
        "status_code": 413,
        "detail": "request body larger than 1000 bytes",
    }
