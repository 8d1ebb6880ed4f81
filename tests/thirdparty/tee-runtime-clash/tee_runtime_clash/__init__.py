from tee_daemon.kernel.hookspecs import hookimpl
from tee_daemon.kernel.contract import RuntimeInfo


@hookimpl
def runtime_describe():
    return [RuntimeInfo(name="static")]
