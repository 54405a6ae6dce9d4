"""Training on a few real images: the loss goes down, the output loads, a killed run resumes.

The images are the committed tiny caption set (``tests/data/captions``): no ``../shared`` needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _data import TINY_CAPTIONS
from ftfsearch.errors import BadInput
from ftfsearch.model.ftf import FtfConfig, FtfModel, load_ftf_encoder
from ftfsearch.model.sources import resolve_device
from ftfsearch.model.text import encode_batch, train_tokenizer
from ftfsearch.training.train import (
    CHECKPOINT_NAME,
    LossHead,
    LossWeights,
    TrainConfig,
    TrainProgress,
    augment,
    compute_losses,
    train,
)
from ftfsearch.training.datasets import CaptionSplit, load_dataset, load_pixels


EXACT = resolve_device("auto").type == "cpu"
"""Two runs give bit-identical losses on the CPU; CUDA's kernels may sum in another order."""
TINY = FtfConfig(name="tiny", dim=32, image_size=48, widths=(8, 16, 32), blocks=(1, 1, 1), text_width=32,
                 text_layers=1, text_heads=2, vocab_size=300)


def _config(tmp_path: Path, out: str, epochs: int, **kw: object) -> TrainConfig:
    return TrainConfig(
        data=[TINY_CAPTIONS], out=tmp_path / out, epochs=epochs, batch_size=8, lr=3e-3, warmup_steps=1,
        model=FtfConfig(**{**TINY.__dict__}), cache_dir=tmp_path / "cache", max_train_images=24,
        max_steps_per_epoch=2, max_val_images=10, recall_k=5, taus=(0.05, 0.2), alphas=(0.5,), amp=False, **kw,
    )


@pytest.mark.parametrize(
    "weights, terms",
    [
        (LossWeights(), {"coarse", "fine", "text", "region"}),
        (LossWeights(coarse=0.0, fine=0.0, text=0.0, region=0.0, rerank=1.0), {"coarse", "rerank"}),
    ],
    ids=["default", "rerank-only"],
)
def test_few_steps_lower_the_loss(weights: LossWeights, terms: set[str]) -> None:
    torch.manual_seed(0)
    part = load_dataset(TINY_CAPTIONS).split("train")
    part = CaptionSplit(part.name, part.split, part.images[:16])
    pix = torch.from_numpy(load_pixels(part, 54, None))
    tok = train_tokenizer(part.captions, 300)
    cfg = FtfConfig(**{**TINY.__dict__, "vocab_size": tok.get_vocab_size()})
    model, head = FtfModel(cfg), LossHead(4 if weights.rerank else 3)
    caps = [im.captions[0] for im in part.images] + [im.captions[1] for im in part.images]
    ids = encode_batch(tok, caps, cfg.max_text_tokens)
    x = model.normalize_pixels(augment(pix, 48, torch.Generator().manual_seed(0)))
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=3e-3)

    def loss_now() -> tuple[torch.Tensor, dict[str, float]]:
        g, r = model.forward_images(x)
        return compute_losses(model.forward_text(ids), g, r, head, weights, 0.1, True)

    first, parts = loss_now()
    assert set(parts) == terms  # the coarse term is always reported, weighted or not
    for _ in range(15):
        loss, _ = loss_now()
        opt.zero_grad()
        loss.backward()
        opt.step()
    last, _ = loss_now()
    assert float(last.detach()) < 0.8 * float(first.detach())


def test_augment_shapes_and_range() -> None:
    batch = torch.randint(0, 256, (4, 60, 60, 3), dtype=torch.uint8)
    out = augment(batch, 32, torch.Generator().manual_seed(1))
    assert out.shape == (4, 3, 32, 32) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


class _Kill(Exception):
    pass


def test_train_writes_model_and_resumes_after_kill(tmp_path: Path) -> None:
    # uninterrupted reference run, 2 epochs
    ref = train(_config(tmp_path, "ref", 2))
    assert [h.epoch for h in ref.history] == [1, 2]
    assert not (ref.out_dir / CHECKPOINT_NAME).exists()
    enc = load_ftf_encoder(ref.out_dir, torch.device("cpu"))
    assert enc.rerank_params == ref.rerank and enc.rerank_params.tau in (0.05, 0.2)
    assert (ref.out_dir / "train_log.json").is_file()

    # the same run killed in the middle of epoch 2
    def killer(p: TrainProgress) -> None:
        if p.phase == "train" and p.epoch == 2:
            raise _Kill

    with pytest.raises(_Kill):
        train(_config(tmp_path, "run", 2), killer)
    assert (tmp_path / "run" / CHECKPOINT_NAME).is_file()
    seen: list[TrainProgress] = []
    res = train(_config(tmp_path, "run", 2, resume=True), seen.append)
    assert [h.epoch for h in res.history] == [1, 2]
    assert all(p.epoch == 2 for p in seen if p.phase == "train")  # epoch 1 was not redone
    if EXACT:
        assert res.history[0].loss == ref.history[0].loss
    else:
        assert res.history[0].loss == pytest.approx(ref.history[0].loss, rel=1e-3)
    # resumed training follows the same data order and state: same result as the uninterrupted run
    assert res.history[1].loss == pytest.approx(ref.history[1].loss, rel=1e-3)
    a = load_ftf_encoder(res.out_dir, torch.device("cpu"))
    pix = torch.from_numpy(load_pixels(load_dataset(TINY_CAPTIONS).split("test"), 64, tmp_path / "cache")[:4])
    np.testing.assert_allclose(a.encode_images(pix)[0].numpy(), enc.encode_images(pix)[0].numpy(), atol=2e-2)


class _GrowingScaler(torch.amp.GradScaler):
    """A loss scaler that is on whatever the device (on the CPU here), doubling its scale every
    step: what the float16 path on CUDA keeps, made visible without a GPU."""

    def __init__(self, device: str = "cuda", enabled: bool = True) -> None:
        super().__init__("cpu", init_scale=2.0**4, growth_interval=1, enabled=True)


def test_loss_scale_goes_into_the_checkpoint_and_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed run goes on with the loss scale its checkpoint recorded, not a fresh one: after
    an interruption the scale ends where the uninterrupted run's does."""
    monkeypatch.setattr(torch.amp, "GradScaler", _GrowingScaler)
    steps = 2  # max_steps_per_epoch
    train(_config(tmp_path, "ref", 2, keep_checkpoint=True, device="cpu"))
    final = torch.load(tmp_path / "ref" / CHECKPOINT_NAME, weights_only=False)["scaler"]
    assert final["scale"] == 2.0**4 * 2 ** (2 * steps)

    def killer(p: TrainProgress) -> None:
        if p.phase == "train" and p.epoch == 2:
            raise _Kill

    with pytest.raises(_Kill):
        train(_config(tmp_path, "run", 2, keep_checkpoint=True, device="cpu"), killer)
    after_one = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=False)["scaler"]
    assert after_one["scale"] == 2.0**4 * 2**steps
    train(_config(tmp_path, "run", 2, resume=True, keep_checkpoint=True, device="cpu"))
    resumed = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=False)["scaler"]
    assert resumed == final


def test_resume_without_checkpoint_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no checkpoint"):
        train(_config(tmp_path, "none", 1, resume=True))


def test_finetune_tiny_clip_base(tmp_path: Path) -> None:
    from ftfsearch.model.loading import load_encoder
    from _tiny import build_tiny_clip

    base = build_tiny_clip(tmp_path / "clip")
    cfg = _config(tmp_path, "ft", 1, base=str(base))
    res = train(cfg)
    assert res.history[0].loss > 0 and (res.out_dir / "ftf_rerank.json").is_file()
    enc = load_encoder(str(res.out_dir), "cpu")  # the fine-tuned model records its region mode
    assert enc.region_mode == "tokens" and enc.rerank_params == res.rerank
    assert load_encoder(str(base), "cpu").region_mode == "crops"
    before = load_encoder(str(base), "cpu", region_mode="tokens")
    texts = ["many buildings", "a river"]
    assert not torch.allclose(enc.encode_text(texts), before.encode_text(texts))  # the weights moved
    g, r = enc.encode_images(torch.randint(0, 256, (2, 80, 80, 3), dtype=torch.uint8))
    assert g.shape == (2, enc.dim) and r.shape == (2, 14, enc.dim)
