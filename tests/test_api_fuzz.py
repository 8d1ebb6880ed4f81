"""No request, however malformed, gets a 500: schemathesis fuzzes every operation of the
daemon's own OpenAPI document, as the admin and anonymously."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.parametrize("admin", [True, False], ids=["admin", "anonymous"])
def test_no_server_errors(daemon, tmp_path, admin):
    # A real attested project, so that name-taking operations also see a known name.
    assert daemon.deploy_files("fuzz-target", {"index.html": "x"}).status_code in (201,)
    with daemon.client() as c:
        c.post("/_api/projects/fuzz-target/promote")
    auth = ["-H", f"Authorization: Bearer {daemon.token}"] if admin else []
    run = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{daemon.url}/_api/schema/openapi.json", *auth,
         "--checks", "not_a_server_error", "--max-examples", "40", "--seed", "20261125",
         # Both stream until the client leaves: logs with follow=1, a deploy's output always.
         "--exclude-path", "/_api/projects/{name}/logs", "--exclude-path", "/_api/projects/{name}/output"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and " 0 passed" not in run.stdout
