"""The real CLI in a forked child (after the imports: a fresh interpreter costs ~5 s here), for
tests that run several ``ftfsearch`` processes at once (parallel ingest workers)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def fork_cli(args: list[str], env: dict[str, str], log: Path) -> int:
    """Run ``ftfsearch ARGS`` in a forked child (stdout and stderr to ``log``); returns its pid."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            # pytest's capture replaced sys.stdout/err with its own files: write to the fds again
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            for k in [k for k in os.environ if k.startswith(("FTF_", "QDRANT_"))]:
                del os.environ[k]
            os.environ.update(env)
            import torch

            torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork
            from ftfsearch.cli import app

            try:
                app(args=args, prog_name="ftfsearch")
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001 - shows in the log
            print(f"child failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait(pid: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"worker {pid} did not finish in {timeout} s")
