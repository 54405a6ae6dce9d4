"""Every command both ways, compared field by field: run here over the store
(:class:`~ftfsearch.commands.local.LocalCommands`), and sent to a real ``ftfsearch serve`` holding
the same store (:class:`~ftfsearch.commands.remote.HolderCommands`), as qdrant-client checks its
local mode against the server. The same request models go in; the same typed results must come out
(times aside), and a refused request must fail with the same error class and message."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from _holder import Procs, start_serve
from _web_fixtures import GEOTIFFS
from ftfsearch.commands import (
    ClassifyRequest,
    ChangeRequest,
    Commands,
    FindRequest,
    DropRequest,
    ExportRequest,
    InfoRequest,
    MarksRequest,
    PushRequest,
    ReviewRequest,
    ScenesRequest,
    SearchRequest,
    WatchAddRequest,
    WatchDeliverRequest,
    WatchHitsRequest,
    WatchListRequest,
    WatchRmRequest,
    open_commands,
)
from ftfsearch.commands.ingest_requests import IngestRequest
from ftfsearch.commands.local import LocalCommands
from ftfsearch.commands.remote import HolderCommands
from ftfsearch.config import Settings
from ftfsearch.errors import FtfError
from ftfsearch.examples import parse_ref
from ingest.tiling import TilingSpec

SCENES = (GEOTIFFS / "rasterio" / "RGB.byte.tif", GEOTIFFS / "solaris_spacenet" / "sample_geotiff_custom_proj.tif")
NAIP = (GEOTIFFS / "opengeos_data" / "naip_m_4709963_se_14_1_20090818.tif",
        GEOTIFFS / "opengeos_data" / "naip_m_4709963_se_14_1_20200831.tif")
"""One place in 2009 and 2020: what change compares."""
TIMES = {"seconds", "stages", "tiles_per_s", "timings_ms", "created"}
"""Wall times differ between two runs of anything; every other field must be equal."""


def same(a: Any, b: Any, where: str = "result", ignore: frozenset[str] = frozenset(TIMES)) -> None:
    """Assert ``a`` equals ``b`` field by field (floats to 1e-5: two processes may sum in another order)."""
    if isinstance(a, BaseModel):
        a = a.model_dump()
    if isinstance(b, BaseModel):
        b = b.model_dump()
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        a = {f.name: getattr(a, f.name) for f in dataclasses.fields(a)}
    if dataclasses.is_dataclass(b) and not isinstance(b, type):
        b = {f.name: getattr(b, f.name) for f in dataclasses.fields(b)}
    if isinstance(a, dict) and isinstance(b, dict):
        keys_a, keys_b = set(a) - ignore, set(b) - ignore
        assert keys_a == keys_b, f"{where}: fields {sorted(keys_a ^ keys_b)} on one side only"
        for key in sorted(keys_a, key=str):
            same(a[key], b[key], f"{where}.{key}", ignore)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{where}: {len(a)} items here, {len(b)} through the holder"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]", ignore)
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-6), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class Recorder:
    """An ingest observer that keeps what it was told (progress totals, scenes, failures)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def start(self, scene_id: str, total: int, already: int) -> None:
        self.events.append(("start", scene_id, total, already))

    def advance(self, n: int) -> None:
        self.events.append(("advance",))  # batch boundaries are the pipeline's: counted, not compared

    def finish(self) -> None:
        self.events.append(("finish",))

    def scene(self, item: Any) -> None:
        self.events.append(("scene", item))

    def told(self) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] != "advance"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _tiny import build_tiny_clip

    for scene in SCENES:
        if not scene.is_file():
            pytest.fail(f"real test data missing: {scene}")
    return build_tiny_clip(tmp_path_factory.mktemp("congruence-model") / "tiny-clip")


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.kill_all()


def closed_port() -> int:
    """A loopback port with no listener (bound once for its number, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_of(store: Path, model: Path) -> Settings:
    return Settings(store_dir=store, model=str(model), device="cpu")


def held(procs: Procs, store: Path, model: Path, tmp: Path) -> tuple[Any, Commands]:
    """A real ``ftfsearch serve`` holding ``store``, and the commands this process gets for it."""
    env = {**os.environ, "FTF_CONFIG": str(tmp / "no-config.toml"), "PYTHONUNBUFFERED": "1"}
    serve, _ = start_serve(procs, store, model, env, tmp / f"serve-{store.name}.log")
    commands = open_commands(settings_of(store, model))
    assert isinstance(commands, HolderCommands)  # the one place that chooses chose the holder
    return serve, commands


def stop(serve: Any) -> None:
    serve.send_signal(signal.SIGINT)
    serve.wait(timeout=60)


def search_requests(here: LocalCommands) -> list[SearchRequest]:
    """Searches that reach every part of a search: text, examples (tile, region, point), filters."""
    first = here.search(SearchRequest(text="a river", k=3)).results
    a, b = first[0], first[1]
    west, south, east, north = a.bbox or (0.0, 0.0, 0.0, 0.0)
    point = f"{(west + east) / 2},{(south + north) / 2}"
    return [
        SearchRequest(text="a river next to farmland", k=10),
        SearchRequest(text="a river next to farmland", k=7, rerank=False),
        SearchRequest(text="houses", k=5, recall_k=20, bbox=(west, south, east, north), with_bands=True),
        SearchRequest(text="houses", k=5, scenes=(a.scene_id,), after=None, before=None),
        SearchRequest.model_validate({"text": "houses", "after": "2024-01-01"}),  # no scene has a time: nothing
        SearchRequest(examples=(parse_ref(a.id), parse_ref(b.id, "unlike")), k=6),
        SearchRequest(text="roads", examples=(parse_ref(f"{a.id}:3", "like_region"),), k=4),
        SearchRequest(examples=(parse_ref(point),), k=4, with_bands=True),
        SearchRequest(text="houses", k=5, aoi={"type": "Polygon", "coordinates": [[
            [west, south], [east, south], [(west + east) / 2, north], [west, south]]]}),
    ]


def find_requests(here: LocalCommands) -> list[Any]:
    """A find (default threshold, in an area) and a classify from marks on the first results."""
    first = here.search(SearchRequest(text="a river", k=8)).results
    west, south, east, north = first[0].bbox or (0.0, 0.0, 0.0, 0.0)
    labels = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": None, "properties": {"id": r.id, "label": label}}
        for r, label in zip(first, ["positive"] * 4 + ["negative"] * 2)]}
    return [
        FindRequest(text="a river next to farmland"),
        FindRequest(text="houses", min_score=-1.0, aoi={"type": "Polygon", "coordinates": [[
            [west, south], [east, south], [east, north], [west, north], [west, south]]]}, page=4),
        ClassifyRequest(labels=labels),
        ReviewRequest(labels=labels, seed=4),
    ]


def review_steps(commands: Commands, starts: list[ReviewRequest]) -> list[Any]:
    """Each review started, then two answers (the tile proposed: a hit, then a miss), then the
    classify --estimate of its file."""
    out: list[Any] = []
    for request in starts:
        step = commands.review(request)
        out.append(step)
        for hit in (True, False):
            assert step.item is not None
            step = commands.review(ReviewRequest.model_validate(
                {"labels": step.labels, "answers": [{"id": step.item.id, "hit": hit}]}))
            out.append(step)
        out.append(list(commands.classify(ClassifyRequest(labels=step.labels, estimate=True))))
    return out


REFUSED = [
    SearchRequest(examples=(parse_ref("00000000-0000-0000-0000-000000000000"),)),  # no such tile
    SearchRequest(examples=(parse_ref("0,0"),)),  # a point under no tile
]


def marks_requests(here: LocalCommands) -> list[MarksRequest]:
    """Labels of a hit, a miss, a region and a point on the hit (resolved to the finest tile under it), with their query."""
    first = here.search(SearchRequest(text="a river", k=3)).results
    west, south, east, north = first[0].bbox or (0.0, 0.0, 0.0, 0.0)  # a point on the hit: marked like it
    return [MarksRequest(examples=(parse_ref(first[0].id), parse_ref(first[1].id, "unlike"),
                                   parse_ref(f"{first[0].id}:2", "like_region"),
                                   parse_ref(f"{(west + east) / 2},{(south + north) / 2}")), query="a river")]


def outcomes(commands: Commands, requests: list[SearchRequest], push_to: Path,
             streamed: list[Any] = (), marks: list[MarksRequest] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        # the hook watch's hits to a loopback port nobody listens on: each fails, and stays owed
        "deliver": commands.watch_deliver(WatchDeliverRequest(name="hook", timeout=2.0, tries=1)),
        "labels": [commands.labels(m) for m in marks],
        "export": commands.export_embeddings(ExportRequest(out=push_to.with_suffix(".parquet"))),
        "search": [commands.search(r) for r in requests],
        "streamed": [list(commands.find(r) if isinstance(r, FindRequest) else commands.classify(r))
                     for r in streamed if not isinstance(r, ReviewRequest)],
        "review": review_steps(commands, [r for r in streamed if isinstance(r, ReviewRequest)]),
        "scenes": commands.scenes(ScenesRequest()),
        "info": commands.info(InfoRequest()),
        "push": commands.push(PushRequest(to=str(push_to), collection="copy")),
        "watches": commands.watch_list(WatchListRequest()),
        "hits": commands.watch_hits(WatchHitsRequest(name="anything")),
        # added with the default threshold (from the stored tiles), then removed
        "watch round": (commands.watch_add(WatchAddRequest(name="river", text="a river")),
                        commands.watch_rm(WatchRmRequest(name="river"))),
    }


def refusals(commands: Commands) -> list[tuple[str, str]]:
    out = []
    for request in REFUSED:
        with pytest.raises(FtfError) as raised:
            commands.search(request)
        out.append((type(raised.value).__name__, raised.value.message))
    with pytest.raises(FtfError) as raised:
        commands.drop(DropRequest(scene_id="no-such-scene"))
    out.append((type(raised.value).__name__, raised.value.message))
    with pytest.raises(FtfError) as raised:
        commands.watch_rm(WatchRmRequest(name="nope"))
    out.append((type(raised.value).__name__, raised.value.message))
    with pytest.raises(FtfError) as raised:
        commands.watch_add(WatchAddRequest(name="anything", text="roads", min_score=0.5))
    out.append((type(raised.value).__name__, raised.value.message))
    with pytest.raises(FtfError) as raised:  # a tile this store does not hold
        commands.labels(MarksRequest(examples=(parse_ref("00000000-0000-0000-0000-000000000000"),)))
    out.append((type(raised.value).__name__, raised.value.message))
    with pytest.raises(FtfError) as raised:  # no scene has a time: nothing to compare
        commands.change(ChangeRequest(before="../2000-01-01", after="2020-01-01/.."))
    out.append((type(raised.value).__name__, raised.value.message))
    return out


@pytest.mark.slow
def test_every_command_answers_the_same_here_and_through_the_holder(
    tmp_path: Path, procs: Procs, model_dir: Path
) -> None:
    """One store: every command here first, then the same requests through a serve holding it."""
    (tmp_path / "missing.tif").write_bytes(b"not a raster")
    ingest = IngestRequest(sources=SCENES + (tmp_path / "missing.tif",), tiling=TilingSpec(tile_size=64, levels=(1, 2)),
                           batch_size=8)
    store = tmp_path / "store"
    dropped = DropRequest(scene_id=SCENES[0].stem)

    # here: ingest, read, push, refuse; then drop a scene and ingest again (one scene anew, one resumed)
    here = LocalCommands.from_settings(settings_of(store, model_dir))
    here.watch_add(WatchAddRequest(name="anything", text="a place", min_score=-1.0))  # fires on every tile
    here.watch_add(WatchAddRequest(name="hook", text="a river", min_score=0.0, webhook=f"http://127.0.0.1:{closed_port()}/hook"))
    first = here.ingest(ingest, Recorder())
    assert [s.state for s in first.scenes] == ["complete", "complete"] and len(first.failed) == 1
    requests = search_requests(here)
    streamed = find_requests(here)
    marks = marks_requests(here)
    local = outcomes(here, requests, tmp_path / "pushed-here", streamed, marks)
    refused_here = refusals(here)
    dropped_here = here.drop(dropped)
    told_here = Recorder()
    again_here = here.ingest(ingest, told_here)
    assert dropped_here.removed > 0 and again_here.scenes[0].written == dropped_here.removed
    assert again_here.scenes[1].written == 0 and len([e for e in told_here.events if e[0] == "advance"]) > 1

    # through the holder of the same store (as it is again after the re-ingest): the same answers
    serve, there = held(procs, store, model_dir, tmp_path)
    through = outcomes(there, requests, tmp_path / "pushed-there", streamed, marks)
    same(refusals(there), refused_here, "refusals")
    dropped_there = there.drop(dropped)
    told_there = Recorder()
    again_there = there.ingest(ingest, told_there)
    after_there = there.scenes(ScenesRequest())
    stop(serve)

    assert len(local["search"][0].results) == 10 and local["search"][4].results == []
    assert local["search"][2].bands and not local["search"][0].bands
    same(local["search"], through["search"], "search")
    same(local["streamed"], through["streamed"], "find and classify", frozenset(TIMES | {"train_ms"}))
    same(local["review"], through["review"], "review", frozenset(TIMES | {"train_ms"}))
    assert local["review"][-1][0].estimate.reviewed >= 1
    assert len(local["streamed"][1]) > 2  # a plan and more than one page of an area's tiles
    same(local["scenes"], through["scenes"], "scenes")
    assert len(local["labels"][0]["features"]) >= 3 and local["labels"][0]["model_id"]
    same(local["labels"], through["labels"], "labels")
    assert local["export"].tiles == local["info"]["tiles"] and through["export"].out.is_file()
    same(local["export"], through["export"], "export-embeddings", frozenset(TIMES | {"out"}))
    same(local["info"], through["info"], "info")
    same(local["push"], through["push"], "push", frozenset(TIMES | {"target"}))
    same(local["watches"], through["watches"], "watch list")
    assert local["deliver"].failed > 0 and local["deliver"].delivered == 0 and "hook" in local["deliver"].errors
    same(local["deliver"], through["deliver"], "watch deliver")
    # the dropped scene's tiles fired again when re-ingested (found anew): the same hits, by tile
    by_tile = [sorted(o["hits"].hits, key=lambda h: h.tile_id) for o in (local, through)]
    same(by_tile[0], by_tile[1], "watch hits", frozenset(TIMES | {"found_at"}))
    same(local["hits"].watch, through["hits"].watch, "watch hits' watch")
    same(local["watch round"], through["watch round"], "watch add and rm")
    assert len(local["hits"].hits) == local["info"]["tiles"]  # it saw every tile written
    assert local["push"].target_tiles == local["info"]["tiles"] > 0
    same(dropped_here, dropped_there, "drop")
    same(again_here, again_there, "ingest")
    same(told_here.told(), told_there.told(), "ingest events")
    same(here.scenes(ScenesRequest()), after_there, "scenes after the ingest")


@pytest.mark.slow
def test_change_answers_the_same_here_and_through_the_holder(tmp_path: Path, procs: Procs, model_dir: Path) -> None:
    """Change search between two dates of one place, with words and without, and a range with no
    scene: the same places, scores and regions here and through a serve holding the store."""
    store = tmp_path / "store"
    here = LocalCommands.from_settings(settings_of(store, model_dir))
    for scene, when in zip(NAIP, ("2009-08-18", "2020-08-31")):
        done = here.ingest(IngestRequest(sources=(scene,), tiling=TilingSpec(tile_size=128, levels=(1,)), acquired=when),
                           Recorder())
        assert [s.state for s in done.scenes] == ["complete"]
    requests = [ChangeRequest(before="../2010-01-01", after="2020-01-01/..", k=6),
                ChangeRequest(text="a pond", before="../2010-01-01", after="2020-01-01/..", k=4),
                ChangeRequest(text="a pond", before="../2010-01-01", after="2020-01-01/..", k=4, disappeared=True)]
    local = [here.change(r) for r in requests]
    assert [len(o.hits) for o in local] == [6, 4, 4] and local[0].hits[0].after.scene_id == NAIP[1].stem

    def refused(commands: Commands) -> tuple[str, str]:
        with pytest.raises(FtfError) as raised:  # no scene in the later range
            commands.change(ChangeRequest(before="../2010-01-01", after="2030-01-01/.."))
        return type(raised.value).__name__, raised.value.message

    refused_here = refused(here)
    serve, there = held(procs, store, model_dir, tmp_path)
    through = [there.change(r) for r in requests]
    refused_there = refused(there)
    stop(serve)
    same(local, through, "change")
    same(refused_here, refused_there, "change refused")


def test_a_new_command_is_a_protocol_method_and_a_local_one_and_nothing_in_the_holder_path() -> None:
    """The holder runs every command from one route and HolderCommands sends every one with one call,
    typed by the protocol's annotations (ftfsearch.commands.dispatch): no command is named there."""
    from ftfsearch.commands.dispatch import NOT_DISPATCHED, command_names, signature
    from ftfsearch.commands.requests import Request
    from ftfsearch.errors import BadInput
    from ftfsearch.web.holder import router

    names = command_names()
    protocol = {n for n, v in vars(Commands).items() if callable(v) and not n.startswith("_")}
    assert set(names) == protocol - NOT_DISPATCHED and "search" in names and "watch_deliver" in names
    for name in names:
        command = signature(name)
        assert issubclass(command.request, Request) and callable(getattr(LocalCommands, name))
        assert (command.stream is not None) == (name in ("find", "classify")), name
    assert {n for n in names if n in vars(HolderCommands)} == {"push"}  # its key is the caller's
    paths = {getattr(r, "path", "") for r in router.routes}
    assert not {p for p in paths if any(p.endswith("/" + n) for n in names)}, paths
    with pytest.raises(BadInput, match="'format_disk' is not a command of this ftfsearch"):
        signature("format_disk")


def test_a_request_crosses_to_another_working_directory_with_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = SearchRequest(text="ships")
    assert plain.for_another_process() is plain  # nothing relative: the same request
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chip.png").write_bytes(b"\x89PNG")
    liked = SearchRequest(text="ships", examples=(parse_ref("chip.png"),))
    assert liked.examples[0].image is not None and not liked.examples[0].image.is_absolute()
    sent = liked.for_another_process()
    assert sent.examples[0].image == tmp_path / "chip.png" and sent.text == "ships"
    assert ExportRequest(out=Path("all.parquet")).for_another_process().out == tmp_path / "all.parquet"
