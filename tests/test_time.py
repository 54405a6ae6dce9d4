"""Acquisition time: read from TIFF tags or ``--acquired``, stored in every tile, filtered on by
``query --after/--before``, the API's ``after=``/``before=`` and carried by every result."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import rasterio
from fastapi.testclient import TestClient

from _data import SHARED_DATA
from ftfsearch.config import Settings
from ftfsearch.errors import BadInput
from ftfsearch.times import check_range, iso_utc, parse_time, read_time
from ftfsearch.web import create_app
from ingest.tiling import SceneReader, TilingSpec
from _cli import assert_one_line_error, run

SHARED = SHARED_DATA / "geotiffs"
RGB = SHARED / "rasterio" / "RGB.byte.tif"
ALBERS = SHARED / "solaris_spacenet" / "sample_geotiff_custom_proj.tif"


def tagged_copy(src: Path, dst: Path, **tags: str) -> Path:
    """A copy of a real GeoTIFF with metadata tags set (the pixels are untouched)."""
    shutil.copyfile(src, dst)
    with rasterio.open(dst, "r+") as ds:
        ds.update_tags(**tags)
    return dst


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, iso",
    [
        ("2024-05-03", "2024-05-03T00:00:00Z"),
        ("2024-05-03T10:22:11Z", "2024-05-03T10:22:11Z"),
        ("2024-05-03T12:22:11+02:00", "2024-05-03T10:22:11Z"),
        ("2024-05-03 10:22", "2024-05-03T10:22:00Z"),
        ("2024:05:03 10:22:11", "2024-05-03T10:22:11Z"),  # TIFFTAG_DATETIME's own form
        ("2024-05-03T10:22:11.250Z", "2024-05-03T10:22:11.250000Z"),
    ],
)
def test_times_are_read_as_utc(text: str, iso: str) -> None:
    when = read_time(text)
    assert when is not None and when.tzinfo is not None
    assert iso_utc(when) == iso


@pytest.mark.parametrize("text", ["", "June", "2024-13-01", "2024-02-30", "yesterday", "10:22"])
def test_not_dates(text: str) -> None:
    assert read_time(text) is None
    with pytest.raises(BadInput, match=r"^after .*: not a date; give ISO 8601"):
        parse_time(text, "after")


def test_range_must_be_ordered() -> None:
    a = datetime(2024, 5, 3, tzinfo=timezone.utc)
    check_range(a, None)
    check_range(None, a)
    with pytest.raises(BadInput, match="^after 2024-05-03T00:00:00Z: must be earlier than before"):
        check_range(a, a)


# -- ingest -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("shared_data")
def test_reader_takes_the_tiff_tags(tmp_path: Path) -> None:
    spec = TilingSpec()
    with SceneReader(tagged_copy(RGB, tmp_path / "a.tif", TIFFTAG_DATETIME="2019:07:14 09:05:00"), spec) as r:
        assert r.acquired == "2019-07-14T09:05:00Z"
    both = tagged_copy(
        RGB, tmp_path / "b.tif", TIFFTAG_DATETIME="2019:07:14 09:05:00", ACQUISITIONDATETIME="2019-07-13T23:59:00Z"
    )
    with SceneReader(both, spec) as r:
        assert r.acquired == "2019-07-13T23:59:00Z"  # the acquisition beats the file's date
    with SceneReader(tagged_copy(RGB, tmp_path / "c.tif", TIFFTAG_DATETIME="unknown"), spec) as r:
        assert r.acquired is None


@pytest.fixture(scope="module")
def timed_store(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> dict[str, str]:
    """A store of three real scenes: one dated by its TIFF tag, one by ``--acquired``, one undated."""
    root = tmp_path_factory.mktemp("timed")
    env = {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(root / "none.toml"), "FTF_STORE": str(root / "store")}
    tagged = tagged_copy(RGB, root / "july.tif", TIFFTAG_DATETIME="2019:07:14 09:05:00")
    for args in ([str(tagged)], [str(ALBERS), "--acquired", "2021-03-02T11:00:00+01:00"], [str(RGB)]):
        proc = run("ingest", *args, "--levels", "1", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
    return env


def _query(env: dict[str, str], *flags: str) -> list[dict]:
    proc = run("query", "a harbour", "--k", "200", "--json", *flags, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.usefixtures("shared_data")
def test_scenes_and_results_carry_the_time(timed_store: dict[str, str]) -> None:
    results = _query(timed_store)
    by_scene = {r["scene_id"]: r["acquired"] for r in results}
    assert by_scene == {
        "july": "2019-07-14T09:05:00Z",
        "sample_geotiff_custom_proj": "2021-03-02T10:00:00Z",
        "RGB.byte": None,
    }
    table = run("query", "a harbour", "--k", "3", "--after", "2000-01-01", env=timed_store)
    assert table.returncode == 0 and "acquired" in table.stdout and "2019-07-14" in table.stdout


@pytest.mark.parametrize(
    "flags, scenes",
    [
        (("--after", "2020-01-01"), {"sample_geotiff_custom_proj"}),
        (("--before", "2020-01-01"), {"july"}),
        (("--after", "2019-07-14T09:05:00Z", "--before", "2021-03-02T10:00:00Z"), {"july"}),  # [after, before)
        (("--after", "2019-07-15", "--before", "2021-03-02"), set()),
        (("--after", "1990-01-01"), {"july", "sample_geotiff_custom_proj"}),  # never the undated scene
    ],
)
@pytest.mark.usefixtures("shared_data")
def test_query_time_range(timed_store: dict[str, str], flags: tuple[str, ...], scenes: set[str]) -> None:
    assert {r["scene_id"] for r in _query(timed_store, *flags)} == scenes


@pytest.mark.usefixtures("shared_data")
def test_bad_dates_are_one_line_naming_the_flag(timed_store: dict[str, str], tmp_path: Path) -> None:
    assert_one_line_error(run("query", "x", "--after", "June", env=timed_store), "error: --after 'June': not a date")
    assert_one_line_error(
        run("query", "x", "--after", "2024-02-01", "--before", "2024-01-01", env=timed_store),
        "error: --after 2024-02-01T00:00:00Z: must be earlier than --before 2024-01-01T00:00:00Z",
    )
    env = {**timed_store, "FTF_STORE": str(tmp_path / "fresh")}
    assert_one_line_error(run("ingest", str(RGB), "--acquired", "2024-02-30", env=env), "error: --acquired")
    assert not (tmp_path / "fresh").exists()


@pytest.mark.usefixtures("shared_data")
def test_changing_a_scenes_time_is_refused(timed_store: dict[str, str]) -> None:
    before = run("scenes", "--json", env=timed_store).stdout
    proc = run("ingest", str(RGB), "--levels", "1", "--acquired", "2022-01-01", env=timed_store)
    assert_one_line_error(proc, "scene 'RGB.byte' was ingested with acquisition time unknown", "drop it first")
    assert run("scenes", "--json", env=timed_store).stdout == before
    again = run("ingest", str(ALBERS), "--levels", "1", "--acquired", "2021-03-02T10:00:00Z", "--json", env=timed_store)
    assert again.returncode == 0, again.stderr  # the same time in another form: nothing to do
    assert json.loads(again.stdout)["scenes"][0]["written"] == 0


# -- HTTP API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(timed_store: dict[str, str]) -> Iterator[TestClient]:
    settings = Settings(store_dir=Path(timed_store["FTF_STORE"]), model=timed_store["FTF_MODEL"], device="cpu")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.usefixtures("shared_data")
def test_api_after_before(client: TestClient) -> None:
    def scenes(**params: str) -> set[str]:
        resp = client.get("/api/search", params={"q": "a harbour", "k": 200, **params})
        assert resp.status_code == 200, resp.text
        return {r["scene_id"] for r in resp.json()["results"]}

    assert scenes() == {"july", "sample_geotiff_custom_proj", "RGB.byte"}
    assert scenes(after="2020-01-01") == {"sample_geotiff_custom_proj"}
    assert scenes(before="2020-01-01") == {"july"}
    assert scenes(after="2019-07-14", before="2019-07-15") == {"july"}  # what the page's day range sends
    hit = client.get("/api/search", params={"q": "a harbour", "after": "2021-01-01"}).json()["results"][0]
    assert hit["acquired"] == "2021-03-02T10:00:00Z"
    listed = {s["scene_id"]: s["acquired"] for s in client.get("/api/scenes").json()["scenes"]}
    assert listed["july"] == "2019-07-14T09:05:00Z" and listed["RGB.byte"] is None
    for params, needle in [({"after": "June"}, "after 'June': not a date"),
                           ({"after": "2024-02-01", "before": "2024-01-01"}, "must be earlier than before")]:
        resp = client.get("/api/search", params={"q": "a harbour", **params})
        assert resp.status_code == 400, resp.text
        assert needle in resp.json()["error"]


@pytest.mark.usefixtures("shared_data")
def test_page_has_a_date_range(client: TestClient) -> None:
    page = client.get("/").text
    assert 'id="after"' in page and 'id="before"' in page and 'type="date"' in page
    js = client.get("/static/app.js").text
    assert 'params.set("after"' in js and 'params.set("before", nextDay(' in js
