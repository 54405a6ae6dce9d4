"""The GPU check in one call: ``python -m bench gpu``.

Given CUDA, in one process and one run, against the CPU as the baseline:
1. vectors: the same real tiles and captions encoded on the CPU and on CUDA by both model families
   (the shipped FTF model, and a small CLIP built offline from the tiny caption set as the tests
   build theirs), compared against a stated tolerance;
2. rerank: the BTI top 10 of each caption over the same candidates, scored on both devices, and the
   whole path (vectors and text from each device);
3. training: a few steps of each family with mixed precision on CUDA (float16 and its loss
   scaler), a checkpoint, then the CUDA checkpoint resumed for one more epoch on the CPU;
4. evaluation with the model on the device (``ftfsearch eval``), against the CPU's figures;
5. timings: encoder-only ingest (tiles/s) and the rerank of 100 candidates (ms), CUDA against the
   CPU, synchronised before each clock read; and a one-shot query's start-up in a fresh process
   (load the model, encode one text, rerank) on each device, the reason ``query`` with ``auto``
   stays on the CPU.

Without CUDA (or with ``--dry-run``) the same code runs with ``cuda`` replaced by ``cpu``, and the
output says so: it proves the script, not the GPU. Everything comes from the working tree
(``tests/data/captions``, the shipped model and its base-weight packages): no registry, no Hub.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import REPO, Stat, machine, machine_line, sync, table

CAPTIONS = REPO / "tests" / "data" / "captions" / "dataset_ucm_tiny.json"
"""The committed tiny caption set (46 UCM images, 230 captions): tiles, queries and training data."""
TILE = 256
"""Tiles are the caption images resized to an ingest tile (real pixels, the default tile size)."""
VECTOR_TILES = 32
"""Tiles compared between the devices, and the candidates each caption's rerank ranks."""


@dataclass(frozen=True)
class Tolerance:
    """How far CUDA's unit vectors may be from the CPU's, per family (why: in each docstring)."""

    max_abs: float
    min_cos: float


FTF_TOLERANCE = Tolerance(max_abs=2e-3, min_cos=0.9999)
"""The FTF encoder runs in float32 on CUDA with TF32 off (``exact_float32``); the CPU runs the same
network through ONNX Runtime (1e-4 apart on the CPU, ``tests/test_pretrained.py``): what is left
is the order of float32 sums in other kernels."""
CLIP_TOLERANCE = Tolerance(max_abs=2e-2, min_cos=0.999)
"""CLIP encoders run under float16 autocast on CUDA (10 mantissa bits): a unit vector's components
move by up to about 1e-2, its direction by less than 0.1 % (cosine)."""


@dataclass
class Check:
    """One line of the table: what was compared or timed, the figure, and whether it passed."""

    what: str
    figure: str
    ok: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    device: torch.device
    dry_run: bool
    tiles: int
    queries: int
    work: Path
    checks: list[Check] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.device} (dry run: cuda replaced by cpu)" if self.dry_run else str(self.device)

    def add(self, what: str, figure: str, ok: bool | None = None, **detail: Any) -> None:
        self.checks.append(Check(what, figure, ok, detail))


def _pixels(n: int) -> torch.Tensor:
    """``n`` real tiles, uint8 ``[n, 256, 256, 3]``: the caption images, repeated to ``n``."""
    from PIL import Image

    data = json.loads(CAPTIONS.read_text())
    files = [CAPTIONS.parent / "images" / im["filename"] for im in data["images"]]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((TILE, TILE), Image.Resampling.BICUBIC)) for f in files]
    return torch.from_numpy(np.stack([arrays[i % len(arrays)] for i in range(n)]))


def _captions(n: int) -> list[str]:
    data = json.loads(CAPTIONS.read_text())
    seen = dict.fromkeys(" ".join(s["raw"].split()) for im in data["images"] for s in im["sentences"])
    return list(seen)[:n]


def _families(run: Run) -> dict[str, tuple[str | None, Tolerance]]:
    """Model name or directory (None: the shipped model) and tolerance of each family."""
    from tests._tiny import build_tiny_clip

    clip = run.work / "tiny-clip"
    if not clip.is_dir():
        build_tiny_clip(clip, seed=0, corpus=_captions(1000), image_size=64)
    return {"ftf": (None, FTF_TOLERANCE), "clip": (str(clip), CLIP_TOLERANCE)}


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Largest component difference and smallest cosine between two sets of unit vectors."""
    a, b = a.float().reshape(-1, a.shape[-1]), b.float().reshape(-1, b.shape[-1])
    return float((a - b).abs().max()), float((a * b).sum(-1).min())


def check_vectors(run: Run, families: dict[str, tuple[str | None, Tolerance]]) -> dict[str, Any]:
    """Both families on both devices: image and text vectors within the family's tolerance, and
    the rerank's top 10 (same candidates scored on each device; and each device's own vectors)."""
    from ftfsearch.model.loading import load_encoder
    from ftfsearch.rerank import bti

    pixels, texts = _pixels(VECTOR_TILES), _captions(run.queries)
    kept: dict[str, Any] = {}
    for name, (model, tol) in families.items():
        out: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        encoders = {}
        for where in dict.fromkeys(("cpu", str(run.device))):  # once in a dry run
            enc = load_encoder(model, device=where)
            encoders[where] = enc
            g, r = enc.encode_images(pixels)
            out[where] = (g, r, torch.as_tensor(enc.encode_text(texts)))
        (g0, r0, t0), (g1, r1, t1) = out["cpu"], out[str(run.device)]
        for part, x, y in (("coarse", g0, g1), ("regions", r0, r1), ("text", t0, t1)):
            diff, cos = _compare(x, y)
            run.add(f"{name}: {part} vectors cpu vs {run.device}", f"max |d| {diff:.2e}, min cos {cos:.6f}",
                    diff <= tol.max_abs and cos >= tol.min_cos, max_abs=diff, min_cos=cos,
                    tolerance={"max_abs": tol.max_abs, "min_cos": tol.min_cos})
        p = encoders["cpu"].rerank_params
        same_inputs = own_vectors = 0
        for i in range(len(texts)):
            top = []
            for where, (g, r, t) in (("cpu", out["cpu"]), (str(run.device), out["cpu"])):
                s = bti(t[i].to(where), g.to(where), r.to(where), p.tau, p.alpha, p.balanced).scores[0]
                top.append(s.topk(10).indices.cpu().tolist())
            same_inputs += top[0] == top[1]
            g, r, t = out[str(run.device)]
            s = bti(t[i].to(run.device), g.to(run.device), r.to(run.device), p.tau, p.alpha, p.balanced).scores[0]
            own_vectors += s.topk(10).indices.cpu().tolist() == top[0]
        n = len(texts)
        run.add(f"{name}: rerank top 10, same vectors, cpu vs {run.device}", f"{same_inputs}/{n} identical",
                same_inputs == n, identical=same_inputs, queries=n)
        run.add(f"{name}: rerank top 10, each device's own vectors", f"{own_vectors}/{n} identical",
                own_vectors >= 0.9 * n, identical=own_vectors, queries=n)
        kept[name] = encoders
    return kept


def _train_config(run: Run, name: str, model: str | None, device: str, epochs: int, resume: bool) -> Any:
    from ftfsearch.training.train import TrainConfig

    return TrainConfig(
        data=[CAPTIONS], out=run.work / f"train-{name}", base=model, arch="pretrained", epochs=epochs,
        batch_size=8, lr=1e-3, warmup_steps=1, device=device, resume=resume, cache_dir=run.work / "cache",
        max_steps_per_epoch=3, max_val_images=10, recall_k=5, recall_ks=(5,), taus=(0.05,), alphas=(0.5,), amp=True,
        keep_checkpoint=True, num_threads=None,
    )


def check_training(run: Run, families: dict[str, tuple[str | None, Tolerance]]) -> None:
    """Each family: two epochs of a few steps in mixed precision on the device (each epoch ends in
    a validation: the train -> eval switch that once fetched Hub kernels), the checkpoint with its
    loss scale, then that checkpoint resumed on the CPU for a third epoch."""
    from ftfsearch.training.train import CHECKPOINT_NAME, train

    for name, (model, _) in families.items():
        t0 = time.perf_counter()
        first = train(_train_config(run, name, model, str(run.device), 2, False))
        ckpt = torch.load(first.out_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
        scaler = ckpt.get("scaler") or {}
        losses = [h.loss for h in first.history]
        run.add(f"{name}: train 2 epochs x 3 steps, amp, on {run.device}",
                f"losses {', '.join(f'{v:.3f}' for v in losses)}; loss scale {scaler.get('scale', 'off')}; "
                f"{time.perf_counter() - t0:.0f} s", all(np.isfinite(losses)) and "scaler" in ckpt,
                losses=losses, scaler=scaler)
        t0 = time.perf_counter()
        resumed = train(_train_config(run, name, model, "cpu", 3, True))
        ok = [h.epoch for h in resumed.history] == [1, 2, 3] and np.isfinite(resumed.history[-1].loss)
        run.add(f"{name}: {run.device} checkpoint resumed on cpu, epoch 3",
                f"loss {resumed.history[-1].loss:.3f}; {time.perf_counter() - t0:.0f} s", bool(ok),
                loss=resumed.history[-1].loss)


def check_eval(run: Run, encoders: dict[str, Any]) -> None:
    """``ftfsearch eval`` with the model on the device against the CPU, same model and split."""
    from ftfsearch.training.datasets import load_dataset
    from ftfsearch.training.evaluate import evaluate

    ds = load_dataset(CAPTIONS)
    for name, by_device in encoders.items():
        reports = {where: evaluate(enc, ds, "test", recall_k=5, cache_dir=run.work / "cache")
                   for where, enc in by_device.items()}
        cpu, dev = reports["cpu"], reports[str(run.device)]
        gap = abs(cpu.ftf.mR - dev.ftf.mR)  # 12 images, 60 captions: one caption's R@1 is 0.28 mR
        run.add(f"{name}: eval on {dev.device} vs cpu (test, 12 images)",
                f"FTF mR {dev.ftf.mR:.2f} vs {cpu.ftf.mR:.2f}", dev.device.startswith(run.device.type) and gap <= 3.0,
                device=dev.device, ftf_mR={"cpu": cpu.ftf.mR, str(run.device): dev.ftf.mR})


def _encode_rate(enc: Any, pixels: torch.Tensor, batch: int) -> float:
    """Tiles/s of encoding in ingest batches, after one warm-up batch."""
    enc.encode_images(pixels[:batch])
    sync()
    t0 = time.perf_counter()
    for i in range(0, len(pixels), batch):
        enc.encode_images(pixels[i:i + batch])
    sync()
    return len(pixels) / (time.perf_counter() - t0)


def _rerank_ms(device: str, enc: Any, repeats: int = 200) -> Stat:
    """The BTI of 100 candidates for one text (the query path's rerank), p50 over ``repeats``."""
    from ftfsearch.rerank import bti_fused

    gen = torch.Generator().manual_seed(0)

    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)

    t, g, r = unit(1, enc.dim), unit(100, enc.dim), unit(100, enc.num_regions, enc.dim).half()
    p = enc.rerank_params
    times = []
    for i in range(repeats + 10):
        sync()
        t0 = time.perf_counter()
        out = bti_fused(t.to(device), t.new_zeros((0, enc.dim)).to(device), g.to(device), r.to(device),
                        tau=p.tau, alpha=p.alpha, balanced=p.balanced)
        out.scores.cpu()
        sync()
        if i >= 10:
            times.append((time.perf_counter() - t0) * 1000)
    return Stat.of(times)


_ONE_SHOT = """
import sys, time
t0 = time.perf_counter()
import torch
from ftfsearch.model.loading import load_encoder
from ftfsearch.rerank import bti
enc = load_encoder(None, device=sys.argv[1])
t = enc.encode_text(["houses with red roofs"])[0].to(enc.device)
g = torch.nn.functional.normalize(torch.randn(100, enc.dim), dim=-1).to(enc.device)
r = torch.nn.functional.normalize(torch.randn(100, enc.num_regions, enc.dim), dim=-1).to(enc.device)
bti(t, g, r, 0.05, 0.5).scores.cpu()
print(round((time.perf_counter() - t0) * 1000, 1))
"""


def _one_shot_ms(device: str) -> float:
    """A fresh process: import, load the shipped model, encode one text, rerank 100 candidates."""
    out = subprocess.run([sys.executable, "-c", _ONE_SHOT, device], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"one-shot query on {device} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def check_timings(run: Run, encoders: dict[str, Any], batch: int) -> None:
    """Encoder-only ingest and the rerank, the device against the CPU; a one-shot query's start-up."""
    pixels = _pixels(run.tiles)
    for name, by_device in encoders.items():
        rates = {where: _encode_rate(enc, pixels, batch) for where, enc in by_device.items()}
        dev = rates[str(run.device)]
        run.add(f"{name}: encoder-only ingest, {run.tiles} tiles of {TILE} px, batch {batch}",
                f"{dev:.1f} tiles/s on {run.device} vs {rates['cpu']:.1f} on cpu ({dev / rates['cpu']:.2f}x)",
                tiles_per_s=rates)
    enc = encoders["ftf"]["cpu"]
    pair = dict.fromkeys(("cpu", str(run.device)))  # once in a dry run
    stats = {where: _rerank_ms(where, enc) for where in pair}
    run.add("rerank (BTI) of 100 candidates, ftf dims, p50",
            f"{stats[str(run.device)].p50:.3f} ms on {run.device} vs {stats['cpu'].p50:.3f} ms on cpu",
            rerank_ms={k: v.to_dict() for k, v in stats.items()})
    shots = {where: _one_shot_ms(where) for where in pair}
    run.add("one-shot query in a fresh process (import, load, encode text, rerank)",
            f"{shots[str(run.device)]:.0f} ms on {run.device} vs {shots['cpu']:.0f} ms on cpu", one_shot_ms=shots)


def main(args: argparse.Namespace) -> int:
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu") if dry else torch.device("cuda:0")
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    run = Run(device, dry, args.tiles if args.tiles else (64 if dry else 1024), args.queries, work)
    try:
        families = _families(run)
        encoders = check_vectors(run, families)
        check_eval(run, encoders)
        check_training(run, families)
        check_timings(run, encoders, args.batch_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t_start
    m = machine()
    res = {
        "benchmark": "gpu",
        "device": run.label,
        "dry_run": dry,
        "machine": m,
        "seconds": round(seconds, 1),
        "tolerance": {"ftf": FTF_TOLERANCE.__dict__, "clip": CLIP_TOLERANCE.__dict__},
        "checks": [c.__dict__ for c in run.checks],
        "passed": all(c.ok is not False for c in run.checks),
    }
    print(report(res))
    json_path = args.json or REPO / "bench" / "results" / ("gpu-dry-run.json" if dry else "gpu.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0 if res["passed"] else 1


def report(res: dict[str, Any]) -> str:
    head = (f"GPU check on {res['device']}{' -- NOT a GPU measurement' if res['dry_run'] else ''}, "
            f"{res['seconds']} s\n{machine_line(res['machine'])}")
    rows = [[c["what"], c["figure"], {True: "ok", False: "FAIL", None: ""}[c["ok"]]] for c in res["checks"]]
    return head + "\n" + table("", ["check", "figure", ""], rows) + f"\n{'all checks passed' if res['passed'] else 'FAILED'}"
