"""The FTF dual encoder: Encoder protocol, region pooling, save/load round trip, bad model dirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _data import SHARED_DATA
from ftfsearch.training.datasets import CaptionSplit, load_dataset, load_pixels
from ftfsearch.errors import ModelNotFound
from ftfsearch.model.base import Encoder, RerankParams
from ftfsearch.model.ftf import (
    CONFIG_NAME,
    FtfConfig,
    FtfModel,
    load_ftf_encoder,
    save_ftf_model,
)
from ftfsearch.model.regions import box_pooling_matrix, layout_boxes
from ftfsearch.model.text import encode_batch, train_tokenizer

UCM = SHARED_DATA / "ucm" / "dataset_ucm.json"

TINY = dict(dim=32, image_size=64, widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1), text_width=32,
            text_layers=1, text_heads=2, vocab_size=300)


@pytest.fixture(scope="module")
def real() -> tuple[CaptionSplit, np.ndarray]:
    part = load_dataset(UCM).split("test")
    part = CaptionSplit(part.name, part.split, part.images[:6])
    return part, load_pixels(part, 256, None)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, real: tuple[CaptionSplit, np.ndarray]) -> Path:
    torch.manual_seed(0)
    caps = [c for im in load_dataset(UCM).split("train").images[:200] for c in im.captions]
    tok = train_tokenizer(caps, 300)
    cfg = FtfConfig(name="tiny", **{**TINY, "vocab_size": tok.get_vocab_size()}, rerank=RerankParams(0.1, 0.3))
    model = FtfModel(cfg)
    # Non-trivial BN statistics so the round trip checks more than the init values.
    model.train()
    with torch.no_grad():
        model.forward_images(torch.randn(8, 3, 64, 64))
    return save_ftf_model(model, tok, tmp_path_factory.mktemp("m") / "tiny")


def test_box_pooling_matches_adaptive_pool() -> None:
    fmap = torch.randn(2, 5, 6, 6)
    pool = box_pooling_matrix(layout_boxes("grid-1-2-3"), 6, 6)
    pooled = torch.einsum("rn,bcn->brc", pool, fmap.flatten(2))
    expect = torch.cat([F.adaptive_avg_pool2d(fmap, n).flatten(2) for n in (1, 2, 3)], dim=2).transpose(1, 2)
    torch.testing.assert_close(pooled, expect)
    # fractional overlap: a 3x3 grid over a 4x4 map still averages to the whole-map mean
    p4 = box_pooling_matrix(layout_boxes("grid-3"), 4, 4)
    torch.testing.assert_close(p4.sum(0) / 9, torch.full((16,), 1 / 16))


@pytest.mark.usefixtures("shared_data")
def test_encoder_protocol_and_outputs(model_dir: Path, real: tuple[CaptionSplit, np.ndarray]) -> None:
    part, pix = real
    enc = load_ftf_encoder(model_dir, torch.device("cpu"))
    assert isinstance(enc, Encoder)
    assert enc.dim == 32 and enc.num_regions == 14 and enc.region_layout == "grid-1-2-3"
    assert enc.region_boxes.shape == (14, 4)
    assert enc.rerank_params == RerankParams(0.1, 0.3, True)
    assert enc.id.startswith("ftf:tiny:") and len(enc.id.split(":")[2]) == 12
    g, r = enc.encode_images(torch.from_numpy(pix))
    assert g.shape == (6, 32) and r.shape == (6, 14, 32) and g.dtype == torch.float32
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(r.norm(dim=-1), torch.ones(6, 14))
    # any tile size is resized inside; 256 and 224 inputs of the same images stay close
    g224, _ = enc.encode_images(torch.from_numpy(load_pixels(part, 224, None)))
    assert float((g * g224).sum(-1).min()) > 0.9
    t = enc.encode_text(part.captions[:4] + [""])
    assert t.shape == (5, 32)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(5))
    assert enc.count_text_tokens("many buildings near a river") >= 5


@pytest.mark.usefixtures("shared_data")
def test_save_load_round_trip_identical(model_dir: Path, real: tuple[CaptionSplit, np.ndarray], tmp_path: Path) -> None:
    part, pix = real
    a = load_ftf_encoder(model_dir, torch.device("cpu"))
    save_ftf_model(a.model, a.tokenizer, tmp_path / "again")
    b = load_ftf_encoder(tmp_path / "again", torch.device("cpu"))

    assert a.id == b.id  # weights are stored float16 and reload bit-identically
    ga, ra = a.encode_images(torch.from_numpy(pix))
    gb, rb = b.encode_images(torch.from_numpy(pix))
    assert torch.equal(ga, gb) and torch.equal(ra, rb)
    assert torch.equal(a.encode_text(part.captions), b.encode_text(part.captions))


@pytest.mark.usefixtures("shared_data")
def test_text_truncation(model_dir: Path) -> None:
    enc = load_ftf_encoder(model_dir, torch.device("cpu"))
    long = " ".join(["building"] * 100)
    assert enc.count_text_tokens(long) >= 100
    ids = encode_batch(enc.tokenizer, [long, "river"], enc.max_text_tokens)
    assert ids.shape == (2, enc.max_text_tokens)


@pytest.mark.usefixtures("shared_data")
def test_bad_model_dirs(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="incomplete"):
        load_ftf_encoder(tmp_path, torch.device("cpu"))
    newer = tmp_path / "newer"
    newer.mkdir()
    for f in model_dir.iterdir():
        (newer / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((newer / CONFIG_NAME).read_text())
    (newer / CONFIG_NAME).write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ModelNotFound, match="newer"):
        load_ftf_encoder(newer, torch.device("cpu"))
    (newer / CONFIG_NAME).write_text(json.dumps({**cfg, "dim": 64}))
    with pytest.raises(ModelNotFound, match="do not match"):
        load_ftf_encoder(newer, torch.device("cpu"))


def test_region_branch_reads_the_finer_map_and_format_1_dirs_load_without_it() -> None:
    cfg = FtfConfig(**TINY)
    assert cfg.region_branch  # new models: regions from the second-to-last stage (16x16 maps at 64 px here)
    model = FtfModel(cfg).eval()
    seen: list[tuple[int, ...]] = []
    assert model.image.region_branch is not None
    model.image.region_branch.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    g, r = model.forward_images(torch.randn(2, 3, 64, 64))
    assert g.shape == (2, 32) and r.shape == (2, 14, 32)
    assert seen == [(2, 16, 8, 8)]  # twice the resolution of the last stage's 4x4 map
    old = {k: v for k, v in FtfConfig(**TINY).to_dict().items() if k != "region_branch"}
    old["format_version"] = 1
    legacy = FtfConfig.from_dict(old)
    assert not legacy.region_branch and FtfModel(legacy).image.region_branch is None
