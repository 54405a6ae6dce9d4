"""Region layouts: multi-scale grids of boxes over a tile.

A layout id such as ``grid-1-2-3`` means a 1x1, a 2x2 and a 3x3 grid: 1 + 4 + 9 = 14 regions.
Boxes are ``(x0, y0, x1, y1)`` fractions of the tile, row-major within each grid, coarse first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ftfsearch.errors import BadInput
from ftfsearch.records import region_in_window  # noqa: F401 - re-exported: the regions' geometry

if TYPE_CHECKING:  # layouts and boxes are read by the query path, which does not import torch
    import torch

DEFAULT_LAYOUT = "grid-1-2-3"


def parse_layout(layout: str) -> tuple[int, ...]:
    """Grid sizes of a layout id."""
    prefix = "grid-"
    if not layout.startswith(prefix):
        raise BadInput(f"region layout {layout!r}: expected an id like 'grid-1-2-3'")
    try:
        sizes = tuple(int(part) for part in layout[len(prefix):].split("-"))
    except ValueError as exc:
        raise BadInput(f"region layout {layout!r}: grid sizes must be integers") from exc
    if not sizes or any(n < 1 for n in sizes):
        raise BadInput(f"region layout {layout!r}: grid sizes must be positive")
    return sizes


def layout_boxes(layout: str = DEFAULT_LAYOUT) -> np.ndarray:
    """Boxes ``[R, 4]`` (float32 fractions) of a layout id."""
    boxes: list[tuple[float, float, float, float]] = []
    for n in parse_layout(layout):
        for row in range(n):
            for col in range(n):
                boxes.append((col / n, row / n, (col + 1) / n, (row + 1) / n))
    return np.asarray(boxes, dtype=np.float32)


def num_regions(layout: str = DEFAULT_LAYOUT) -> int:
    return sum(n * n for n in parse_layout(layout))


def box_pooling_matrix(boxes: np.ndarray, h: int, w: int) -> torch.Tensor:
    """``[R, h*w]`` float32 weights that average an ``h x w`` map (row-major, as a flattened feature
    map or a ViT's patch sequence) over each box: each cell weighs by the exact fraction of it
    inside the box, so any layout works at any map size; rows sum to 1."""
    import torch

    b = np.asarray(boxes, dtype=np.float64)
    ys, xs = np.arange(h + 1, dtype=np.float64) / h, np.arange(w + 1, dtype=np.float64) / w
    oy = np.clip(np.minimum(b[:, 3:4], ys[1:]) - np.maximum(b[:, 1:2], ys[:-1]), 0.0, None)  # [R, h]
    ox = np.clip(np.minimum(b[:, 2:3], xs[1:]) - np.maximum(b[:, 0:1], xs[:-1]), 0.0, None)  # [R, w]
    weights = (oy[:, :, None] * ox[:, None, :]).reshape(len(b), h * w)
    # torch.tensor, not from_numpy: the ONNX exporter traces numpy and hands from_numpy a Tensor
    return torch.tensor(weights / weights.sum(axis=1, keepdims=True), dtype=torch.float32)


