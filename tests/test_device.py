"""CUDA paths checked without a GPU: no Hub kernel is reached for when a model on CUDA changes mode
(the device faked through transformers' own override), the device labels, the TF32 policy and the
encoder's chunk size by device. ``python -m bench gpu`` runs the real thing on a GPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from ftfsearch.model.pretrained import CPU_IMAGE_CHUNK, CUDA_IMAGE_CHUNK, image_chunk
from ftfsearch.model.sources import describe_device, device_label, exact_float32


@pytest.fixture
def fake_cuda_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the ``kernels`` package asks of a CUDA device, answered without one (an H100's
    compute capability), so that a model whose kernel device says ``cuda`` goes the CUDA way."""
    pytest.importorskip("kernels", reason="without the kernels package transformers has no Hub kernels to load")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))


def _train_then_eval_on_cuda(model: Any) -> None:
    """What training does at each validation, with the model's kernel device faked to CUDA (the
    attribute transformers itself consults before the model's parameters): with Hub kernels on,
    going back to eval mode fetched ``kernels-community/activation`` and offline mode made that a
    ValueError (``train --device cuda`` died after epoch 1, with no checkpoint)."""
    model._kernels_device = "cuda"
    model.train()
    model.eval()
    model.train()


def test_minilm_changes_mode_on_cuda_without_the_hub(fake_cuda_kernels: None) -> None:
    from ftfsearch.model.backbones import load_minilm

    bert = load_minilm()
    assert os.environ["USE_HUB_KERNELS"] == "0" and os.environ["HF_HUB_OFFLINE"] == "1"
    assert not bert.use_kernels
    _train_then_eval_on_cuda(bert)
    out = bert.eval()(input_ids=torch.tensor([[101, 2314, 102]]))
    assert out.last_hidden_state.shape == (1, 3, 384)


def test_clip_changes_mode_on_cuda_without_the_hub(fake_cuda_kernels: None, tmp_path: Path) -> None:
    from ftfsearch.model.clip import ClipEncoder
    from _tiny import build_tiny_clip

    enc = ClipEncoder(build_tiny_clip(tmp_path / "clip"), "cpu", region_mode="tokens")
    assert not enc.model.use_kernels
    _train_then_eval_on_cuda(enc.model)
    enc.model.eval()
    assert enc.encode_text(["a river"]).shape == (1, enc.dim)


def test_device_labels() -> None:
    assert device_label(torch.device("cpu")) == "cpu"
    assert device_label(torch.device("cuda:1")) == "cuda:1"
    assert describe_device("cpu") == "cpu"
    assert describe_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert describe_device("banana") == "banana (not available here)"


def test_tf32_is_off_once_an_encoder_is_made_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA vectors share a model id with CPU vectors: an encoder on CUDA turns TF32 off (cuDNN's
    convolutions use it by default), and one on the CPU leaves the process' settings alone."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        exact_float32(torch.device("cpu"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        exact_float32(torch.device("cuda"))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_image_chunk_by_device() -> None:
    from ftfsearch.model.loading import load_encoder

    assert image_chunk(torch.device("cpu")) == CPU_IMAGE_CHUNK == 16
    assert image_chunk(torch.device("cuda")) == CUDA_IMAGE_CHUNK > CPU_IMAGE_CHUNK
    enc = load_encoder(None, device="cpu")
    assert getattr(enc, "batch_size") == CPU_IMAGE_CHUNK
