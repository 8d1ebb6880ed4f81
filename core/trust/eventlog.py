"""dstack's event log, read by a verifier: RTMR3 replay, event digests, app identity (SPEC 8).

A TDX quote signs RTMR3 but not what went into it. dstack's guest agent extends RTMR3 with
one digest per runtime event (app-id, compose-hash, instance-id, ...) and hands out the
log of those events with every quote. A counterparty ties the quote to the software stack
by (1) replaying the log's IMR-3 digests into a register and comparing it with the quote's
RTMR3, and (2) recomputing each digest from the event's name and payload, so the payloads
(the compose hash above all) are what the hardware measured.

The rules, as dstack defines them (cc-eventlog `runtime_events.rs`/`tdx.rs`; dstack-sdk's
`replay_rtmr`):

- replay: mr = 48 zero bytes; for each event of the register in log order,
  mr = SHA-384(mr || digest), a digest shorter than 48 bytes zero-padded on the right;
- runtime events have event_type 0x08000001 and, in the log format dstack has shipped
  (V1, no "version" field), digest = SHA-384(le32(event_type) || ":" || name || ":" ||
  payload). A newer format (V2, "version": 2) hashes a canonical JSON of the event;
  dstack's sources show two spellings of that JSON while it settles, and both bind the
  name and payload, so either is accepted.

This module is written independently of core/trust/simulator.py on purpose: the verifier must
not share code with the thing it checks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import dcap_qvl

RUNTIME_EVENT_TYPE = 0x08000001
RTMR_SIZE = 48
IDENTITY_EVENTS = ("app-id", "compose-hash", "instance-id")


@dataclass(frozen=True)
class Event:
    imr: int
    event_type: int
    digest: bytes
    name: str
    payload: bytes
    version: int  # 1 unless the log says otherwise


def parse_event_log(raw: str | list[Any]) -> list[Event]:
    """The guest agent's event log (a JSON string, or the list it decodes to).

    ValueError on anything that is not a list of events with hex digests and payloads:
    a verifier must not guess what a malformed entry meant.
    """
    items = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ValueError("the event log is not a JSON list")
    events = []
    for i, e in enumerate(items):
        try:
            version = e.get("version", 1)
            events.append(Event(
                imr=int(e["imr"]), event_type=int(e["event_type"]),
                digest=bytes.fromhex(e.get("digest") or ""), name=str(e.get("event", "")),
                payload=bytes.fromhex(e.get("event_payload") or ""),
                version=version if isinstance(version, int) else -1,
            ))  # fmt: skip
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"event {i} is malformed: {exc}") from None
    return events


def _jcs(value: dict[str, Any]) -> bytes:
    # RFC 8785 for a flat object of ASCII keys, strings and small integers is exactly this.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def expected_digests(event: Event) -> list[bytes]:
    """The digests dstack's rules allow for this event; empty if it is not recomputable."""
    if event.event_type != RUNTIME_EVENT_TYPE:
        return []  # firmware/boot events: their preimage is not in the log
    if event.version == 1:
        pre = RUNTIME_EVENT_TYPE.to_bytes(4, "little") + b":" + event.name.encode() + b":" + event.payload
        return [hashlib.sha384(pre).digest()]
    if event.version == 2:
        hexpay = event.payload.hex()
        forms = (
            {"event": event.name, "event_type": RUNTIME_EVENT_TYPE, "payload": hexpay, "version": 2},
            {"name": event.name, "type": RUNTIME_EVENT_TYPE, "payload": hexpay},
        )
        return [hashlib.sha384(_jcs(f)).digest() for f in forms]
    return []


def digest_mismatches(events: list[Event], imr: int = 3) -> list[str]:
    """One line per event of `imr` whose digest is not what its name and payload give."""
    bad = []
    for i, e in enumerate(events):
        if e.imr != imr:
            continue
        allowed = expected_digests(e)
        if not allowed:
            bad.append(f"#{i} {e.name!r}: event_type {e.event_type:#x} v{e.version} is not recomputable")
        elif e.digest not in allowed:
            bad.append(f"#{i} {e.name!r}: digest {e.digest.hex()[:16]}... != recomputed {allowed[0].hex()[:16]}...")
    return bad


def replay(events: list[Event], imr: int = 3) -> bytes:
    """The register value `events` extend `imr` to, from 48 zero bytes."""
    mr = bytes(RTMR_SIZE)
    for e in events:
        if e.imr == imr:
            mr = hashlib.sha384(mr + e.digest.ljust(RTMR_SIZE, b"\0")).digest()
    return mr


def quote_rtmr3(quote: bytes) -> bytes:
    """RTMR3 of a TDX quote's TD report, via dcap-qvl's parser (ValueError if none)."""
    value = getattr(dcap_qvl.parse_quote(quote).report, "rt_mr3", None)
    if not isinstance(value, bytes) or len(value) != RTMR_SIZE:
        raise ValueError("the quote carries no 48-byte RTMR3 (not a TDX quote?)")
    return value


def identity(events: list[Event], imr: int = 3) -> dict[str, list[str]]:
    """app-id, compose-hash, instance-id: every payload (hex) each name has in `imr`.

    A list, so a caller sees a name logged twice: which one "the" app is would be ambiguous.
    """
    found: dict[str, list[str]] = {name: [] for name in IDENTITY_EVENTS}
    for e in events:
        if e.imr == imr and e.event_type == RUNTIME_EVENT_TYPE and e.name in found:
            found[e.name].append(e.payload.hex())
    return found
