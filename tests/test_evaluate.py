"""Evaluation protocol: known answers on constructed embeddings, and a real tiny split end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import itertools

from _data import TINY_CAPTIONS
from ftfsearch.training.datasets import CaptionSplit, load_dataset, load_pixels
from ftfsearch.training.evaluate import Embeddings, evaluate, format_report, hit_chances, recalls, score
from ftfsearch.model.base import RerankParams
from ftfsearch.model.ftf import FtfConfig, FtfEncoder, FtfModel
from ftfsearch.model.text import train_tokenizer



def _emb(n: int, caps: int, d: int = 16, seed: int = 0) -> Embeddings:
    gen = torch.Generator().manual_seed(seed)
    g = F.normalize(torch.randn(n, d, generator=gen), dim=-1)
    regions = F.normalize(g.unsqueeze(1) + 0.3 * torch.randn(n, 4, d, generator=gen), dim=-1)
    owner = torch.arange(n).repeat_interleave(caps)
    text = F.normalize(g[owner] + 0.05 * torch.randn(n * caps, d, generator=gen), dim=-1)
    return Embeddings(coarse=g, regions=regions, text=text, owner=owner)


def _by_enumeration(scores: torch.Tensor, positive: torch.Tensor, ks: tuple[int, ...], tier: torch.Tensor | None) -> torch.Tensor:
    """Hit chances averaged over every order of the items as the tie-breaker (small rows only)."""
    m = scores.shape[1]
    t = torch.zeros_like(scores) if tier is None else tier.double()
    out = torch.zeros(scores.shape[0], len(ks), dtype=torch.float64)
    perms = list(itertools.permutations(range(m)))
    for q in range(scores.shape[0]):
        for perm in perms:
            order = sorted(range(m), key=lambda i: (-float(t[q, i]), -float(scores[q, i]), perm[i]))
            for j, k in enumerate(ks):
                out[q, j] += float(any(positive[q, i] for i in order[:k]))
    return out / len(perms)


def test_one_positive_tied_with_two_negatives() -> None:
    # one negative above, the positive tied with two negatives: (K - 1) / 3, clamped
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.1]])
    positive = torch.tensor([[False, False, True, False, False]])
    expected, strict = hit_chances(scores, positive, ks=(1, 2, 3, 4, 5))
    assert expected[0].tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0])
    assert strict[0].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_several_positives_tied_among_themselves_and_negatives() -> None:
    # one negative above; two positives and three negatives tied; a third positive far below:
    # 1 - C(3, r) / C(5, r) for r = K - 1 places of the tied block
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.2]])
    positive = torch.tensor([[False, True, True, False, False, False, True]])
    expected, strict = hit_chances(scores, positive, ks=(1, 2, 3, 4, 5, 7))
    assert expected[0].tolist() == pytest.approx([0.0, 2 / 5, 7 / 10, 9 / 10, 1.0, 1.0])
    assert strict[0].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # a query without positives never hits
    none = hit_chances(scores, torch.zeros_like(positive), ks=(1, 7))
    assert none[0].tolist() == [[0.0, 0.0]] and none[1].tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("tiered", [False, True])
def test_hit_chances_equal_the_average_over_every_tie_order(tiered: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 3, (40, 6), generator=gen).double()  # three levels: ties everywhere
    positive = torch.rand(40, 6, generator=gen) < 0.3
    tier = (torch.rand(40, 6, generator=gen) < 0.5) if tiered else None
    ks = (1, 2, 3, 4, 5, 6)
    expected, strict = hit_chances(scores, positive, ks=ks, tier=tier)
    assert torch.allclose(expected, _by_enumeration(scores, positive, ks, tier), atol=1e-9)
    assert bool((strict >= expected - 1e-12).all()) and bool((strict > expected + 1e-6).any())


def test_without_ties_both_scorings_are_the_plain_rank() -> None:
    gen = torch.Generator().manual_seed(4)
    scores = torch.rand(200, 30, generator=gen)
    positive = torch.rand(200, 30, generator=gen) < 0.1
    positive[:, 0] = True
    expected, strict = hit_chances(scores, positive)
    plain = recalls(positive.gather(1, scores.argsort(dim=1, descending=True)))
    assert torch.equal(expected, strict)
    assert [round(float(expected[:, i].mean()) * 100, 2) for i in range(3)] == [plain.r1, plain.r5, plain.r10]


def test_large_tied_blocks_stay_exact() -> None:
    # 3 positives and 5000 negatives tied, nothing above: 1 - C(5000, 10) / C(5003, 10)
    scores = torch.zeros(1, 5003)
    positive = torch.zeros(1, 5003, dtype=torch.bool)
    positive[0, [7, 900, 4000]] = True
    expected, _ = hit_chances(scores, positive, ks=(10,))
    exact = 1.0 - np.prod([(5000 - i) / (5003 - i) for i in range(10)])
    assert float(expected[0, 0]) == pytest.approx(exact, rel=1e-9)


def test_shared_captions_tie_and_their_order_cannot_matter() -> None:
    # every caption of images 2k and 2k+1 is one shared string: the two images are indistinguishable
    # to image->text, so R@1 is 1/2 at best, whatever order the copies come in
    coarse = torch.eye(20, 24)
    owner = torch.arange(20).repeat_interleave(3)
    pair = owner // 2
    text = F.normalize(coarse[2 * pair] + coarse[2 * pair + 1], dim=-1)
    emb = Embeddings(coarse=coarse, regions=coarse.unsqueeze(1).repeat(1, 4, 1), text=text, owner=owner)
    params = RerankParams(0.05, 0.5)
    got = score(emb, recall_k=10, params=params)
    # i2t: 3 own and 3 foreign copies tied on top, 1 - C(3,1)/C(6,1); t2i: 2 images tied on top
    for m in (got.coarse, got.ftf):
        assert (m.i2t.r1, m.i2t.r5, m.t2i.r1, m.t2i.r5) == (50.0, 100.0, 50.0, 100.0)
    for m in (got.strict_coarse, got.strict_ftf):
        assert (m.i2t.r1, m.t2i.r1) == (100.0, 100.0)
    perm = torch.randperm(emb.text.shape[0], generator=torch.Generator().manual_seed(6))
    shuffled = Embeddings(coarse=emb.coarse, regions=emb.regions, text=emb.text[perm], owner=emb.owner[perm])
    again = score(shuffled, recall_k=10, params=params)
    assert (again.coarse, again.ftf, again.strict_ftf) == (got.coarse, got.ftf, got.strict_ftf)


def test_perfect_embeddings_score_100() -> None:
    got = score(_emb(30, 5), recall_k=10, params=RerankParams(0.05, 0.5))
    assert got.coarse.mR == 100.0 and got.ftf.mR == 100.0
    assert got.recall_ceiling == {"t2i": 100.0, "i2t": 100.0}
    assert got.search_seconds > 0


def test_i2t_counts_any_caption_and_t2i_own_image() -> None:
    emb = _emb(10, 5)
    # Move 4 of image 0's 5 captions onto image 1: t2i loses them, i2t of image 0 still hits via the 5th.
    emb.text[1:5] = emb.coarse[1]
    coarse = score(emb, recall_k=10, params=RerankParams(0.05, 0.0)).coarse
    assert coarse.t2i.r1 == pytest.approx(100 * 46 / 50)
    assert coarse.i2t.r1 < 100.0  # image 0's best captions belong to image 1
    assert coarse.i2t.r5 == 100.0  # its own 5th caption is within the top 5


def test_alpha_zero_equals_coarse_and_k_bounds_ceiling() -> None:
    emb = _emb(40, 5, d=8, seed=1)
    emb.text = F.normalize(emb.text + 0.6 * torch.randn_like(emb.text), dim=-1)
    wide = score(emb, recall_k=20, params=RerankParams(0.05, 0.0))
    assert wide.ftf.to_dict() == wide.coarse.to_dict()
    small = score(emb, recall_k=2, params=RerankParams(0.05, 0.0)).recall_ceiling
    assert small["t2i"] <= wide.recall_ceiling["t2i"] and small["t2i"] < 100.0
    # with K=2 nothing beyond rank 2 can be reranked, and R@10 still counts coarse ranks 3..10
    narrow = score(emb, recall_k=2, params=RerankParams(0.05, 1.0))
    assert narrow.ftf.t2i.r10 == narrow.coarse.t2i.r10


def test_evaluate_tiny_real_split() -> None:
    torch.manual_seed(0)
    part = load_dataset(TINY_CAPTIONS).split("test")
    part = CaptionSplit(part.name, part.split, part.images[:12])
    tok = train_tokenizer(part.captions, 200)
    cfg = FtfConfig(name="t", dim=16, image_size=48, widths=(8, 16), blocks=(1, 1), text_width=16, text_layers=1,
                    text_heads=2, vocab_size=tok.get_vocab_size())
    enc = FtfEncoder(FtfModel(cfg), tok, torch.device("cpu"), "0" * 64)
    rep = evaluate(enc, part, recall_k=5, pixels=load_pixels(part, 96, None))
    d = json.loads(json.dumps(rep.to_dict()))
    assert set(d["strict"]) == {"coarse", "ftf"}
    for block in ("coarse", "ftf"):
        assert d["strict"][block]["mR"] >= d[block]["mR"]
        assert set(d[block]) == {"t2i", "i2t", "mR"}
        for direction in ("t2i", "i2t"):
            r = d[block][direction]
            assert set(r) == {"r1", "r5", "r10"}
            assert 0.0 <= r["r1"] <= r["r5"] <= r["r10"] <= 100.0
        assert d[block]["mR"] == pytest.approx(np.mean([d[block][x][k] for x in ("t2i", "i2t") for k in ("r1", "r5", "r10")]), abs=0.01)
    assert d["num_images"] == 12 and d["num_captions"] == 60
    assert 0 <= d["recall_ceiling"]["t2i"] <= 100 and d["images_per_s"] > 0 and d["queries_per_s"] > 0
    # 12 images, R@10 of t2i by chance alone is ~10/12; an untrained model cannot be far from chance
    assert d["coarse"]["t2i"]["r10"] > 40
    table = format_report(rep)
    assert "coarse" in table and "FTF" in table and "mR" in table and "FTF, strict" in table
    assert "ablation" not in d

    # the ablation rows come from the same embeddings: the unbalanced variant is its own score, and
    # text->image with K=20 over 12 images reranks every image, the same candidates as K=100
    abl = evaluate(enc, part, recall_k=5, pixels=load_pixels(part, 96, None), ablation=True)
    assert list(abl.ablation) == ["FTF no balance, K=5", "FTF K=20", "FTF K=50", "FTF K=100"]
    assert abl.ablation["FTF K=20"].t2i == abl.ablation["FTF K=100"].t2i
    emb_params = RerankParams(enc.rerank_params.tau, enc.rerank_params.alpha, balanced=False)
    assert abl.ablation["FTF no balance, K=5"] == evaluate(enc, part, recall_k=5, rerank=emb_params,
                                                          pixels=load_pixels(part, 96, None)).ftf
    assert "FTF no balance, K=5" in format_report(abl)
    assert set(json.loads(json.dumps(abl.to_dict()))["ablation"]["FTF K=20"]) == {"t2i", "i2t", "mR"}
