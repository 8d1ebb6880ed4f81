"""Which host a request is for, and the URLs the daemon gives out (SPEC section 10).

Every request's `Host` (or, from a trusted proxy, its `X-Forwarded-Host`) is one of:

- the daemon's own host: its listen address, `localhost`, loopback addresses, the host
  of `TEE_DAEMON_PUBLIC_URL`, the base domain itself and `TEE_DAEMON_ALLOWED_HOSTS`.
  The API, the viewer and (in path mode) `/<name>/...` are served there;
- with a base domain `D`, a project's host `<name>.D`: everything on it, `/` and
  `/_api/...` included, is that project's; the daemon serves nothing of its own there;
- anything else: refused with 421, so a page whose name was rebound to the daemon's
  address (DNS rebinding) cannot drive it.

URLs in answers never come from the request: they are built from
`TEE_DAEMON_PUBLIC_URL`, else from the listen address.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from tee_daemon.state.models import NAME_RE
from tee_daemon.settings import Settings

DAEMON = "daemon"
PROJECT = "project"
REFUSED = "refused"
OTHER = "other"  # a name under the base domain that is not a project's (x.y.D)

_WILDCARD = {"0.0.0.0", "::", ""}
_CACHE_MAX = 4096


def split_host(value: str) -> tuple[str, int | None] | None:
    """`host[:port]` → (lower-case host without a trailing dot, port); None if malformed."""
    value = value.strip()
    if not value:
        return None
    port_text = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif ":" in value:
        host = value  # a bare IPv6 address
    else:
        host = value
    port = None
    if port_text is not None:
        if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            return None
        port = int(port_text)
    host = host.lower().rstrip(".")
    if not host or any(c in host for c in " /\\@?#%\t"):
        return None
    return host, port


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class Origins:
    """The host policy and URL building of one daemon, from its settings."""

    def __init__(self, settings: Settings) -> None:
        self.base_domain = settings.base_domain
        self.trusted_proxies = settings.trusted_proxies
        listen = settings.host.strip("[]").lower()
        self.listen_wildcard = listen in _WILDCARD
        if settings.public_url:
            parts = urlsplit(settings.public_url)
            self.scheme = parts.scheme
            netloc = parts.netloc
            self.public_host = (parts.hostname or "").lower()
            self.public_port: int | None = parts.port
        else:
            self.scheme = "http"
            shown = "localhost" if self.listen_wildcard else listen
            netloc = f"[{shown}]:{settings.port}" if ":" in shown else f"{shown}:{settings.port}"
            self.public_host = shown
            self.public_port = settings.port
        self.base = f"{self.scheme}://{netloc}"
        # Hosts (any port) that are the daemon's; entries given with a port match it only.
        self.names: set[str] = {"localhost", "127.0.0.1", "::1", self.public_host}
        if not self.listen_wildcard:
            self.names.add(listen)
        self.with_port: set[tuple[str, int]] = set()
        self.suffixes: list[str] = []  # ".example.org" from "*.example.org" / ".example.org"
        if self.base_domain:
            self.names.add(self.base_domain)
        for entry in settings.allowed_hosts:
            entry = entry.strip().lower()
            if entry.startswith("*."):
                self.suffixes.append(entry[1:])
                continue
            if entry.startswith("."):
                self.suffixes.append(entry)
                continue
            parsed = split_host(entry)
            if parsed is None:
                continue
            host, port = parsed
            if port is None:
                self.names.add(host)
            else:
                self.with_port.add((host, port))
        self._cache: dict[bytes, tuple[str, str | None]] = {}

    # -- URLs ------------------------------------------------------------------------

    def project_url(self, name: str) -> str:
        """Where a project is served, as every answer gives it."""
        if not self.base_domain:
            return f"{self.base}/{name}/"
        port = f":{self.public_port}" if self.public_port is not None else ""
        return f"{self.scheme}://{name}.{self.base_domain}{port}/"

    def project_href(self, name: str) -> str:
        """A link to the project from the daemon's own pages (relative in path mode)."""
        return self.project_url(name) if self.base_domain else f"/{name}/"

    def daemon_url(self, path: str = "/") -> str:
        return self.base + path

    # -- requests ----------------------------------------------------------------------

    def request_host(self, scope: dict) -> bytes | None:
        """The Host the client asked for: X-Forwarded-Host from a trusted proxy, else Host."""
        host = forwarded = None
        for key, value in scope.get("headers") or ():
            if key == b"host":
                host = value
            elif key == b"x-forwarded-host" and forwarded is None:
                forwarded = value
        if forwarded is not None and self.trusted_proxies:
            client = scope.get("client")
            if client and client[0] in self.trusted_proxies:
                return forwarded.split(b",", 1)[0].strip()
        return host

    def classify(self, raw: bytes | None) -> tuple[str, str | None]:
        """(DAEMON | PROJECT | OTHER | REFUSED, the project's name for PROJECT)."""
        if raw is None:
            return DAEMON, None  # HTTP/1.0 without Host: no browser sends that
        found = self._cache.get(raw)
        if found is None:
            found = self._classify(raw.decode("latin-1"))
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[raw] = found
        return found

    def _classify(self, value: str) -> tuple[str, str | None]:
        parsed = split_host(value)
        if parsed is None:
            return REFUSED, None
        host, port = parsed
        if host in self.names or (port is not None and (host, port) in self.with_port):
            return DAEMON, None
        if self.base_domain and host.endswith("." + self.base_domain):
            label = host[: -len(self.base_domain) - 1]
            if NAME_RE.fullmatch(label):
                return PROJECT, label
            return OTHER, None
        if any(host.endswith(suffix) for suffix in self.suffixes):
            return DAEMON, None
        address = _ip(host)
        if address is not None and (address.is_loopback or self.listen_wildcard):
            # An address can never be a rebound name: the page would be on that address.
            return DAEMON, None
        return REFUSED, None

    def refusal(self, raw: bytes | None) -> str:
        shown = (raw or b"").decode("latin-1", "replace")[:200]
        return (
            f"this daemon does not serve the host {shown!r}; it answers for {self.base} "
            "(add other names to TEE_DAEMON_ALLOWED_HOSTS, or set TEE_DAEMON_PUBLIC_URL)"
        )
