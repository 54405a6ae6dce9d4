"""What a collection records of the model that fills it: written by ingest, checked by search
(its own room, so the write path and the read path need not import each other)."""

from __future__ import annotations

from ftfsearch.model.base import Encoder
from ftfsearch.store.base import CollectionMeta


def collection_meta(encoder: Encoder) -> CollectionMeta:
    """What a collection filled by ``encoder`` records (and what a query with it must find)."""
    return CollectionMeta(
        model_id=encoder.id, dim=encoder.dim, num_regions=encoder.num_regions, region_layout=encoder.region_layout
    )
