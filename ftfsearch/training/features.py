"""Frozen-tower feature caches for training on pretrained towers, built once and resumable.

Training the top of a pretrained tower on a 2-core CPU pays only when the frozen lower part runs once:
its outputs for several augmented *views* of every image, and for every distinct text, are cached on
disk as float16 ``.npy`` files and read back memory-mapped. Each view, and each chunk of texts, is its
own file written atomically, so a run killed while caching resumes at the first missing file, and
views already cached are shared by runs that ask for more of them. A file that does not load or has
the wrong shape (cut short, another model) is rebuilt with one warning.

View 0 is the plain image; view ``v >= 1`` is :func:`augment` with a generator seeded by ``(seed, v)``,
so a view's content does not depend on how many views a run uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

TEXT_CHUNK = 4096
"""Texts per cache file: a kill loses at most one chunk of work."""


def augment(batch: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, size, size]`` in 0..1: random resized crop (0.7-1 of the
    side), flips, 90-degree rotations, brightness, contrast and saturation jitter."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    b = x.shape[0]
    side = torch.empty(b).uniform_(0.7, 1.0, generator=gen)  # crop side as a fraction of the image
    aspect = torch.exp(torch.empty(b).uniform_(-0.15, 0.15, generator=gen))
    sx = (side * aspect.sqrt()).clamp(max=1.0)
    sy = (side / aspect.sqrt()).clamp(max=1.0)
    tx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sx)
    ty = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sy)
    k = torch.randint(0, 4, (b,), generator=gen).float() * (math.pi / 2)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(k), torch.sin(k)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos * sx * flip
    theta[:, 0, 1] = -sin * sy
    theta[:, 1, 0] = sin * sx * flip
    theta[:, 1, 1] = cos * sy
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bright = torch.empty(b, 1, 1, 1).uniform_(-0.08, 0.08, generator=gen)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.85, 1.15, generator=gen)
    saturation = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2, generator=gen)
    grey = (out * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    out = grey + (out - grey) * saturation
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + bright).clamp_(0.0, 1.0)


def cache_key(**parts: Any) -> str:
    """A short stable digest of what a cached array depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_or_build(path: Path | None, shape: tuple[int, ...], build: Callable[[], np.ndarray]) -> np.ndarray:
    """The array at ``path`` (memory-mapped) when it loads with ``shape``; else ``build()`` saved atomically.

    Without a path (no cache directory) the built array is returned as is.
    """
    if path is not None and path.is_file():
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.shape == shape:
                return arr
            log.warning("%s: cached features have shape %s, expected %s; rebuilding", path, arr.shape, shape)
        except (OSError, ValueError, EOFError) as exc:
            log.warning("%s: cached features do not load (%s); rebuilding", path, exc)
    arr = build()
    if arr.shape != shape:
        raise AssertionError(f"built features have shape {arr.shape}, expected {shape}")
    if path is None:
        return arr
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


class ViewCache:
    """``views`` per-view arrays ``[N, F]`` of one image set: :meth:`rows` gathers one view per image."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays

    @property
    def views(self) -> int:
        return len(self.arrays)

    def rows(self, views: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.stack([self.arrays[v][i] for v, i in zip(views, idx)])


class ChunkedRows:
    """Rows of a big array stored as fixed-size chunk files: ``rows[idx]`` gathers across chunks."""

    def __init__(self, chunks: list[np.ndarray], chunk: int) -> None:
        self.chunks = chunks
        self.chunk = chunk

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([self.chunks[i // self.chunk][i % self.chunk] for i in np.asarray(idx)])
