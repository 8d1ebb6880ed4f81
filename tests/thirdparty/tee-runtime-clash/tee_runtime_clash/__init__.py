from tee_daemon.hookspecs import hookimpl
from tee_daemon.runtime import RuntimeInfo


@hookimpl
def runtime_describe():
    return [RuntimeInfo(name="static")]
