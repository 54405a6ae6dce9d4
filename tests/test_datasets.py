"""Caption dataset loading on the committed tiny UCM cut and the real RSICD file, and the one-line errors
on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _data import TINY_CAPTIONS
from ftfsearch.training.datasets import CaptionSplit, load_dataset, load_pixels
from ftfsearch.errors import DatasetError


def test_rsicd_splits_and_captions(shared_data: Path) -> None:
    ds = load_dataset(shared_data / "rsicd" / "dataset_rsicd.json")
    assert ds.name == "rsicd"
    sizes = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 8734, "val": 1094, "test": 1093}
    test = ds.split("test")
    assert len(test.captions) == 5 * len(test)
    owner = test.caption_owner
    assert owner.shape == (5 * len(test),) and owner[0] == 0 and owner[-1] == len(test) - 1
    assert all(im.path.is_file() for im in test.images[:5])


def test_tiny_caption_set_is_a_faithful_cut_of_ucm(shared_data: Path) -> None:
    # The committed fixture keeps UCM's own entries and pixels (only smaller), so tests on it test real data.
    from PIL import Image

    ucm = shared_data / "ucm"
    full = {im["filename"]: im for im in json.loads((ucm / "dataset_ucm.json").read_text())["images"]}
    tiny = json.loads(TINY_CAPTIONS.read_text())["images"]
    assert {im["split"] for im in tiny} == {"train", "val", "test"}
    for entry in tiny:
        assert entry == full[entry["filename"]]
        with Image.open(TINY_CAPTIONS.parent / "images" / entry["filename"]) as small:
            ours = np.asarray(small.convert("RGB"), dtype=np.float32)
        with Image.open(ucm / "images" / entry["filename"]) as big:
            theirs = np.asarray(big.convert("RGB").resize(small.size, Image.Resampling.LANCZOS), dtype=np.float32)
        assert np.abs(ours - theirs).mean() < 6.0  # JPEG re-encoding only


def test_ucm_images_resolve_from_explicit_dir(tmp_path: Path) -> None:
    doc = json.loads(TINY_CAPTIONS.read_text())
    doc["images"] = doc["images"][:3]
    js = tmp_path / "dataset_small.json"
    js.write_text(json.dumps(doc))
    ds = load_dataset(js, TINY_CAPTIONS.parent / "images")
    assert len(ds.images) == 3 and ds.images[0].path.parent == TINY_CAPTIONS.parent / "images"
    with pytest.raises(DatasetError, match="image directory not found"):
        load_dataset(js)  # no images/ beside this json


def test_load_pixels_caches(tmp_path: Path) -> None:
    part = load_dataset(TINY_CAPTIONS).split("test")
    part = CaptionSplit(part.name, part.split, part.images[:4])
    a = load_pixels(part, 64, tmp_path)
    assert a.shape == (4, 64, 64, 3) and a.dtype == np.uint8 and a.std() > 5
    cached = list(tmp_path.glob("*.npy"))
    assert len(cached) == 1
    b = load_pixels(part, 64, tmp_path)
    np.testing.assert_array_equal(a, b)


def test_relative_and_absolute_paths_share_the_pixel_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TINY_CAPTIONS.parent)
    rel = load_dataset(Path(TINY_CAPTIONS.name)).split("test")
    absolute = load_dataset(TINY_CAPTIONS).split("test")
    assert not rel.images[0].path.is_absolute() and absolute.images[0].path.is_absolute()
    load_pixels(CaptionSplit(rel.name, rel.split, rel.images[:3]), 32, tmp_path)
    load_pixels(CaptionSplit(absolute.name, absolute.split, absolute.images[:3]), 32, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1


def _write(tmp_path: Path, content: str) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    p = tmp_path / "dataset_bad.json"
    p.write_text(content)
    return p


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid json"),
        (json.dumps({"dataset": "x"}), "no 'images' list"),
        (json.dumps({"images": []}), "'images' list is empty"),
        (json.dumps({"images": [{"filename": "a.jpg", "sentences": [{"raw": "x"}]}]}), "has no 'split'"),
        (json.dumps({"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "x"}]}]}), "missing"),
    ],
)
def test_bad_dataset_files(tmp_path: Path, content: str, match: str) -> None:
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset(_write(tmp_path, content))
    assert "\n" not in str(info.value)


def test_empty_split_and_missing_file(tmp_path: Path) -> None:
    doc = json.loads(TINY_CAPTIONS.read_text())
    doc["images"] = [dict(im, split="train") for im in doc["images"][:2]]
    js = tmp_path / "dataset_x.json"
    js.write_text(json.dumps(doc))
    ds = load_dataset(js, TINY_CAPTIONS.parent / "images")
    with pytest.raises(DatasetError, match="split 'test' has no images"):
        ds.split("test")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nope.json")
