"""Daemon settings: flags win over environment variables, which win over defaults.

Every setting has a `TEE_DAEMON_*` environment equivalent (SPEC section 2).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec
import platformdirs

APP_NAME = "tee-daemon"
MiB = 2**20


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = msgspec.field(default_factory=default_data_dir)
    backend: str = "process"
    allow_insecure_sources: bool = False
    # Upload and source bounds (SPEC section 4).
    max_upload_bytes: int = 100 * MiB
    max_unpacked_bytes: int = 100 * MiB
    max_files: int = 10_000
    git_timeout: float = 120.0
    max_git_bytes: int = 200 * MiB
    # Request bodies forwarded to projects.
    max_request_body: int = 32 * MiB
    # How long a new version may take to become healthy before the deploy fails.
    start_timeout: float = 30.0
    # Seconds without a request before a process project is stopped (0 = never); the
    # next request starts it again.
    idle_stop: float = 0.0
    # Process projects' network (SPEC section 9): "isolated" (the default: own network
    # namespace, served over a unix socket; no other project, no daemon, no host
    # loopback) or "shared" (opt-in: a loopback port on the host's network).
    project_network: str = "isolated"
    # Outbound connections from isolated projects to the outside: "allow" or "deny".
    project_egress: str = "allow"
    # Per-project limits (SPEC section 9), for runs and builds alike.
    project_memory_mb: int = 512
    project_cpus: float = 1.0
    project_pids: int = 256
    project_disk_mb: int = 1024  # the data dir and /tmp together
    # Seconds a build step (npm, pip, deno caching) may take.
    build_timeout: float = 600.0
    # The operator accepts isolation or limits this machine cannot apply (else the daemon
    # refuses to start); /_api/substrate then names what is not enforced.
    allow_unenforced_isolation: bool = False
    versions_kept: int = 5
    allow_lifecycle_scripts: bool = False
    # Addresses of proxies in front of the daemon (a TLS gateway) to take
    # X-Forwarded-Proto/-Host from; comma-separated in the environment.
    trusted_proxies: frozenset[str] = frozenset()
    # Ingress worker processes serving project traffic beside the one supervisor (which
    # owns deploys, project processes, the log and the TEE); 0: one per core.
    workers: int = 0
    # Set by `serve` only: the private folder of the supervisor's socket and the hub's.
    ingress_dir: Path | None = None
    # Seconds a connection has to send a complete request head (SPEC section 10).
    header_timeout: float = 10.0
    # Origins (SPEC section 10): where clients reach the daemon (URLs in answers are built
    # from it), the domain whose subdomains are the projects' own origins, and more names
    # the daemon answers for (others get 421).
    public_url: str | None = None
    base_domain: str | None = None
    allowed_hosts: frozenset[str] = frozenset()
    token: str | None = msgspec.field(default=None)
    # Containers (the dockerfile runtime, --backend docker): TEE_DAEMON_DOCKER_* override
    # the project limits above for containers only (None: the project setting applies).
    docker_memory: str | None = None  # e.g. "512m"
    docker_cpus: float | None = None
    docker_pids: int | None = None
    docker_runtime: str | None = None  # the OCI runtime (runc, runsc, kata...)
    docker_keep_volumes: bool = False
    docker_read_only: bool = True
    docker_tmpfs_size: str | None = None
    docker_restart_max: int = 10
    docker_build_timeout: float | None = None
    docker_build_memory: str | None = None
    docker_max_context: int = 200 * MiB
    docker_log_max_size: str = "10m"
    docker_id: str | None = None  # this daemon's id on a shared engine
    # TEE_DAEMON_DOCKER_IMAGE_<RUNTIME>: the base image of a process runtime (--backend docker).
    docker_images: dict[str, str] = {}

    @property
    def public_base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


_ENV_FIELDS: dict[str, tuple[str, type]] = {
    "TEE_DAEMON_HOST": ("host", str),
    "TEE_DAEMON_PORT": ("port", int),
    "TEE_DAEMON_DATA_DIR": ("data_dir", Path),
    "TEE_DAEMON_BACKEND": ("backend", str),
    "TEE_DAEMON_ALLOW_INSECURE_SOURCES": ("allow_insecure_sources", bool),
    "TEE_DAEMON_MAX_UPLOAD_BYTES": ("max_upload_bytes", int),
    "TEE_DAEMON_MAX_UNPACKED_BYTES": ("max_unpacked_bytes", int),
    "TEE_DAEMON_MAX_FILES": ("max_files", int),
    "TEE_DAEMON_GIT_TIMEOUT": ("git_timeout", float),
    "TEE_DAEMON_MAX_REQUEST_BODY": ("max_request_body", int),
    "TEE_DAEMON_START_TIMEOUT": ("start_timeout", float),
    "TEE_DAEMON_IDLE_STOP": ("idle_stop", float),
    "TEE_DAEMON_PROJECT_NETWORK": ("project_network", str),
    "TEE_DAEMON_PROJECT_EGRESS": ("project_egress", str),
    "TEE_DAEMON_PROJECT_MEMORY_MB": ("project_memory_mb", int),
    "TEE_DAEMON_PROJECT_CPUS": ("project_cpus", float),
    "TEE_DAEMON_PROJECT_PIDS": ("project_pids", int),
    "TEE_DAEMON_PROJECT_DISK_MB": ("project_disk_mb", int),
    "TEE_DAEMON_BUILD_TIMEOUT": ("build_timeout", float),
    "TEE_DAEMON_ALLOW_UNENFORCED_ISOLATION": ("allow_unenforced_isolation", bool),
    "TEE_DAEMON_ALLOW_LIFECYCLE_SCRIPTS": ("allow_lifecycle_scripts", bool),
    "TEE_DAEMON_TOKEN": ("token", str),
    "TEE_DAEMON_TRUSTED_PROXIES": ("trusted_proxies", frozenset),
    "TEE_DAEMON_HEADER_TIMEOUT": ("header_timeout", float),
    "TEE_DAEMON_WORKERS": ("workers", int),
    "TEE_DAEMON_PUBLIC_URL": ("public_url", str),
    "TEE_DAEMON_BASE_DOMAIN": ("base_domain", str),
    "TEE_DAEMON_ALLOWED_HOSTS": ("allowed_hosts", frozenset),
    "TEE_DAEMON_DOCKER_MEMORY": ("docker_memory", str),
    "TEE_DAEMON_DOCKER_CPUS": ("docker_cpus", float),
    "TEE_DAEMON_DOCKER_PIDS": ("docker_pids", int),
    "TEE_DAEMON_DOCKER_RUNTIME": ("docker_runtime", str),
    "TEE_DAEMON_DOCKER_KEEP_VOLUMES": ("docker_keep_volumes", bool),
    "TEE_DAEMON_DOCKER_READ_ONLY": ("docker_read_only", bool),
    "TEE_DAEMON_DOCKER_TMPFS_SIZE": ("docker_tmpfs_size", str),
    "TEE_DAEMON_DOCKER_RESTART_MAX": ("docker_restart_max", int),
    "TEE_DAEMON_DOCKER_BUILD_TIMEOUT": ("docker_build_timeout", float),
    "TEE_DAEMON_DOCKER_BUILD_MEMORY": ("docker_build_memory", str),
    "TEE_DAEMON_DOCKER_MAX_CONTEXT": ("docker_max_context", int),
    "TEE_DAEMON_DOCKER_LOG_MAX_SIZE": ("docker_log_max_size", str),
    "TEE_DAEMON_DOCKER_ID": ("docker_id", str),
}
DOCKER_IMAGE_PREFIX = "TEE_DAEMON_DOCKER_IMAGE_"


def _parse(kind: type, raw: str) -> object:
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if kind is frozenset:
        return frozenset(part.strip() for part in raw.split(",") if part.strip())
    return kind(raw)


def load_settings(overrides: dict[str, object] | None = None, environ=os.environ) -> Settings:
    """Defaults, then `TEE_DAEMON_*` variables, then explicit (flag) overrides."""
    values: dict[str, object] = {}
    for var, (field, kind) in _ENV_FIELDS.items():
        raw = environ.get(var)
        if raw is not None and raw != "":
            try:
                values[field] = _parse(kind, raw)
            except ValueError as exc:
                raise SystemExit(f"tee-daemon: {var} is not a valid {kind.__name__}: {exc}")
    images = {
        var[len(DOCKER_IMAGE_PREFIX):].lower(): raw.strip()
        for var, raw in environ.items()
        if var.startswith(DOCKER_IMAGE_PREFIX) and raw.strip()
    }
    if images:
        values["docker_images"] = images
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    if "data_dir" in values:
        values["data_dir"] = Path(values["data_dir"]).expanduser().resolve()  # type: ignore[arg-type]
    if values.get("backend", "process") not in {"process", "docker"}:
        raise SystemExit("tee-daemon: --backend must be 'process' or 'docker'")
    if values.get("project_network", "isolated") not in {"shared", "isolated"}:
        raise SystemExit("tee-daemon: TEE_DAEMON_PROJECT_NETWORK must be 'isolated' or 'shared'")
    if values.get("project_egress", "allow") not in {"allow", "deny"}:
        raise SystemExit("tee-daemon: TEE_DAEMON_PROJECT_EGRESS must be 'allow' or 'deny'")
    for field, least in (("project_memory_mb", 16), ("project_pids", 8), ("project_disk_mb", 16)):
        if int(values.get(field, least)) < least:  # type: ignore[call-overload]
            raise SystemExit(f"tee-daemon: TEE_DAEMON_{field.upper()} must be at least {least}")
    if float(values.get("project_cpus", 1.0)) <= 0:  # type: ignore[arg-type]
        raise SystemExit("tee-daemon: TEE_DAEMON_PROJECT_CPUS must be more than 0")
    _check_origins(values)
    if int(values.get("workers", 0)) < 0:  # type: ignore[call-overload]
        raise SystemExit("tee-daemon: --workers / TEE_DAEMON_WORKERS must be 0 (one per core) or more")
    if not values.get("workers"):
        values["workers"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if float(values.get("header_timeout", 10.0)) <= 0:  # type: ignore[arg-type]
        raise SystemExit("tee-daemon: TEE_DAEMON_HEADER_TIMEOUT must be more than 0")
    return Settings(**values)  # type: ignore[arg-type]


_DOMAIN_RE = re.compile(r"^(?=.{1,200}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")


def _check_origins(values: dict[str, object]) -> None:
    """TEE_DAEMON_PUBLIC_URL is `http(s)://host[:port]` (no path); the base domain a DNS name."""
    from urllib.parse import urlsplit

    public = values.get("public_url")
    if public:
        text = str(public).strip().rstrip("/")
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError as exc:
            raise SystemExit(f"tee-daemon: TEE_DAEMON_PUBLIC_URL is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
            raise SystemExit(
                "tee-daemon: TEE_DAEMON_PUBLIC_URL must be http(s)://host[:port] without a path, "
                f"not {str(public)!r}"
            )
        if parts.username or parts.password:
            raise SystemExit("tee-daemon: TEE_DAEMON_PUBLIC_URL must not hold credentials")
        values["public_url"] = f"{parts.scheme}://{parts.netloc.lower()}"
    domain = values.get("base_domain")
    if domain:
        text = str(domain).strip().lower().rstrip(".")
        if text.startswith("*."):
            text = text[2:]
        text = text.lstrip(".")
        if not _DOMAIN_RE.fullmatch(text):
            raise SystemExit(f"tee-daemon: --base-domain / TEE_DAEMON_BASE_DOMAIN is not a DNS name: {str(domain)!r}")
        values["base_domain"] = text
    elif "base_domain" in values:
        values["base_domain"] = None


# -- `serve` hands its settings to the granian worker ------------------------------------
# The worker is another process that builds the app itself (granian's factory): rather
# than parsing flags and environment a second time, it decodes the very Settings that
# `serve` built. The admin token is never written into it (it is in the environment
# already when it was set that way; else the worker reads the token file).

HANDOFF_VAR = "TEE_DAEMON_SETTINGS"


def handoff(settings: Settings) -> dict[str, str]:
    """Environment for the worker: the final settings as JSON, without the token."""
    fields = msgspec.to_builtins(msgspec.structs.replace(settings, token=None), enc_hook=str)
    return {HANDOFF_VAR: msgspec.json.encode(fields).decode()}


def worker_settings(environ=os.environ) -> Settings:
    """The settings `serve` handed over, else (a worker started otherwise) the environment's."""
    raw = environ.get(HANDOFF_VAR)
    if not raw:
        return load_settings(environ=environ)
    settings = msgspec.json.decode(raw, type=Settings, dec_hook=lambda kind, value: kind(value))
    token = environ.get("TEE_DAEMON_TOKEN", "").strip()
    return msgspec.structs.replace(settings, token=token or None)
