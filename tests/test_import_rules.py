"""The import rules that keep core's concerns apart (issue 13), each held by a test.

Every import is read from the source with `ast`, function-level ones and
`importlib.import_module("...")` included, so a hidden import cannot slip past:

* plugins (`plugins/**`, `tests/thirdparty/**`) import only `tee_daemon.plugin` from
  core; they may import each other (`tee_daemon_plugins.*`, relative imports);
* `core/trust/` imports nothing from `web/`, `run/`, `state/`, `cli/`, `proxy/` (of the
  kernel, only its leaf `errors`);
* `core/cli/verify.py` imports only `tee_daemon.trust.*` from core, and what it pulls in
  transitively stays inside `trust/` (plus `kernel.errors`, a leaf of exception types):
  the verifier must not share code with what it checks beyond those primitives;
* `core/kernel/` imports nothing from `web/`, `state/`, `run/`, `cli/`, `proxy/`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
PLUGIN_API = "tee_daemon.plugin"


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in `path`, at any depth.

    `package` is the dotted package the file belongs to, to resolve relative imports.
    `from X import a` yields X and X.a (a may be a submodule: `from tee_daemon import
    state` imports the package `tee_daemon.state`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and dynamic_import(node):
            found.append((node.lineno, node.args[0].value))
    return found


def dynamic_import(call: ast.Call) -> bool:
    """`importlib.import_module("x")`, `import_module("x")` or `__import__("x")`."""
    name = getattr(call.func, "attr", None) or getattr(call.func, "id", None)
    return (
        name in ("import_module", "__import__")
        and bool(call.args)
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    )


def package_of(path: Path, root: Path, top: str) -> str:
    """The dotted package of a file under `root`, which is installed as `top`."""
    parts = list(path.relative_to(root).parent.parts)
    return ".".join([top, *parts]) if parts else top


def core_imports(path: Path) -> list[tuple[int, str]]:
    return imports(path, package_of(path, CORE, "tee_daemon"))


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def is_core(module: str) -> bool:
    return within(module, "tee_daemon")


def violations(files, allowed, resolve=core_imports) -> list[str]:
    """Imports of core modules in `files` that `allowed(module)` refuses."""
    bad = []
    for path in files:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        refused: list[tuple[int, str]] = []
        for line, module in resolve(path):
            if not is_core(module) or allowed(module):
                continue
            # One line per refused import: `from X import a` is not reported again as X.a.
            if not any(line == seen and within(module, parent) for seen, parent in refused):
                refused.append((line, module))
                bad.append(f"{shown}:{line} imports {module}")
    return bad


def sources(folder: Path) -> list[Path]:
    # build/ holds stale copies a pip install leaves behind; they are not the source.
    return sorted(p for p in folder.rglob("*.py") if "build" not in p.relative_to(folder).parts)


# -- plugins ------------------------------------------------------------------------


def plugin_allowed(module: str) -> bool:
    # `from tee_daemon.plugin import X` yields tee_daemon.plugin.X as well.
    return within(module, PLUGIN_API) or module == "tee_daemon"


def plugin_imports(path: Path) -> list[tuple[int, str]]:
    if path.is_relative_to(ROOT / "plugins"):
        return imports(path, package_of(path, ROOT / "plugins", "tee_daemon_plugins"))
    return imports(path, "thirdparty")  # relative imports there never reach core


def plugin_files(name: str) -> list[Path]:
    return sources(ROOT / "plugins" / name) if name else sources(ROOT / "tests" / "thirdparty")


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The rules below are only as good as the walk: it must see every kind of import."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import tee_daemon.web.app\n"
        "def later():\n"
        "    from tee_daemon.run import process\n"
        "    from .. import state\n"
        "    importlib.import_module('tee_daemon.cli.client')\n"
    )
    found = {m for _, m in imports(sample, "tee_daemon.trust")}
    assert {"tee_daemon.web.app", "tee_daemon.run.process", "tee_daemon.state", "tee_daemon.cli.client"} <= found
    assert violations([sample], lambda m: within(m, "tee_daemon.trust"), lambda p: imports(p, "tee_daemon.trust"))


def test_thirdparty_plugins_import_only_the_plugin_api():
    assert violations(plugin_files(""), plugin_allowed, plugin_imports) == []


PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if p.is_dir() and p.name != "__pycache__")
# Built-ins still on core internals: each owner removes the mark when the plugin passes
# (strict: the test fails once the plugin is clean, so the mark cannot outlive the work).
PENDING: dict[str, str] = {}  # e.g. {"runtime_x": "engineer X: reason"}


@pytest.mark.parametrize(
    "plugin",
    [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=PENDING[p])) if p in PENDING else p for p in PLUGINS],
)
def test_builtin_plugin_imports_only_the_plugin_api(plugin):
    assert violations(plugin_files(plugin), plugin_allowed, plugin_imports) == []


def test_plugins_top_level_modules_import_only_the_plugin_api():
    """Shared helpers next to the plugins (e.g. plugins/toolchain.py) follow the rule too."""
    files = sorted((ROOT / "plugins").glob("*.py"))
    assert violations(files, plugin_allowed, plugin_imports) == []


# -- core ---------------------------------------------------------------------------


def trust_allowed(module: str) -> bool:
    """trust/ and what the verifier pulls in: trust itself, and the kernel's leaf of
    exception types (a tree too deep to hash is the source's fault, a `SourceError`)."""
    return within(module, "tee_daemon.trust") or within(module, "tee_daemon.kernel.errors")


def test_trust_imports_nothing_from_web_run_state_cli_proxy():
    files = sources(CORE / "trust")
    assert files
    allowed = trust_allowed
    assert violations(files, allowed) == []


def test_kernel_imports_nothing_from_web_state_run_cli_proxy():
    files = sources(CORE / "kernel")
    assert files
    assert violations(files, lambda m: within(m, "tee_daemon.kernel")) == []


def test_verifier_imports_only_trust_primitives():
    verifier = CORE / "cli" / "verify.py"
    assert violations([verifier], lambda m: within(m, "tee_daemon.trust")) == []


def module_file(module: str) -> Path | None:
    """The source file of a core module, or None for a name that is not a module."""
    base = CORE.joinpath(*module.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_verifier_pulls_in_nothing_beyond_trust_transitively():
    """What verify.py imports, and what that imports, stays inside trust/ (and the
    kernel's leaf of exception types): no path from the verifier into the daemon's code."""
    allowed = trust_allowed
    seen: set[Path] = set()
    todo = [CORE / "cli" / "verify.py"]
    bad = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for line, module in core_imports(path):
            if not is_core(module) or module_file(module) is None:
                continue  # not core, or a name imported from a module
            if path != CORE / "cli" / "verify.py" and not allowed(module):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            # Importing a.b.c runs a/__init__ and a/b/__init__ too.
            parts = module.split(".")
            todo += [f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i])))]
    assert len(seen) > 3  # it did walk into trust/
    assert bad == []
