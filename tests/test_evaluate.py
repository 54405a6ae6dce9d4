"""Evaluation protocol: known answers on constructed embeddings, and a real tiny split end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _data import TINY_CAPTIONS
from ftfsearch.training.datasets import CaptionSplit, load_dataset, load_pixels
from ftfsearch.training.evaluate import Embeddings, evaluate, format_report, score
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
    for block in ("coarse", "ftf"):
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
    assert "coarse" in table and "FTF" in table and "mR" in table
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
