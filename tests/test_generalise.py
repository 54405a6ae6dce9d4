"""The generalisation benchmark's scoring: average precision and which class covers a window."""

from __future__ import annotations

import numpy as np
import pytest

from bench.generalise import CELL, OFFSET, average_precision, window_share


def test_average_precision_known_rankings() -> None:
    relevant = np.array([True, False, True, False])
    assert average_precision(np.array([0, 2, 1, 3]), relevant) == 1.0
    assert average_precision(np.array([1, 0, 3, 2]), relevant) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert np.isnan(average_precision(np.array([0, 1]), np.array([False, False])))


def test_window_share_counts_the_area_of_a_class_and_tiles_straddle_cells() -> None:
    cells = np.array([[0, 1], [1, 1]], np.uint8)
    labels = np.kron(cells, np.ones((CELL, CELL), np.uint8))[OFFSET:, OFFSET:]
    # the first 256 px tile covers (256-100)^2 of class 0 and the rest of class 1
    first = {"col": 0, "row": 0, "width": 256, "height": 256}
    assert window_share(labels, first, 0) == pytest.approx(156 * 156 / 256**2)
    assert window_share(labels, first, 1) == pytest.approx(1 - 156 * 156 / 256**2)
    # a window past the edge counts only its in-scene part
    edge = {"col": 300, "row": 300, "width": 512, "height": 512}
    assert window_share(labels, edge, 1) == 1.0
