"""Point ids and payload field names shared by both backends."""

from __future__ import annotations

import uuid

# A fixed namespace so that ids are the same on every machine and backend.
FTF_NAMESPACE = uuid.UUID("6f1c2a4e-5b7d-4e0f-9a1b-3c5d7e9f1a2b")

COARSE = "coarse"
REGIONS = "regions"
SCENES_SUFFIX = "_scenes"

# Payload field holding a compact copy of a tile's vectors (see ``_common.pack_vectors``). Qdrant
# returns vectors as JSON float lists (server) or Python lists (Edge binding); decoding 100 tiles'
# regions that way costs 30 to 400 ms, while the same bytes as one base64 string decode in well
# under 1 ms. The ``regions`` multivector stays in the schema: Qdrant's own MaxSim rerank (the
# benchmark's baseline, ``bench/baselines.py``) reads it.
VECTORS_FIELD = "_ftf_vectors"

# Payload fields with an index (field name -> index kind): exactly those a ``QueryFilter`` reads
# (``_common.filter_conditions``): scenes, the bbox intersection, the acquisition time, the centre
# (an area's geo-polygon prefilter). ``level`` is stored but filtered by nothing, so it is not
# indexed (an index costs memory and write time; add it together with a filter that uses it).
TILE_INDEXES = {
    "scene_id": "keyword",
    "west": "float",
    "south": "float",
    "east": "float",
    "north": "float",
    "acquired": "datetime",
    "center": "geo",
}


def tile_point_id(fingerprint: str, level: int, col: int, row: int, width: int, height: int) -> str:
    """UUIDv5 of (scene fingerprint, level, window): re-ingesting a scene rewrites the same points."""
    return str(uuid.uuid5(FTF_NAMESPACE, f"tile/{fingerprint}/{level}/{col}/{row}/{width}/{height}"))


def scene_point_id(scene_id: str) -> str:
    return str(uuid.uuid5(FTF_NAMESPACE, f"scene/{scene_id}"))


def failure_point_id(source: str) -> str:
    """The point that records a batch source's failure (keyed by the source, not a scene id: a
    source that never opened has no scene id of its own)."""
    return str(uuid.uuid5(FTF_NAMESPACE, f"failure/{source}"))


def record_point_id(kind: str, key: str) -> str:
    """The point of a small record of ``kind`` (a watch, a watch's hit) in the scenes collection."""
    return str(uuid.uuid5(FTF_NAMESPACE, f"record/{kind}/{key}"))


META_POINT_ID = str(uuid.uuid5(FTF_NAMESPACE, "collection-meta"))


def scenes_collection(collection: str) -> str:
    return collection + SCENES_SUFFIX
