"""Persistent state under the data dir, written so that a crash at any moment leaves
it consistent.

Layout (all under the data dir)::

    admin-token                         0600, unless TEE_DAEMON_TOKEN is set
    projects/<name>/project.json        the Project record (0600: it holds secrets)
    projects/<name>/versions/<k>/tree   the deployed files of version k (immutable)
    projects/<name>/versions/<k>/build  what the runtime built for version k
    projects/<name>/volume.img          its disk (size-limited), mounted at volume/
    projects/<name>/volume/data         the project's data dir, kept across versions
    projects/<name>/volume/tmp          its /tmp (on the same volume: one limit for both)
    projects/<name>/cache/<runtime>/    its own build caches (dependency installs, DENO_DIR)
    projects/<name>/logs                the project's stdout/stderr
    scratch/                            unpacking and fetching happen here only
    run/                                sockets and pid files, cleared on start

The commit point of every change is one atomic rename of `project.json`: a version
folder exists before the record names it, and is removed only after no record does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec

from tee_daemon.state.models import Project

RECORD = "project.json"


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file so readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.projects_dir = data_dir / "projects"
        self.scratch_dir = data_dir / "scratch"
        self.cache_dir = data_dir / "cache"
        self.run_dir = data_dir / "run"
        for folder in (self.projects_dir, self.scratch_dir, self.cache_dir, self.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        # Called with a project's folder before it is removed (its volume is unmounted).
        self.before_removing: Callable[[Path], None] = lambda folder: None

    # -- paths ------------------------------------------------------------------

    def project_dir(self, name: str) -> Path:
        return self.projects_dir / name

    def version_dir(self, name: str, version: int) -> Path:
        return self.projects_dir / name / "versions" / str(version)

    def data_dir(self, name: str) -> Path:
        path = self.projects_dir / name / "data"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def logs_dir(self, name: str) -> Path:
        path = self.projects_dir / name / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_scratch(self) -> Path:
        path = self.scratch_dir / uuid.uuid4().hex
        path.mkdir(mode=0o700)
        return path

    # -- records ----------------------------------------------------------------

    def load_all(self) -> dict[str, Project]:
        """Read every record and remove what a crash left half-done."""
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.scratch_dir.mkdir(exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        projects: dict[str, Project] = {}
        for folder in sorted(self.projects_dir.iterdir()):
            record = folder / RECORD
            if not record.exists():
                # A first deploy that never committed, or a delete that was cut off.
                self.before_removing(folder)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            project = msgspec.json.decode(record.read_bytes(), type=Project)
            projects[project.name] = project
            self.prune_versions(project)
        return projects

    def save(self, project: Project) -> None:
        atomic_write(self.project_dir(project.name) / RECORD, msgspec.json.encode(project))

    def delete(self, name: str) -> None:
        """Forget a project: removing the record is the commit point."""
        folder = self.project_dir(name)
        (folder / RECORD).unlink(missing_ok=True)
        fsync_dir(folder)
        self.before_removing(folder)
        shutil.rmtree(folder, ignore_errors=True)

    def prune_versions(self, project: Project, *, deploying: bool = False) -> None:
        """Remove version folders the record no longer names (old or never committed).

        `deploying`: a deploy of the project may be building its next version right now
        (after a switch, while the old version drains): folders newer than every kept
        version are left alone then.
        """
        kept = {str(v.version) for v in project.versions}
        newest = max(v.version for v in project.versions)
        versions = self.project_dir(project.name) / "versions"
        if versions.is_dir():
            for folder in versions.iterdir():
                if folder.name in kept:
                    continue
                if deploying and folder.name.isdigit() and int(folder.name) > newest:
                    continue
                shutil.rmtree(folder, ignore_errors=True)
