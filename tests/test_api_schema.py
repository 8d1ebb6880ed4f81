"""The API's document (/_api/schema, issue 11 item 5) against the real daemon: every
operation names its request and answer shapes, the shapes are what the daemon really
answers (real answers decoded into the documented structs, unknown fields refused), and
the reference page is readable and served like the daemon's other pages."""

from __future__ import annotations

import re

import msgspec

from tee_daemon.web import shapes

SITE = {"index.html": "<h1>schema</h1>"}
SECURITY_HEADERS = (
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "cross-origin-opener-policy",
    "referrer-policy",
)


def _document(daemon) -> dict:
    r = daemon.get("/_api/schema/openapi.json")
    assert r.status_code == 200
    return r.json()


def _operations(document: dict):
    for path, item in document["paths"].items():
        for method in ("get", "post", "put", "patch", "delete"):
            if method in item:
                yield method, path, item[method]


def _refs(value) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            found.add(value["$ref"])
        for inner in value.values():
            found |= _refs(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _refs(inner)
    return found


def test_every_operation_documents_its_answer_and_every_shape_resolves(daemon):
    document = _document(daemon)
    operations = list(_operations(document))
    assert len(operations) >= 15
    for method, path, operation in operations:
        ok = [status for status in operation["responses"] if status.startswith("2")]
        assert ok, (method, path, "no success answer")
        for status in ok:
            content = operation["responses"][status].get("content")
            assert content, (method, path, status, "answer without a shape")
            for media in content.values():
                assert media.get("schema"), (method, path, status)
        if operation.get("security"):
            assert "401" in operation["responses"], (method, path, "admin operation without its 401")
        assert (operation.get("description") or "").strip(), (method, path, "no summary")
    schemas = document["components"]["schemas"]
    for ref in _refs(document["paths"]):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


def test_deploy_and_rollback_document_their_bodies_with_examples(daemon):
    paths = _document(daemon)["paths"]
    deploy = paths["/_api/projects"]["post"]
    content = deploy["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/DeployRequest"}
    assert set(content["multipart/form-data"]["schema"]["required"]) == {"manifest", "files"}
    examples = content["application/json"]["examples"]
    assert examples and all("name" in example["value"] for example in examples.values())
    # The examples are valid deploy requests (the daemon's own struct accepts them).
    from tee_daemon.state.models import DeployRequest

    for example in examples.values():
        msgspec.convert(example["value"], DeployRequest)
    answer = deploy["responses"]["201"]["content"]["application/json"]
    assert answer["schema"] == {"$ref": "#/components/schemas/ProjectInfo"} and answer["examples"]
    for example in answer["examples"].values():
        msgspec.convert(example["value"], shapes.ProjectInfo)
    assert {"400", "401", "413", "415", "422"} <= set(deploy["responses"])
    rollback = paths["/_api/projects/{name}/rollback"]["post"]["requestBody"]
    assert rollback["required"] is False
    assert rollback["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/RollbackRequest"}


def test_real_answers_have_the_documented_shapes(daemon, name):
    """Decode what the daemon answers into the structs the document is built from: a
    field the daemon adds without documenting it fails here (ProjectInfo forbids unknown
    fields), and so does a documented field it does not send."""
    deployed = daemon.deploy_files(name, SITE, runtime="static")
    assert deployed.status_code == 201, deployed.text
    msgspec.convert(deployed.json(), shapes.ProjectInfo)
    with daemon.client() as c:
        msgspec.convert(c.get("/_api/projects").json(), shapes.ProjectList)
        msgspec.convert(c.get(f"/_api/projects/{name}").json(), shapes.ProjectInfo)
        msgspec.convert(c.get(f"/_api/projects/{name}/versions").json(), shapes.Versions)
        redeployed = c.post(f"/_api/projects/{name}/redeploy")
        promoted = c.post(f"/_api/projects/{name}/promote")
        assert promoted.status_code == 200, promoted.text
        msgspec.convert(promoted.json(), shapes.ProjectInfo)
        refused = c.post(f"/_api/projects/{name}/rollback", json={"version": 99})
    assert redeployed.status_code in (200, 400), redeployed.text  # a tarball has no source to fetch again
    msgspec.convert(redeployed.json(), shapes.ProjectInfo if redeployed.status_code == 200 else shapes.ErrorBody)
    assert refused.status_code >= 400
    msgspec.convert(refused.json(), shapes.ErrorBody)
    msgspec.convert(daemon.get("/_api/health").json(), shapes.Health)
    msgspec.convert(daemon.get("/_api/substrate").json(), shapes.Substrate)
    msgspec.convert(daemon.get(f"/_api/projects/{name}/audit").json(), shapes.Audit)
    msgspec.convert(daemon.get(f"/_api/attest/{name}").json(), shapes.Attestation)
    msgspec.convert(daemon.get(f"/_api/verification/{name}").json(), shapes.Verification)
    msgspec.convert(daemon.get("/_api/log/entries").json(), shapes.LogEntries)
    msgspec.convert(daemon.get("/_api/log/consistency", params={"from": 0}).json(), shapes.Consistency)
    msgspec.convert(daemon.get("/_api/projects/no-such-project").json(), shapes.ErrorBody)
    with daemon.client() as c:
        msgspec.convert(c.delete(f"/_api/projects/{name}").json(), shapes.Deleted)


def test_schema_page_is_readable_and_served_like_the_other_pages(daemon):
    document = _document(daemon)
    page = daemon.get("/_api/schema", headers={"accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    for method, path, operation in _operations(document):
        # Each operation has its own section: method, path, access, request and answers.
        anchor = "op-" + method + "-" + re.sub(r"[^0-9A-Za-z]", "-", path).strip("-")
        section = text.split(f"id='{anchor}'", 1)
        assert len(section) == 2, (method, path, "no section")
        body = section[1].split("</section>", 1)[0]
        assert f"<code>{method.upper()}</code>" in body and "Answers" in body
        assert ("admin:" in body) == bool(operation.get("security")), (method, path)
    deploy = text.split("id='op-post-api-projects'", 1)[1].split("</section>", 1)[0]
    assert "Request body" in deploy and "DeployRequest" in deploy and "Example" in deploy
    assert "multipart/form-data" in deploy
    for name in ("DeployRequest", "ProjectInfo", "ErrorBody", "RollbackRequest"):
        assert f"id='shape-{name}'" in text
    # A field table names the fields of a shape, with their types.
    shape = text.split("id='shape-DeployRequest'", 1)[1].split("</section>", 1)[0]
    assert "<code>name</code>" in shape and "<code>secrets</code>" in shape and "object of string" in shape
    # The same security headers as the viewer's page; nothing loaded from elsewhere.
    viewer = daemon.get("/", headers={"accept": "text/html"})
    for header in SECURITY_HEADERS:
        assert page.headers.get(header), header
        assert page.headers[header] == viewer.headers[header], header
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I) and "<script" not in text
