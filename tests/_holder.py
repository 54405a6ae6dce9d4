"""Running ``ftfsearch`` commands and a ``serve`` that holds an embedded store, for the tests that
talk to the holder (test_holder, test_stac)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from _web_fixtures import free_port, ftfsearch_command


def _terminal_sigint() -> None:
    """Give the child SIGINT as a terminal would: a shell starts background jobs with SIGINT ignored,
    and a child inherits that (Python then installs no KeyboardInterrupt), so a test run from such a
    job would see a Ctrl+C do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Procs:
    """Processes a test started; all killed at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], env: dict[str, str], log: Path | None = None, **kw: object) -> subprocess.Popen[str]:
        kw.setdefault("preexec_fn", _terminal_sigint)
        if log is None:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                    **kw)  # type: ignore[call-overload]
        else:
            with open(log, "w") as out:  # the child keeps its own descriptor
                proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                        **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


def cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ftfsearch_command(), *args], capture_output=True, text=True, env=env, timeout=timeout)


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, object]:
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def start_serve(procs: Procs, store: Path, model: Path, env: dict[str, str], log: Path,
                extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = procs.start([ftfsearch_command(), "serve", "--store", str(store), "--model", str(model), "--device", "cpu",
                        "--port", str(port), *extra], env, log=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a serve's start (imports, model) takes minutes on a loaded 2-core machine
    holder = store / ".tiles.holder.json"
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        if "serving on" in log.read_text() and holder.is_file():
            try:
                get_json(url + "/api/info")
                return proc, url
            except OSError:
                pass
        time.sleep(0.2)
    pytest.fail("serve did not start: " + log.read_text())
