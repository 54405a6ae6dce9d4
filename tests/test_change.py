"""Change search on real NAIP: one place in 2009 and 2020, and a copy of the 2020 scene with a
patch of another real ortho pasted in (a known change at a known place), dated later. Change
search, with an example of the patch and without any query, must rank the pasted place first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _cli import InProcess, assert_one_line_error
from _data import require_shared_data
from _scenes import NAIP_2009, NAIP_2020, pasted_naip
from ftfsearch.errors import BadInput
from ftfsearch.times import check_ranges, parse_range


def test_ranges_parse_and_refuse() -> None:
    r = parse_range("2019-01-01/..", "after")
    assert r.end is None and str(r) == "2019-01-01T00:00:00Z/.."
    assert parse_range("../2015-06-01", "before").start is None
    check_ranges(parse_range("2019-01-01/2020-01-01", "before"), parse_range("2020-01-01/..", "after"))  # adjacent
    for bad, needle in (("2020-01-01", "not a range"), ("../..", "both ends are open"),
                        ("2020-01-01/2020-01-01", "is empty"), ("2020-13-01/..", "not a date")):
        with pytest.raises(BadInput, match=needle):
            parse_range(bad, "after")
    with pytest.raises(BadInput, match="overlap"):
        check_ranges(parse_range("2019-01-01/2021-01-01", "before"), parse_range("2020-06-01/..", "after"))
    with pytest.raises(BadInput, match="swap them"):
        check_ranges(parse_range("2021-01-01/2022-01-01", "before"), parse_range("2019-01-01/2020-01-01", "after"))


@pytest.fixture(scope="module")
def naip(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> dict[str, object]:
    require_shared_data("geotiffs", "opengeos_data")
    root = tmp_path_factory.mktemp("change")
    y2009, y2020 = NAIP_2009, NAIP_2020
    pasted, example = pasted_naip(root)
    env = {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(root / "none.toml"), "FTF_STORE": str(root / "store")}
    cli = InProcess(env)
    for path, when in ((y2009, "2009-08-18"), (y2020, "2020-08-31"), (pasted, "2021-08-31")):
        proc = cli("ingest", str(path), "--acquired", when, "--tile-size", "128", "--levels", "1")
        assert proc.returncode == 0, proc.stderr
    return {"cli": cli, "pasted": pasted, "example": example, "env": env}


def _pasted_place_first(hits: list[dict]) -> None:
    top = hits[0]
    assert top["after"]["scene_id"] == "naip_2020_pasted" and top["before"]["acquired"].startswith("2020-08-31")
    w = top["after"]["window"]
    assert (w["col"], w["row"]) == (256, 128), top
    assert top["change"] > hits[1]["change"]


@pytest.mark.usefixtures("shared_data")
def test_change_without_words_ranks_the_pasted_place_first(naip: dict) -> None:
    cli = naip["cli"]
    # 2009 and 2020 are both in the before range: the latest (2020) stands for the place
    proc = cli("change", "--before", "2009-01-01/2021-01-01", "--after", "2021-01-01/..", "--json", "--k", "5")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    _pasted_place_first(hits)
    assert hits[0]["before"]["score"] is None  # no query: no query score
    assert hits[-1]["change"] < 1e-3  # an untouched place of the copy did not move
    # the real 2009 -> 2020 pair: every place of the scene is covered in both
    real = cli("change", "--before", "../2010-01-01", "--after", "2020-01-01/2021-01-01", "--json", "--k", "1000")
    assert real.returncode == 0, real.stderr
    pairs = json.loads(real.stdout)
    assert len(pairs) >= 35 and all(h["before"]["acquired"].startswith("2009") for h in pairs)
    assert [h["change"] for h in pairs] == sorted((h["change"] for h in pairs), reverse=True)


@pytest.mark.usefixtures("shared_data")
def test_change_by_example_ranks_the_pasted_place_first(naip: dict) -> None:
    cli = naip["cli"]
    proc = cli("change", "--like", str(naip["example"]), "--before", "2020-01-01/2021-01-01",
               "--after", "2021-01-01/..", "--json", "--k", "5")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    _pasted_place_first(hits)
    top = hits[0]
    # JSON rounds scores and the change to 4 decimals: three roundings of 5e-5 at most
    assert top["change"] == pytest.approx(top["after"]["score"] - top["before"]["score"], abs=1.5e-4)
    assert top["before"]["region"] and top["after"]["region"]
    gone = json.loads(cli("change", "--like", str(naip["example"]), "--before", "2020-01-01/2021-01-01",
                          "--after", "2021-01-01/..", "--json", "--k", "5", "--disappeared").stdout)
    assert top["after"]["window"] not in [g["after"]["window"] for g in gone]  # it rose: it is not what fell


@pytest.mark.usefixtures("shared_data")
def test_change_chips_are_before_after_pairs_with_regions_outlined(naip: dict, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from ftfsearch.chips import OUTLINE_RGB, PAIR_GAP, PAIR_SIDE

    proc = naip["cli"]("change", "--like", str(naip["example"]), "--before", "2020-01-01/2021-01-01",
                       "--after", "2021-01-01/..", "--k", "2", "--chips", str(tmp_path / "chips"))
    assert proc.returncode == 0, proc.stderr
    pngs = sorted((tmp_path / "chips").glob("*_pair.png"))
    assert [p.name[:4] for p in pngs] == ["001_", "002_"] and "naip_2020_pasted" in pngs[0].name
    pixels = np.asarray(Image.open(pngs[0]).convert("RGB"))
    side = pixels.shape[0]  # the tiles' own 128 px (a chip is never larger than its scene pixels)
    assert side == min(PAIR_SIDE, 128) and pixels.shape == (side, 2 * side + PAIR_GAP, 3)
    before, after = pixels[:, :side], pixels[:, side + PAIR_GAP:]
    for half in (before, after):  # each side has its matched region outlined
        assert (half == np.asarray(OUTLINE_RGB, dtype=np.uint8)).all(axis=-1).sum() > 50
    assert (pixels[:, side:side + PAIR_GAP] == 255).all()
    assert np.abs(before.astype(int) - after.astype(int)).mean() > 5  # the pasted patch shows on the right


@pytest.mark.usefixtures("shared_data")
def test_change_in_an_area(naip: dict, tmp_path: Path) -> None:
    cli = naip["cli"]
    everywhere = json.loads(cli("change", "--before", "2020-01-01/2021-01-01", "--after", "2021-01-01/..", "--json",
                                "--k", "1000").stdout)
    top = everywhere[0]["after"]["bbox"]  # the pasted place: an area around its tile's centre
    cx, cy = (top[0] + top[2]) / 2, (top[1] + top[3]) / 2
    dx, dy = (top[2] - top[0]) / 4, (top[3] - top[1]) / 4
    area = tmp_path / "area.geojson"
    area.write_text(json.dumps({"type": "Polygon", "coordinates": [[[cx - dx, cy - dy], [cx + dx, cy - dy],
                                                                    [cx + dx, cy + dy], [cx - dx, cy + dy],
                                                                    [cx - dx, cy - dy]]]}))
    proc = cli("change", "--before", "2020-01-01/2021-01-01", "--after", "2021-01-01/..", "--json", "--k", "1000",
               "--aoi", str(area))
    assert proc.returncode == 0, proc.stderr
    inside = json.loads(proc.stdout)
    assert inside[0]["after"]["window"] == everywhere[0]["after"]["window"]
    assert 1 <= len(inside) < len(everywhere) / 4  # the tiles touching a quarter-tile square
    point = tmp_path / "point.geojson"
    point.write_text(json.dumps({"type": "Point", "coordinates": [cx, cy]}))
    assert_one_line_error(cli("change", "--before", "2020-01-01/2021-01-01", "--after", "2021-01-01/..",
                              "--aoi", str(point)), "--aoi")


@pytest.mark.usefixtures("shared_data")
def test_change_refusals_are_one_line(naip: dict) -> None:
    cli = naip["cli"]
    none = cli("change", "--before", "../2000-01-01", "--after", "2020-01-01/..")
    assert_one_line_error(none, "no scene of the area was acquired in --before", "2009-08-18", "2021-08-31")
    assert_one_line_error(cli("change", "--before", "2019-01-01/2021-01-01", "--after", "2020-06-01/.."), "overlap")
    assert_one_line_error(cli("change", "--before", "2019-01-01", "--after", "2020-06-01/.."), "not a range")


@pytest.mark.usefixtures("shared_data")
def test_api_change_answers_what_the_cli_prints_and_4xx_for_bad_ranges(naip: dict) -> None:
    from fastapi.testclient import TestClient

    from ftfsearch.commands import ChangeOutcome, ChangeRequest
    from ftfsearch.commands.local import LocalCommands
    from ftfsearch.config import Settings
    from ftfsearch.web import create_app

    env = naip["env"]
    settings = Settings(store_dir=Path(env["FTF_STORE"]), model=env["FTF_MODEL"], device="cpu")
    request = ChangeRequest(before="2020-01-01/2021-01-01", after="2021-01-01/..", k=3)
    outcome = LocalCommands.from_settings(settings).change(request)
    # the outcome crosses the holder as JSON: both tiles come back whole
    again = ChangeOutcome.model_validate_json(outcome.model_dump_json())
    assert [h.to_dict() for h in again.hits] == [h.to_dict() for h in outcome.hits]
    with TestClient(create_app(settings), raise_server_exceptions=True) as client:
        resp = client.get("/api/change", params={"before": "2020-01-01/2021-01-01", "after": "2021-01-01/..", "k": 3})
        assert resp.status_code == 200, resp.text
        assert resp.json()["places"] == [h.to_dict() for h in outcome.hits]
        bad = client.get("/api/change", params={"before": "2019-01-01/2021-01-01", "after": "2020-06-01/.."})
        assert bad.status_code in (400, 422) and "overlap" in bad.json()["error"]
        none = client.get("/api/change", params={"before": "../2000-01-01", "after": "2020-01-01/.."})
        assert 400 <= none.status_code < 500 and "2009-08-18" in none.json()["error"]


@pytest.mark.usefixtures("shared_data")
def test_fast_change_agrees_with_scoring_every_pair(naip: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortlist (the places most changed by their coarse vectors) holds the top places that
    the second stage over every pair finds, with words and without; the shortlist is cut to
    ``OVERFETCH k`` places here so that it is far smaller than the scene's places. The copy's other
    places did not change (nothing disappeared): their changes are numerical noise (< 1e-3) in any order."""
    import numpy as np

    from ftfsearch import change
    from ftfsearch.commands.local import LocalCommands
    from ftfsearch.config import Settings
    from ftfsearch.examples import ExampleRef

    env = naip["env"]
    settings = Settings(store_dir=Path(env["FTF_STORE"]), model=env["FTF_MODEL"], device="cpu")
    before, after = parse_range("2009-01-01/2021-01-01", "before"), parse_range("2021-01-01/..", "after")
    like = (ExampleRef(param="like", text=str(naip["example"]), image=Path(naip["example"])),)
    monkeypatch.setattr(change, "MIN_SHORTLIST", 0)
    with LocalCommands.from_settings(settings).access.searcher() as (searcher, _):
        places = len(change.change_search(searcher, before, after, k=1000, exhaustive=True).hits)
        k = 3
        assert places > 2 * change.OVERFETCH * k  # the shortlist leaves most places out
        for examples, disappeared in (((), False), (like, False), (like, True)):
            fast = change.change_search(searcher, before, after, examples=examples, k=k, disappeared=disappeared)
            full = change.change_search(searcher, before, after, examples=examples, k=k, disappeared=disappeared,
                                        exhaustive=True)
            if not disappeared:  # the pasted place, whole; below it the same changes, rank by rank, up to noise
                assert fast.hits[0].to_dict() == full.hits[0].to_dict()
                assert fast.hits[0].change > 10 * max(abs(h.change) for h in full.hits[1:])
            np.testing.assert_allclose([h.change for h in fast.hits], [h.change for h in full.hits], atol=1e-3)
            assert len(fast.hits) == k and set(fast.timings_ms) >= {"load", "match", "coarse", "fetch", "score"}
        top = change.change_search(searcher, before, after, examples=like, k=k).hits[0]
        assert top.after.scene_id == "naip_2020_pasted" and (top.after.window["col"], top.after.window["row"]) == (256, 128)
