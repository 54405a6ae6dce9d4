"""Load an Encoder by name or path, offline.

``load_encoder`` is the one entry point the CLI, ingest and search use:
- ``None``: the model shipped in ``ftfsearch/model/default/`` (an FTF directory);
- a directory with ``ftf_config.json``: the project's own FTF dual encoder;
- any other directory: a CLIP model saved by sentence-transformers or transformers;
- a name such as ``clip-ViT-B-32`` or ``sentence-transformers/clip-ViT-B-32``: a CLIP model
  already in the local Hugging Face cache. Nothing is downloaded: ftfsearch runs where there may be
  no network, and a silent multi-hundred-megabyte download (or a hang on a network timeout) is
  worse than one clear error saying what to pass instead.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftfsearch.errors import ModelNotFound
from ftfsearch.model.base import Encoder
from ftfsearch.model.families import FAMILIES, SAVED_WITHOUT_FAMILY
from ftfsearch.model.sources import locate_model
from ftfsearch.model.weights import CONFIG_NAME as FTF_CONFIG_NAME

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"
SCRATCH_MODEL_DIR = Path(__file__).resolve().parent / "scratch"
"""The first default (ftf-small, trained from scratch), shipped so stores built with it stay usable."""

def _ftf_config(root: Path) -> tuple[dict[str, Any], str]:
    """An FTF directory's raw config and family (``pretrained``, or ``scratch`` without the key)."""
    try:
        raw = json.loads((root / FTF_CONFIG_NAME).read_text())
        return raw, raw.get("family", SAVED_WITHOUT_FAMILY)
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelNotFound(f"{root / FTF_CONFIG_NAME}: unreadable model config ({exc})") from None


def _load_ftf(root: Path, device: torch.device, options: dict[str, Any]) -> Encoder:
    """An FTF model directory of either family: ``pretrained`` (on the pinned base towers) or the
    small one trained from scratch (no ``family`` key)."""
    if options:
        log.warning("options %s apply to CLIP models only; ignored for the FTF model in %s", sorted(options), root)
    raw, family = _ftf_config(root)
    found = FAMILIES.get(family)
    if found is None:
        raise ModelNotFound(f"{root}: model family {family!r} is unknown to this ftfsearch (known: {', '.join(FAMILIES)}); "
                            "upgrade ftfsearch")
    return found.load(root, raw, device)


def load_encoder(name_or_path: str | None, device: str = "auto", **options: Any) -> Encoder:
    """Load an Encoder offline from a name, a directory, or (``None``) the shipped default (see
    :func:`_load_encoder`); logs what was loaded and how long it took."""
    t0 = time.perf_counter()
    encoder = _load_encoder(name_or_path, device, **options)
    log.info("model %s on %s: loaded in %.2f s", encoder.id, encoder.device, time.perf_counter() - t0)
    return encoder


def _load_encoder(name_or_path: str | None, device: str = "auto", **options: Any) -> Encoder:
    """Load an Encoder offline from a name, a directory, or (``None``) the shipped default.

    ``options`` go to ``ClipEncoder`` for CLIP models: ``region_mode`` (``crops`` | ``tokens``),
    ``layout``, ``max_batch``, ``cache_dir``.
    """
    from ftfsearch.model.sources import resolve_device

    dev = resolve_device(device)
    if name_or_path is None:
        if not (DEFAULT_MODEL_DIR / FTF_CONFIG_NAME).is_file():
            raise ModelNotFound(f"{DEFAULT_MODEL_DIR}: the shipped model is missing ({FTF_CONFIG_NAME}); reinstall ftfsearch")
        return _load_ftf(DEFAULT_MODEL_DIR, dev, options)
    cache_dir = options.pop("cache_dir", None)
    source = locate_model(name_or_path, cache_dir=cache_dir)
    if (source.root / FTF_CONFIG_NAME).is_file():
        return _load_ftf(source.root, dev, options)
    from ftfsearch.model.clip import ClipEncoder

    return ClipEncoder(source, dev, **options)


def load_query_encoder(name_or_path: str | None, device: str = "auto") -> Encoder:
    """The encoder a query process needs: for the pretrained family (the shipped model) on the
    CPU, :class:`~ftfsearch.model.query.QueryEncoder`, which encodes text without importing torch
    or transformers; anything else is :func:`load_encoder`'s."""
    if device.strip().lower() in ("auto", "cpu"):
        root = DEFAULT_MODEL_DIR if name_or_path is None else Path(name_or_path).expanduser()
        if (root / FTF_CONFIG_NAME).is_file():  # a directory (a hub name is a CLIP model)
            raw, family = _ftf_config(root)
            if family == "pretrained" and (device.strip().lower() == "cpu" or not _cuda_possible()):
                from ftfsearch.model.query import QueryEncoder

                t0 = time.perf_counter()
                encoder = QueryEncoder(root, raw, device)
                log.info("model %s: text in ONNX Runtime, ready in %.2f s", encoder.id, time.perf_counter() - t0)
                return encoder
    return load_encoder(name_or_path, device)


def _cuda_possible() -> bool:
    """Whether ``auto`` might pick CUDA, asked without importing torch: an NVIDIA driver is loaded."""
    return Path("/proc/driver/nvidia/version").exists()
