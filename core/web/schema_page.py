"""The OpenAPI viewer at /_api/schema, rendered by the daemon itself.

Litestar's bundled viewers load their scripts from public CDNs, which a confidential VM
may not reach; this page lists every operation from the schema with plain HTML and the
daemon's own stylesheet. The machine-readable document is /_api/schema/openapi.json.
"""

from __future__ import annotations

import html
from typing import Any

from litestar import Request
from litestar.openapi.plugins import OpenAPIRenderPlugin

METHODS = ("get", "post", "put", "patch", "delete", "options", "head")


class PlainSchemaPage(OpenAPIRenderPlugin):
    def __init__(self, path: str = "/") -> None:
        super().__init__(path=path, favicon="", style="")

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        from tee_daemon.web.viewer import asset_url

        rows = []
        for path, item in sorted(openapi_schema.get("paths", {}).items()):
            for method in METHODS:
                operation = item.get(method)
                if operation is None:
                    continue
                guarded = "admin" if operation.get("security") else "public"
                text = (operation.get("description") or operation.get("summary") or "").strip()
                summary = text.splitlines()[0] if text else ""
                rows.append(
                    "<tr>"
                    f"<td><code>{method.upper()}</code></td>"
                    f"<td><code>{html.escape(path)}</code></td>"
                    f"<td>{guarded}</td>"
                    f"<td>{html.escape(summary)}</td>"
                    "</tr>"
                )
        info = openapi_schema.get("info", {})
        title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')}")
        return (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{title}: HTTP API</title>"
            f"<link rel='stylesheet' href='{asset_url('style.css')}'></head><body><main class='wrap'>"
            f"<h1>{title}: HTTP API</h1>"
            "<p>The machine-readable OpenAPI document is "
            "<a href='/_api/schema/openapi.json'>/_api/schema/openapi.json</a>. "
            "Admin operations need <code>Authorization: Bearer &lt;token&gt;</code>.</p>"
            "<table><thead><tr><th>method</th><th>path</th><th>access</th><th>summary</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></main></body></html>"
        ).encode()
