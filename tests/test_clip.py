"""ClipEncoder on a tiny CLIP built locally, fed real RSICD images and captions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _data import SHARED_DATA
from ftfsearch.errors import BadInput
from ftfsearch.model.base import Encoder, RerankParams
from ftfsearch.model.clip import ClipEncoder
from ftfsearch.model.regions import box_pooling_matrix
from ftfsearch.model.loading import load_encoder
from _tiny import build_tiny_clip

pytestmark = pytest.mark.usefixtures("shared_data")
RSICD = SHARED_DATA / "rsicd"


@pytest.fixture(scope="module")
def rsicd() -> dict:
    return json.loads((RSICD / "dataset_rsicd.json").read_text())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, rsicd: dict) -> Path:
    captions = [s["raw"] for im in rsicd["images"][:400] for s in im["sentences"]]
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0, corpus=captions)


@pytest.fixture(scope="module")
def tiles(rsicd: dict) -> torch.Tensor:
    """Four real 224x224 RSICD test images as uint8 [4, 224, 224, 3]."""
    names = [im["filename"] for im in rsicd["images"] if im["split"] == "test"][:4]
    arrays = [np.asarray(Image.open(RSICD / "images" / n).convert("RGB").resize((224, 224))) for n in names]
    return torch.from_numpy(np.stack(arrays))


@pytest.fixture(scope="module")
def crops(tiny_dir: Path) -> ClipEncoder:
    enc = load_encoder(str(tiny_dir), device="cpu", region_mode="crops")
    assert isinstance(enc, ClipEncoder)
    return enc


@pytest.fixture(scope="module")
def tokens(tiny_dir: Path) -> ClipEncoder:
    enc = load_encoder(str(tiny_dir), device="cpu", region_mode="tokens")
    assert isinstance(enc, ClipEncoder)
    return enc


def _count_vision_passes(enc: ClipEncoder) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    sizes: list[int] = []
    handle = enc.model.vision_model.register_forward_hook(lambda _m, args, kwargs, _o: sizes.append(len(kwargs["pixel_values"])), with_kwargs=True)
    return sizes, handle


@pytest.mark.parametrize("mode", ["crops", "tokens"])
def test_shapes_units_and_protocol(mode: str, request: pytest.FixtureRequest, tiles: torch.Tensor) -> None:
    enc: ClipEncoder = request.getfixturevalue(mode)
    assert isinstance(enc, Encoder)
    coarse, regions = enc.encode_images(tiles)
    assert coarse.shape == (4, 32) and regions.shape == (4, 14, 32)
    assert coarse.dtype == regions.dtype == torch.float32 and coarse.device.type == "cpu"
    torch.testing.assert_close(coarse.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(regions.norm(dim=-1), torch.ones(4, 14))
    assert enc.dim == 32 and enc.num_regions == 14 and enc.region_layout == "grid-1-2-3"
    assert enc.region_boxes.shape == (14, 4)
    assert enc.id.startswith("clip:tiny-clip@") and enc.id.endswith(f":{mode}:grid-1-2-3")
    assert enc.rerank_params == RerankParams()
    # Regions of different boxes are different vectors, and tiles differ from each other.
    assert (regions[0, 1] - regions[0, 5]).abs().max() > 1e-3
    assert (coarse[0] - coarse[1]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["crops", "tokens"])
def test_deterministic_and_batch_independent(mode: str, request: pytest.FixtureRequest, tiles: torch.Tensor) -> None:
    enc: ClipEncoder = request.getfixturevalue(mode)
    coarse, regions = enc.encode_images(tiles)
    again = enc.encode_images(tiles)
    assert torch.equal(coarse, again[0]) and torch.equal(regions, again[1])
    # Forward passes split differently (small max_batch) give the same vectors per tile.
    enc.max_batch = 3
    try:
        split = enc.encode_images(tiles)
        single = enc.encode_images(tiles[2:3])
    finally:
        enc.max_batch = 256
    torch.testing.assert_close(split[0], coarse, atol=1e-5, rtol=0)
    torch.testing.assert_close(split[1], regions, atol=1e-5, rtol=0)
    torch.testing.assert_close(single[1][0], regions[2], atol=1e-5, rtol=0)


def test_crops_full_tile_box_is_the_coarse_vector(crops: ClipEncoder, tiles: torch.Tensor) -> None:
    coarse, regions = crops.encode_images(tiles)
    assert np.allclose(crops.region_boxes[0], [0, 0, 1, 1])
    torch.testing.assert_close(regions[:, 0], coarse, atol=1e-6, rtol=0)


def test_crops_are_the_embeddings_of_the_cut_out_pixels(tiny_dir: Path, tiles: torch.Tensor) -> None:
    """Region r of grid-2 equals the coarse vector of that quarter of the pixels, encoded alone."""
    enc = ClipEncoder(tiny_dir, device="cpu", region_mode="crops", layout="grid-2")
    assert not np.isclose(enc.region_boxes, [0, 0, 1, 1]).all(axis=1).any()  # every region is a crop
    _, regions = enc.encode_images(tiles)
    quarters = [tiles[:, :112, :112], tiles[:, :112, 112:], tiles[:, 112:, :112], tiles[:, 112:, 112:]]
    for r, quarter in enumerate(quarters):
        alone, _ = enc.encode_images(quarter.contiguous())
        torch.testing.assert_close(regions[:, r], alone, atol=1e-5, rtol=0)


def test_crops_batch_all_tiles_in_one_pass_where_it_fits(crops: ClipEncoder, tiles: torch.Tensor) -> None:
    sizes, handle = _count_vision_passes(crops)
    try:
        crops.encode_images(tiles)
        assert sizes == [4 * 14]  # the full-tile box reuses the coarse pass: 14 images per tile, one pass
        sizes.clear()
        crops.max_batch = 20
        crops.encode_images(tiles)
        assert sizes == [20, 20, 16]
    finally:
        crops.max_batch = 256
        handle.remove()


def test_tokens_mode_is_one_forward_pass(tokens: ClipEncoder, tiles: torch.Tensor) -> None:
    sizes, handle = _count_vision_passes(tokens)
    try:
        tokens.encode_images(tiles)
    finally:
        handle.remove()
    assert sizes == [4]


def test_tokens_regions_pool_patch_tokens_by_overlap(tokens: ClipEncoder, tiles: torch.Tensor) -> None:
    """Recompute the grid-2 top-right region by hand from the vision tower's patch tokens."""
    vision = tokens.model.config.vision_config
    grid = vision.image_size // vision.patch_size  # the patch-token grid the regions pool over
    assert grid == 4
    weights = box_pooling_matrix(tokens.region_boxes, grid, grid)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(14))
    top_right = weights[2].reshape(grid, grid)  # box 2 = grid-2 cell row 0, col 1: patch rows 0-1, cols 2-3
    assert torch.allclose(top_right[:2, 2:], torch.full((2, 2), 0.25)) and top_right.sum() == pytest.approx(1.0)
    # A 3x3 cell straddles patches: cell (0, 0) spans x, y in [0, 1/3], i.e. 3/4 of its width in patch 0.
    corner = weights[5].reshape(grid, grid)
    assert corner[0, 0] == pytest.approx(0.5625) and corner[0, 1] == pytest.approx(0.1875)
    assert corner[1, 1] == pytest.approx(0.0625) and corner[2:].sum() == 0
    centre = weights[9].reshape(grid, grid)  # x, y in [1/3, 2/3]: a quarter in each of the 4 middle patches
    assert torch.allclose(centre[1:3, 1:3], torch.full((2, 2), 0.25))
    _, regions = tokens.encode_images(tiles[:1])
    with torch.inference_mode():
        pixels = tokens.transform(tiles[:1], tokens.device)
        hidden = tokens.model.vision_model(pixel_values=pixels).last_hidden_state[0, 1:]  # [16, H]
        patch_rows = hidden.reshape(grid, grid, -1)
        pooled = patch_rows[:2, 2:].reshape(4, -1).mean(dim=0)
        expected = tokens.model.visual_projection(tokens.model.vision_model.post_layernorm(pooled))
    torch.testing.assert_close(regions[0, 2], torch.nn.functional.normalize(expected, dim=-1), atol=1e-5, rtol=0)


def test_matches_sentence_transformers(tiny_dir: Path, crops: ClipEncoder, tiles: torch.Tensor) -> None:
    """At the model's input size our torch preprocessing and towers give the same vectors as sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_dir), device="cpu")
    small = torch.from_numpy(np.stack([np.asarray(Image.fromarray(t.numpy()).resize((64, 64), Image.BICUBIC)) for t in tiles]))
    ref = st.encode([Image.fromarray(t.numpy()) for t in small], convert_to_tensor=True, normalize_embeddings=True)
    coarse, _ = crops.encode_images(small)
    torch.testing.assert_close(coarse, ref.float(), atol=1e-4, rtol=0)
    texts = ["many buildings are near a river", "an airport with planes"]
    ref_text = st.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(crops.encode_text(texts), ref_text.float(), atol=1e-4, rtol=0)
    # Resizing in torch (antialiased bicubic) stays close to PIL's resize of the full 224 tiles.
    full_ref = st.encode([Image.fromarray(t.numpy()) for t in tiles], convert_to_tensor=True, normalize_embeddings=True)
    full, _ = crops.encode_images(tiles)
    assert (full * full_ref.float()).sum(dim=-1).min() > 0.99


def test_text_shapes_units_and_truncation(crops: ClipEncoder, rsicd: dict) -> None:
    captions = [s["raw"] for s in rsicd["images"][500]["sentences"]]
    vecs = crops.encode_text(captions)
    assert vecs.shape == (5, 32) and vecs.dtype == torch.float32
    torch.testing.assert_close(vecs.norm(dim=-1), torch.ones(5))
    assert crops.max_text_tokens == 77
    assert crops.count_text_tokens("a river") == 4  # start, a, river, end
    long = " ".join([captions[0]] * 12)
    assert crops.count_text_tokens(long) > crops.max_text_tokens
    # Everything past the 77th token is dropped: appending more words changes nothing.
    a, b, short = crops.encode_text([long, long + " with a stadium and an airport", captions[0]])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (a - short).abs().max() > 1e-3
    assert crops.encode_text([]).shape == (0, 32)
    with pytest.raises(BadInput, match="list of strings"):
        crops.encode_text("not a list")  # type: ignore[arg-type]


def test_bad_images_and_empty_batch(crops: ClipEncoder, tiles: torch.Tensor) -> None:
    with pytest.raises(BadInput, match="uint8"):
        crops.encode_images(tiles.float())
    with pytest.raises(BadInput, match=r"\[B, H, W, 3\]"):
        crops.encode_images(tiles[..., :2])
    coarse, regions = crops.encode_images(tiles[:0])
    assert coarse.shape == (0, 32) and regions.shape == (0, 14, 32)


def test_rerank_params_from_model_dir(tiny_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_dir, tmp_path / "tuned")
    (copy / "ftf_rerank.json").write_text(json.dumps({"tau": 0.1, "alpha": 0.3}))
    enc = load_encoder(str(copy), device="cpu")
    assert enc.rerank_params == RerankParams(tau=0.1, alpha=0.3, balanced=True)
    (copy / "ftf_rerank.json").write_text(json.dumps({"tau": 0.0, "alpha": 0.3}))
    with pytest.raises(BadInput, match="ftf_rerank.json"):
        load_encoder(str(copy), device="cpu")


def test_id_follows_the_weights(tmp_path: Path, tiny_dir: Path) -> None:
    same = build_tiny_clip(tmp_path / "a" / "tiny-clip", seed=0, corpus=[])
    again = build_tiny_clip(tmp_path / "b" / "tiny-clip", seed=0, corpus=[])
    other = build_tiny_clip(tmp_path / "c" / "tiny-clip", seed=1, corpus=[])
    ids = [ClipEncoder(p, device="cpu").id for p in (same, again, other)]
    assert ids[0] == ids[1] != ids[2]
    assert ClipEncoder(tiny_dir, device="cpu").id != ids[0]  # other tokenizer


def test_bad_region_mode_and_layout(tiny_dir: Path) -> None:
    with pytest.raises(BadInput, match="^region_mode 'patches': use one of"):
        ClipEncoder(tiny_dir, device="cpu", region_mode="patches")
    with pytest.raises(BadInput, match="layout"):
        ClipEncoder(tiny_dir, device="cpu", layout="grid-0")
