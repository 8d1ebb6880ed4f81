"""`tee-daemon`: the daemon (`serve`), the admin client and the verifier (SPEC section 2)."""

from __future__ import annotations

import argparse
import sys

from tee_daemon import __version__
from tee_daemon.cli.serve import serve


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
    p.add_argument("--workers", type=int, metavar="N", help="ingress worker processes (default: one per core)")
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
