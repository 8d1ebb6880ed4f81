"""The deploy pipeline (core/state/deploy.py) in-process, against a fake runtime.

Beside the HTTP tests (test_deploy_api.py, which run the real daemon with real
runtimes): here the `Deployer` is built from its parts as the `Daemon` builds it, with a
registry whose only runtime used is `fake`, a tiny in-test plugin that "builds" by
reading the tree and "runs" as an in-process ASGI app. What it checks is the pipeline's
own logic: a deploy serves the new version, a failed build leaves the previous one
serving, a rollback serves a kept version again, a restart restores what was serving.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from harness import make_tar
from tee_daemon.kernel.errors import DeployFailed, UserError
from tee_daemon.kernel.registry import Registry
from tee_daemon.plugin import BuildContext, Instance, RuntimeInfo, StartContext, hookimpl
from tee_daemon.run.tenancy import Tenancy
from tee_daemon.settings import Settings
from tee_daemon.state.deploy import Deployer
from tee_daemon.state.models import DeployRequest
from tee_daemon.state.store import Store
from tee_daemon.kernel.routes import Route, RouteTable
from tee_daemon.web.ingress import Ingress


class FakeInstance(Instance):
    """Serves the built tree's `body.txt`; remembers whether it was stopped."""

    def __init__(self, ctx: StartContext) -> None:
        self.version = ctx.version
        self.body = (Path(ctx.build_dir) / "body.txt").read_bytes()
        self.stopped = False

    async def ready(self, timeout: float) -> None:
        if self.body.startswith(b"never-ready"):
            raise DeployFailed("fake: did not become ready")

    async def stop(self) -> None:
        self.stopped = True

    async def app(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": self.body})


class FakeRuntime:
    """The in-test plugin: `fake` builds by copying body.txt into the build folder (a
    tree with `fail-build` fails) and starts a FakeInstance."""

    __name__ = "fake-runtime"

    def __init__(self) -> None:
        self.builds: list[BuildContext] = []
        self.started: list[FakeInstance] = []

    @hookimpl
    def runtime_describe(self):
        return [RuntimeInfo(name="fake", version="1.0", description="in-test runtime")]

    @hookimpl
    def runtime_build(self, runtime: str, ctx: BuildContext):
        self.builds.append(ctx)
        tree = Path(ctx.tree)
        if (tree / "fail-build").exists():
            raise DeployFailed("fake: the build failed")
        (Path(ctx.build_dir) / "body.txt").write_bytes((tree / "body.txt").read_bytes())
        return True

    @hookimpl
    def runtime_start(self, runtime: str, ctx: StartContext):
        instance = FakeInstance(ctx)
        self.started.append(instance)
        return instance

    @hookimpl
    def runtime_forward(self, runtime: str, instance: FakeInstance):
        return instance.app


async def _api(scope, receive, send) -> None:  # the router's API side: not used here
    raise AssertionError("no API request expected")


async def get(ingress: Ingress, path: str) -> tuple[int, bytes]:
    """One GET through the router, as the server would hand it over."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8080")], "scheme": "http", "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 5555), "root_path": "", "http_version": "1.1",
    }  # fmt: skip
    await ingress(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


class Pipeline:
    """A Deployer and a router over one data dir, wired as `Daemon` wires them."""

    def __init__(self, data_dir: Path, runtime: FakeRuntime) -> None:
        self.settings = Settings(data_dir=data_dir, start_timeout=5.0)
        self.store = Store(data_dir)
        self.registry = Registry(entry_points=False, extra=(runtime,))
        self.routes = RouteTable()
        self.deployer = Deployer(
            self.settings, self.store, self.registry, self.routes, tenancy=Tenancy(self.settings, self.store)
        )
        self.ingress = Ingress(_api, routes=self.routes)

    async def deploy(self, name: str, files: dict[str, str]):
        upload = io.BytesIO(make_tar(files))
        return await self.deployer.deploy(DeployRequest(name=name, runtime="fake"), upload)

    async def settle(self) -> None:
        """Let replaced instances finish draining and stop."""
        while self.deployer._retiring:
            await asyncio.gather(*self.deployer._retiring, return_exceptions=True)


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


def test_deploy_failed_build_and_rollback(tmp_path: Path, runtime: FakeRuntime):
    async def scenario() -> None:
        p = Pipeline(tmp_path / "data", runtime)
        first = await p.deploy("app", {"body.txt": "one"})
        assert first.current == 1 and [v.version for v in first.versions] == [1]
        assert await get(p.ingress, "/app/") == (200, b"one")
        ctx = runtime.builds[-1]
        assert ctx.project == "app" and ctx.version == 1 and ctx.runtime == "fake"

        # A failed build: a clear 422, the previous version keeps serving, nothing kept.
        with pytest.raises(DeployFailed) as failed:
            await p.deploy("app", {"body.txt": "broken", "fail-build": ""})
        assert failed.value.status_code == 422 and "the build failed" in failed.value.detail
        assert await get(p.ingress, "/app/") == (200, b"one")
        assert p.deployer.projects["app"].current == 1
        assert not runtime.started[0].stopped
        assert sorted(x.name for x in (p.store.projects_dir / "app" / "versions").iterdir()) == ["1"]

        # A version that builds but never becomes ready: the same.
        with pytest.raises(DeployFailed):
            await p.deploy("app", {"body.txt": "never-ready"})
        assert await get(p.ingress, "/app/") == (200, b"one")
        assert runtime.started[-1].stopped  # the one that failed was stopped

        # A good deploy replaces v1 (which drains and stops); the failed ones took no numbers
        # that show up as kept versions.
        second = await p.deploy("app", {"body.txt": "two"})
        assert await get(p.ingress, "/app/") == (200, b"two")
        assert second.current == second.versions[-1].version and len(second.versions) == 2
        await p.settle()
        assert runtime.started[0].stopped

        # Rollback: the kept previous version serves again (started anew, not rebuilt).
        builds = len(runtime.builds)
        back = await p.deployer.rollback("app")
        assert back.current == 1
        assert await get(p.ingress, "/app/") == (200, b"one")
        assert len(runtime.builds) == builds
        with pytest.raises(UserError):
            await p.deployer.rollback("app", 99)
        assert await get(p.ingress, "/app/") == (200, b"one")
        await p.settle()
        await p.deployer.shutdown()

    asyncio.run(scenario())


def test_restart_restores_what_served_and_delete_removes_it(tmp_path: Path, runtime: FakeRuntime):
    async def scenario() -> None:
        p = Pipeline(tmp_path / "data", runtime)
        await p.deploy("app", {"body.txt": "one"})
        await p.deploy("app", {"body.txt": "two"})
        await p.deployer.rollback("app", 1)
        await p.settle()
        await p.deployer.shutdown()
        assert await get(p.ingress, "/app/") == (404, b'{"status_code": 404, "detail": "no project named \'app\'"}')

        # A new deployer over the same data dir (a restart) serves the rolled-back version
        # without building it again.
        builds = len(runtime.builds)
        again = Pipeline(tmp_path / "data", runtime)
        await again.deployer.restore()
        assert await get(again.ingress, "/app/") == (200, b"one")
        assert len(runtime.builds) == builds

        await again.deployer.delete("app")
        assert await get(again.ingress, "/app/") == (404, b'{"status_code": 404, "detail": "no project named \'app\'"}')
        assert not (again.store.projects_dir / "app").exists()
        assert "app" not in again.deployer.projects

    asyncio.run(scenario())
