"""Errors in the API's own words: the same bad input names its parameter as ``bbox`` in an HTTP
error body and as ``--bbox`` on the command line, and each error class exits with its own code."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from _web_fixtures import DemoStore, demo_store
from ftfsearch import errors
from ftfsearch.config import Settings
from ftfsearch.errors import BadInput, CollectionNotFound, FtfError, TileNotFound, in_api_words, render
from ftfsearch.web import create_app

QUERY = "ships near a harbor"
UNKNOWN_TILE = "00000000-0000-0000-0000-000000000000"
FLAG = re.compile(r"--[a-z]")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoStore:
    return demo_store(tmp_path_factory)


@pytest.fixture(scope="module")
def tile(demo: DemoStore) -> str:
    """The id of a stored tile (from a search through the app, closed again before the CLI runs)."""
    with TestClient(create_app(_settings(demo))) as client:
        return str(client.get("/api/search", params={"q": QUERY, "k": 1}).json()["results"][0]["id"])


@pytest.fixture(scope="module")
def bad_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "broken.geojson"
    path.write_text("{not json")
    return path


def _settings(demo: DemoStore, **kw: object) -> Settings:
    return Settings(store_dir=demo.store_dir, model=str(demo.model_dir), device="cpu", **kw)  # type: ignore[arg-type]


# -- the marking itself --------------------------------------------------------------------------


def test_only_backticked_parameters_are_rewritten_never_words_of_the_prose() -> None:
    message = "`after` 2024: must be earlier than `before` 2023; labels, output and before stay words"
    assert in_api_words(message) == "after 2024: must be earlier than before 2023; labels, output and before stay words"
    assert render(message, lambda name: "--" + name) == (
        "--after 2024: must be earlier than --before 2023; labels, output and before stay words"
    )
    # Backticks around something that is not a parameter name are left alone.
    assert in_api_words("run `ftfsearch scenes`") == "run `ftfsearch scenes`"


def test_an_error_reads_in_api_words_and_keeps_the_marked_message() -> None:
    exc = BadInput("`bbox` '1,2,3': expected four numbers")
    assert str(exc) == "bbox '1,2,3': expected four numbers"
    assert exc.message == "`bbox` '1,2,3': expected four numbers"


# -- the HTTP API: parameters by name, never a flag ----------------------------------------------


API_CASES = [
    # (request, status, what the body must name)
    (("GET", "/api/search", {"q": QUERY, "bbox": "1,2,3"}), 400, "bbox '1,2,3'"),
    (("GET", "/api/search", {"q": QUERY, "bbox": "10,0,5,1"}), 400, "bbox '10,0,5,1'"),
    (("GET", "/api/search", {"q": QUERY, "k": "0"}), 422, "k:"),
    (("GET", "/api/search", {"q": QUERY, "after": "June"}), 400, "after 'June'"),
    (("GET", "/api/search", {"q": QUERY, "after": "2024-02-01", "before": "2024-01-01"}), 400,
     "must be earlier than before"),
    (("GET", "/api/search", {"like": UNKNOWN_TILE}), 404, f"like '{UNKNOWN_TILE}'"),
    (("GET", "/api/search", {"like_region": "x"}), 400, "like_region 'x'"),
    (("GET", "/api/search", {"unlike": "TILE"}), 400, "unlike: needs a text or at least one like example"),
    (("GET", "/api/search", {"q": " "}), 400, "q: the query is empty"),
    (("GET", "/api/tiles/TILE/chip.png", {"region": "99"}), 400, "region 99"),
    (("GET", f"/api/tiles/{UNKNOWN_TILE}/chip.png", {}), 404, f"tile {UNKNOWN_TILE}"),
    (("POST", "/api/search", {}, b"not an image at all"), 400, "like 'posted image'"),
    (("POST", "/api/labels/import", {}, b"{not json"), 400, "labels: not a JSON document"),
    (("POST", "/api/labels/import", {}, b'{"type": "FeatureCollection", "features": [{"properties": '
      b'{"id": "00000000-0000-0000-0000-000000000000", "label": "negative"}}]}'), 404, "labels: tile"),
]


def _request(client: TestClient, tile: str, spec: tuple) -> object:  # type: ignore[type-arg]
    method, path, params, *body = spec
    path = path.replace("TILE", tile)
    params = {k: v.replace("TILE", tile) for k, v in params.items()}
    if method == "GET":
        return client.get(path, params=params)
    return client.post(path, params=params, content=body[0], headers={"Content-Type": "image/png"})


def _error_of(resp: object, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)  # type: ignore[attr-defined]
    message = resp.json()["error"]  # type: ignore[attr-defined]
    assert isinstance(message, str) and message
    return message


def test_no_api_error_body_names_a_flag(demo: DemoStore, tile: str) -> None:
    with TestClient(create_app(_settings(demo))) as client:
        for spec, status, needle in API_CASES:
            message = _error_of(_request(client, tile, spec), status)
            assert needle in message, (spec, message)
            assert not FLAG.search(message) and "`" not in message, (spec, message)


def test_a_missing_collection_is_named_in_api_words(demo: DemoStore) -> None:
    with TestClient(create_app(_settings(demo, collection="nothing"))) as client:
        message = _error_of(client.get("/api/search", params={"q": QUERY}), 404)
    assert "collection 'nothing' does not exist" in message and "another collection" in message
    assert not FLAG.search(message) and "`" not in message


# -- the command line: the same inputs name the flags, and exit with the class's code ------------


class _Cli:
    """The CLI app in this process (its error mapping included), on the demo store."""

    def __init__(self, demo: DemoStore, tmp: Path) -> None:
        from typer.testing import CliRunner

        from ftfsearch.cli import app

        self.app = app
        env = {k: None for k in os.environ if k.startswith(("FTF_", "QDRANT_"))}
        self.runner = CliRunner(env={**env, "FTF_STORE": str(demo.store_dir), "FTF_MODEL": str(demo.model_dir),
                                     "FTF_DEVICE": "cpu", "FTF_CONFIG": str(tmp / "none.toml")})

    def __call__(self, *args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        result = self.runner.invoke(self.app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli(demo: DemoStore, tile: str, tmp_path: Path) -> Iterator[_Cli]:
    yield _Cli(demo, tmp_path)


def _error_line(proc: subprocess.CompletedProcess, code: int) -> str:  # type: ignore[type-arg]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code and lines and lines[-1].startswith("error: "), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "`" not in lines[-1]
    return lines[-1]


def test_the_cli_names_the_same_parameters_as_flags(cli: _Cli, tile: str, bad_labels: Path) -> None:
    cases = [
        (("query", QUERY, "--bbox", "1,2,3"), BadInput, "error: --bbox '1,2,3': expected four numbers"),
        (("query", QUERY, "--after", "June"), BadInput, "error: --after 'June': not a date"),
        (("query", QUERY, "--after", "2024-02-01", "--before", "2024-01-01"), BadInput,
         "must be earlier than --before 2024-01-01"),
        (("query", QUERY, "--k", "0"), BadInput, "error: --k 0: must be between 1 and"),
        (("query", "--like", UNKNOWN_TILE), TileNotFound, f"error: --like '{UNKNOWN_TILE}': tile"),
        (("query", "--like-region", "x"), BadInput, "error: --like-region 'x': give REF:N"),
        (("query", "--unlike", tile), BadInput, "error: --unlike: needs a text or at least one --like example"),
        (("query", QUERY, "--labels", str(bad_labels)), BadInput, f"error: --labels '{bad_labels}': is not JSON"),
        (("query", QUERY, "--collection", "nothing"), CollectionNotFound, "or pick another --collection"),
        (("ingest", str(bad_labels), "--tile-size", "8"), BadInput, "error: --tile-size 8: must be between 16"),
    ]
    for args, cls, needle in cases:
        line = _error_line(cli(*args), cls.exit_code)
        assert needle in line, (args, line)


def test_a_parameter_the_command_has_no_flag_for_stays_a_name(cli: _Cli, bad_labels: Path) -> None:
    # `labels import FILE` takes the file as an argument: there is no --labels to point at.
    line = _error_line(cli("labels", "import", str(bad_labels)), BadInput.exit_code)
    assert f"error: labels '{bad_labels}': is not JSON" in line and "--labels" not in line


def test_each_error_class_has_its_own_exit_code() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, FtfError) and c is not errors.RemoteError]  # RemoteError relays another's code
    codes = [c.exit_code for c in classes]
    assert len(classes) >= 14 and len(set(codes)) == len(codes), {c.__name__: c.exit_code for c in classes}


# -- encoders and GDAL: bad input is a named error, never ValueError or a private class ----------


@pytest.mark.parametrize("which", ["shipped", "clip"])
def test_encoders_refuse_bad_images_and_texts_as_bad_input(which: str, tiny_clip_dir: Path) -> None:
    import numpy as np
    import torch

    from ftfsearch.model.loading import load_encoder

    encoder = load_encoder(None if which == "shipped" else str(tiny_clip_dir), device="cpu")
    for images in (torch.zeros(1, 64, 64, 4, dtype=torch.uint8), torch.zeros(1, 64, 64, 3),
                   torch.zeros(1, 0, 64, 3, dtype=torch.uint8), [[1, 2, 3]]):
        with pytest.raises(BadInput, match="^images: "):
            encoder.encode_images(images)  # type: ignore[arg-type]
    for texts in ("one string", [None], [3]):
        with pytest.raises(BadInput, match="^texts: expected a list of strings"):
            encoder.encode_text(texts)  # type: ignore[arg-type]
    coarse, _ = encoder.encode_images(np.zeros((1, 64, 64, 3), np.uint8))  # a numpy batch is a tile batch too
    assert coarse.shape == (1, encoder.dim)


def test_a_point_outside_the_projection_is_rasterios_public_transform_error() -> None:
    from rasterio.errors import RasterioError, TransformError

    from ftfsearch.raster import transform_xy

    lon, lat = transform_xy("EPSG:32632", "EPSG:4326", [500000.0], [0.0])
    assert abs(lon[0] - 9.0) < 1e-9 and abs(lat[0]) < 1e-9
    with pytest.raises(TransformError) as info:
        transform_xy("EPSG:32632", "EPSG:4326", [6e8, 500000.0], [6e8, 0.0])
    assert isinstance(info.value, RasterioError) and "outside" in str(info.value)
