"""The whole environment of a project process: nothing inherited from the daemon (the
admin token and every ``TEE_DAEMON_*`` setting stay out)."""

from __future__ import annotations

from pathlib import Path

from tee_daemon.run import sandbox

MINIMAL_PATH = sandbox.MINIMAL_PATH


def base_env(ctx_env: dict[str, str], *, data_dir: Path, port: int, path_dirs: list[Path] = ()) -> dict[str, str]:  # type: ignore[assignment]
    """The whole environment of a project process: nothing inherited from the daemon."""
    path = ":".join([*(str(p) for p in path_dirs), MINIMAL_PATH])
    env = dict(ctx_env)
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "HOME": str(data_dir),
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "PATH": path,
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "TEE_ENV_KEYS": ",".join(ctx_env),
        }
    )
    return env

