"""The training recipe of the pretrained FTF family: multi-positive contrastive loss, class prompts,
probe-then-fine-tune phases, best-checkpoint keeping, and the resumable multi-view feature cache."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _data import SHARED_DATA
from ftfsearch.model.pretrained import PretrainedConfig
from ftfsearch.training.datasets import CaptionImage, CaptionSplit
from ftfsearch.training.train import CHECKPOINT_NAME, TrainConfig, _info_nce, build_texts, train

UCM = SHARED_DATA / "ucm" / "dataset_ucm.json"
SMALL = PretrainedConfig(name="pt-test", dim=32, hidden=64, branch_channels=16, train_image_blocks=1,
                         train_text_layers=1, head_norm=True)


def _config(tmp_path: Path, out: str, epochs: int, **kw: object) -> TrainConfig:
    settings: dict[str, object] = dict(
        data=[UCM], out=tmp_path / out, arch="pretrained", pretrained=PretrainedConfig(**SMALL.__dict__),
        epochs=epochs, batch_size=8, lr=2e-3, warmup_steps=1, cache_dir=tmp_path / "cache", max_train_images=24,
        max_steps_per_epoch=2, max_val_images=8, recall_k=5, taus=(0.05, 0.2), alphas=(0.5,), recall_ks=(5,),
        amp=False, feature_views=2, prompt_rate=0.5,
    )
    settings.update(kw)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _split() -> CaptionSplit:
    def im(name: str, caps: tuple[str, ...], label: str) -> CaptionImage:
        return CaptionImage(Path(name), caps, "train", label)

    return CaptionSplit("toy", "train", (
        im("a", ("many planes", "an airport"), "airplane"),
        im("b", ("many planes", "a runway"), "airplane"),
        im("c", ("green trees", "a forest"), "forest"),
    ))


def test_identical_captions_and_class_prompts_are_shared_positives() -> None:
    texts = build_texts([_split()])
    assert len(texts.texts) == len(set(texts.texts))  # one text per distinct string
    planes = texts.texts.index("many planes")
    prompt = texts.texts.index("an aerial image of airplanes at an airport")
    trees = texts.texts.index("green trees")
    pos = texts.positives(np.arange(3), np.asarray([planes, prompt, trees]))
    assert pos.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_multi_positive_loss_on_a_small_batch() -> None:
    # two images share a caption: its text is equally close to both
    logits = torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    shared = torch.tensor([[True, True, False], [False, False, True]])
    # text -> image: uniform target over the two images; image -> text: each image's one text
    row0 = -math.log(math.exp(2) / (2 * math.exp(2) + 1))
    row1 = -math.log(math.exp(3) / (math.exp(3) + 2))
    col = -math.log(math.exp(2) / (math.exp(2) + 1))
    col2 = -math.log(math.exp(3) / (math.exp(3) + 1))
    expected = 0.5 * ((row0 + row1) / 2 + (col + col + col2) / 3)
    assert float(_info_nce(logits, shared)) == pytest.approx(expected, rel=1e-6)
    square = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    assert float(_info_nce(square, torch.eye(2, dtype=torch.bool))) == pytest.approx(float(_info_nce(square)), rel=1e-6)


def test_probe_freezes_the_base_and_the_best_epoch_is_what_ships(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "m", epochs=3, probe_epochs=1, ema_decay=0.5, keep_checkpoint=True, hard_negatives=1,
                  mine_k=3)
    result = train(cfg)
    assert [h.phase for h in result.history] == ["probe", "finetune", "finetune"]
    ckpt = torch.load(cfg.out / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    best = ckpt["best"]
    assert best["epoch"] == 1 + int(np.argmax([h.val_ftf for h in result.history]))
    saved = load_file(str(cfg.out / "model.safetensors"))
    head = next(k for k in saved if k.startswith("image.coarse_head."))
    assert torch.allclose(saved[head].float(), best["model"][head].float(), atol=1e-3)
    assert ckpt["scaler"] is not None and ckpt["ema"] is not None


def test_probe_epoch_leaves_the_base_untouched(tmp_path: Path) -> None:
    from ftfsearch.model.pretrained import build_model

    cfg = _config(tmp_path, "p", epochs=1, probe_epochs=1, keep_checkpoint=True)
    train(cfg)
    ckpt = torch.load(cfg.out / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    fresh = build_model(PretrainedConfig(**SMALL.__dict__)).state_dict()
    top_block = max(int(k.split(".")[3]) for k in fresh if k.startswith("image.trunk._blocks."))
    key = next(k for k in fresh if k.startswith(f"image.trunk._blocks.{top_block}.") and k.endswith("weight"))
    assert torch.equal(ckpt["model"][key], fresh[key])
    head = next(k for k in fresh if k.startswith("image.coarse_head."))
    assert not torch.equal(ckpt["model"][head], fresh[head])


def test_view_cache_resumes_and_is_shared(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train(_config(tmp_path, "a", epochs=1, feature_views=3))
    views = sorted((tmp_path / "cache").glob("features-image-*-v*.npy"))
    assert len(views) == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in views}
    # a run killed while writing left a file cut short: it is rebuilt, the others are reused
    data = views[1].read_bytes()
    views[1].write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="ftfsearch.training.features"):
        train(_config(tmp_path, "b", epochs=1, feature_views=3))
    assert any(views[1].name in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    assert views[0].stat().st_mtime_ns == stamps[views[0].name]
    assert views[2].stat().st_mtime_ns == stamps[views[2].name]
    assert np.load(views[1]).shape == np.load(views[0]).shape
    # fewer views reuse the first ones; nothing is rebuilt
    before = {p.name: p.stat().st_mtime_ns for p in views}
    train(_config(tmp_path, "c", epochs=1, feature_views=2))
    assert {p.name: p.stat().st_mtime_ns for p in views} == before
