"""Models behind the Encoder protocol, and loading them offline by name or path.

Importing this package stays cheap (torch only): transformers, and the CLIP and FTF encoders,
load on first use, since ``ftfsearch --help`` or a store command should not pay seconds for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftfsearch.model.base import Encoder, RerankParams
from ftfsearch.model.loading import DEFAULT_MODEL_DIR, load_encoder
from ftfsearch.model.sources import ModelSource, locate_model, resolve_device
from ftfsearch.model.regions import DEFAULT_LAYOUT, layout_boxes, num_regions, parse_layout

if TYPE_CHECKING:
    from ftfsearch.model.clip import ClipEncoder

__all__ = [
    "DEFAULT_LAYOUT",
    "DEFAULT_MODEL_DIR",
    "ClipEncoder",
    "Encoder",
    "ModelSource",
    "RerankParams",
    "layout_boxes",
    "load_encoder",
    "locate_model",
    "num_regions",
    "parse_layout",
    "resolve_device",
]


def __getattr__(name: str) -> Any:
    if name == "ClipEncoder":
        from ftfsearch.model.clip import ClipEncoder

        return ClipEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
