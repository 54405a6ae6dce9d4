"""The shipped model's config (the pretrained family), read without torch: the query path
(:mod:`ftfsearch.model.query`) needs its name, sizes and rerank settings, not its towers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftfsearch.errors import ModelNotFound
from ftfsearch.model.base import RerankParams
from ftfsearch.model.bases import BASES, LITE0, MINILM
from ftfsearch.model.regions import DEFAULT_LAYOUT
from ftfsearch.model.weights import CONFIG_NAME

FAMILY = "pretrained"
FORMAT_VERSION = 1


@dataclass
class PretrainedConfig:
    """Architecture, what was fine-tuned, and the rerank settings, recorded with the weights."""

    name: str = "ftf-lite0-minilm"
    family: str = FAMILY
    dim: int = 256
    image_size: int = 224
    region_layout: str = DEFAULT_LAYOUT
    region_source: str = "both"
    """``both``: regions pool the head map and the finer branch; ``last``: the head map only."""
    branch_channels: int = 384
    hidden: int = 1024
    train_image_blocks: int = 2
    """Top EfficientNet blocks fine-tuned (with the 1x1 head); 0 keeps the trunk frozen."""
    train_text_layers: int = 1
    """Top MiniLM layers fine-tuned; 0 keeps the text tower frozen."""
    max_text_tokens: int = 48
    dropout: float = 0.1
    head_norm: bool = False
    """LayerNorm on each MLP head's input: the pooled maps and token means differ in scale by channel."""
    image_base: str = "efficientnet-lite0"
    text_base: str = "all-minilm-l6-v2"
    base_sha256: dict[str, str] = field(default_factory=lambda: {"efficientnet-lite0": LITE0.sha256,
                                                                 "all-minilm-l6-v2": MINILM.sha256})
    rerank: RerankParams = field(default_factory=RerankParams)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainedConfig:
        d = dict(d)
        d["rerank"] = RerankParams(**d.get("rerank", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def read_pretrained_config(path: Path, raw: dict[str, Any]) -> PretrainedConfig:
    if int(raw.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelNotFound(f"{path}: model format {raw.get('format_version')} is newer than this ftfsearch supports; upgrade ftfsearch")
    try:
        cfg = PretrainedConfig.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelNotFound(f"{path / CONFIG_NAME}: invalid model config ({exc})") from None
    for name, digest in cfg.base_sha256.items():
        base = BASES.get(name)
        if base is None or base.sha256 != digest:
            raise ModelNotFound(f"{path}: trained on base {name} with sha256 {digest[:16]}..., which this ftfsearch does not pin")
    return cfg
