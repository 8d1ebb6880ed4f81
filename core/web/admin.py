"""The operator's side: the admin dashboard at `/_admin/`, the kept versions of a
project, and the live output of a deploy in progress.

The dashboard page is a shell that holds nothing secret and no project data: the
operator pastes the admin token once (admin.js keeps it in the tab's sessionStorage,
never in a URL) and the script calls the admin API with `Authorization: Bearer`. It is
served under the viewer's security headers (CSP without inline script or style, no
framing) and admin.js builds every value into the page as text, never as markup.
"""

from __future__ import annotations

from typing import Any

from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar import Response, get
from litestar.response import Stream

from tee_daemon.kernel.errors import NotFound, UserError
from tee_daemon.run import logs
from tee_daemon.state.models import NAME_RE, _iso
from tee_daemon.web import viewer
from tee_daemon.web import shapes
from tee_daemon.daemon import Daemon
from tee_daemon.web.api import ADMIN
from tee_daemon.web.openapi import NAMED_REFUSALS, ADMIN_REFUSALS, documented

OUTPUT_POLL = 0.2  # seconds between looks at the log files while following
# What a deploy writes: its build steps (npm, pip, docker build) and then the new
# version's own stdout/stderr as it starts.
OUTPUT_FILES = ("build.log", "app.log")


# -- the dashboard page ------------------------------------------------------------------


@get("/_admin/", sync_to_thread=False, include_in_schema=False)
def admin_page(daemon: NamedDependency[Daemon]) -> Response:
    """The dashboard's shell (at `/_admin` too: Litestar ignores a trailing slash);
    admin.js fills it in once the operator gives the token."""
    return viewer.html_response(dashboard_html(daemon.tee_mode))


def dashboard_html(tee: str) -> str:
    body = f"""{viewer.tee_banner(tee)}
<h1>Admin dashboard</h1>
<section id="login" class="panel" aria-labelledby="login-h">
  <h2 id="login-h">Admin token</h2>
  <p>Paste the daemon's admin token (<code>&lt;data-dir&gt;/admin-token</code>). It stays in this
  tab only (sessionStorage) and is sent as an <code>Authorization</code> header, never in a URL.</p>
  <form id="login-form" class="row">
    <label for="token">Token</label>
    <input id="token" type="password" autocomplete="off" spellcheck="false" required>
    <button class="button primary" type="submit">Sign in</button>
  </form>
  <p id="login-error" class="error" role="alert" hidden></p>
</section>
<div id="app" hidden>
  <p class="row"><span id="who" class="none">Signed in for this tab.</span>
    <button class="button" type="button" id="refresh">Refresh</button>
    <button class="button" type="button" id="logout">Forget the token</button></p>
  <p id="status" class="notice" role="status" aria-live="polite"></p>
  <section aria-labelledby="projects-h">
    <h2 id="projects-h">Projects</h2>
    <div class="scroll"><table id="projects" class="grid">
      <thead><tr><th>Name</th><th>Mode</th><th>State</th><th>Version</th><th>Runtime</th>
      <th>Tree</th><th>Requests</th><th>Errors</th><th>Actions</th></tr></thead>
      <tbody></tbody>
    </table></div>
    <p id="empty" class="none" hidden>No projects yet: deploy one below.</p>
  </section>
  <section id="detail" class="panel" aria-labelledby="detail-h" hidden>
    <h2 id="detail-h">Project <span id="detail-name" class="mono"></span></h2>
    <dl id="detail-facts" class="facts"></dl>
    <h3>Kept versions</h3>
    <table id="versions" class="grid">
      <thead><tr><th>Version</th><th>Created</th><th>Runtime</th><th>Tree</th><th>Commit</th><th>Serving</th><th></th></tr></thead>
      <tbody></tbody>
    </table>
    <h3>Log <button class="button" type="button" id="follow">Follow live</button></h3>
    <pre id="log" class="log" tabindex="0"></pre>
  </section>
  <section id="deploy" class="panel" aria-labelledby="deploy-h">
    <h2 id="deploy-h">Deploy</h2>
    <form id="deploy-form">
      <p class="row"><label for="deploy-name">Name</label>
        <input id="deploy-name" pattern="[a-z0-9][a-z0-9\\-]{{0,62}}" spellcheck="false"
          placeholder="default: the folder's or file's name"></p>
      <p class="row"><label for="deploy-folder">Folder</label><input id="deploy-folder" type="file" webkitdirectory multiple></p>
      <p class="row"><label for="deploy-tarball">or tarball</label><input id="deploy-tarball" type="file" accept=".tar,.tgz,.tar.gz,application/gzip,application/x-tar"></p>
      <p class="row"><button class="button primary" type="submit">Deploy</button>
        <progress id="deploy-progress" max="100" value="0" hidden></progress>
        <span id="deploy-state"></span></p>
    </form>
    <pre id="deploy-output" class="log" hidden></pre>
  </section>
</div>
<dialog id="confirm" aria-labelledby="confirm-h">
  <h2 id="confirm-h"></h2>
  <p id="confirm-text"></p>
  <p class="row"><button class="button" type="button" id="confirm-cancel">Cancel</button>
    <button class="button danger" type="button" id="confirm-ok">Confirm</button></p>
</dialog>"""
    return viewer._layout(
        "tee-daemon: admin",
        body,
        scripts=("admin.js",),
        styles=("admin.css",),
        footer="Admin view: it shows dev projects and private state; nothing here is public.",
    )


# -- kept versions -----------------------------------------------------------------------


@get(
    "/_api/projects/{name:str}/versions",
    **ADMIN,
    sync_to_thread=False,
    operation_class=documented(answer=shapes.Versions, refusals=NAMED_REFUSALS),
)
def list_versions(daemon: NamedDependency[Daemon], name: FromPath[str]) -> dict[str, Any]:
    """The kept versions, newest first, with what each ran and whether it serves."""
    project = daemon.deployer.projects.get(name)
    if project is None:
        raise NotFound(f"no project named {name!r}")
    return {
        "name": project.name,
        "current": project.current,
        "versions": [
            {
                "version": v.version,
                "serving": v.version == project.current,
                "created_at": _iso(v.created_at),
                "runtime": v.runtime,
                "entry": v.entry,
                "source": v.source,
                "ref": v.ref,
                "commit": v.commit,
                "tree_sha1": v.tree_sha1,
                "tree_sha256": v.tree_sha256,
                "manifest_sha256": v.manifest_sha256(project.name),
            }
            for v in sorted(project.versions, key=lambda v: v.version, reverse=True)
        ],
    }


# -- live output of a deploy -------------------------------------------------------------


@get(
    "/_api/projects/{name:str}/output",
    **ADMIN,
    operation_class=documented(text="text/plain", refusals={**ADMIN_REFUSALS, 400: "not a valid project name"}),
)
async def deploy_output(daemon: NamedDependency[Daemon], name: FromPath[str]) -> Stream:
    """What the project's build steps and runs write from now on, as it is written.

    A client opens this before it sends a deploy and reads until the deploy answers
    (the stream itself never ends): `tee-daemon deploy` and the dashboard show build and
    start output that way. The project need not exist yet (its first deploy makes it).
    """
    if not NAME_RE.fullmatch(name):
        raise UserError(f"invalid project name {name!r}: lowercase letters, digits and '-', at most 63")
    # Not store.logs_dir(): that makes the folder, and a name nobody deploys needs none.
    folder = daemon.store.projects_dir / name / "logs"
    start = {file: logs.size_and_inode(folder / file) for file in OUTPUT_FILES}  # before the answer starts
    return Stream(
        logs.follow_new(folder, start, poll=OUTPUT_POLL),
        media_type="text/plain; charset=utf-8",
        headers={"cache-control": "no-cache", "x-content-type-options": "nosniff"},
    )




ROUTES = [admin_page, list_versions, deploy_output]
