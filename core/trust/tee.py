"""The daemon's one door to the TEE: quotes and the checkpoint signing key (SPEC 2, 6, 7).

Everything goes through dstack-sdk's `DstackClient`, whether the other end is the real
dstack guest agent or the built-in simulator, so the simulated path exercises the same
code as production. The client is synchronous; the asyncio daemon calls these methods via
`asyncio.to_thread` (quotes take tens of milliseconds on real hardware).

Security note for callers: whoever can reach the agent socket can derive the same
signing key. Project processes must not inherit DSTACK_SIMULATOR_ENDPOINT nor see the
agent socket.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dstack_sdk import DstackClient

from tee_daemon.trust.quote import quote_report_data
from tee_daemon.trust.simulator import TeeSimulator

log = logging.getLogger(__name__)

# Where dstack-sdk looks for the guest agent, in its order.
AGENT_SOCKETS = (
    "/var/run/dstack.sock", "/run/dstack.sock",
    "/var/run/dstack/dstack.sock", "/run/dstack/dstack.sock",
)
ENV_ENDPOINT = "DSTACK_SIMULATOR_ENDPOINT"
SIGNING_KEY_PATH = "tee-daemon/log-signing"
# Domain separation: the agent's key bytes are a secp256k1 scalar meant for other uses;
# the Ed25519 seed is a labelled hash of them, so the two never share key material.
_SEED_LABEL = b"tee-daemon/ed25519-seed/v1\x00"

Mode = Literal["tdx", "simulated"]
_own_endpoints: set[str] = set()  # DSTACK_SIMULATOR_ENDPOINT values we set ourselves


class Tee:
    def __init__(
        self,
        client: DstackClient,
        mode: Mode,
        endpoint: str,
        simulator: TeeSimulator | None = None,
    ) -> None:
        self.mode: Mode = mode
        self.endpoint = endpoint
        self._client = client
        self._simulator = simulator
        self._lock = threading.Lock()  # one agent request at a time over the shared client
        self._keys: dict[str, tuple[Ed25519PrivateKey, list[str]]] = {}

    def get_quote(self, report_data: bytes) -> tuple[str, str]:
        """(quote hex, event log JSON string) for exactly these 64 bytes of report_data."""
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        with self._lock:
            resp = self._client.get_quote(report_data)
        # Never publish a quote that does not carry what we asked it to vouch for.
        if quote_report_data(bytes.fromhex(resp.quote)) != report_data:
            raise RuntimeError("the TEE returned a quote for different report_data")
        return resp.quote, resp.event_log

    def derive_signing_key(
        self, path: str = SIGNING_KEY_PATH
    ) -> tuple[Ed25519PrivateKey, list[str]]:
        """The Ed25519 key for `path` and dstack's signature chain for the derived key.

        Deterministic: dstack's GetKey derives from the app's KMS root and the path, so the
        same app gets the same key after every restart (and the simulator from its root
        secret). The seed is SHA-256 over a label and the returned key bytes.
        """
        if path not in self._keys:
            with self._lock:
                resp = self._client.get_key(path=path, purpose="checkpoint-signing")
            seed = hashlib.sha256(_SEED_LABEL + resp.decode_key()).digest()
            self._keys[path] = (
                Ed25519PrivateKey.from_private_bytes(seed),
                list(resp.signature_chain),
            )
        return self._keys[path]

    def info(self) -> dict[str, Any]:
        """Public facts about the TEE for /_api/substrate; no keys, no certificates."""
        facts: dict[str, Any] = {
            "tee": self.mode,
            "agent": "built-in simulator" if self._simulator else self.endpoint,
        }
        try:
            with self._lock:
                i = self._client.info()
        except Exception as e:  # an older agent's Info may not fit the SDK's model
            facts["info_error"] = str(e)
            return facts
        tcb = i.tcb_info
        facts.update(
            app_id=i.app_id, instance_id=i.instance_id, app_name=i.app_name,
            compose_hash=i.compose_hash, os_image_hash=i.os_image_hash,
            mr_aggregated=i.mr_aggregated, key_provider_info=i.key_provider_info,
            mrtd=tcb.mrtd, rtmr0=tcb.rtmr0, rtmr1=tcb.rtmr1, rtmr2=tcb.rtmr2, rtmr3=tcb.rtmr3,
            # The app-compose document the daemon runs under (SPEC 12): its SHA-256 is the
            # event log's compose-hash, so a verifier sees which image the quote vouches for.
            app_compose=tcb.app_compose,
        )
        return facts

    def close(self) -> None:
        if self._simulator is not None:
            self._simulator.stop()
            if os.environ.get(ENV_ENDPOINT) == self.endpoint:
                del os.environ[ENV_ENDPOINT]
            _own_endpoints.discard(self.endpoint)
            self._simulator = None


def _reachable(client: DstackClient) -> bool:
    try:
        return bool(client.is_reachable())
    except Exception:
        return False


def connect_tee(data_dir: Path) -> Tee:
    """The dstack guest agent if one is reachable, else the built-in simulator.

    - DSTACK_SIMULATOR_ENDPOINT set by the operator: used as is, mode "simulated" (the
      variable names a simulator; a real agent lives at /var/run/dstack.sock).
    - A reachable agent at dstack-sdk's socket paths: mode "tdx".
    - Otherwise: start TeeSimulator under data_dir, point DSTACK_SIMULATOR_ENDPOINT at it
      and let dstack-sdk find it there like any dstack app would; mode "simulated".
    """
    env = os.environ.get(ENV_ENDPOINT)
    if env and env not in _own_endpoints:
        client = DstackClient(env)
        if not _reachable(client):
            raise RuntimeError(f"{ENV_ENDPOINT}={env} is set but nothing answers there")
        log.warning("using the dstack simulator at %s: quotes are not genuine", env)
        return Tee(client, "simulated", env)
    for path in AGENT_SOCKETS:
        if os.path.exists(path):
            client = DstackClient(path)
            if _reachable(client):
                return Tee(client, "tdx", path)
            log.warning("dstack guest agent socket %s does not answer", path)
    simulator = TeeSimulator(data_dir)
    endpoint = simulator.start()
    os.environ[ENV_ENDPOINT] = endpoint
    _own_endpoints.add(endpoint)
    log.warning("no dstack guest agent: started the TEE simulator at %s", endpoint)
    return Tee(DstackClient(), "simulated", endpoint, simulator)
