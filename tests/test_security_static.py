"""Static serving with hostile file names: a folder name is echoed in a redirect's
Location, so control characters in it must never reach a header (nor cause a 500)."""

from __future__ import annotations

import httpx


def test_folder_redirect_with_control_characters_is_encoded(daemon, name):
    files = {"index.html": "root", "a\r\nX-Evil: 1/index.html": "crlf", "b\x01c/index.html": "ctl", "d é/index.html": "u"}
    r = daemon.deploy_files(name, files)
    assert r.status_code == 201, r.text
    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        for folder, body in (("a%0D%0AX-Evil:%201", "crlf"), ("b%01c", "ctl"), ("d%20%C3%A9", "u")):
            r = c.get(f"/{name}/{folder}")
            assert r.status_code == 301, (folder, r.status_code, r.text)
            assert "x-evil" not in r.headers
            location = r.headers["location"]
            assert all(0x20 < ord(ch) < 0x7F for ch in location), location
            assert c.get(location).text == body
