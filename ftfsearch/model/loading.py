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

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftfsearch.errors import BadInput, ModelNotFound
from ftfsearch.model.base import Encoder

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"
SCRATCH_MODEL_DIR = Path(__file__).resolve().parent / "scratch"
"""The first default (ftf-small, trained from scratch), shipped so stores built with it stay usable."""
FTF_CONFIG_NAME = "ftf_config.json"

# A Hugging Face repo id: "name" or "owner/name".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class ModelSource:
    """A model directory on disk and the short name that goes into the encoder id."""

    root: Path
    label: str


def force_offline() -> None:
    """Make Hugging Face libraries fail at once instead of reaching for the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; an unavailable device is a BadInput naming --device."""
    if isinstance(device, torch.device):
        device = str(device)
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise BadInput(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0 or auto"
            )
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise BadInput(f"--device {device}: not available here; use auto, cpu or cuda")


def hub_cache_dir(cache_dir: Path | None = None) -> Path:
    """The Hugging Face hub cache that names are looked up in."""
    if cache_dir is not None:
        return Path(cache_dir)
    force_offline()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _from_hub_cache(repo_id: str, cache_dir: Path | None) -> Path | None:
    """The cached snapshot of a repo, or None; never touches the network."""
    force_offline()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(
            repo_id=repo_id, cache_dir=str(cache_dir) if cache_dir else None, local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError) as exc:
        log.debug("%s not in the hub cache: %s", repo_id, exc)
        return None
    return Path(path)


def _legacy_st_cache(repo_id: str) -> Path | None:
    """Where sentence-transformers < 2.3 kept downloads (``~/.cache/torch/sentence_transformers``)."""
    home = os.environ.get("SENTENCE_TRANSFORMERS_HOME")
    root = Path(home) if home else Path(os.environ.get("TORCH_HOME", "~/.cache/torch")).expanduser() / "sentence_transformers"
    path = root / repo_id.replace("/", "_")
    return path if path.is_dir() else None


def locate_model(name_or_path: str, cache_dir: Path | None = None) -> ModelSource:
    """Find a model directory for a path or a cached hub name; ModelNotFound if there is none offline."""
    if not name_or_path or not name_or_path.strip():
        raise BadInput("--model: empty model name; pass a model directory or name, or leave it unset")
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BadInput(f"--model {name_or_path}: is a file; pass the model's directory")
        path = path.resolve()
        return ModelSource(root=path, label=path.name)
    if not _HUB_ID.match(name_or_path) or name_or_path.startswith((".", "~")):
        raise ModelNotFound(
            f"--model {name_or_path}: no such directory; pass --model with an existing model directory, "
            "or leave it unset for the shipped default"
        )
    # sentence-transformers resolves bare names such as "clip-ViT-B-32" in its own namespace first.
    candidates = [name_or_path] if "/" in name_or_path else [f"sentence-transformers/{name_or_path}", name_or_path]
    for repo_id in candidates:
        found = _from_hub_cache(repo_id, cache_dir) or _legacy_st_cache(repo_id)
        if found is not None:
            log.info("model %s found in the local cache at %s", name_or_path, found)
            return ModelSource(root=found, label=repo_id.rsplit("/", 1)[-1])
    raise ModelNotFound(
        f"--model {name_or_path}: not available offline (no such directory and not in the Hugging Face "
        f"cache {hub_cache_dir(cache_dir)}); pass --model DIR with a downloaded copy of the model, "
        "or leave --model unset to use the shipped default"
    )


def _load_ftf(root: Path, device: torch.device, options: dict[str, Any]) -> Encoder:
    """An FTF model directory of either family: ``pretrained`` (on the pinned base towers) or the
    small one trained from scratch (no ``family`` key)."""
    import json

    if options:
        log.warning("options %s apply to CLIP models only; ignored for the FTF model in %s", sorted(options), root)
    try:
        raw = json.loads((root / FTF_CONFIG_NAME).read_text())
        family = raw.get("family", "scratch")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelNotFound(f"{root / FTF_CONFIG_NAME}: unreadable model config ({exc})") from None
    if family == "pretrained":
        from ftfsearch.model.pretrained import load_pretrained_encoder

        return load_pretrained_encoder(root, raw, device)
    if family != "scratch":
        raise ModelNotFound(f"{root}: model family {family!r} is unknown to this ftfsearch (known: pretrained, scratch); upgrade ftfsearch")
    from ftfsearch.model.ftf import load_ftf_encoder

    return load_ftf_encoder(root, device)


def load_encoder(name_or_path: str | None, device: str = "auto", **options: Any) -> Encoder:
    """Load an Encoder offline from a name, a directory, or (``None``) the shipped default.

    ``options`` go to ``ClipEncoder`` for CLIP models: ``region_mode`` (``crops`` | ``tokens``),
    ``layout``, ``max_batch``, ``cache_dir``.
    """
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
