"""``ftfsearch push``: copy one store's collection into another, from any backend to any other.

Users start on one machine (Qdrant Edge) and move to a shared server without re-encoding; the
same copy moves a collection between servers (as qdrant-client's ``migrate`` does), or back
into an embedded store. The copy goes scene by scene through the target's own ``ensure_collection`` and
``upsert_tiles``, so the target gets exactly the collection settings, payload indexes and
packed vectors that an ingest would create. It is resumable and idempotent: point ids are
kept, pages already on the target are not sent again, a scene's record on the target says
``ingesting`` until its tiles are counted there, and a scene whose count already matches is
skipped. The end result is verified by exact counts, per scene and in total.

The source is read with the protocol's bulk read, ``Store.scan_tiles``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any


from ftfsearch.errors import BadInput, CollectionNotFound, PushVerificationFailed
from ftfsearch.store._common import PAGE
from ftfsearch.store.base import SceneRecord, Store, TileBatch

log = logging.getLogger(__name__)


@dataclass
class ScenePush:
    """What happened to one scene."""

    scene_id: str
    source_tiles: int
    copied: int
    already_there: int
    target_tiles: int
    state: str
    skipped: bool = False


@dataclass
class PushSummary:
    source: str
    target: str
    collection: str
    scenes: list[ScenePush] = field(default_factory=list)
    source_tiles: int = 0
    target_tiles: int = 0
    seconds: float = 0.0

    @property
    def copied(self) -> int:
        return sum(s.copied for s in self.scenes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["copied"] = self.copied
        d["seconds"] = round(self.seconds, 3)
        return d


ProgressFn = Callable[[str, int, int], None]
"""``(scene_id, tiles done, tiles in scene)``, called after every page."""


def push_store(
    source: Store,
    target: Store,
    *,
    shards: int | None = None,
    replication_factor: int | None = None,
    page: int = 256,
    progress: ProgressFn | None = None,
) -> PushSummary:
    """Copy every scene of ``source`` into ``target``; resumable, verified by exact counts.

    Raises CollectionNotFound when the source is empty, ModelMismatch when the target was built
    with another model, BadInput when a scene id on the target belongs to another file, and
    PushVerificationFailed when counts differ after the copy.
    """
    if not 1 <= page <= PAGE * 4:
        raise BadInput(f"page {page}: must be between 1 and {PAGE * 4}")
    t0 = time.perf_counter()
    meta = source.meta()
    where = source.describe().get("location")
    if meta is None:
        raise CollectionNotFound(
            f"collection {source.collection!r} in {where} holds nothing to push: ingest first, or "
            "check `store` and `source_collection`"
        )
    target.ensure_collection(meta, shards, replication_factor)
    described = target.describe()
    summary = PushSummary(
        source=f"{where} ({source.collection})",
        target=str(described.get("location")),
        collection=target.collection,
    )
    for scene in source.list_scenes():
        summary.scenes.append(_push_scene(source, target, scene, page, progress))
    summary.source_tiles = source.count_tiles()
    summary.target_tiles = sum(s.target_tiles for s in summary.scenes)
    if summary.target_tiles != summary.source_tiles:
        raise PushVerificationFailed(
            f"push to {summary.target} (collection {target.collection!r}): {summary.source_tiles} tiles in the "
            f"source, {summary.target_tiles} counted on the target in the pushed scenes (the source holds tiles "
            "of no recorded scene); run push again, or check the source with 'ftfsearch scenes'"
        )
    summary.seconds = time.perf_counter() - t0
    return summary


def _push_scene(
    source: Store,
    target: Store,
    scene: SceneRecord,
    page: int,
    progress: ProgressFn | None,
) -> ScenePush:
    sid = scene.scene_id
    want = source.count_tiles(sid)
    there = target.get_scene(sid)
    if there is not None and there.fingerprint != scene.fingerprint:
        raise BadInput(
            f"scene {sid!r}: the target collection {target.collection!r} holds another file under this id "
            f"({there.path}); drop it there first, or push into another `collection`"
        )
    if there is not None and there.state == scene.state and target.count_tiles(sid) == want:
        log.info("scene %s already on the target with %d tiles", sid, want)
        return ScenePush(sid, want, 0, want, want, scene.state, skipped=True)
    # Until every tile is counted on the target, its record says the scene is unfinished.
    target.put_scene(replace(scene, state="ingesting"))
    copied = already = done = 0
    for batch in source.scan_tiles(sid, page):
        present = target.existing_ids(batch.ids)
        keep = [i for i, pid in enumerate(batch.ids) if pid not in present]
        already += len(batch) - len(keep)
        if keep:
            target.upsert_tiles(
                TileBatch(
                    ids=[batch.ids[i] for i in keep],
                    coarse=batch.coarse[keep],
                    regions=batch.regions[keep],
                    payloads=[batch.payloads[i] for i in keep],
                )
            )
            copied += len(keep)
        done += len(batch)
        if progress:
            progress(sid, done, want)
    got = target.count_tiles(sid)
    if got != want:
        raise PushVerificationFailed(
            f"scene {sid!r}: {want} tiles in the source, {got} on the target after the copy; run push again "
            "(it resumes), and check the server's log if it persists"
        )
    target.put_scene(scene)
    return ScenePush(sid, want, copied, already, got, scene.state)
