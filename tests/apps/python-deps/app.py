"""Python sample with a dependency from PyPI installed into the project's own venv."""

import sys

import tomli_w


async def handle(method, path, headers, body, env):
    doc = tomli_w.dumps({"a": 1})
    return 200, {"content-type": "text/plain"}, f"{doc.strip()}\n{tomli_w.__file__}\n{sys.prefix}\n"
