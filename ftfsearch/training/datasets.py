"""Caption datasets in the usual ``dataset_*.json`` layout (RSICD, UCM-Captions, RSITMD, Sydney).

The layout is ``{"dataset": name, "images": [{"filename", "split", "sentences": [{"raw", ...}], ...}]}``
with images beside the json in ``images/`` (or in a directory given explicitly). ``tokens`` lists are
optional and ignored: the model has its own tokenizer.

Decoding JPEGs every epoch would dominate training on a CPU, so :func:`load_pixels` decodes and
resizes a split once into a uint8 ``.npy`` cache keyed by the file list and the size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ftfsearch.errors import BadInput, DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CaptionImage:
    """One image and its captions."""

    path: Path
    captions: tuple[str, ...]
    split: str
    label: str | None = None


@dataclass(frozen=True)
class CaptionSplit:
    """The images of one split of one dataset, in file order."""

    name: str
    """Dataset name (e.g. ``rsicd``)."""
    split: str
    images: tuple[CaptionImage, ...]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def captions(self) -> list[str]:
        """All captions, image-major (image i owns the entries listed by :attr:`caption_owner`)."""
        return [c for im in self.images for c in im.captions]

    @property
    def caption_owner(self) -> np.ndarray:
        """``[num_captions]`` index of the image each caption of :attr:`captions` belongs to."""
        return np.asarray([i for i, im in enumerate(self.images) for _ in im.captions], dtype=np.int64)


@dataclass(frozen=True)
class CaptionDataset:
    """A parsed ``dataset_*.json``: its name, file and images by split."""

    name: str
    json_path: Path
    image_dir: Path
    images: tuple[CaptionImage, ...]

    def split(self, split: str) -> CaptionSplit:
        """The images of one split; an empty or unknown split is a :class:`DatasetError`."""
        chosen = tuple(im for im in self.images if im.split == split)
        if not chosen:
            present = sorted({im.split for im in self.images})
            raise DatasetError(
                f"{self.json_path}: split {split!r} has no images (splits present: {', '.join(present)})"
            )
        return CaptionSplit(name=self.name, split=split, images=chosen)


def load_dataset(json_path: Path | str, image_dir: Path | str | None = None, check_files: bool = True) -> CaptionDataset:
    """Parse a caption dataset file; images resolve in ``image_dir`` or ``<json dir>/images``.

    Every problem (unreadable or invalid json, missing ``images`` or ``split``/``sentences`` keys,
    missing image files) is one :class:`DatasetError` naming the file and what to do.
    """
    json_path = Path(json_path)
    doc = _read_document(json_path)
    name = str(doc.get("dataset") or json_path.stem.removeprefix("dataset_"))
    if image_dir is None:
        image_dir = json_path.parent / "images"
    image_dir = Path(image_dir)
    if check_files and not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: image directory not found; put the images there or pass their folder as `images`")

    entries = doc["images"]
    images = tuple(_caption_image(json_path, i, entry, image_dir) for i, entry in enumerate(entries))
    missing = [str(e["filename"]) for e, im in zip(entries, images) if not im.path.is_file()] if check_files else []
    if missing:
        raise DatasetError(
            f"{image_dir}: {len(missing)} image file(s) listed in {json_path.name} are missing "
            f"(first: {missing[0]}); point `images` at the folder that holds them"
        )
    return CaptionDataset(name=name, json_path=json_path, image_dir=image_dir, images=images)


def _read_document(json_path: Path) -> dict[str, Any]:
    """The parsed file, checked to hold a non-empty ``images`` list."""
    try:
        text = json_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{json_path}: dataset file not found; pass a dataset_*.json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{json_path}: cannot read the dataset file ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{json_path}: not valid json (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DatasetError(f"{json_path}: no 'images' list; expected the dataset_*.json caption layout")
    if not doc["images"]:
        raise DatasetError(f"{json_path}: the 'images' list is empty")
    return doc


def _caption_image(json_path: Path, i: int, entry: Any, image_dir: Path) -> CaptionImage:
    """Entry ``i`` of the ``images`` list, checked for a file name, a split and raw captions."""
    if not isinstance(entry, dict) or "filename" not in entry:
        raise DatasetError(f"{json_path}: images[{i}] has no 'filename'")
    if "split" not in entry:
        raise DatasetError(f"{json_path}: images[{i}] ({entry['filename']}) has no 'split'; expected train/val/test")
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise DatasetError(f"{json_path}: images[{i}] ({entry['filename']}) has no 'sentences'")
    try:
        captions = tuple(str(s["raw"]).strip() for s in sentences)
    except (TypeError, KeyError):
        raise DatasetError(f"{json_path}: images[{i}] ({entry['filename']}): every sentence needs a 'raw' text") from None
    label = entry.get("label")
    return CaptionImage(path=image_dir / str(entry["filename"]), captions=captions, split=str(entry["split"]),
                        label=str(label) if label is not None else None)


def load_datasets(
    json_paths: Sequence[Path], image_dirs: Sequence[Path | None] | None = None
) -> list[CaptionDataset]:
    """Several ``--data`` files, each with its ``--images`` folder in the same order (or none)."""
    dirs: list[Path | None] = list(image_dirs) if image_dirs else [None] * len(json_paths)
    if len(dirs) != len(json_paths):
        raise BadInput(
            f"`images` given {len(dirs)} times for {len(json_paths)} `data` files; give one per dataset or none"
        )
    return [load_dataset(path, folder) for path, folder in zip(json_paths, dirs)]


def _decode(path: Path, size: int) -> np.ndarray:
    """Decode one image to RGB uint8 ``[size, size, 3]`` (bilinear, antialiased)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot decode the image ({exc})") from None


def load_pixels(
    split: CaptionSplit,
    size: int,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """All images of a split as uint8 ``[N, size, size, 3]``, decoded once and cached as ``.npy``.

    The cache key hashes the resolved file paths, sizes and mtimes, so a changed image invalidates
    it and a relative and an absolute ``--data`` path share one cache.
    """
    key_src = "|".join(f"{im.path.resolve()}:{_stat_key(im.path)}" for im in split.images) + f"|{size}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{split.name}-{split.split}-{size}-{key}.npy"
        if cache_path.is_file():
            arr = np.load(cache_path, mmap_mode="r")
            if arr.shape == (len(split), size, size, 3):
                return np.asarray(arr)
    out = np.empty((len(split), size, size, 3), dtype=np.uint8)
    for i, im in enumerate(split.images):
        out[i] = _decode(im.path, size)
        if progress is not None and (i % 256 == 0 or i == len(split) - 1):
            progress(i + 1, len(split))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, out)
        os.replace(tmp, cache_path)
        log.info("cached %d images of %s/%s at %s", len(split), split.name, split.split, cache_path)
    return out


def _stat_key(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{int(st.st_mtime)}"
