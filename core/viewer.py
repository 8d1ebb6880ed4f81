"""The viewer page at `/` (a placeholder until the full viewer lands)."""

from __future__ import annotations

import html


def viewer_page(daemon) -> str:
    projects = [p for p in daemon.deployer.projects.values() if p.mode == "attested"]
    rows = "".join(
        f"<li>{html.escape(p.name)}: {html.escape(p.live.runtime)}, tree {html.escape(p.live.tree_sha1)}</li>"
        for p in sorted(projects, key=lambda p: p.name)
    )
    banner = "<p><strong>TEE: simulated</strong></p>" if daemon.tee_mode == "simulated" else ""
    return f"<!doctype html><title>tee-daemon</title>{banner}<h1>Attested projects</h1><ul>{rows}</ul>"
