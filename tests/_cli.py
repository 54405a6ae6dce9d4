"""Running the CLI in tests: the installed command in a subprocess, or the app in process, and the
check that an error is one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

FTF = shutil.which("ftfsearch", path=str(Path(sys.executable).parent)) or "ftfsearch"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FTF_", "QDRANT_"))}
    full_env.update(env or {})
    return subprocess.run([FTF, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


class InProcess:
    """The CLI app run in this process: same code and error mapping, without ~5 s of imports per call."""

    def __init__(self, env: dict[str, str]) -> None:
        from typer.testing import CliRunner

        from ftfsearch.cli import app

        self.app = app
        self.runner = CliRunner(env={**{k: None for k in os.environ if k.startswith(("FTF_", "QDRANT_"))}, **env})

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        result = self.runner.invoke(self.app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)
