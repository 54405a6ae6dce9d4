"""What both benchmarks share: the machine line, the encoder, real captions and tiles, stats, tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftfsearch.model.base import Encoder

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CACHE = REPO / ".cache" / "bench"
GEOTIFFS = DATA / "geotiffs"
# Real RGB scenes whose tiles feed the query benchmark's vectors (all in ../shared/data).
REAL_SCENES = (
    "opengeos_data/naip_m_4709963_se_14_1_20200831.tif",
    "opengeos_data/naip_m_4709963_se_14_1_20090818.tif",
    "rasterio/RGB.byte.tif",
    "rio-tiler/cog_rgb.tif",
    "solaris_spacenet/sample_geotiff.tif",
    "opengeos_data/landsat_2020.tif",
)


def machine() -> dict[str, Any]:
    """The machine a result was measured on, load included (others share this CPU)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def machine_line(m: dict[str, Any]) -> str:
    gpu = f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU"
    return (
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM{gpu}; load avg {m['load_avg_1m']} "
        f"(shared machine); Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads)"
    )


@dataclass
class Stat:
    """Latency summary in milliseconds."""

    n: int
    p50: float
    p95: float
    mean: float

    @classmethod
    def of(cls, ms: Sequence[float]) -> "Stat":
        a = np.asarray(ms, dtype=np.float64)
        if a.size == 0:
            return cls(0, float("nan"), float("nan"), float("nan"))
        return cls(int(a.size), float(np.percentile(a, 50)), float(np.percentile(a, 95)), float(a.mean()))

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "p50_ms": round(self.p50, 3), "p95_ms": round(self.p95, 3), "mean_ms": round(self.mean, 3)}


def sync() -> None:
    """Wait for the work queued on the GPU, so that a clock read covers it (no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Milliseconds of ``fn()`` and its result, the GPU synchronised before each clock read."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return (time.perf_counter() - t0) * 1000.0, out


def peak_rss_mb() -> float:
    """Peak resident set of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def captions(n: int) -> list[str]:
    """``n`` distinct real captions (RSICD, then UCM) as query texts."""
    out: list[str] = []
    seen: set[str] = set()
    for name in ("rsicd/dataset_rsicd.json", "ucm/dataset_ucm.json"):
        path = DATA / name
        if not path.is_file():
            continue
        for img in json.loads(path.read_text())["images"]:
            for s in img.get("sentences", []):
                raw = " ".join(str(s.get("raw", "")).split())
                if raw and raw not in seen:
                    seen.add(raw)
                    out.append(raw)
                    if len(out) >= n:
                        return out
    if not out:
        raise SystemExit(f"no captions under {DATA}: the query benchmark needs ../shared/data")
    return (out * (n // len(out) + 1))[:n]


def load_bench_encoder(model: str | None, device: str) -> tuple[Encoder, str]:
    """``model`` (a name or directory) or, when None, the shipped default model, on ``device``
    (each bench's ``--device``); with the label the benchmark prints for it."""
    from ftfsearch.model.loading import load_encoder

    encoder = load_encoder(model, device=device)
    return encoder, model if model is not None else "default model (ftfsearch/model/default)"


def add_device_option(parser: Any) -> None:
    """``--device`` of every bench that encodes or reranks (an argparse parser)."""
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda: where encoders run and the rerank scores")


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table (also pasted into BENCHMARKS.md as Markdown)."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")
