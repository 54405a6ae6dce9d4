"""BTI against a plain numpy reference written from DESIGN.md's equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftfsearch.rerank import bti


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference(t, g, r, tau, alpha, balanced=True):
    scores = []
    for k in range(g.shape[0]):
        logits = r[k] @ t / tau
        a = np.exp(logits - logits.max())
        a /= a.sum()
        v = _unit((a[:, None] * r[k]).sum(0))
        vb = _unit(g[k] + v) if balanced else v
        scores.append((1 - alpha) * float(t @ g[k]) + alpha * float(t @ vb))
    return np.array(scores)


@pytest.mark.parametrize("tau,alpha,balanced", [(0.05, 0.5, True), (0.5, 0.3, True), (0.1, 1.0, False), (1.0, 0.0, True)])
def test_bti_matches_numpy_reference(tau, alpha, balanced):
    rng = np.random.default_rng(0)
    D, R, K = 32, 14, 50
    t = _unit(rng.normal(size=D))
    g = _unit(rng.normal(size=(K, D)))
    r = _unit(rng.normal(size=(K, R, D)))
    out = bti(torch.tensor(t), torch.tensor(g), torch.tensor(r), tau=tau, alpha=alpha, balanced=balanced)
    np.testing.assert_allclose(out.scores[0].numpy(), reference(t, g, r, tau, alpha, balanced), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.coarse[0].numpy(), g @ t, atol=1e-6)


def test_bti_batches_texts_and_accepts_float16_regions():
    rng = np.random.default_rng(1)
    D, R, K, T = 16, 5, 7, 3
    t = torch.tensor(_unit(rng.normal(size=(T, D))), dtype=torch.float32)
    g = torch.tensor(_unit(rng.normal(size=(K, D))), dtype=torch.float32)
    r = torch.tensor(_unit(rng.normal(size=(K, R, D))), dtype=torch.float16)
    out = bti(t, g, r, tau=0.1, alpha=0.5)
    assert out.scores.shape == (T, K) and out.attention.shape == (T, K, R)
    for i in range(T):
        ref = reference(t[i].numpy(), g.numpy(), r.float().numpy(), 0.1, 0.5)
        np.testing.assert_allclose(out.scores[i].numpy(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(T, K))


def test_region_matching_the_text_is_attended_and_raises_the_score():
    """A tile whose one region matches the text outranks an otherwise equal tile without it."""
    rng = np.random.default_rng(2)
    D, R = 64, 14
    t = _unit(rng.normal(size=D))
    g = _unit(rng.normal(size=(2, D)))
    g[1] = g[0]
    r = _unit(rng.normal(size=(2, R, D)))
    r[1] = r[0]
    r[1, 6] = t  # region 6 of tile 1 shows what the text describes
    out = bti(torch.tensor(t), torch.tensor(g), torch.tensor(r), tau=0.05, alpha=0.5)
    assert out.scores[0, 1] > out.scores[0, 0]
    assert int(out.attention[0, 1].argmax()) == 6
