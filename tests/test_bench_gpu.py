"""``python -m bench gpu --dry-run``: the GPU check's every step, on the CPU, from the working tree
alone (the tiny caption set, the shipped model, a CLIP built offline), so the script a lent GPU
runs has run before it gets there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTF_", "QDRANT_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "gpu", "--dry-run", "--tiles", "8", "--queries", "3", "--batch-size", "4",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, env={**env, "PYTHONUNBUFFERED": "1"}, timeout=1800,  # about 18 min at load 15 on 2 cores
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.startswith("GPU check on cpu (dry run: cuda replaced by cpu) -- NOT a GPU measurement")
    res = json.loads(out.read_text())
    assert res["dry_run"] is True and res["passed"] is True
    checks = {c["what"]: c for c in res["checks"]}
    for family in ("ftf", "clip"):
        for part in ("coarse", "regions", "text"):
            c = checks[f"{family}: {part} vectors cpu vs cpu"]
            assert c["ok"] and c["detail"]["max_abs"] == 0.0  # the same device twice: the same vectors
        assert checks[f"{family}: rerank top 10, same vectors, cpu vs cpu"]["detail"]["identical"] == 3
        assert checks[f"{family}: train 2 epochs x 3 steps, amp, on cpu"]["ok"]
        assert checks[f"{family}: cpu checkpoint resumed on cpu, epoch 3"]["ok"]
        assert checks[f"{family}: eval on cpu vs cpu (test, 12 images)"]["detail"]["device"] == "cpu"
        rates = checks[f"{family}: encoder-only ingest, 8 tiles of 256 px, batch 4"]["detail"]["tiles_per_s"]
        assert set(rates) == {"cpu"} and rates["cpu"] > 0
    one_shot = checks["one-shot query in a fresh process (import, load, encode text, rerank)"]["detail"]
    assert one_shot["one_shot_ms"]["cpu"] > 0
