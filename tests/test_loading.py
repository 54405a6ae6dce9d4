"""load_encoder: names, directories, layouts, the default, devices; all offline and fast."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _data import SHARED_DATA
from ftfsearch.errors import BadInput, ModelNotFound
from ftfsearch.model.base import Encoder
from ftfsearch.model.clip import ClipEncoder
from ftfsearch.model.loading import load_encoder
from ftfsearch.model.sources import locate_model, resolve_device
from _tiny import build_tiny_clip

RSICD = SHARED_DATA / "rsicd"


@pytest.fixture(scope="module")
def captions() -> list[str]:
    images = json.loads((RSICD / "dataset_rsicd.json").read_text())["images"]
    return [s["raw"] for im in images[:300] for s in im["sentences"]]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, captions: list[str]) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0, corpus=captions)


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    arrays = [np.asarray(Image.open(RSICD / "images" / f"{i:05d}.jpg").convert("RGB").resize((96, 96))) for i in (1, 2)]
    return torch.from_numpy(np.stack(arrays))


def _vectors(path: Path | str, tiles: torch.Tensor, **options: object) -> tuple[torch.Tensor, torch.Tensor]:
    enc = load_encoder(str(path), device="cpu", **options)  # type: ignore[arg-type]
    coarse, _ = enc.encode_images(tiles)
    return coarse, enc.encode_text(["two ships in a harbor", "a green park"])


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(BadInput, match="^device "):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="^device cuda.*not available"):
            resolve_device("cuda")
        with pytest.raises(BadInput, match="^device "):
            load_encoder(None, device="cuda")


@pytest.mark.usefixtures("shared_data")
def test_sentence_transformers_layouts_give_the_same_model(tmp_path: Path, tiny_dir: Path, captions: list[str], tiles: torch.Tensor) -> None:
    """Plain transformers, the hub's 0_CLIPModel layout and a sentence-transformers 6 save load alike."""
    legacy = build_tiny_clip(tmp_path / "legacy", seed=0, corpus=captions, layout="sentence-transformers")
    assert (legacy / "modules.json").is_file() and (legacy / "0_CLIPModel" / "vocab.json").is_file()
    from sentence_transformers import SentenceTransformer

    modern = tmp_path / "modern"
    SentenceTransformer(str(tiny_dir), device="cpu").save(str(modern))
    assert json.loads((modern / "modules.json").read_text())[0]["path"] == ""
    assert not (modern / "preprocessor_config.json").exists()  # image settings live in processor_config.json
    ref = _vectors(tiny_dir, tiles)
    for path in (legacy, modern):
        coarse, text = _vectors(path, tiles)
        torch.testing.assert_close(coarse, ref[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(text, ref[1], atol=1e-6, rtol=0)


@pytest.mark.usefixtures("shared_data")
def test_name_from_the_local_hub_cache(tmp_path: Path, tiny_dir: Path, tiles: torch.Tensor) -> None:
    """A bare name resolves like sentence-transformers does: sentence-transformers/<name> in the cache."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--sentence-transformers--tiny-clip"
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in ("tiny-clip", "sentence-transformers/tiny-clip"):
        source = locate_model(name, cache_dir=tmp_path / "hub")
        assert source.root == repo / "snapshots" / commit and source.label == "tiny-clip"
    enc = load_encoder("tiny-clip", device="cpu", cache_dir=tmp_path / "hub", region_mode="tokens")
    assert enc.id.startswith("clip:tiny-clip@") and enc.id.endswith(":tokens:grid-1-2-3")
    assert enc.id == load_encoder(str(tiny_dir), device="cpu", region_mode="tokens").id
    coarse, regions = enc.encode_images(tiles)
    assert coarse.shape == (2, 32) and regions.shape == (2, 14, 32)


@pytest.mark.parametrize("name", ["clip-ViT-B-32", "sentence-transformers/clip-ViT-B-32", "openai/clip-vit-base-patch32"])
def test_unknown_name_fails_fast_offline(name: str, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ModelNotFound) as info:
        load_encoder(name, device="cpu", cache_dir=tmp_path)
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert name in message and "not available offline" in message and "set model to the directory of a downloaded copy" in message
    assert "\n" not in message


def test_unknown_name_in_the_default_cache_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(ModelNotFound, match="ftfsearch-no-such-model.*offline"):
        load_encoder("ftfsearch-no-such-model", device="cpu")
    assert time.monotonic() - start < 5.0


@pytest.mark.usefixtures("shared_data")
def test_paths_that_are_not_models(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(ModelNotFound, match="no such directory"):
        load_encoder(str(tmp_path / "missing" / "model"), device="cpu")
    with pytest.raises(ModelNotFound, match="config.json"):
        load_encoder(str(tmp_path), device="cpu")  # exists, empty
    with pytest.raises(BadInput, match="is a file"):
        load_encoder(str(tiny_dir / "config.json"), device="cpu")
    with pytest.raises(BadInput, match="empty"):
        load_encoder("  ", device="cpu")


@pytest.mark.parametrize(
    ("remove", "match"),
    [
        (["model.safetensors"], "no weights"),
        (["tokenizer.json"], "no tokenizer"),
        (["config.json"], "config.json"),
    ],
)
@pytest.mark.usefixtures("shared_data")
def test_incomplete_directory_names_what_is_missing(remove: list[str], match: str, tmp_path: Path, tiny_dir: Path) -> None:
    copy = shutil.copytree(tiny_dir, tmp_path / "copy")
    for name in remove:
        (copy / name).unlink()
    with pytest.raises(ModelNotFound, match=match):
        load_encoder(str(copy), device="cpu")


@pytest.mark.usefixtures("shared_data")
def test_broken_directories(tmp_path: Path, tiny_dir: Path) -> None:
    st = tmp_path / "st"
    st.mkdir()
    (st / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]))
    with pytest.raises(ModelNotFound, match="0_CLIPModel.*config.json.*missing"):
        load_encoder(str(st), device="cpu")
    (st / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"}, {"idx": 1, "path": "1_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(BadInput, match="Dense"):
        load_encoder(str(st), device="cpu")

    truncated = shutil.copytree(tiny_dir, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelNotFound, match="cannot be loaded"):
        load_encoder(str(truncated), device="cpu")

    bert = shutil.copytree(tiny_dir, tmp_path / "bert")
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(BadInput, match="model_type 'bert' is not 'clip'"):
        load_encoder(str(bert), device="cpu")


def test_default_model_is_the_pretrained_family_and_the_earlier_one_still_loads() -> None:
    from ftfsearch.model.loading import SCRATCH_MODEL_DIR
    from ftfsearch.model.pretrained import PretrainedFtfEncoder

    enc = load_encoder(None, device="cpu")
    assert isinstance(enc, PretrainedFtfEncoder) and enc.id.startswith("ftf:ftf-lite0-minilm:")
    old = load_encoder(str(SCRATCH_MODEL_DIR), device="cpu")
    assert isinstance(old, Encoder) and old.id == "ftf:ftf-small:4a8438750dad"


@pytest.mark.usefixtures("shared_data")
def test_ftf_directory_goes_to_the_ftf_loader(tmp_path: Path, captions: list[str], tiles: torch.Tensor) -> None:
    ftf = pytest.importorskip("ftfsearch.model.ftf")
    from ftfsearch.model.text import train_tokenizer

    tokenizer = train_tokenizer(captions, vocab_size=300)
    config = ftf.FtfConfig(dim=16, image_size=32, widths=(8, 16), blocks=(1, 1), vocab_size=tokenizer.get_vocab_size(),
                           text_width=16, text_layers=1, text_heads=2)
    path = ftf.save_ftf_model(ftf.FtfModel(config), tokenizer, tmp_path / "ftf-tiny")
    enc = load_encoder(str(path), device="cpu")
    assert isinstance(enc, Encoder) and not isinstance(enc, ClipEncoder)
    coarse, regions = enc.encode_images(tiles)
    assert coarse.shape == (2, 16) and regions.shape[0] == 2
