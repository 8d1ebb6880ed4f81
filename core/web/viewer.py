"""The human pages: the project viewer at `/` and the verification page.

Both are server-rendered HTML with every user-supplied value escaped, styled and
scripted only by assets the daemon serves itself (`/_api/assets/...`; a CVM may have no
internet), under a Content-Security-Policy that allows nothing else. The verification
page is a shell: its script fetches the project's verification bundle and runs every
check a browser can (core/web/verify.js).
"""

from __future__ import annotations

import hashlib
import html
import re
import time
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from litestar.params import FromPath
from litestar import Request, Response, get

from tee_daemon import __version__

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The daemon's pages share their origin with the projects under path routing: no project
# page may frame them (frame-ancestors, X-Frame-Options) or keep a handle on a window it
# opened to them (Cross-Origin-Opener-Policy puts them in a browsing context group of
# their own, so `window.open` from a project page gets a closed window back).
FRAMING_HEADERS = {
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    **FRAMING_HEADERS,
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Vary": "Accept",
}
_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".html": "text/html"}
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(?:css|js|svg|html)$")
_HEX_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def _load_assets() -> dict[str, tuple[bytes, str]]:
    found = {}
    for entry in resources.files("tee_daemon.web").iterdir():
        if _ASSET_NAME.fullmatch(entry.name) and entry.is_file():
            data = entry.read_bytes()
            found[entry.name] = (data, hashlib.sha256(data).hexdigest()[:12])
    return found


ASSETS = _load_assets()


def asset_url(name: str) -> str:
    """The asset's URL with a content hash, so it can be cached forever."""
    return f"/_api/assets/{name}?v={ASSETS[name][1]}"


@get("/_api/assets/{file:str}", sync_to_thread=False, include_in_schema=False)
def asset(file: FromPath[str]) -> Response:
    found = ASSETS.get(file)
    if found is None:
        from tee_daemon.kernel.errors import NotFound

        raise NotFound(f"no asset named {file!r}")
    suffix = "." + file.rsplit(".", 1)[1]
    return Response(
        found[0],
        media_type=_TYPES[suffix],  # Litestar adds "; charset=utf-8" to text/* itself
        headers={
            "Cache-Control": "public, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
            "Access-Control-Allow-Origin": "*",
        },
    )


ROUTES = [asset]


def html_response(body: str, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    # media_type without a charset: Litestar appends "; charset=utf-8" to text/* itself.
    return Response(
        body, media_type="text/html", status_code=status_code, headers={**SECURITY_HEADERS, **(headers or {})}
    )


def wants_html(request: Request) -> bool:
    """A browser navigation: HTML asked for explicitly and JSON not preferred."""
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept


# -- shared pieces ---------------------------------------------------------------------


def e(value: Any) -> str:
    """Escape for HTML text and (double-quoted) attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def _layout(
    title: str,
    body: str,
    *,
    scripts: tuple[str, ...] = (),
    styles: tuple[str, ...] = (),
    main_attrs: str = "",
    footer: str = "Every value on this page comes from the daemon's public API; check it with <code>tee-daemon verify</code>.",
) -> str:
    """A page of the daemon's; `footer` is trusted markup (never a user value)."""
    script_tags = "".join(f'<script src="{asset_url(s)}" defer></script>' for s in scripts)
    script_tags += "".join(f'<link rel="stylesheet" href="{asset_url(s)}">' for s in styles)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{e(title)}</title>
<link rel="icon" href="{asset_url('logo.svg')}" type="image/svg+xml">
<link rel="stylesheet" href="{asset_url('style.css')}">
{script_tags}
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top"><div class="wrap">
  <a class="brand" href="/"><img src="{asset_url('logo.svg')}" alt="" width="28" height="28">tee-daemon</a>
  <nav class="top-links" aria-label="Daemon">
    <a href="/">Projects</a>
    <a href="/_api/log/checkpoint">Log checkpoint</a>
    <a href="/_api/substrate">Substrate</a>
    <a href="/_api/schema">API</a>
    <a href="/_admin/">Admin</a>
  </nav>
</div></header>
<main id="main" class="wrap"{main_attrs}>
{body}
</main>
<footer class="bottom"><div class="wrap">
  <span>tee-daemon {e(__version__)}</span>
  <span>{footer}</span>
</div></footer>
</body>
</html>
"""


def tee_banner(tee: str) -> str:
    if tee == "tdx":
        return (
            '<div class="banner ok" role="status"><span class="icon" aria-hidden="true">&#x2714;</span><div>'
            "<strong>Intel TDX confidential VM</strong>"
            "<p>Quotes on this daemon come from TDX hardware. Verify them rather than trusting this page.</p>"
            "</div></div>"
        )
    if tee == "simulated":
        return (
            '<div class="banner warn" role="alert" id="tee-banner"><span class="icon" aria-hidden="true">&#x26A0;</span><div>'
            "<strong>Simulated TEE: not real hardware</strong>"
            "<p>This daemon runs without a TDX guest agent. Its quotes come from a built-in simulator and "
            "prove nothing about the machine: use it for development only.</p>"
            "</div></div>"
        )
    return (
        '<div class="banner bad" role="alert" id="tee-banner"><span class="icon" aria-hidden="true">&#x2716;</span><div>'
        f"<strong>No TEE attestation (mode: {e(tee)})</strong>"
        "<p>This daemon cannot produce hardware quotes: nothing it shows is attested by a TEE.</p>"
        "</div></div>"
    )


def source_link(source: str | None, commit: str | None) -> str | None:
    """The browsable tree at `commit` for GitHub-like https URLs, else None."""
    if not source or not commit or not _HEX_COMMIT.fullmatch(commit):
        return None
    try:
        parts = urlsplit(source)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or parts.port not in (None, 443):
        return None
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2 or any(s in (".", "..") for s in segments):
        return None
    if segments[-1].endswith(".git"):
        segments[-1] = segments[-1][:-4]
    base = f"https://{host}/" + "/".join(segments)
    if host in ("github.com", "www.github.com"):
        return f"{base}/tree/{commit}" if len(segments) == 2 else None
    if host == "gitlab.com" or host.startswith("gitlab."):
        return f"{base}/-/tree/{commit}"
    if host in ("codeberg.org", "gitea.com") or host.startswith(("gitea.", "forgejo.")):
        return f"{base}/src/commit/{commit}" if len(segments) == 2 else None
    if host == "bitbucket.org":
        return f"{base}/src/{commit}" if len(segments) == 2 else None
    return None


def _time(iso: str | None) -> str:
    if not iso:
        return '<span class="none">never</span>'
    try:
        shown = time.strftime("%Y-%m-%d %H:%M UTC", time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        shown = iso
    return f'<time datetime="{e(iso)}">{e(shown)}</time>'


# -- error pages -----------------------------------------------------------------------


def error_page(status: int, detail: str) -> str:
    """A refusal for a browser's navigation: the same words as the JSON answer, escaped."""
    body = f"""<h1>{e(status)}</h1>
<p class="lead" id="detail">{e(detail)}</p>
<p><a href="/">&larr; All projects</a></p>"""
    return _layout(f"{status}: tee-daemon", body)


# -- the viewer ------------------------------------------------------------------------


def _card(p: dict[str, Any]) -> str:
    name = p["name"]
    commit = p.get("commit")
    link = source_link(p.get("source"), commit)
    if commit:
        short = e(commit[:12])
        commit_html = (
            f'<a class="mono" href="{e(link)}" title="{e(commit)}" rel="noopener noreferrer">{short}</a>'
            if link
            else f'<code title="{e(commit)}">{short}</code>'
        )
    else:
        commit_html = '<span class="none">uploaded files (no commit)</span>'
    source = p.get("source")
    source_html = (
        '<span class="none">tarball upload</span>'
        if source in (None, "tarball")
        else f'<code>{e(source)}</code>' + (f' @ <code>{e(p["ref"])}</code>' if p.get("ref") else "")
    )
    env = p.get("env") or {}
    env_html = (
        '<ul class="env">'
        + "".join(f'<li><span class="k">{e(k)}=</span>{e(v)}</li>' for k, v in sorted(env.items()))
        + "</ul>"
        if env
        else '<span class="none">none</span>'
    )
    secrets = p.get("secret_names") or []
    secrets_html = (
        " ".join(f"<code>{e(s)}</code>" for s in secrets) + ' <span class="none">(values hidden)</span>'
        if secrets
        else '<span class="none">none</span>'
    )
    source_button = (
        f'<a class="button" href="{e(link)}" rel="noopener noreferrer">Source at {e(commit[:7])}</a>' if link else ""
    )
    toolchain = p.get("toolchain") or {}
    toolchain_html = (
        " ".join(f"<code>{e(k)} {e(v)}</code>" for k, v in sorted(toolchain.items()))
        if toolchain
        else '<span class="none">not recorded</span>'
    )
    lock = p.get("lock_sha256")
    lock_html = f' lockfile <code class="hash" title="SHA-256 of the lockfile">{e(lock[:16])}</code>' if lock else ""
    deps_html = (
        f'<span class="badge pinned">pinned</span>{lock_html}'
        if p.get("pinned")
        else f'<span class="badge unpinned">NOT pinned</span>{lock_html}'
        ' <span class="none">(what it installs may change between deploys)</span>'
    )
    verify_href = f"/_api/verification/{e(name)}"
    app_href = e(p.get("href") or f"/{name}/")
    return f"""<li class="card" data-project="{e(name)}">
  <div class="card-head">
    <h2><a href="{app_href}">{e(name)}</a></h2>
    <div class="badges"><span class="badge attested">attested</span><span class="badge">{e(p.get("runtime"))}</span><span class="badge">v{e(p.get("version"))}</span></div>
  </div>
  <dl class="facts">
    <dt>Commit</dt><dd>{commit_html}</dd>
    <dt>Tree</dt><dd><code class="hash" title="git tree id (SHA-1); SHA-256: {e(p.get("tree_sha256"))}">{e(p.get("tree_sha1"))}</code></dd>
    <dt>Source</dt><dd>{source_html}</dd>
    <dt>Promoted</dt><dd>{_time(p.get("promoted_at"))}</dd>
    <dt>Last change</dt><dd>{_time(p.get("last_changed_at"))}</dd>
    <dt>Env</dt><dd>{env_html}</dd>
    <dt>Secrets</dt><dd>{secrets_html}</dd>
    <dt>Toolchain</dt><dd>{toolchain_html}</dd>
    <dt>Dependencies</dt><dd data-pinned="{'true' if p.get('pinned') else 'false'}">{deps_html}</dd>
  </dl>
  <div class="actions">
    <a class="button primary" href="{app_href}">Open app</a>
    <a class="button" href="{verify_href}">Verify</a>
    {source_button}
  </div>
</li>"""


def viewer_page(daemon) -> str:
    projects = sorted(
        (p for p in daemon.deployer.projects.values() if p.mode == "attested"), key=lambda p: p.name
    )
    origins = daemon.origins  # the project's own origin with a base domain
    manifests = [{**p.public_manifest(), "href": origins.project_href(p.name)} for p in projects]
    if manifests:
        count = f"{len(manifests)} attested project{'s' if len(manifests) != 1 else ''}"
        listing = f'<ul class="projects" aria-label="Attested projects">{"".join(_card(m) for m in manifests)}</ul>'
    else:
        count = "No attested projects yet"
        listing = """<div class="empty">
  <p><strong>Nothing is attested on this daemon yet.</strong> Deploy a folder, then promote it:</p>
  <pre>tee-daemon deploy ./my-site --name my-site
tee-daemon promote my-site</pre>
  <p>From then on every change to it is recorded in the public transparency log and listed here.</p>
</div>"""
    body = f"""{tee_banner(daemon.tee_mode)}
<h1>Attested projects</h1>
<p class="lead">{e(count)}. For each, this daemon publishes the exact source tree it runs, an
append-only log of every change since promotion, and a TEE quote binding both. Open
<em>Verify</em> to check them in your browser.</p>
{listing}"""
    return _layout("tee-daemon: attested projects", body)


# -- the verification page -------------------------------------------------------------


def verification_page(daemon, name: str) -> str:
    """The shell of the verification page; verify.js fetches the bundle and checks it."""
    body = f"""{tee_banner(daemon.tee_mode)}
<p><a href="/">&larr; All projects</a></p>
<h1>Verify <span class="mono">{e(name)}</span></h1>
<p class="lead">Your browser fetches this project's manifest, quote and transparency-log proofs
with a fresh random nonce and checks them itself: nothing below is taken on the daemon's word
except where marked.</p>
<div id="verdict" class="verdict pending" role="status" aria-live="polite">
  <span class="big" aria-hidden="true">&#x231B;</span>
  <div><h2>Checking&hellip;</h2><p>This needs JavaScript; without it, use <code>tee-daemon verify</code> below.</p></div>
</div>
<section aria-labelledby="checks-h"><h2 id="checks-h">Checks run in your browser</h2>
<ol id="checks" class="checks"></ol></section>
<section aria-labelledby="quote-h"><h2 id="quote-h">Check the quote signature</h2>
<div class="panel">
<p>A browser cannot check the TDX quote's signature chain and TCB status (that needs Intel's
collateral). Run the command-line verifier, which checks that and everything above:</p>
<div class="copy-row"><pre class="cmd" id="verify-cmd">tee-daemon verify {e(name)}</pre>
<button class="button" type="button" id="copy-cmd">Copy</button></div>
<p>Add <code>--source DIR_OR_GIT_URL</code> to recompute the tree hash from the source yourself,
<code>--deps</code> (with a source folder) to reinstall its lockfile and compare the installed tree,
and <code>--compose FILE</code> to check the daemon's own app-compose against a release you trust.</p>
</div></section>
<section aria-labelledby="deps-h"><h2 id="deps-h">Dependencies: pinned or not</h2>
<div class="panel" id="deps-explained">
<p>The manifest names the exact toolchain (runtime and installer versions, the daemon's own)
and, when the project has one, the SHA-256 of its lockfile and the id of the dependency tree
it installed; the quote and the log cover them. A <strong>pinned</strong> project was installed
from a lockfile with integrity hashes (<code>npm ci</code>, <code>deno --frozen</code>,
<code>pip --require-hashes</code>): anyone can reinstall that lockfile and get the same tree.</p>
<p>An <strong>unpinned</strong> project resolved its dependencies at deploy time. For you as a
counterparty that means the attested source does not decide what runs: a redeploy of the very
same tree can pull other package versions, and nobody can recompute the installed tree from
the evidence. The tree id still records what was installed, but not why; treat such a project as
trusting whatever the package registry served that day. <code>tee-daemon verify</code> fails
for it unless given <code>--allow-unpinned</code>.</p>
</div></section>
<div class="cols">
<section aria-labelledby="manifest-h"><h2 id="manifest-h">Manifest</h2><div class="panel" id="manifest"><p class="none">Loading&hellip;</p></div></section>
<section aria-labelledby="quotef-h"><h2 id="quotef-h">Quote</h2><div class="panel" id="quote"><p class="none">Loading&hellip;</p></div></section>
</div>
<section aria-labelledby="log-h"><h2 id="log-h">Transparency log</h2>
<div class="panel" id="log"><p class="none">Loading&hellip;</p></div></section>
<p><a class="button" id="download" href="/_api/verification/{e(name)}">Download the bundle (JSON)</a></p>"""
    return _layout(
        f"Verify {name}: tee-daemon",
        body,
        scripts=("verify.js",),
        main_attrs=f' data-project="{e(name)}" data-bundle="/_api/verification/{e(name)}"',
    )
