"""Process times of the CLI as a user feels them: ``ftfsearch --version``, a text query on a store,
and refused arguments, each a whole process (interpreter start, imports, model, search, exit), the
minimum of N runs, the cases interleaved so that a load spike hits them alike.

``python -m bench processes --store .demo/store`` (``make demo`` builds that store); with
``--baseline-cli OTHER/bin/ftfsearch`` (another checkout's install, e.g. the previous commit's) both
are measured in the same run, case by case, so the ratios hold on a loaded machine. The store's
collection must have been built with the model the query loads (the shipped one by default).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import machine, machine_line


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    expect_rc: int


def cases(store: Path, text: str) -> list[Case]:
    return [
        Case("--version", ("--version",), 0),
        Case("--help", ("--help",), 0),
        Case(f"query {text!r}", ("query", text, "--k", "5", "--store", str(store)), 0),
        Case("query '' (refused)", ("query", "", "--store", str(store)), 2),
        Case("query --k 0 (refused)", ("query", text, "--k", "0", "--store", str(store)), 2),
    ]


def installed_cli() -> str:
    """The ``ftfsearch`` entry point beside this interpreter (what a user of this checkout runs)."""
    exe = Path(sys.executable).with_name("ftfsearch")
    found = str(exe) if exe.exists() else shutil.which("ftfsearch")
    if not found:
        raise SystemExit("ftfsearch is not installed beside this python (pip install -e .)")
    return found


def time_once(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc.returncode, proc.stderr


def main(store: Path, text: str, runs: int, json_path: Path | None, baseline: str | None = None) -> int:
    if not store.is_dir():
        raise SystemExit(f"{store}: no store; run `make demo` first (or pass --store)")
    env = {**os.environ, "FTF_CONFIG": os.devnull}
    clis = {"this checkout": installed_cli(), **({"baseline": baseline} if baseline else {})}
    todo = [(label, exe, c) for c in cases(store, text) for label, exe in clis.items()]
    usable = []
    for label, exe, case in todo:  # one warm-up each (page cache, ONNX cache: a user's second run)
        _, rc, stderr = time_once([exe, *case.args], env)
        if rc == case.expect_rc:
            usable.append((label, exe, case))
        else:
            print(f"{label}: ftfsearch {case.name}: exit {rc}, expected {case.expect_rc}: not timed "
                  f"({stderr.strip().splitlines()[-1][:120] if stderr.strip() else ''})")
    walls: dict[tuple[str, str], list[float]] = {(label, c.name): [] for label, _, c in usable}
    for _ in range(runs):
        for label, exe, case in usable:
            wall, rc, stderr = time_once([exe, *case.args], env)
            if rc != case.expect_rc:
                raise SystemExit(f"{label}: ftfsearch {case.name}: exit {rc}, expected {case.expect_rc}\n{stderr[-2000:]}")
            walls[(label, case.name)].append(wall)
    rows: list[dict[str, Any]] = [
        {"cli": label, "case": name, "min_s": round(min(w), 3), "median_s": round(sorted(w)[len(w) // 2], 3), "runs": runs}
        for (label, name), w in walls.items()
    ]
    print(machine_line(machine()) + f"; load avg 1/5/15 min after the run: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"| process | cli | min of {runs} (s) | median (s) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| `ftfsearch {r['case']}` | {r['cli']} | {r['min_s']:.3f} | {r['median_s']:.3f} |")
    if json_path is not None:
        out: dict[str, Any] = {"machine": machine(), "store": str(store), "clis": clis, "rows": rows}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=1) + "\n")
    return 0
