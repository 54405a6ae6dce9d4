"""The query's largest part, text encoding, by runtime: the shipped model's text tower in torch
(transformers' BERT, the previous query path) and its ONNX export in ONNX Runtime (the query path
now), one text at a time on one thread as a query runs, interleaved query by query in one process.

``python -m bench text --queries 200``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import Stat, captions, machine, machine_line, timed
from ftfsearch.model.loading import load_encoder, load_query_encoder
from ftfsearch.model.pretrained import PretrainedFtfEncoder


def main(queries: int, warmup: int, json_path: Path | None) -> int:
    torch.set_num_threads(1)
    full = load_encoder(None, device="cpu")
    assert isinstance(full, PretrainedFtfEncoder)
    torch_tower = PretrainedFtfEncoder(full.model, torch.device("cpu"), "0" * 64, runtime="torch")
    ort = load_query_encoder(None, "cpu")
    texts = captions(queries + warmup)
    for q in texts[:warmup]:
        torch_tower.encode_text([q])
        ort.encode_text([q])
    ms: dict[str, list[float]] = {"torch (transformers BERT)": [], "ONNX Runtime (query path)": []}
    worst = 0.0
    for q in texts[warmup:]:
        t_ms, t_vec = timed(lambda: torch_tower.encode_text([q]))
        o_ms, o_vec = timed(lambda: ort.encode_text([q]))
        ms["torch (transformers BERT)"].append(t_ms)
        ms["ONNX Runtime (query path)"].append(o_ms)
        worst = max(worst, float(np.abs(np.asarray(o_vec) - t_vec.numpy()).max()))
    stats = {name: Stat.of(v) for name, v in ms.items()}
    print(machine_line(machine()))
    print(f"text encoding, one text per call, {queries} RSICD/UCM captions (+{warmup} warm-up), interleaved:")
    print("| runtime | p50 ms | p95 ms |")
    print("| --- | --- | --- |")
    for name, s in stats.items():
        print(f"| {name} | {s.p50:.2f} | {s.p95:.2f} |")
    base, new = (stats[n].p50 for n in ms)
    print(f"torch / ONNX Runtime p50: {base / new:.2f}x; largest vector difference {worst:.2e}")
    if json_path is not None:
        out: dict[str, Any] = {"machine": machine(), "queries": queries,
                               "p50_ms": {n: round(s.p50, 3) for n, s in stats.items()},
                               "p95_ms": {n: round(s.p95, 3) for n, s in stats.items()}, "max_abs_diff": worst}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=1) + "\n")
    return 0
