"""`tee-daemon`: the daemon (`serve`), the admin client and the verifier (SPEC section 2)."""

from __future__ import annotations

import argparse
import os
import sys

from tee_daemon import __version__
from tee_daemon.settings import handoff, load_settings


def serve(args: argparse.Namespace) -> int:
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    from tee_daemon.web.auth import load_or_create_token

    settings = load_settings(
        {
            "host": args.host,
            "port": args.port,
            "data_dir": args.data_dir,
            "backend": args.backend,
            "allow_insecure_sources": True if args.allow_insecure_sources else None,
            "base_domain": args.base_domain,
        }
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(settings.data_dir)  # noqa: F841  (held for the daemon's life)
    _, token_path = load_or_create_token(settings.data_dir, settings.token)
    from tee_daemon.run.tenancy import problems, refusal

    unenforced = problems(settings)  # SPEC 9: what cannot be enforced is refused loudly.
    if unenforced and not settings.allow_unenforced_isolation:
        print(refusal(unenforced), file=sys.stderr)
        return 1
    # granian's worker builds the app itself: hand it these very settings.
    os.environ.update(handoff(settings))
    from tee_daemon.web import connguard

    # SPEC 10: the daemon's own socket (no port sharing), enough descriptors and
    # connection slots that thousands of idle connections do not keep clients out, and a
    # header timeout (hyper's timer, plus the guard for connections that never send).
    try:
        listener = connguard.bind_listener(settings.host, settings.port)
    except connguard.PortInUse as exc:
        print(exc, file=sys.stderr)
        return 1
    where = f"in {token_path}" if token_path else "from TEE_DAEMON_TOKEN"
    print(f"tee-daemon {__version__} on {settings.public_base}/ (data: {settings.data_dir})", file=sys.stderr)
    print(f"admin token: {where}", file=sys.stderr)
    nofile = connguard.raise_nofile()
    keepalive = connguard.keepalive_timeout(settings.header_timeout)
    server = connguard.server_class()(
        "tee_daemon.web.connguard:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=1,
        log_access=False,
        websockets=True,
        backlog=connguard.LISTEN_BACKLOG,
        backpressure=connguard.connection_limit(nofile),
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, int(keepalive * 1000)), keep_alive=True, max_buffer_size=connguard.SERVER_BUFFER
        ),
    )
    server.listener = listener
    server.serve()
    return 0


def _lock_data_dir(data_dir):
    """One daemon per data dir: two would serve, deploy and log over each other."""
    import fcntl

    handle = open(data_dir / "daemon.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"tee-daemon: another daemon is already using {data_dir}") from None
    return handle


class UsageParser(argparse.ArgumentParser):
    """argparse exits 2 on a bad command line, the code that means "daemon unreachable"
    here (cli/client.py): usage errors exit with their own code instead. Subcommand
    parsers are made of the same class."""

    def error(self, message: str):  # type: ignore[override]
        from tee_daemon.cli.client import EXIT_USAGE

        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="tee-daemon", description="Host small web projects with evidence of what they run.")
    parser.add_argument("--version", action="version", version=f"tee-daemon {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("serve", help="run the daemon")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8080)")
    p.add_argument("--data-dir", help="state folder (default: the user data dir)")
    p.add_argument("--backend", choices=["process", "docker"], help="where projects run (default process)")
    p.add_argument("--allow-insecure-sources", action="store_true", help="also allow http:// and file:// git sources")
    p.add_argument("--base-domain", metavar="D", help="serve each project at its own origin <name>.D")
    p.set_defaults(func=serve)

    from tee_daemon.cli import client

    client.add_commands(commands)

    from tee_daemon.cli import verify

    verify.add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
