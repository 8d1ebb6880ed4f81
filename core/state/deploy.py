"""The deploy path, top to bottom:

    resolve source → unpack → hash → detect → build → start → health → journal
    → commit record → switch traffic → drain and stop the old version

Every step before "commit record" works on new folders only, so a failure anywhere
leaves the previous version serving and the record untouched. Deploys, rollbacks and
deletes of one name are serialized by a per-name lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol

import msgspec

from tee_daemon import __version__
from tee_daemon.state import gitsource, tarball

from tee_daemon.trust import treehash
from tee_daemon.kernel.errors import Conflict, NotFound, UserError
from tee_daemon.state.models import (
    DeployRequest, Project, Version, check_command, check_entry, check_env, check_image, check_name, check_port,
)  # fmt: skip
from tee_daemon.kernel.registry import Registry
from tee_daemon.kernel.routes import Route, RouteTable
from tee_daemon.kernel.contract import BuildContext, Folders, StartContext
from tee_daemon.settings import Settings
from tee_daemon.state.store import Store
from tee_daemon.run.identity import daemon_id_of
from tee_daemon.run.tenancy import Tenancy, Tenant

log = logging.getLogger("tee_daemon.state.deploy")

TARBALL_SOURCE = "tarball"
IMAGE_SOURCE = "image"  # An image runtime deploy without a tree: the image is the source.
IMAGE_DEFAULT_PORT = 8080  # As the dockerfile runtime's $PORT.
PROJECT_JSON_MAX = 64 * 1024
DRAIN_TIMEOUT = 30.0
RESTORE_CONCURRENCY = 8
# Git fetches wait on remote servers for up to the git timeout: they get threads of
# their own, so slow sources never hold the shared pool that unpacks, builds and starts
# other projects (SPEC 9). A per-name lock already serializes one project's deploys.
GIT_FETCH_CONCURRENCY = 16
_GIT_FETCHES = ThreadPoolExecutor(GIT_FETCH_CONCURRENCY, thread_name_prefix="git-fetch")


class ChangeRecorder(Protocol):
    """Where version changes of attested projects are recorded: the transparency log's
    `state.journal.Journal` in the daemon."""

    def check_writable(self) -> None:
        """Raise a UserError when a change could not be recorded."""

    def record(self, action: str, project: Project) -> None: ...


class Deployer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        routes: RouteTable,
        *,
        tenancy: Tenancy,
        journal: ChangeRecorder | None = None,  # None: no project can be attested
    ) -> None:
        """Every part handed in (the daemon's own): nothing is built here on the side."""
        self.settings = settings
        self.tenancy = tenancy
        self.store = store
        self.registry = registry
        self.routes = routes  # the front door's live routes: what each name serves
        self.journal = journal
        self.projects: dict[str, Project] = {}
        self.daemon_id = daemon_id(settings, store)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._retiring: set[asyncio.Task] = set()

    # -- startup and shutdown -----------------------------------------------------

    async def restore(self) -> None:
        """After a (re)start, serve every project's current version without rebuilding."""
        self.projects = self.store.load_all()
        # A few at a time: the daemon listens only once all have started or failed.
        slots = asyncio.Semaphore(RESTORE_CONCURRENCY)

        async def restore_one(project: Project) -> None:
            async with slots:
                try:
                    await self._start_and_switch(project.name, project.live)
                except Exception as exc:  # One broken project must not stop the others.
                    log.error("project %s did not start after restart: %s", project.name, exc)

        await asyncio.gather(*(restore_one(p) for p in self.projects.values()))

    async def shutdown(self) -> None:
        routes = await self.routes.drop_all()
        await asyncio.gather(*(r.instance.detach() for r in routes), return_exceptions=True)
        # Replaced instances still draining: stop them now rather than after the drain.
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    # -- the admin operations -------------------------------------------------------

    async def deploy(self, request: DeployRequest, upload: BinaryIO | None = None) -> Project:
        name = check_name(request.name)
        if request.mode not in (None, "dev"):
            raise UserError("a deploy cannot set mode: only promote makes a project attested")
        env = check_env(request.env, "env")
        secrets = check_env(request.secrets, "secret")
        check_entry(request.entry)
        check_command(request.command)
        check_image(request.image)
        check_port(request.port)
        if request.runtime is not None and request.runtime not in self.registry.runtimes:
            raise UserError(
                f"unknown runtime {request.runtime!r}; available: {', '.join(sorted(self.registry.runtimes))}"
            )
        async with self._locks[name]:
            previous = self.projects.get(name)
            if previous and previous.mode == "attested" and self.journal:
                self.journal.check_writable()
            version_number = previous.next_version if previous else 1
            version = await self._prepare(name, version_number, request, env, secrets, upload)
            return await self._activate(name, version, previous, "deploy")

    async def redeploy(self, name: str) -> tuple[Project, bool]:
        """Fetch the same git ref again; a new version only when something changed."""
        async with self._locks[name]:
            previous = self._get(name)
            live = previous.live
            if live.source == IMAGE_SOURCE:
                raise UserError("redeploy re-fetches a git source; deploy the image again (with its new digest)")
            if live.source == TARBALL_SOURCE:
                raise UserError("redeploy re-fetches a git source; upload a new tarball instead")
            request = DeployRequest(name=name, source=live.fetch_url or live.source, ref=live.ref)
            fetched = await self._prepare(
                name, previous.next_version, request, live.api_env, live.secrets, None, live
            )
            if fetched is None:
                return previous, False
            if previous.mode == "attested" and self.journal:
                self.journal.check_writable()
            return await self._activate(name, fetched, previous, "deploy"), True

    async def rollback(self, name: str, to: int | None = None) -> Project:
        async with self._locks[name]:
            project = self._get(name)
            if to is None:
                older = [v.version for v in project.versions if v.version < project.current]
                if not older:
                    raise UserError(f"project {name!r} has no earlier version to roll back to")
                to = max(older)
            target = project.version(to)
            if target is None:
                kept = ", ".join(str(v.version) for v in project.versions)
                raise NotFound(f"version {to} of {name!r} is not kept (kept: {kept})")
            if to == project.current:
                raise UserError(f"version {to} is already serving")
            if project.mode == "attested" and self.journal:
                self.journal.check_writable()
            return await self._activate(name, target, project, "rollback")

    async def promote(self, name: str) -> Project:
        async with self._locks[name]:
            project = self._get(name)
            if project.mode == "attested":
                raise Conflict(f"project {name!r} is already attested")
            if self.journal is None:
                raise UserError("attestation is not available on this daemon")
            self.journal.check_writable()
            now = time.time()
            promoted = _replace(project, mode="attested", promoted_at=now, last_changed_at=now)
            self.journal.record("promote", promoted)
            self.store.save(promoted)
            self.projects[name] = promoted
            return promoted

    async def delete(self, name: str) -> None:
        async with self._locks[name]:
            project = self._get(name)
            if project.mode == "attested" and self.journal:
                self.journal.check_writable()
                self.journal.record("delete", project)
            route = await self.routes.drop(name)  # every worker has let go of it
            del self.projects[name]
            if route:
                await self._stop(route)
            await asyncio.to_thread(self.tenancy.forget, name)
            await asyncio.to_thread(self.store.delete, name)
            for runtime in sorted({v.runtime for v in project.versions}):
                try:
                    await asyncio.to_thread(self.registry.forget, runtime, name)
                except Exception as exc:  # The delete stands; the leftovers are logged.
                    log.warning("runtime %s could not clean up after %s: %s", runtime, name, exc)

    def _get(self, name: str) -> Project:
        project = self.projects.get(name)
        if project is None:
            raise NotFound(f"no project named {name!r}")
        return project

    # -- the steps ------------------------------------------------------------------

    async def _prepare(
        self,
        name: str,
        number: int,
        request: DeployRequest,
        env: dict[str, str],
        secrets: dict[str, str],
        upload: BinaryIO | None,
        template: Version | None = None,
    ) -> Version | None:
        """Fetch or unpack, hash, detect and build a new version in its own folder.

        With a `template` (a redeploy of that version), None when the fetched commit and
        tree are the same as the template's: nothing is built then.
        """
        scratch = self.store.new_scratch()
        version_dir = self.store.version_dir(name, number)
        try:
            tree = scratch / "tree"
            tree.mkdir()
            pool = _GIT_FETCHES if upload is None else None  # None: asyncio's default pool
            fetching = asyncio.get_running_loop().run_in_executor(pool, self._fetch, request, upload, tree)
            source, ref, commit = await fetching
            ids = await asyncio.to_thread(treehash.tree_ids, tree)
            if template is not None and (commit, ids.sha256) == (template.commit, template.tree_sha256):
                return None
            defaults = _read_project_json(tree)
            runtime = request.runtime or defaults.get("runtime")
            entry = check_entry(request.entry or defaults.get("entry"))
            command = check_command(request.command or defaults.get("command"))
            image, port = request.image, request.port
            if template is not None:  # A redeploy keeps the runtime settings it had.
                runtime, entry = template.runtime, template.entry
                command, image, port = template.command, template.image, template.port
            if runtime is None and (image or command):  # SPEC 11: the field names its runtime.
                runtime = "image" if image else "command"
            if runtime is None:
                detected = self.registry.detect(tree)
                runtime, entry = detected.runtime, entry or detected.entry
            elif runtime not in self.registry.runtimes:
                raise UserError(f"unknown runtime {runtime!r} (from project.json)")
            entry = entry or self.registry.default_entry(runtime)
            if entry is not None and not (tree / entry).is_file():
                raise UserError(f"entry file {entry!r} is not in the project")
            port = _check_run_fields(runtime, command, image, port)
            public_source = gitsource.redact(source)  # URL credentials never go public
            version = Version(
                version=number,
                source=public_source,
                fetch_url=source if public_source != source else None,
                ref=ref,
                commit=commit,
                runtime=runtime,
                entry=entry,
                env={**check_env(defaults.get("env"), "project.json env"), **env},
                api_env=env,
                secrets=secrets,
                tree_sha1=ids.sha1,
                tree_sha256=ids.sha256,
                created_at=time.time(),
                command=command,
                image=image,
                port=port,
            )
            shutil.rmtree(version_dir, ignore_errors=True)  # Left by a crashed attempt.
            version_dir.mkdir(parents=True)
            tree.rename(version_dir / "tree")
            (version_dir / "build").mkdir()
            report = await asyncio.to_thread(self.registry.build, self._build_context(name, version))
            # What the build installed is part of the version, so of its manifest and log
            # entry (SPEC 12); the daemon's own version is one of the tools that run it.
            return msgspec.structs.replace(
                version,
                toolchain={**report.toolchain, "tee-daemon": __version__},
                lock_sha256=report.lock_sha256,
                deps_tree_sha256=report.deps_tree_sha256,
                pinned=report.pinned,
            )
        except BaseException:
            shutil.rmtree(version_dir, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _fetch(
        self, request: DeployRequest, upload: BinaryIO | None, tree: Path
    ) -> tuple[str, str | None, str | None]:
        s = self.settings
        if upload is not None:
            if request.source or request.ref:
                raise UserError("give either a git 'source' or uploaded 'files', not both")
            tarball.extract_tarball(upload, tree, max_bytes=s.max_unpacked_bytes, max_files=s.max_files)
            return TARBALL_SOURCE, None, None
        if not request.source and (request.runtime == "image" or request.image):
            return IMAGE_SOURCE, None, None  # Nothing to fetch: the image is what runs.
        if not request.source:
            raise UserError("'source' (a git URL) is required, or upload a tarball as multipart 'files'")
        commit = gitsource.fetch_git(
            request.source,
            request.ref,
            tree,
            allow_insecure=s.allow_insecure_sources,
            timeout=s.git_timeout,
            max_bytes=s.max_git_bytes,
            max_files=s.max_files,
            max_unpacked_bytes=s.max_unpacked_bytes,
        )
        return request.source, request.ref, commit

    async def _activate(
        self, name: str, version: Version, previous: Project | None, action: str
    ) -> Project:
        """Start `version`, record it, switch traffic to it, retire the old instance."""
        new_route = await self._start(name, version)
        try:
            now = time.time()
            if previous is None:
                project = Project(
                    name=name, current=version.version, versions=[version], created_at=now
                )
            else:
                kept = self._kept_after(previous, version)
                project = _replace(
                    previous, current=version.version, versions=kept, last_changed_at=now
                )
            if project.mode == "attested" and self.journal:
                self.journal.record(action, project)
            self.store.save(project)
        except BaseException:
            await self._stop(new_route)
            if previous is None or previous.version(version.version) is None:
                shutil.rmtree(self.store.version_dir(name, version.version), ignore_errors=True)
            raise
        self.projects[name] = project
        old_route = self.routes.get(name)
        await self.routes.switch(name, new_route)  # once it returns, every worker has it
        if old_route is None:
            self.store.prune_versions(project)
        else:
            task = asyncio.get_running_loop().create_task(self._retire(name, old_route))
            self._retiring.add(task)  # A reference, so the task is not collected mid-way.
            task.add_done_callback(self._retiring.discard)
        return project

    async def _retire(self, name: str, route: Route) -> None:
        """Drain and stop a replaced instance, then drop the versions no longer kept
        (only now: requests still in flight may read the old version's files)."""
        try:
            await self.routes.drained(name, route, DRAIN_TIMEOUT)
        finally:  # Also when cut short by a shutdown.
            await self._stop(route)
        project = self.projects.get(name)
        if project is not None:  # The next deploy may be building already: keep its folder.
            self.store.prune_versions(project, deploying=True)

    async def _start_and_switch(self, name: str, version: Version) -> None:
        await self.routes.switch(name, await self._start(name, version))

    async def _start(self, name: str, version: Version) -> Route:
        ctx = self._start_context(name, version)
        instance = await asyncio.to_thread(self.registry.start, ctx)
        try:
            await instance.ready(self.settings.start_timeout)
            app = self.registry.forward(version.runtime, instance)
        except BaseException:
            await instance.stop()
            raise
        return Route(app, instance, version.runtime, version.version)

    async def _stop(self, route: Route) -> None:
        try:
            await route.instance.stop()
            await asyncio.to_thread(self.registry.stop, route.runtime, route.instance)
        except Exception as exc:
            log.warning("stopping %s v%s failed: %s", route.runtime, route.version, exc)

    # -- contexts for the plugins ---------------------------------------------------

    def _kept_after(self, previous: Project | None, version: Version) -> list[Version]:
        """The versions kept once `version` serves (it included), oldest first."""
        if previous is None:
            return [version]
        kept = [v for v in previous.versions if v.version != version.version] + [version]
        kept.sort(key=lambda v: v.version)
        return _keep_last(kept, version.version, self.settings.versions_kept)

    def _shared_fields(self, name: str, version: Version, tenant: Tenant) -> dict:
        """The fields build and start contexts share: the version itself, and what a
        plugin would otherwise work out from core's disk layout or the environment."""
        vdir = self.store.version_dir(name, version.version)
        # While a deploy builds and starts, self.projects still holds the previous record.
        kept = self._kept_after(self.projects.get(name), version)
        return dict(
            project=name,
            version=version.version,
            runtime=version.runtime,
            entry=version.entry,
            tree=vdir / "tree",
            build_dir=vdir / "build",
            identity=tenant.identity,
            command=version.command,
            image=version.image,
            port=version.port,
            kept_versions=tuple(v.version for v in kept),
            folders=Folders(
                project_dir=self.store.project_dir(name),
                data_dir=tenant.data_dir,
                cache_dir=tenant.cache_dir,
                logs_dir=self.store.logs_dir(name),
            ),
            daemon_id=self.daemon_id,
            backend=self.settings.backend,
        )

    def _build_context(self, name: str, version: Version) -> BuildContext:
        tenant = self.tenancy.tenant(name)
        return BuildContext(
            cache_dir=tenant.cache_dir / version.runtime,  # The project's own, never shared.
            env=dict(version.env),
            allow_lifecycle_scripts=self.settings.allow_lifecycle_scripts,
            log_path=self.store.logs_dir(name) / "build.log",
            build_timeout=self.settings.build_timeout,
            **self._shared_fields(name, version, tenant),
        )

    def _start_context(self, name: str, version: Version) -> StartContext:
        run_dir = self.store.run_dir / f"{name}.{version.version}.{time.monotonic_ns() % 10**8}"
        run_dir.mkdir(mode=0o700, parents=True)
        tenant = self.tenancy.tenant(name)
        return StartContext(
            data_dir=tenant.data_dir,
            run_dir=run_dir,
            log_path=self.store.logs_dir(name) / "app.log",
            env={**version.env, **version.secrets},
            tmp_dir=tenant.tmp_dir,
            **self._shared_fields(name, version, tenant),
        )


def daemon_id(settings: Settings, store: Store) -> str:
    """The id the container executor labels this daemon's resources with."""
    return daemon_id_of(store.projects_dir, settings.docker_id)


def _keep_last(versions: list[Version], current: int, count: int) -> list[Version]:
    """The newest `count` versions, always including the one that serves."""
    newest = versions[-count:]
    if all(v.version != current for v in newest):
        newest = [v for v in versions if v.version == current] + versions[-(count - 1) :]
    return newest


def _replace(project: Project, **changes) -> Project:
    return msgspec.structs.replace(project, **changes)


def _read_project_json(tree: Path) -> dict:
    """`project.json` may supply runtime, entry and env; API fields win over it."""
    path = tree / "project.json"
    if not path.is_file() or path.is_symlink():
        return {}
    if path.stat().st_size > PROJECT_JSON_MAX:
        raise UserError("project.json is larger than 64 KiB")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"project.json is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError("project.json must be a JSON object")
    for key in ("runtime", "entry", "command"):
        if key in data and not isinstance(data[key], str):
            raise UserError(f"project.json: '{key}' must be a string")
    if "env" in data and not (
        isinstance(data["env"], dict) and all(isinstance(v, str) for v in data["env"].values())
    ):
        raise UserError("project.json: 'env' must be an object of strings")
    return {k: data[k] for k in ("runtime", "entry", "env", "command") if k in data}


def _check_run_fields(runtime: str, command: str | None, image: str | None, port: int | None) -> int | None:
    """`command` belongs to the command runtime, `image` and `port` to the image runtime
    (which needs its image); the port the image runtime listens on, else None."""
    if command is not None and runtime != "command":
        raise UserError(f"'command' is for the command runtime, not {runtime!r} (leave 'runtime' out, or set it to 'command')")
    if runtime != "image":
        if image is not None or port is not None:
            raise UserError(f"'image' and 'port' are for the image runtime, not {runtime!r}")
        return None
    if image is None:
        raise UserError("the image runtime needs 'image': '<ref>@sha256:<digest>' or an image id 'sha256:<id>'")
    return port or IMAGE_DEFAULT_PORT
