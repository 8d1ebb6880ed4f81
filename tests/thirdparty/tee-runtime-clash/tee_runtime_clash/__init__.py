"""A broken third-party plugin for the tests: it claims the built-in ``static`` runtime,
which must stop the daemon at startup rather than silently override it."""

from tee_daemon.plugin import RuntimeInfo, hookimpl


@hookimpl
def runtime_describe():
    return [RuntimeInfo(name="static")]
