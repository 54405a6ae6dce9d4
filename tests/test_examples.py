"""Search by example on both backends, on a real ingested scene: what each REF names, the
recommend recall, the fused rerank against a numpy reference, and refusals that leave the
store as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from ftfsearch.errors import BadInput, TileNotFound
from ftfsearch.examples import ExampleRef, image_ref, parse_ref, resolve
from ftfsearch.labels import Label, LabelSet, labels_to_geojson, parse_labels, read_labels
from ftfsearch.model.loading import load_encoder
from ftfsearch.rerank import NEGATIVE_WEIGHT
from ftfsearch.search import Searcher
from ftfsearch.store.base import Store
from ingest.pipeline import IngestOptions, ingest_paths
from ingest.tiling import SceneReader, TilingSpec

SCENE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
SPEC = TilingSpec(tile_size=256, levels=(1, 2))


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_encoder(str(tiny_clip_dir), device="cpu")


@pytest.fixture
def filled(store: Store, encoder) -> Store:
    done, failed = ingest_paths([SCENE], encoder, store, IngestOptions(spec=SPEC, batch_size=8))
    assert not failed and done[0].state == "complete"
    return store


def _all_tiles(store: Store) -> tuple[list[str], np.ndarray, np.ndarray, list[dict]]:
    ids = [i for i, _ in store.find_tiles(_everything(), limit=10_000)]
    return store.get_vectors(ids, with_payload=True)


def _everything():
    from ftfsearch.store.base import QueryFilter

    return QueryFilter(bbox=(-180.0, -90.0, 180.0, 90.0))


def _bti_numpy(q: np.ndarray, coarse: np.ndarray, regions: np.ndarray, tau: float, alpha: float) -> np.ndarray:
    s_c = coarse @ q
    logits = regions.astype(np.float32) @ q / tau
    a = np.exp(logits - logits.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    v = (a[..., None] * regions.astype(np.float32)).sum(axis=1)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    vb = coarse + v
    vb /= np.linalg.norm(vb, axis=1, keepdims=True)
    return (1 - alpha) * s_c + alpha * (vb @ q)


def test_refs_parse_by_form(tmp_path: Path) -> None:
    tid = "6F1C2A4E-5B7D-4E0F-9A1B-3C5D7E9F1A2B"
    assert parse_ref(tid).tile_id == tid.lower()
    assert parse_ref(" -75.1, 40.5 ").point == (-75.1, 40.5)
    chip = tmp_path / "chip.png"
    Image.new("RGB", (64, 64)).save(chip)
    assert parse_ref(str(chip)).image == chip
    r = parse_ref(f"{tid}:3", "like_region")
    assert r.tile_id == tid.lower() and r.region == 3 and r.positive
    assert not parse_ref("10,20", "unlike").positive
    for bad, param, needle in [
        ("", "like", "is empty"),
        ("181,0", "like", "WGS84 degrees"),
        ("nothing-here.png", "unlike", "not a tile id, a point lon,lat or an image file"),
        (tid, "like_region", "REF:N"),
        (f"{tid}:x", "like_region", "REF:N"),
    ]:
        with pytest.raises(BadInput, match=needle) as info:
            parse_ref(bad, param)
        assert str(info.value).startswith(param + " ")


def test_like_a_tile_recommend_then_fused_rerank_match_numpy(filled: Store, encoder) -> None:
    ids, coarse, regions, payloads = _all_tiles(filled)
    n = len(ids)
    assert n > 10
    like, unlike = ids[2], ids[7]
    searcher = Searcher(encoder, filled, vector_cache_bytes=0)
    text = "ships near a harbor"
    resp = searcher.search(text, k=n, recall_k=n, examples=[parse_ref(like), parse_ref(unlike, "unlike")])
    got = [r.id for r in resp.results]
    assert like not in got and unlike not in got and len(got) == n - 2
    assert "examples" in resp.timings_ms

    # Reference: every candidate (recall_k covers them all), one BTI per query vector, z-scored.
    t = encoder.encode_text([text])[0].float().numpy()
    keep = [i for i, tid in enumerate(ids) if tid not in (like, unlike)]
    c, r = coarse[keep], regions[keep]
    params = encoder.rerank_params
    queries = [t, coarse[2], coarse[7]]
    s = np.stack([_bti_numpy(q / np.linalg.norm(q), c, r, params.tau, params.alpha) for q in queries])
    z = (s - s.mean(axis=1, keepdims=True)) / (s.std(axis=1, keepdims=True) + 1e-6)
    want = z[:2].mean(axis=0) - NEGATIVE_WEIGHT * z[2]
    order = np.argsort(-want, kind="stable")
    np.testing.assert_allclose([x.score for x in resp.results], want[order], atol=2e-3)
    assert got[:5] == [ids[keep[i]] for i in order[:5]]
    # The recall score is Qdrant's average_vector: the cosine to 2 avg(positives) - avg(negatives).
    rec = {x.id: x.coarse_score for x in resp.results}
    q = 2 * (t / np.linalg.norm(t) + coarse[2]) / 2 - coarse[7]
    for i in keep[:5]:
        assert rec[ids[i]] == pytest.approx(float(coarse[i] @ (q / np.linalg.norm(q))), abs=2e-3)


def test_cached_searcher_agrees_on_example_queries(filled: Store, encoder) -> None:
    ids, *_ = _all_tiles(filled)
    refs = [parse_ref(ids[1]), parse_ref(ids[4]), parse_ref(ids[9], "unlike")]
    plain = Searcher(encoder, filled, vector_cache_bytes=0).search(None, k=8, examples=refs)
    cached = Searcher(encoder, filled)
    first = cached.search(None, k=8, examples=refs)
    again = cached.search(None, k=8, examples=refs)
    assert cached.vector_cache is not None and cached.vector_cache.stats.hits > 0
    for resp in (first, again):
        assert [(r.id, round(r.score, 4)) for r in resp.results] == [(r.id, round(r.score, 4)) for r in plain.results]


def test_point_image_and_region_refs(filled: Store, encoder, tmp_path: Path) -> None:
    ids, coarse, regions, payloads = _all_tiles(filled)
    # A point: the finest (level 1) tile whose centre is nearest.
    level1 = [(i, p) for i, p in zip(ids, payloads) if p["level"] == 1]
    tid, p = level1[len(level1) // 2]
    lon, lat = p["center"]["lon"], p["center"]["lat"]
    (ex,) = resolve([parse_ref(f"{lon},{lat}")], filled, encoder)
    assert ex.tile_id == tid
    np.testing.assert_allclose(ex.vector, coarse[ids.index(tid)], atol=1e-5)

    # An image file with the tile's own pixels finds that tile first, with cosine ~1.
    with SceneReader(SCENE, SPEC) as reader:
        window = next(w for w in reader.windows() if (w.col, w.row, w.level) == (p["window"]["col"], p["window"]["row"], 1))
        tile = reader.read(window)
    assert tile is not None
    chip = tmp_path / "chip.png"
    Image.fromarray(tile.pixels).save(chip)
    top = Searcher(encoder, filled, vector_cache_bytes=0).search(None, k=3, examples=[parse_ref(str(chip))])
    assert top.results[0].id == tid and top.results[0].coarse_score > 0.99
    # The same bytes POSTed (image_ref) resolve to the same vector.
    (posted,) = resolve([image_ref(chip.read_bytes())], filled, encoder)
    (from_file,) = resolve([parse_ref(str(chip))], filled, encoder)
    np.testing.assert_allclose(posted.vector, from_file.vector, atol=1e-6)
    assert posted.tile_id is None

    # A region: that region's stored vector, and the region-level answer names a region.
    (reg,) = resolve([parse_ref(f"{tid}:5", "like_region")], filled, encoder)
    want = regions[ids.index(tid)][5].astype(np.float32)
    np.testing.assert_allclose(reg.vector, want / np.linalg.norm(want), atol=1e-3)
    out = Searcher(encoder, filled, vector_cache_bytes=0).search(None, k=5, examples=[parse_ref(f"{tid}:5", "like_region")])
    assert tid not in [r.id for r in out.results] and all(r.region_index is not None for r in out.results)


@pytest.mark.parametrize(
    "refs, error, needle",
    [
        ([ExampleRef("like", "x", tile_id="00000000-0000-0000-0000-000000000000")], TileNotFound, "not in collection"),
        ([ExampleRef("like", "0,0", point=(0.0, 0.0))], BadInput, "no stored tile contains this point"),
        ([ExampleRef("like_region", "t:99", tile_id="TILE", region=99)], BadInput, "out of range"),
        ([ExampleRef("unlike", "TILE", tile_id="TILE")], BadInput, "needs a text or at least one like"),
        ([ExampleRef("like", "TILE", tile_id="TILE"), ExampleRef("unlike", "TILE", tile_id="TILE")], BadInput,
         "either liked or unliked"),
        ([image_ref(b"")], BadInput, "is empty"),
        ([image_ref(b"GIF89a not really")], BadInput, "not an image GDAL can read"),
    ],
)
def test_bad_examples_refused_store_unchanged(filled: Store, encoder, refs, error, needle) -> None:
    ids, *_ = _all_tiles(filled)
    refs = [ExampleRef(r.param, r.text, tile_id=ids[0] if r.tile_id == "TILE" else r.tile_id, point=r.point,
                       image=r.image, data=r.data, region=r.region) for r in refs]
    before = filled.count_tiles()
    with pytest.raises(error, match=needle):
        Searcher(encoder, filled, vector_cache_bytes=0).search(None, k=5, examples=refs)
    assert filled.count_tiles() == before


@pytest.mark.parametrize("size, needle", [((20, 64), "32 to 8192 pixels"), ((64, 200), "roughly square")])
def test_images_of_a_wrong_size_or_band_count(tmp_path: Path, filled: Store, encoder, size, needle) -> None:
    chip = tmp_path / "chip.png"
    Image.new("RGB", (size[1], size[0])).save(chip)
    with pytest.raises(BadInput, match=needle):
        resolve([parse_ref(str(chip))], filled, encoder)
    two = tmp_path / "two.tif"
    with rasterio.open(two, "w", driver="GTiff", width=64, height=64, count=2, dtype="uint8") as ds:
        ds.write(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(BadInput, match="2 bands"):
        resolve([parse_ref(str(two))], filled, encoder)


def test_labels_round_trip_and_refusals(filled: Store, tmp_path: Path) -> None:
    ids, *_ = _all_tiles(filled)
    marks = LabelSet([Label(ids[0], "positive"), Label(ids[3], "negative"), Label(ids[5], "positive", 2)],
                     query="ships", model_id="m")
    fc = labels_to_geojson(marks, filled)
    assert fc["type"] == "FeatureCollection" and fc["query"] == "ships" and len(fc["features"]) == 3
    assert fc["features"][0]["geometry"]["type"] == "Polygon"
    ring = fc["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]
    path = tmp_path / "labels.geojson"
    path.write_text(json.dumps(fc))
    back = read_labels(path)
    assert back.labels == marks.labels and back.query == "ships" and back.model_id == "m"
    assert [r.param for r in back.refs()] == ["like", "unlike", "like_region"]
    with pytest.raises(TileNotFound):
        labels_to_geojson(LabelSet([Label("00000000-0000-0000-0000-000000000000", "positive")]), filled)
    with pytest.raises(BadInput, match="both positive and negative"):
        labels_to_geojson(LabelSet([Label(ids[0], "positive"), Label(ids[0], "negative")]), filled)
    for data, needle in [
        ({"type": "Feature"}, "not a GeoJSON FeatureCollection"),
        ({"type": "FeatureCollection", "features": [{"properties": {"id": "x", "label": "positive"}}]}, "not a tile id"),
        ({"type": "FeatureCollection", "features": [{"properties": {"id": ids[0], "label": "maybe"}}]}, "positive or negative"),
        ({"type": "FeatureCollection", "format": "other/2", "features": []}, "is not"),
    ]:
        with pytest.raises(BadInput, match=needle):
            parse_labels(data)
    (tmp_path / "bad.geojson").write_text("{nope")
    with pytest.raises(BadInput, match="is not JSON"):
        read_labels(tmp_path / "bad.geojson")
