"""Request and response shapes of each operation in `/_api/schema`, from msgspec structs.

The deploy and rollback handlers read their bodies themselves (JSON or multipart, with
the SPEC's own error messages), so Litestar cannot see what they accept, and most
handlers answer with computed dicts. `documented(...)` gives a handler an OpenAPI
operation that names its request body, its answer and its refusals by the structs of
`web/shapes.py`; `COMPONENTS` holds those structs' JSON Schemas (msgspec builds them).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.spec import Example, Operation, OpenAPIMediaType, OpenAPIResponse, RequestBody

from tee_daemon.state.models import DeployRequest
from tee_daemon.web import shapes

REF = "#/components/schemas/{name}"
_DOCUMENTED: tuple[type, ...] = (
    DeployRequest,
    shapes.RollbackRequest,
    shapes.ErrorBody,
    shapes.Health,
    shapes.ProjectInfo,
    shapes.ProjectList,
    shapes.Deleted,
    shapes.Versions,
    shapes.Substrate,
    shapes.Audit,
    shapes.Attestation,
    shapes.Verification,
    shapes.Consistency,
    shapes.LogEntries,
)
_, COMPONENTS = msgspec.json.schema_components(_DOCUMENTED, ref_template=REF)


def ref(kind: type) -> dict[str, str]:
    return {"$ref": REF.format(name=kind.__name__)}


def _json(kind: type | None, examples: dict[str, Any] | None = None, text: str | None = None) -> dict[str, OpenAPIMediaType]:
    if text is not None:
        return {text: OpenAPIMediaType(schema={"type": "string"})}  # type: ignore[arg-type]
    media = OpenAPIMediaType(
        schema=ref(kind),  # type: ignore[arg-type]  (a plain JSON Schema: rendered as is)
        examples={key: Example(value=value) for key, value in (examples or {}).items()} or None,
    )
    return {"application/json": media}


def documented(
    *,
    answer: type | None = None,
    status: int = 200,
    body: type | None = None,
    body_examples: dict[str, Any] | None = None,
    answer_examples: dict[str, Any] | None = None,
    multipart: bool = False,
    body_required: bool = True,
    text: str | None = None,
    refusals: dict[int, str] | None = None,
    query: dict[str, tuple[str, str]] | None = None,
) -> type[Operation]:
    """An Operation class (Litestar's `operation_class=`) for one handler.

    `answer`: the struct of a successful answer (`text`: a media type of a plain-text
    answer instead); `body`: the struct of the JSON request body (`multipart`: also as
    a `manifest` part beside a `files` tarball; `body_required=False`: may be empty);
    `refusals`: status → when it is given; `query`: parameters the handler reads from
    the query string itself, name → (JSON type, what it means).
    """

    class Documented(Operation):
        def __init__(self, **fields: Any) -> None:
            super().__init__(**fields)
            responses: dict[str, OpenAPIResponse] = {
                str(status): OpenAPIResponse(description="OK", content=_json(answer, answer_examples, text))
            }
            for code, when in sorted((refusals or {}).items()):
                responses[str(code)] = OpenAPIResponse(description=when, content=_json(shapes.ErrorBody))
            self.responses = responses  # type: ignore[assignment]
            if query:
                extra = [
                    {"name": key, "in": "query", "required": False, "description": what, "schema": {"type": kind}}
                    for key, (kind, what) in query.items()
                ]
                self.parameters = [*(self.parameters or []), *extra]  # type: ignore[list-item]
            if body is not None:
                content = _json(body, body_examples)
                if multipart:
                    content["multipart/form-data"] = OpenAPIMediaType(
                        schema={  # type: ignore[arg-type]
                            "type": "object",
                            "required": ["manifest", "files"],
                            "properties": {
                                "manifest": {**ref(body), "description": "the JSON deploy request"},
                                "files": {"type": "string", "format": "binary", "description": "a tar or tar.gz"},
                            },
                        }
                    )
                self.request_body = RequestBody(content=content, required=body_required)

    return Documented


# Refusals most admin operations share.
ADMIN_REFUSALS = {401: "the admin token is missing or wrong"}
NAMED_REFUSALS = {**ADMIN_REFUSALS, 404: "no project of that name"}

DEPLOY_EXAMPLES = {
    "git": {"name": "hello", "source": "https://github.com/example/hello.git", "ref": "main"},
    "with-env": {
        "name": "api",
        "source": "https://github.com/example/api.git",
        "runtime": "python",
        "entry": "app.py",
        "env": {"LOG_LEVEL": "info"},
        "secrets": {"DB_PASSWORD": "only its name is ever shown"},
    },
    "tarball (multipart manifest part)": {"name": "site", "runtime": "static"},
}
# Hashes are placeholders (<...>): made-up hex would read as key material to a scan.
# No null values: the OpenAPI renderer drops them from examples.
DEPLOYED_EXAMPLE = {
    "hello": {
        "name": "hello",
        "runtime": "node",
        "entry": "server.js",
        "env": {},
        "secret_names": [],
        "toolchain": {"node": "22.11.0", "npm": "10.9.0", "tee-daemon": "0.1.0"},
        "lock_sha256": "<SHA-256 of package-lock.json, 64 hex digits>",
        "pinned": True,
        "source": "https://github.com/example/hello.git",
        "ref": "main",
        "commit": "<the 40 hex digits of the commit>",
        "tree_sha1": "<git tree id, 40 hex digits>",
        "tree_sha256": "<SHA-256 tree hash, 64 hex digits>",
        "version": 1,
        "mode": "attested",
        "promoted_at": "2026-01-01T12:00:00Z",
        "last_changed_at": "2026-01-02T09:30:00Z",
        "manifest_sha256": "<SHA-256 of the canonical manifest, 64 hex digits>",
        "url": "http://127.0.0.1:8080/hello/",
        "verification_url": "http://127.0.0.1:8080/_api/verification/hello",
    }
}
