"""Does a model generalise past whole caption-set images? Two checks (issue 21), per model, side by side.

Scene words. RSICD and UCM test images, each ranked for its dataset's scene classes queried in
everyday words (:func:`ftfsearch.training.prompts.phrase_for`: "a parking lot", not ``parkinglot``).
Average precision per class over the whole split, mAP over the classes, coarse (cosine with the
coarse vector) and FTF (the top ``recall_k`` reranked by BTI with the model's tau/alpha, the rest in
coarse order).

Things inside scenes. UCM val+test images (never train) of five object classes (airplane, storage
tanks, harbor, parking lot, tennis court) are laid out as 2x2 blocks among agricultural, forest and
residential fillers (each image once as is and once rotated, so each class has ten blocks), on a
grid of 256 px cells that starts 100 px before the raster's edge, so no tile lines up with an
image. The mosaic is written as a georeferenced GeoTIFF (UTM 11N, 0.3 m/px, UCM's resolution) in a
temp dir, ingested with the default tiling (256 px, levels 1 and 2, no overlap) through the real
pipeline into an embedded store, and each class is queried in everyday words. A result is relevant
when more than half of its window's area is that class; P@10 and P@50, coarse and FTF (recall
100), beside the number of relevant windows (P@50 cannot exceed it / 50).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import DATA, REPO, load_bench_encoder, machine, machine_line, table
from ftfsearch.model.base import Encoder
from ftfsearch.rerank import bti
from ftfsearch.search import Searcher
from ftfsearch.store import open_store
from ftfsearch.training.datasets import CaptionImage, CaptionSplit, load_dataset, load_pixels
from ftfsearch.training.evaluate import EVAL_PIXELS
from ftfsearch.training.prompts import phrase_for
from ingest.pipeline import IngestOptions, ingest_paths
from ingest.tiling import TilingSpec

DATASETS = (("rsicd", DATA / "rsicd" / "dataset_rsicd.json"), ("ucm", DATA / "ucm" / "dataset_ucm.json"))
RESULTS = REPO / "bench" / "results"
PIXEL_CACHE = REPO / ".cache" / "pixels"
"""Shared with ``ftfsearch eval`` run from the repository root (its default ``--cache-dir``)."""
RECALL_K_SCENES = 50
"""Candidates reranked in the scene-words check (``ftfsearch eval``'s default)."""
RECALL_K_MOSAIC = 100
"""Candidates reranked in the mosaic check (``ftfsearch query``'s default)."""
TARGETS = ("airplane", "storagetanks", "harbor", "parkinglot", "tenniscourt")
FILLERS = ("agricultural", "forest", "denseresidential", "mediumresidential", "sparseresidential")
MOSAIC_SPLITS = ("val", "test")
CELL = 256
"""UCM images are 256 px at 0.3 m."""
GRID = 20
"""Cells per side; 2x2 blocks of one class, so a 10 x 10 grid of blocks."""
OFFSET = 100
"""Scene pixels of the cell grid cut off at the top and left, so tiles straddle images."""
BLOCKS_PER_TARGET = 10
PIXEL_SIZE_M = 0.3
CRS = "EPSG:32611"
ORIGIN = (500000.0, 3770000.0)
"""UTM 11N easting/northing of the top-left corner (southern California, where UCM's imagery is from)."""
SEED = 0


# -- scene words -------------------------------------------------------------------------------


def average_precision(order: np.ndarray, relevant: np.ndarray) -> float:
    """AP of a ranking (item indices, best first) against a boolean relevance per item."""
    hits = relevant[order]
    if not hits.any():
        return float("nan")
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def ftf_order(encoder: Encoder, text: torch.Tensor, coarse: torch.Tensor, regions: torch.Tensor, recall_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(coarse order, FTF order) of all images for one unit text vector."""
    sims = coarse @ text
    coarse_order = sims.argsort(descending=True, stable=True)
    cand = coarse_order[:recall_k]
    p = encoder.rerank_params
    fine = bti(text, coarse[cand], regions[cand], p.tau, p.alpha, p.balanced).scores[0]
    reranked = torch.cat([cand[fine.argsort(descending=True, stable=True)], coarse_order[recall_k:]])
    return coarse_order.numpy(), reranked.numpy()


def scene_words(encoder: Encoder, name: str, json_path: Path) -> dict[str, Any]:
    """mAP over the scene classes of one dataset's test split, coarse and FTF."""
    part = load_dataset(json_path).split("test")
    pixels = load_pixels(part, EVAL_PIXELS, PIXEL_CACHE)
    gs, rs = [], []
    with torch.inference_mode():
        for start in range(0, len(pixels), 128):
            g, r = encoder.encode_images(torch.from_numpy(np.array(pixels[start:start + 128])))
            gs.append(g.float())
            rs.append(r.float())
        coarse, regions = torch.cat(gs), torch.cat(rs)
        labels = np.asarray([im.label for im in part.images])
        classes = sorted(set(labels.tolist()))
        texts = torch.as_tensor(encoder.encode_text([phrase_for(c) for c in classes])).float()
        per_class: dict[str, dict[str, float]] = {}
        for c, t in zip(classes, texts):
            co, fo = ftf_order(encoder, t, coarse, regions, RECALL_K_SCENES)
            rel = labels == c
            per_class[c] = {"query": phrase_for(c), "images": int(rel.sum()),  # type: ignore[dict-item]
                            "coarse_ap": average_precision(co, rel), "ftf_ap": average_precision(fo, rel)}
    return {
        "dataset": name, "split": "test", "images": len(part), "classes": len(classes),
        "coarse_mAP": float(np.mean([v["coarse_ap"] for v in per_class.values()]) * 100),
        "ftf_mAP": float(np.mean([v["ftf_ap"] for v in per_class.values()]) * 100),
        "per_class": per_class,
    }


# -- things inside scenes ------------------------------------------------------------------------


@dataclass
class Mosaic:
    path: Path
    labels: np.ndarray
    """``[H, W]`` class index per scene pixel (into :attr:`classes`)."""
    classes: tuple[str, ...]
    cells: dict[str, int]
    """Cells per class in the grid (the first row and column lose their top/left 100 px)."""


def _variants(images: list[CaptionImage], pixels: np.ndarray) -> list[np.ndarray]:
    """Each image as is and rotated by 90 degrees."""
    out = []
    for i in range(len(images)):
        out += [pixels[i], np.rot90(pixels[i]).copy()]
    return out


def build_mosaic(tmp: Path) -> Mosaic:
    """Write the mosaic GeoTIFF (see the module docstring) and its per-pixel class raster."""
    import rasterio
    from rasterio.transform import from_origin

    ds = load_dataset(DATA / "ucm" / "dataset_ucm.json")
    chosen = tuple(im for im in ds.images if im.split in MOSAIC_SPLITS)
    classes = TARGETS + FILLERS
    rng = np.random.default_rng(SEED)
    cells_of: dict[str, list[np.ndarray]] = {}
    for c in classes:
        ims = [im for im in chosen if im.label == c]
        pix = load_pixels(CaptionSplit("ucm", "val+test", tuple(ims)), CELL, PIXEL_CACHE)
        cells_of[c] = _variants(ims, pix)
    half = GRID // 2
    blocks = rng.permutation(half * half)
    canvas = np.zeros((GRID * CELL, GRID * CELL, 3), np.uint8)
    label_cells = np.zeros((GRID, GRID), np.uint8)
    fill = [(ci, cell) for ci, c in enumerate(classes) if c in FILLERS for cell in cells_of[c]]
    fill = [fill[i] for i in rng.permutation(len(fill))]
    used = {c: 0 for c in classes}

    def put(r: int, col: int, ci: int, img: np.ndarray) -> None:
        canvas[r * CELL:(r + 1) * CELL, col * CELL:(col + 1) * CELL] = img
        label_cells[r, col] = ci

    for b_i, b in enumerate(blocks):
        br, bc = divmod(int(b), half)
        target = b_i // BLOCKS_PER_TARGET
        for dr in (0, 1):
            for dc in (0, 1):
                r, col = 2 * br + dr, 2 * bc + dc
                if target < len(TARGETS):
                    c = TARGETS[target]
                    put(r, col, target, cells_of[c][used[c] % len(cells_of[c])])
                    used[c] += 1
                else:
                    ci, img = fill.pop()
                    put(r, col, ci, img)
                    used[classes[ci]] += 1
    pixels = canvas[OFFSET:, OFFSET:]
    labels = np.kron(label_cells, np.ones((CELL, CELL), np.uint8))[OFFSET:, OFFSET:]
    path = tmp / "ucm_mosaic.tif"
    h, w = pixels.shape[:2]
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8", "crs": CRS,
               "transform": from_origin(*ORIGIN, PIXEL_SIZE_M, PIXEL_SIZE_M), "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate", "photometric": "RGB"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(pixels, -1, 0))
    cells = {c: int((label_cells == i).sum()) for i, c in enumerate(classes)}
    return Mosaic(path=path, labels=labels, classes=classes, cells=cells)


def window_share(labels: np.ndarray, window: dict[str, int], class_index: int) -> float:
    """Share of a window's in-scene area that is ``class_index``."""
    part = labels[window["row"]:window["row"] + window["height"], window["col"]:window["col"] + window["width"]]
    return float((part == class_index).mean()) if part.size else 0.0


def things_in_scenes(encoder: Encoder, mosaic: Mosaic, store_dir: Path) -> dict[str, Any]:
    """Ingest the mosaic into a fresh embedded store; P@10/P@50 per target class, coarse and FTF."""
    store = open_store(collection="tiles", store_dir=store_dir, qdrant_url=None, api_key=None, timeout=30)
    try:
        t0 = time.perf_counter()
        done, failed = ingest_paths([mosaic.path], encoder, store, IngestOptions(spec=TilingSpec(levels=(1, 2))))
        if failed:
            raise SystemExit(f"{mosaic.path}: {failed[0].message}")
        ingest_s = time.perf_counter() - t0
        windows = [p["window"] for batch in store.scan_tiles(done[0].scene_id) for p in batch.payloads]
        searcher = Searcher(encoder, store, vector_cache_bytes=0)
        per_class: dict[str, dict[str, Any]] = {}
        for ci, c in enumerate(TARGETS):
            row: dict[str, Any] = {"query": phrase_for(c), "cells": mosaic.cells[c],
                                   "relevant_windows": sum(window_share(mosaic.labels, w, ci) > 0.5 for w in windows)}
            for mode, rerank in (("coarse", False), ("ftf", True)):
                hits = searcher.search(phrase_for(c), k=50, recall_k=RECALL_K_MOSAIC, rerank=rerank).results
                rel = [window_share(mosaic.labels, h.window, ci) > 0.5 for h in hits]
                row[f"{mode}_p10"] = float(np.mean(rel[:10]) * 100)
                row[f"{mode}_p50"] = float(np.mean(rel[:50]) * 100)
            per_class[c] = row
    finally:
        store.close()
    mean = {k: float(np.mean([v[k] for v in per_class.values()]))
            for k in ("coarse_p10", "coarse_p50", "ftf_p10", "ftf_p50")}
    return {"tiles": len(windows), "ingest_s": round(ingest_s, 1), "scene_px": list(mosaic.labels.shape),
            "mean": mean, "per_class": per_class}


# -- the command ---------------------------------------------------------------------------------


def main(models: list[str | None], json_path: Path | None, device: str = "auto") -> int:
    started = time.perf_counter()
    m = machine()
    report: dict[str, Any] = {"machine": m, "models": {}}
    with tempfile.TemporaryDirectory(prefix="ftf-bench-generalise-") as tmp_s:
        tmp = Path(tmp_s)
        mosaic = build_mosaic(tmp)
        report["mosaic"] = {"px": list(mosaic.labels.shape), "cells": mosaic.cells, "crs": CRS,
                            "pixel_size_m": PIXEL_SIZE_M, "offset_px": OFFSET, "tiling": "256 px, levels 1,2, overlap 0"}
        for i, model in enumerate(models):
            encoder, label = load_bench_encoder(model, device)
            scenes = {name: scene_words(encoder, name, path) for name, path in DATASETS}
            inside = things_in_scenes(encoder, mosaic, tmp / f"store{i}")
            report["models"][label] = {"model_id": encoder.id, "scene_words": scenes, "things_inside_scenes": inside}
    print(machine_line(m))
    print(table("Scene words: mAP over classes, test splits, query = everyday phrase",
                ["model", "RSICD coarse", "RSICD FTF", "UCM coarse", "UCM FTF"],
                [[lab, r["scene_words"]["rsicd"]["coarse_mAP"], r["scene_words"]["rsicd"]["ftf_mAP"],
                  r["scene_words"]["ucm"]["coarse_mAP"], r["scene_words"]["ucm"]["ftf_mAP"]]
                 for lab, r in report["models"].items()]))
    for lab, r in report["models"].items():
        inside = r["things_inside_scenes"]
        rows = [[c, v["query"], v["relevant_windows"], v["coarse_p10"], v["ftf_p10"], v["coarse_p50"], v["ftf_p50"]]
                for c, v in inside["per_class"].items()]
        mean = inside["mean"]
        rows.append(["mean", "", "", mean["coarse_p10"], mean["ftf_p10"], mean["coarse_p50"], mean["ftf_p50"]])
        print()
        print(table(f"Things inside scenes ({lab}): {inside['tiles']} tiles of a {inside['scene_px'][1]} x "
                    f"{inside['scene_px'][0]} px mosaic, ingested in {inside['ingest_s']} s",
                    ["class", "query", "relevant", "P@10 coarse", "P@10 FTF", "P@50 coarse", "P@50 FTF"], rows))
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = json_path or RESULTS / "generalise.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {out} ({report['seconds']} s)")
    return 0
