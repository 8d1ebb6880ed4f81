"""TDX quote verification with dcap-qvl (SPEC section 8).

Offline when the caller passes collateral (and a `now`): that is how tests and
`tee-daemon verify --collateral F --now T` check a quote reproducibly. Without collateral
it is fetched from a PCCS the way dcap-qvl does (Phala's PCCS by default), which needs the
network and says so clearly when it is not there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field

import dcap_qvl

REPORT_DATA_OFFSET = 568  # TDX v4: 48-byte header + TD report fields before report_data
REPORT_DATA_SIZE = 64
# SWHardeningNeeded: the platform TCB is current; Intel advises software mitigations,
# listed in advisory_ids. Anything else (OutOfDate, Revoked, ...) is not accepted.
ACCEPTED_STATUSES = frozenset({"UpToDate", "SWHardeningNeeded"})


@dataclass(frozen=True)
class QuoteCheck:
    ok: bool
    status: str  # dcap-qvl's TCB status, or ParseError / CollateralUnavailable / Invalid
    detail: str
    report_data: bytes  # from the parsed quote body; b"" when it does not parse
    advisory_ids: tuple[str, ...] = field(default=())


def quote_report_data(quote: bytes) -> bytes:
    """The TD report's report_data, via dcap-qvl's parser (ValueError if not a quote)."""
    report = dcap_qvl.parse_quote(quote).report
    data = getattr(report, "report_data", None)
    if not isinstance(data, bytes) or len(data) != REPORT_DATA_SIZE:
        raise ValueError("the quote carries no 64-byte report_data")
    return data


def _fetch_collateral(quote: bytes, pccs_url: str) -> dcap_qvl.QuoteCollateralV3:
    coro_fn = lambda: dcap_qvl.get_collateral(pccs_url, quote)  # noqa: E731
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    # Called from inside an event loop (the daemon): run the fetch on its own loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn())).result()


def verify_quote(
    quote: bytes,
    collateral_json: str | None = None,
    now: int | None = None,
    *,
    pccs_url: str | None = None,
    accepted: frozenset[str] = ACCEPTED_STATUSES,
) -> QuoteCheck:
    try:
        rd = quote_report_data(quote)
    except Exception as e:  # dcap-qvl raises ValueError; be robust to anything it throws
        return QuoteCheck(False, "ParseError", f"not a parsable TDX/SGX quote: {e}", b"")

    if collateral_json is not None:
        try:
            collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_json)
        except Exception as e:
            return QuoteCheck(False, "CollateralUnavailable", f"collateral is not valid: {e}", rd)
    else:
        url = pccs_url or dcap_qvl.PHALA_PCCS_URL
        try:
            collateral = _fetch_collateral(quote, url)
        except Exception as e:
            return QuoteCheck(
                False,
                "CollateralUnavailable",
                f"could not fetch collateral from {url} ({e}); "
                "verify offline with a collateral file (--collateral FILE --now EPOCH)",
                rd,
            )

    when = int(time.time()) if now is None else int(now)
    try:
        report = dcap_qvl.verify(quote, collateral, when)
    except Exception as e:
        # Signature chain, CRL, expiry or QE identity failures all land here.
        return QuoteCheck(False, "Invalid", f"quote verification failed at {when}: {e}", rd)
    advisories = tuple(report.advisory_ids)
    status = str(report.status)
    ok = status in accepted
    detail = f"TCB status {status}" + (f", advisories {', '.join(advisories)}" if advisories else "")
    if not ok:
        detail += f"; accepted statuses are {', '.join(sorted(accepted))}"
    return QuoteCheck(ok, status, detail, rd, advisories)
