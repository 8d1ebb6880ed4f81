"""The HTTP API's reference page at /_api/schema, rendered by the daemon itself.

Litestar's bundled viewers load their scripts from public CDNs, which a confidential VM
may not reach; this page is plain HTML in the daemon's own layout and stylesheet, built
from the OpenAPI document: per operation its method, path, summary, who may call it,
its parameters, its request body (with examples) and its answers, then every shape
(request and answer structs) as a field table. No script; every value is escaped. The
machine-readable document is /_api/schema/openapi.json.
"""

from __future__ import annotations

import html
import json
from typing import Any

from litestar import Request
from litestar.openapi.plugins import OpenAPIRenderPlugin

METHODS = ("get", "post", "put", "patch", "delete")
REF_PREFIX = "#/components/schemas/"


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _anchor(method: str, path: str) -> str:
    return "op-" + method + "-" + "".join(c if c.isalnum() else "-" for c in path).strip("-")


def type_text(schema: dict[str, Any] | None) -> str:
    """A JSON Schema as a short readable type (HTML): `string | null`, `array of X`,
    `object of string`, links to named shapes."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF_PREFIX)
        return f'<a href="#shape-{e(name)}">{e(name)}</a>'
    if "anyOf" in schema:
        return " | ".join(type_text(part) for part in schema["anyOf"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(e(k) for k in kind)
    if kind == "array":
        return "array of " + type_text(schema.get("items"))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "object of " + type_text(schema["additionalProperties"])
    if "enum" in schema:
        return " | ".join(e(json.dumps(v)) for v in schema["enum"])
    text = e(kind or "any")
    if schema.get("format"):
        text += f" ({e(schema['format'])})"
    return text


def _fields(schema: dict[str, Any]) -> str:
    properties = schema.get("properties") or {}
    if not properties:
        return f"<p>{type_text(schema)}</p>"
    required = set(schema.get("required") or ())
    rows = []
    for name, field in properties.items():
        need = "required" if name in required else "optional"
        note = e(field.get("description", ""))
        rows.append(f"<tr><th><code>{e(name)}</code></th><td>{type_text(field)}</td><td>{need}</td><td>{note}</td></tr>")
    return (
        "<table class='kv'><thead><tr><th>field</th><th>type</th><th></th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _media(content: dict[str, Any], components: dict[str, Any]) -> str:
    """A request body: each media type with its fields (a named shape's too) and examples."""
    parts = []
    for media_type, media in content.items():
        schema = media.get("schema") or {}
        named = components.get(str(schema.get("$ref", "")).removeprefix(REF_PREFIX))
        if "properties" in schema:
            shape = _fields(schema)
        elif named is not None:
            shape = f"<p>{type_text(schema)}</p>{_fields(named)}"
        else:
            shape = f"<p>{type_text(schema)}</p>"
        parts.append(f"<p><code>{e(media_type)}</code></p>{shape}")
        for label, example in (media.get("examples") or {}).items():
            value = json.dumps(example.get("value"), indent=2)
            parts.append(f"<p>Example: {e(label)}</p><pre class='cmd'>{e(value)}</pre>")
    return "".join(parts)


def _operation(method: str, path: str, operation: dict[str, Any], components: dict[str, Any]) -> str:
    admin = bool(operation.get("security"))
    access = (
        "<span class='badge'>admin: <code>Authorization: Bearer &lt;token&gt;</code></span>"
        if admin
        else "<span class='badge attested'>public</span>"
    )
    description = (operation.get("description") or operation.get("summary") or "").strip()
    params = operation.get("parameters") or []
    parts = [
        f"<section class='panel' id='{_anchor(method, path)}'>",
        f"<h2><code>{method.upper()}</code> <code>{e(path)}</code></h2>",
        f"<div class='badges'>{access}</div>",
        f"<p>{e(description)}</p>",
    ]
    if params:
        rows = "".join(
            f"<tr><th><code>{e(p.get('name'))}</code></th><td>{e(p.get('in'))}</td>"
            f"<td>{type_text(p.get('schema'))}</td><td>{'required' if p.get('required') else 'optional'}</td></tr>"
            for p in params
        )
        parts.append(f"<h3>Parameters</h3><table class='kv'><tbody>{rows}</tbody></table>")
    body = operation.get("requestBody")
    if body:
        needed = "" if body.get("required") else " (may be empty)"
        parts.append(f"<h3>Request body{needed}</h3>{_media(body.get('content') or {}, components)}")
    parts.append("<h3>Answers</h3>")
    for status, answer in sorted((operation.get("responses") or {}).items()):
        content = answer.get("content") or {}
        shapes = ", ".join(
            f"<code>{e(media_type)}</code> {type_text(media.get('schema'))}" for media_type, media in content.items()
        )
        parts.append(f"<p><strong>{e(status)}</strong> {e(answer.get('description'))}{': ' + shapes if shapes else ''}</p>")
        ok = status.startswith("2")
        for label, example in (next(iter(content.values()), {}).get("examples") or {}).items() if ok else ():
            value = json.dumps(example.get("value"), indent=2)
            parts.append(f"<p>Example: {e(label)}</p><pre class='cmd'>{e(value)}</pre>")
    parts.append("</section>")
    return "".join(parts)


GROUPS = ["daemon", "projects", "attestation"]  # the controllers' tags, in page order


def _group(path: str, operation: dict[str, Any]) -> str:
    """The operation's tag; untagged ones (the dashboard's, `/`) by their path."""
    tags = operation.get("tags") or ()
    if tags:
        return str(tags[0])
    return "projects" if path.startswith("/_api/projects") else "daemon"


def render_page(openapi_schema: dict[str, Any]) -> str:
    from tee_daemon.web.viewer import _layout

    components = openapi_schema.get("components", {}).get("schemas") or {}
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in sorted(openapi_schema.get("paths", {}).items()):
        for method in METHODS:
            operation = item.get(method)
            if operation is not None:
                groups.setdefault(_group(path, operation), []).append((method, path, operation))
    operations = []
    index = []
    for group in sorted(groups, key=lambda g: GROUPS.index(g) if g in GROUPS else len(GROUPS)):
        operations.append(f"<h2 id='group-{e(group)}'>{e(group.capitalize())}</h2>")
        index.append(f"<tr><th colspan='3'>{e(group.capitalize())}</th></tr>")
        for method, path, operation in groups[group]:
            operations.append(_operation(method, path, operation, components))
            who = "admin" if operation.get("security") else "public"
            summary = (operation.get("description") or "").strip().splitlines()
            index.append(
                f"<tr><td><a href='#{_anchor(method, path)}'><code>{method.upper()} {e(path)}</code></a></td>"
                f"<td>{who}</td><td>{e(summary[0] if summary else '')}</td></tr>"
            )
    shapes = "".join(
        f"<section class='panel' id='shape-{e(name)}'><h3>{e(name)}</h3>"
        f"<p>{e(schema.get('description', ''))}</p>{_fields(schema)}</section>"
        for name, schema in sorted(components.items())
    )
    info = openapi_schema.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}: HTTP API"
    body = (
        f"<h1>{e(title)}</h1>"
        "<p>Every operation of the daemon's API: who may call it, what it takes and what it answers. "
        "Admin operations need <code>Authorization: Bearer &lt;token&gt;</code> (the token is in "
        "<code>&lt;data-dir&gt;/admin-token</code>). Every refusal is JSON "
        "<code>{\"status_code\": …, \"detail\": \"what was wrong\"}</code>. The machine-readable "
        "OpenAPI document is <a href='/_api/schema/openapi.json'>/_api/schema/openapi.json</a>.</p>"
        "<table class='kv'><thead><tr><th>operation</th><th>access</th><th>summary</th></tr></thead>"
        f"<tbody>{''.join(index)}</tbody></table>"
        f"{''.join(operations)}<h2 id='shapes'>Shapes</h2>{shapes}"
    )
    return _layout(title, body, footer="Built from the daemon's OpenAPI document.")


class PlainSchemaPage(OpenAPIRenderPlugin):
    def __init__(self, path: str = "/") -> None:
        super().__init__(path=path, favicon="", style="")

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return render_page(openapi_schema).encode()
