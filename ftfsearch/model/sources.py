"""Where a model comes from, offline: a directory, or a name in the local Hugging Face cache; and
the torch device it runs on. Shared by ``loading`` (which picks the encoder family) and the
encoders that load their own files (``clip``), so neither imports the other."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftfsearch.errors import BadInput, ModelNotFound

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# A Hugging Face repo id: "name" or "owner/name".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class ModelSource:
    """A model directory on disk and the short name that goes into the encoder id."""

    root: Path
    label: str


def force_offline() -> None:
    """Make Hugging Face libraries fail at once instead of reaching for the network.

    Hub kernels go off too: transformers 5 turns them on by default, and a BERT or CLIP model on
    CUDA that goes from train back to eval mode then fetches ``kernels-community/activation`` from
    the Hub, which offline mode turns into a ValueError (``train --device cuda`` died at its first
    validation). transformers reads ``USE_HUB_KERNELS`` at each load and mode switch, so setting it
    here, before any model loads, is enough."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["USE_HUB_KERNELS"] = "0"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; an unavailable device is a BadInput naming ``device``."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise BadInput(f"`device` {device!r}: not a device; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"`device` {device}: CUDA is not available on this machine; use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(
                f"`device` {device}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0 or auto"
            )
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise BadInput(f"`device` {device}: not available here; use auto, cpu or cuda")


def device_label(device: torch.device) -> str:
    """How a device is shown where work is done (ingest summary, ``info``, ``/api/info``):
    ``cpu``, ``cuda:0``; a bare ``cuda`` gets the index of the device it means."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def encoder_device_label(encoder: Any) -> str:
    """:func:`device_label` of an encoder's device; an encoder that can say it without loading more
    (the query process's ``QueryEncoder``, whose ``device`` would load torch) gives ``device_label``."""
    label = getattr(encoder, "device_label", None)
    return label if isinstance(label, str) else device_label(encoder.device)


def describe_device(setting: str) -> str:
    """The label of the device a setting (``auto``, ``cpu``, ``cuda:1``) resolves to here, or the
    setting and why it cannot be used (``info`` shows it without failing)."""
    try:
        return device_label(resolve_device(setting))
    except BadInput:
        return f"{setting} (not available here)"


def exact_float32(device: torch.device) -> None:
    """The TF32 policy: off for encoders. Vectors written on CUDA share a model id with vectors
    written on the CPU, so CUDA must compute the same float32 (TF32 keeps 10 mantissa bits, and
    cuDNN convolutions use it by default). Set explicitly, process-wide, whenever an encoder is
    made on CUDA. (CLIP encoders run under float16 autocast on CUDA: their drift is measured and
    bounded by ``python -m bench gpu``, not removed by this.)"""
    if device.type == "cuda":
        import torch  # here: the query path imports this module without torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


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
        raise BadInput("`model`: empty model name; pass a model directory or name, or leave it unset")
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BadInput(f"`model` {name_or_path}: is a file; pass the model's directory")
        path = path.resolve()
        return ModelSource(root=path, label=path.name)
    if not _HUB_ID.match(name_or_path) or name_or_path.startswith((".", "~")):
        raise ModelNotFound(
            f"`model` {name_or_path}: no such directory; set `model` to an existing model directory, "
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
        f"`model` {name_or_path}: not available offline (no such directory and not in the Hugging Face "
        f"cache {hub_cache_dir(cache_dir)}); set `model` to the directory of a downloaded copy of the "
        "model, or leave `model` unset to use the shipped default"
    )
