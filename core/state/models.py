"""The records that cross boundaries: deploy requests, versions, projects.

Stored records are msgspec Structs encoded as JSON under the data dir; the public
manifest is computed from them and never includes secret values.
"""

from __future__ import annotations

import re
import time

import msgspec

from tee_daemon.trust.canonical import canonical_json, sha256_hex
from tee_daemon.kernel.errors import UserError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ENV_ENTRIES = 256
MAX_ENV_VALUE = 64 * 1024


class DeployRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an author asks for (JSON body, or the multipart `manifest` part)."""

    name: str
    source: str | None = None
    ref: str | None = None
    runtime: str | None = None
    entry: str | None = None
    env: dict[str, str] | None = None
    secrets: dict[str, str] | None = None
    # Ordinary apps (SPEC 11): the command runtime's command; the image runtime's image
    # (with a digest) and the port it listens on.
    command: str | None = None
    image: str | None = None
    port: int | None = None
    # Accepted only so that asking for "attested" gets a clear refusal, not a 400
    # about an unknown field: only promote makes a project attested.
    mode: str | None = None


class Version(msgspec.Struct, frozen=True, kw_only=True):
    """One immutable deployed version of a project."""

    version: int
    source: str
    ref: str | None
    commit: str | None
    runtime: str
    entry: str | None
    env: dict[str, str]
    secrets: dict[str, str]
    tree_sha1: str
    tree_sha256: str
    created_at: float
    # The env the API asked for, kept apart so a redeploy can re-merge project.json.
    api_env: dict[str, str] = {}
    # The git URL as given, when it carries credentials (user:token@): private like a
    # secret, used only to fetch again. `source` is the same URL without them.
    fetch_url: str | None = None
    # SPEC 11: what runs when the tree does not say it alone (None for other runtimes).
    command: str | None = None
    image: str | None = None
    port: int | None = None
    # What the build installed and ran it with (SPEC 12), from the runtime's BuildReport.
    # Versions stored before these fields existed read as unknown and not pinned.
    toolchain: dict[str, str] = {}
    lock_sha256: str | None = None
    deps_tree_sha256: str | None = None
    pinned: bool = False

    @property
    def secret_names(self) -> list[str]:
        return sorted(self.secrets)

    def attested_fields(self, name: str) -> dict:
        """Exactly the fields that decide what runs (SPEC section 5)."""
        return {
            "name": name,
            "runtime": self.runtime,
            "entry": self.entry,
            "env": self.env,
            "secret_names": self.secret_names,
            "source": self.source,
            "ref": self.ref,
            "commit": self.commit,
            "tree_sha1": self.tree_sha1,
            "tree_sha256": self.tree_sha256,
            **self.run_fields(),  # command, image, port (SPEC 11)
            # What runs beyond the tree (SPEC 12).
            "toolchain": self.toolchain,
            "lock_sha256": self.lock_sha256,
            "deps_tree_sha256": self.deps_tree_sha256,
            "pinned": self.pinned,
        }

    def run_fields(self) -> dict:
        """`command`, `image` and `port` (SPEC 11/12): they decide what runs, so they are
        attested; null for the runtimes that do not use them."""
        return {"command": self.command, "image": self.image, "port": self.port}

    def manifest_sha256(self, name: str) -> str:
        return sha256_hex(canonical_json(self.attested_fields(name)))


class Project(msgspec.Struct, frozen=True, kw_only=True):
    """A project and its kept versions; `current` is the one that serves."""

    name: str
    mode: str = "dev"
    current: int
    versions: list[Version]
    created_at: float
    promoted_at: float | None = None
    last_changed_at: float | None = None

    def version(self, number: int) -> Version | None:
        return next((v for v in self.versions if v.version == number), None)

    @property
    def live(self) -> Version:
        found = self.version(self.current)
        assert found is not None, "a stored project always references a kept version"
        return found

    @property
    def next_version(self) -> int:
        return max(v.version for v in self.versions) + 1

    def public_manifest(self) -> dict:
        live = self.live
        manifest = live.attested_fields(self.name)
        manifest.update(
            version=live.version,
            mode=self.mode,
            promoted_at=_iso(self.promoted_at),
            last_changed_at=_iso(self.last_changed_at or live.created_at),
            manifest_sha256=live.manifest_sha256(self.name),
        )
        return manifest


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(
            "invalid project name: use 1 to 63 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return name


def check_env(env: dict[str, str] | None, what: str) -> dict[str, str]:
    """Environment names must be portable identifiers and values plain strings."""
    env = env or {}
    if len(env) > MAX_ENV_ENTRIES:
        raise UserError(f"too many {what} entries (at most {MAX_ENV_ENTRIES})")
    for key, value in env.items():
        if not ENV_NAME_RE.fullmatch(key):
            raise UserError(f"invalid {what} name {key!r}: use letters, digits and '_'")
        if not isinstance(value, str) or "\x00" in value or len(value) > MAX_ENV_VALUE:
            # Never echo the value: it may be a secret.
            raise UserError(f"invalid {what} value for {key!r}")
    return dict(env)


IMAGE_DIGEST_RE = re.compile(r"^(?:[a-z0-9][a-z0-9._/:-]{0,254}@)?sha256:[0-9a-f]{64}$")
MAX_COMMAND = 4096


def check_command(command: str | None, what: str = "command") -> str | None:
    if command is None:
        return None
    if not isinstance(command, str) or not command.strip():
        raise UserError(f"'{what}' must be a non-empty string (the command line that starts the app)")
    if len(command) > MAX_COMMAND or "\x00" in command or "\n" in command:
        raise UserError(f"'{what}' must be one line of at most {MAX_COMMAND} characters")
    return command.strip()


def check_image(image: str | None) -> str | None:
    """A prebuilt image is named by its digest, the identity that is attested: a registry
    digest `ref@sha256:<64 hex>` or the engine's image id `sha256:<64 hex>`."""
    if image is None:
        return None
    if not isinstance(image, str) or not IMAGE_DIGEST_RE.fullmatch(image):
        raise UserError(
            f"'image' must carry its digest: '<ref>@sha256:<64 hex digits>' or an image id "
            f"'sha256:<64 hex digits>' (a tag such as {str(image)[:80]!r} can change; the digest is what is attested)"
        )
    return image


def check_port(port: int | None) -> int | None:
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UserError("'port' must be an integer from 1 to 65535 (the port the image listens on)")
    return port


def check_entry(entry: str | None) -> str | None:
    if entry is None:
        return None
    parts = entry.split("/")
    if (
        not entry
        or entry.startswith("/")
        or "\x00" in entry
        or any(p in ("", ".", "..", ".git") for p in parts)
        or len(entry) > 512
    ):
        raise UserError(f"invalid entry {entry!r}: a relative path inside the project")
    return entry
