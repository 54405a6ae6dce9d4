"""What an FTF model directory is made of, without torch: the file names, and the digest of its
weights that names the model (``ftf:<name>:<digest>``) in every collection it fills. The query
path (:mod:`ftfsearch.model.query`) reads the weights with numpy and must get the same id as the
torch encoder that filled the collection."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

CONFIG_NAME = "ftf_config.json"
"""The file that makes a directory an FTF model (either family: the scratch and the pretrained one)."""
WEIGHTS_NAME = "model.safetensors"


def _dtype_and_bytes(t: Any) -> tuple[str, tuple[int, ...], bytes]:
    """``(torch dtype name, shape, raw bytes)`` of a torch tensor or a numpy array (numpy's dtype
    names are torch's for the types a safetensors file holds: float16, float32, int64, ...)."""
    if isinstance(t, np.ndarray):
        return f"torch.{t.dtype.name}", tuple(t.shape), np.ascontiguousarray(t).tobytes()
    import torch

    t = t.detach().cpu().contiguous()
    return str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_digest(state: Mapping[str, Any]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes: stable where file bytes are not
    (safetensors may serialise its metadata map in any order). Tensors or numpy arrays alike."""
    h = hashlib.sha256()
    for name in sorted(state):
        dtype, shape, raw = _dtype_and_bytes(state[name])
        h.update(f"{name}:{dtype}:{shape};".encode())
        h.update(raw)
    return h.hexdigest()


def model_id(name: str, digest: str) -> str:
    """The id an FTF model's collections record: its config name and the head of its weights digest."""
    return f"ftf:{name}:{digest[:12]}"
