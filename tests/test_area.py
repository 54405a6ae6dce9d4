"""Areas (``--aoi``) and finding every match, on both backends with a real ingested scene: the
centre index, the geo-polygon prefilter that drops no tile touching the area, the footprint check,
the find's scan against a brute-force score of every tile, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Polygon, box, mapping

from ftfsearch.area import Area, store_filter
from ftfsearch.errors import BadInput
from ftfsearch.find import default_threshold, find_pages, plan, score_batch, unit
from ftfsearch.model.loading import load_encoder
from ftfsearch.search import Searcher
from ftfsearch.store.base import QueryFilter, Store
from ingest.pipeline import IngestOptions, ingest_paths
from ingest.tiling import TilingSpec

SCENE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
SPEC = TilingSpec(tile_size=128, levels=(1, 2))


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_encoder(str(tiny_clip_dir), device="cpu")


@pytest.fixture
def filled(store: Store, encoder) -> Store:
    done, failed = ingest_paths([SCENE], encoder, store, IngestOptions(spec=SPEC, batch_size=16))
    assert not failed and done[0].state == "complete"
    return store


def all_tiles(store: Store) -> tuple[list[str], np.ndarray, list[dict]]:
    ids = [i for i, _ in store.find_tiles(QueryFilter(bbox=(-180.0, -90.0, 180.0, 90.0)), limit=10_000)]
    got_ids, coarse, _, payloads = store.get_vectors(ids, with_payload=True)
    return got_ids, coarse, payloads


def a_triangle(store: Store) -> Area:
    """A triangle over part of the scene, its edges across tiles (many touch it with their centre outside)."""
    scene = store.list_scenes()[0]
    w, s, e, n = scene.bbox
    dx, dy = e - w, n - s
    return Area.from_geojson({"type": "Feature", "properties": {}, "geometry": mapping(Polygon(
        [(w + 0.21 * dx, s + 0.17 * dy), (w + 0.73 * dx, s + 0.31 * dy), (w + 0.38 * dx, s + 0.81 * dy)]))})


def touching(area: Area, payloads: list[dict], ids: list[str]) -> set[str]:
    return {i for i, p in zip(ids, payloads) if area.geometry.intersects(Polygon(p["footprint"]))}


def test_center_is_indexed_as_geo(filled: Store) -> None:
    if hasattr(filled, "_client"):
        schema = filled._client.get_collection(filled.collection).payload_schema  # type: ignore[attr-defined]
        assert str(schema["center"].data_type).lower().endswith("geo")
    else:
        schema = filled._tiles.info().payload_schema  # type: ignore[attr-defined]
        assert "center" in schema


def test_search_in_an_area_returns_exactly_the_tiles_touching_it(filled: Store, encoder) -> None:
    ids, _, payloads = all_tiles(filled)
    area = a_triangle(filled)
    truth = touching(area, payloads, ids)
    centres_inside = {i for i, p in zip(ids, payloads)
                      if area.geometry.contains(box(p["center"]["lon"], p["center"]["lat"],
                                                    p["center"]["lon"], p["center"]["lat"]))}
    assert 0 < len(centres_inside) < len(truth) < len(ids)  # the edge tiles are the point of the test
    out = Searcher(encoder, filled, vector_cache_bytes=0).search("a river", k=1000, rerank=False, area=area)
    assert {r.id for r in out.results} == truth
    reranked = Searcher(encoder, filled).search("a river", k=5, recall_k=1000, area=area)
    assert len(reranked.results) == 5 and {r.id for r in reranked.results} <= truth


def test_find_scans_every_tile_above_the_threshold(filled: Store, encoder) -> None:
    ids, coarse, payloads = all_tiles(filled)
    area = a_triangle(filled)
    query = unit(encoder.encode_text(["a river"])[0].float().numpy())
    bbox, center_in = store_filter(area, None, filled)
    flt = QueryFilter(bbox=bbox, center_in=center_in)
    inside = touching(area, payloads, ids)
    scores = dict(zip(ids, unit(coarse) @ query))
    chosen = plan(filled, query, flt, area, None)
    assert chosen.threshold == pytest.approx(default_threshold(np.array([scores[i] for i in inside])), abs=1e-5)
    threshold = float(np.median([scores[i] for i in inside]))
    pages = list(find_pages(filled, query, threshold, flt, area, page=7))
    found = {h.id: h for page in pages for h in page}
    assert len(pages) > 1 and sum(len(p) for p in pages) == len(found)
    assert set(found) == {i for i in inside if scores[i] >= threshold}
    for h in found.values():
        assert h.score == pytest.approx(scores[h.id], abs=1e-4)
        assert 0 <= h.region_index < encoder.num_regions


def scroll_and_score(store: Store, query: np.ndarray, threshold: float, flt: QueryFilter | None,
                     area: Area | None) -> dict[str, float]:
    """What find did before it searched: every tile in scope read and scored here."""
    out: dict[str, float] = {}
    for batch in store.scan(flt, page=50):
        scores = score_batch(batch, query)
        for i, p, s in zip(batch.ids, batch.payloads, scores):
            if s >= threshold and (area is None or area.keeps(p.get("footprint"), p.get("bbox"))):
                out[i] = float(s)
    return out


@pytest.mark.parametrize("scoped", [False, True])
def test_find_by_threshold_search_returns_the_scroll_and_score_set(filled: Store, encoder, scoped: bool) -> None:
    """Qdrant's threshold search, paged by offset, names exactly the tiles a scroll-and-score pass keeps,
    with the filters applied inside the search, and a tile scoring exactly the threshold kept."""
    query = unit(encoder.encode_text(["a river"])[0].float().numpy())
    ids, coarse, payloads = all_tiles(filled)
    scene = filled.list_scenes()[0].scene_id
    area = a_triangle(filled) if scoped else None
    flt = None
    if scoped:
        bbox, center_in = store_filter(area, None, filled)
        flt = QueryFilter(bbox=bbox, center_in=center_in, scene_ids=(scene,), exclude_ids=(ids[0], ids[1]))
    everything = scroll_and_score(filled, query, -1.0, None, None)
    scores = np.sort(np.array(list(everything.values())))
    for threshold in (float(scores[len(scores) // 4]), float(scores[len(scores) // 2])):
        truth = scroll_and_score(filled, query, threshold, flt, area)
        assert 7 < len(truth) < len(ids)  # some pass, some do not, several id pages
        if not scoped:  # the tile scoring exactly the threshold is kept
            assert threshold in truth.values()
        pages = list(find_pages(filled, query, threshold, flt, area, page=2, id_page=3))
        found = {h.id: h.score for page in pages for h in page}
        assert sum(len(p) for p in pages) == len(found) and len(pages) > 2
        assert found == truth
        assert not scoped or (ids[0] not in found and ids[1] not in found)
    assert filled.above(query, float(scores[-1]) + 0.01, flt).ids == []


def test_a_find_past_its_limit_is_refused_with_a_way_out(filled: Store, encoder) -> None:
    query = unit(encoder.encode_text(["a river"])[0].float().numpy())
    with pytest.raises(BadInput, match=r"would return about .* raise it .* narrow the search with aoi"):
        plan(filled, query, None, None, -1.0, max_hits=10)


@pytest.mark.parametrize("geojson, message", [
    ({"type": "Point", "coordinates": [0, 0]}, "a Point is not an area"),
    ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "a LineString is not an area"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}, "does not cross itself"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0], [0, 0]]]}, "is empty"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [400, 0], [400, 1], [0, 0]]]}, "outside WGS84"),
    ({"type": "FeatureCollection", "features": []}, "holds no polygon"),
    ("[1, 2]", "expected a GeoJSON object"),
])
def test_bad_areas_are_refused_in_one_line(geojson, message) -> None:
    with pytest.raises(BadInput, match=message) as info:
        Area.from_geojson(geojson)
    assert str(info.value).startswith("aoi") and "\n" not in str(info.value)


def test_an_area_outside_every_scene_is_refused(filled: Store) -> None:
    far = Area.from_geojson(mapping(box(10.0, 10.0, 10.1, 10.1)))
    with pytest.raises(BadInput, match="outside every scene"):
        store_filter(far, None, filled)


def test_a_multipolygon_feature_collection_is_one_area(filled: Store, encoder) -> None:
    w, s, e, n = filled.list_scenes()[0].bbox
    dx, dy = e - w, n - s
    parts = [box(w + 0.1 * dx, s + 0.1 * dy, w + 0.2 * dx, s + 0.2 * dy),
             box(w + 0.6 * dx, s + 0.6 * dy, w + 0.7 * dx, s + 0.75 * dy)]
    area = Area.from_geojson({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": mapping(p)} for p in parts]})
    ids, _, payloads = all_tiles(filled)
    out = Searcher(encoder, filled, vector_cache_bytes=0).search("fields", k=1000, rerank=False, area=area)
    assert {r.id for r in out.results} == touching(area, payloads, ids)
