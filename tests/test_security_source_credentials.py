"""A git URL may carry credentials (`https://user:token@host/repo.git`, the usual way to
deploy a private repository). They let the daemon fetch, and a redeploy fetch again, but
they are secrets: no public answer, log leaf or page may show them."""

from __future__ import annotations

import pytest

from gitserver import make_repo, serve_git

SECRET = "s3cret-token-4242"


@pytest.fixture(scope="module")
def git_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    with serve_git(root) as base:
        yield root, base


def test_git_credentials_never_reach_public_answers(daemon, git_server, name):
    root, base = git_server
    make_repo(root, f"{name}.git", {"index.html": "one"})
    url = base.replace("http://", f"http://deployer:{SECRET}@") + f"/{name}.git"
    r = daemon.deploy_git(name, url, ref="main")
    assert r.status_code == 201, r.text
    assert SECRET not in r.text
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/promote").status_code == 200
        make_repo(root, f"{name}.git", {"index.html": "two"})
        redeployed = c.post(f"/_api/projects/{name}/redeploy")  # still fetches with them
        assert redeployed.status_code == 200 and redeployed.json()["changed"] is True, redeployed.text
        assert SECRET not in redeployed.text
        assert SECRET not in c.get("/_api/projects").text
    assert daemon.get(f"/{name}/").text == "two"
    public = [
        daemon.get(f"/_api/projects/{name}"),
        daemon.get(f"/_api/projects/{name}/audit"),
        daemon.get(f"/_api/verification/{name}"),
        daemon.get("/_api/log/entries"),
        daemon.get("/", headers={"Accept": "application/json"}),
        daemon.get("/", headers={"Accept": "text/html"}),
    ]
    for answer in public:
        assert answer.status_code == 200, answer.text
        assert SECRET not in answer.text, answer.url
    manifest = public[0].json()
    assert manifest["source"] == f"{base}/{name}.git"
