"""The hook manual cannot drift from the hooks (in the spirit of datasette's meta-tests).

For every hookspec in `tee_daemon.kernel.hookspecs`:
* its docstring has the manual's sections (Invoked by, Arguments, Returns, Example),
  names each parameter, and for a context parameter every field of the context;
* its example is a valid implementation: pluggy accepts it against the spec;
* docs/PLUGINS.md lists it with its exact signature, and lists no hook that is gone;
* some test in tests/ is named for it (``test_hook_<hook>_...``).
Adding a hook without all of these fails here. And the walk-through's code is the echo
plugin's code, verbatim.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import textwrap
from pathlib import Path

import msgspec
import pluggy
import pytest
import tee_daemon.plugin
from tee_daemon.kernel import contract, hookspecs

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "PLUGINS.md"
ECHO = ROOT / "tests" / "thirdparty" / "tee-runtime-echo" / "tee_runtime_echo" / "__init__.py"
SECTIONS = ("Invoked by:", "Arguments:", "Returns:", "Example::")

HOOKS = sorted(
    name for name, obj in vars(hookspecs).items()
    if callable(obj) and hasattr(obj, f"{hookspecs.PROJECT}_spec")
)  # fmt: skip


def signature_text(name: str) -> str:
    """``name(arg: Type, ...) -> Return`` as the source spells it (annotations are
    strings under ``from __future__ import annotations``)."""
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def doc(name: str) -> str:
    return inspect.getdoc(getattr(hookspecs, name)) or ""


def section(text: str, title: str) -> str:
    """The text of one section: from its title to the next section's title."""
    start = text.index(title) + len(title)
    ends = [text.index(t, start) for t in SECTIONS if t != title and t in text[start:]]
    return text[start : min(ends, default=len(text))]


def test_there_are_hooks_to_check():
    assert {"runtime_build", "runtime_start", "runtime_forward", "runtime_substrate"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_every_section_of_the_manual(hook):
    text = doc(hook)
    missing = [title for title in SECTIONS if title not in text]
    assert not missing, f"{hook}'s docstring lacks {missing}"
    positions = [text.index(title) for title in SECTIONS]
    assert positions == sorted(positions), f"{hook}: sections out of order"
    assert len(section(text, "Invoked by:").split()) >= 8, f"{hook}: say when core invokes it"
    assert len(section(text, "Returns:").split()) >= 3, f"{hook}: say what it returns"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_manual_names_every_argument(hook):
    params = inspect.signature(getattr(hookspecs, hook)).parameters
    arguments = section(doc(hook), "Arguments:")
    if not params:
        assert arguments.strip().startswith("none"), f"{hook}: say it takes no arguments"
    for param in params:
        assert re.search(rf"^\s*{param}:", arguments, re.MULTILINE), f"{hook}: argument {param!r} is not described"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_manual_lists_each_context_field(hook):
    """A context handed to a hook is only usable if the manual says what is in it."""
    arguments = section(doc(hook), "Arguments:")
    for param in inspect.signature(getattr(hookspecs, hook)).parameters.values():
        struct = getattr(contract, str(param.annotation), None)
        if isinstance(struct, type) and issubclass(struct, msgspec.Struct) and struct.__name__.endswith("Context"):
            missing = [f for f in struct.__struct_fields__ if f"`{f}`" not in arguments]
            assert not missing, f"{hook}: fields of {struct.__name__} not in its Arguments: {missing}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_example_is_a_valid_implementation(hook):
    """The example compiles with the plugin API's names and pluggy accepts it."""
    example = textwrap.dedent(section(doc(hook), "Example::")).strip("\n")
    namespace = {name: getattr(tee_daemon.plugin, name) for name in tee_daemon.plugin.__all__}
    namespace.update(sys=__import__("sys"), _running=set(), _served={})
    exec(compile(example, f"<example of {hook}>", "exec"), namespace)  # noqa: S102 (our own docstring)
    impl = namespace.get(hook)
    assert callable(impl), f"{hook}'s example defines no function named {hook}"
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugin = type("Example", (), {hook: staticmethod(impl)})
    pm.register(plugin, name=f"example-{hook}")
    pm.check_pending()  # fails for a hook name that is not a spec
    # pluggy refuses at registration an implementation with arguments the spec lacks.
    assert pm.hook.__dict__[hook].get_hookimpls(), f"{hook}'s example is not marked @hookimpl"


def test_the_examples_use_only_the_plugin_api():
    """An example importing anything makes a reader go past `tee_daemon.plugin`."""
    for hook in HOOKS:
        assert "import " not in section(doc(hook), "Example::"), hook


def test_guide_lists_every_hook_with_its_exact_signature():
    guide = GUIDE.read_text()
    for hook in HOOKS:
        assert f"`{signature_text(hook)}`" in guide, f"docs/PLUGINS.md lacks `{signature_text(hook)}`"


def test_guide_lists_no_hook_that_does_not_exist():
    listed = set(re.findall(r"`(runtime_\w+)\(", GUIDE.read_text()))
    assert listed <= set(HOOKS), f"docs/PLUGINS.md documents missing hooks: {listed - set(HOOKS)}"


def test_every_hook_has_a_test_named_for_it():
    """datasette's rule: a hook nobody tests is a hook nobody can rely on."""
    names = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
    untested = [hook for hook in HOOKS if not any(n.startswith(f"test_hook_{hook}_") for n in names)]
    assert not untested, f"no test_hook_<hook>_... test for {untested}"


def test_walk_through_quotes_the_echo_plugin_verbatim():
    """The guide's Python blocks are the worked example's code, so they cannot rot."""
    source = ECHO.read_text()
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert len(blocks) >= len(HOOKS)
    for block in blocks:
        assert block in source, f"docs/PLUGINS.md quotes code the echo plugin does not have:\n{block}"


def test_the_worked_example_implements_every_hook():
    module = ast.parse(ECHO.read_text())
    implemented = {
        node.name for node in module.body
        if isinstance(node, ast.FunctionDef) and any(getattr(d, "id", None) == "hookimpl" for d in node.decorator_list)
    }  # fmt: skip
    assert implemented == set(HOOKS)


def test_readme_points_plugin_authors_to_the_guide():
    readme = (ROOT / "README.md").read_text()
    assert "docs/PLUGINS.md" in readme and "tee-runtime-echo" in readme


def test_entry_points_are_not_disabled_for_the_suite():
    """The third-party hook tests mean nothing if the daemon skips entry points."""
    assert os.environ.get("TEE_DAEMON_NO_ENTRY_POINTS") is None


def test_the_manual_names_only_what_a_plugin_can_import():
    """A helper or type the manual points to (`run_build_step`, `BuildReport`...) is in
    `tee_daemon.plugin`: renaming one there without the manual fails here."""
    known = set(HOOKS) | set(tee_daemon.plugin.__all__)
    for struct in (contract.BuildContext, contract.StartContext, contract.RuntimeInfo, contract.Detection):
        known |= set(struct.__struct_fields__)
    for hook in HOOKS:
        named = set(re.findall(r"(?<!`)`([A-Za-z_]\w*)(?:\(|`)", doc(hook)))
        assert named <= known, f"{hook}'s manual names {sorted(named - known)}, not in tee_daemon.plugin"
