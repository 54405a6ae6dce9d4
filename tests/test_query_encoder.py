"""The shipped model's text tower without torch (``ftfsearch.model.query``): the same model id and
the same vectors (within 1e-4) as the torch tower it replaces on the query path, its export kept in
the ONNX cache, and a text query that imports neither torch nor transformers, through the CLI as a
user runs it, also when the cache cannot be written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _cli import FTF
from ftfsearch.model import onnx_cache
from ftfsearch.model.loading import load_encoder, load_query_encoder
from ftfsearch.model.pretrained import PretrainedFtfEncoder
from ftfsearch.model.query import QueryEncoder
from ftfsearch.search import collection_meta
from ftfsearch.store.edge import EdgeStore
from ftfsearch.store.base import TileBatch
from _store_data import DATA, unit

pytestmark = pytest.mark.slow

CAPTIONS = [
    "houses with red roofs",
    "a road between fields",
    "Many boats are docked in the harbour next to a long pier.",
    "ÉGLISE près d'un parc — 3 terrains de tennis!",
    "x",
    " ".join(["a large green meadow beside a river"] * 12),  # past the 48-token limit: truncated
]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def encoders(onnx_dir: Path) -> tuple[QueryEncoder, PretrainedFtfEncoder]:
    saved = os.environ.get(onnx_cache.CACHE_ENV)
    os.environ[onnx_cache.CACHE_ENV] = str(onnx_dir)
    try:
        query = load_query_encoder(None, "cpu")
        full = load_encoder(None, device="cpu")
    finally:
        if saved is None:
            os.environ.pop(onnx_cache.CACHE_ENV)
        else:
            os.environ[onnx_cache.CACHE_ENV] = saved
    assert isinstance(query, QueryEncoder) and isinstance(full, PretrainedFtfEncoder)
    return query, full


def test_same_id_and_vectors_as_the_torch_tower(encoders: tuple[QueryEncoder, PretrainedFtfEncoder],
                                                onnx_dir: Path) -> None:
    query, full = encoders
    assert query.id == full.id and query.id.startswith("ftf:ftf-lite0-minilm:")
    assert collection_meta(query) == collection_meta(full)
    assert query.rerank_params == full.rerank_params and np.array_equal(query.region_boxes, full.region_boxes)
    torch_tower = PretrainedFtfEncoder(full.model, torch.device("cpu"), "0" * 64, runtime="torch")
    reference = torch_tower.encode_text(CAPTIONS).numpy()  # the previous query path: transformers' BERT
    got = query.encode_text(CAPTIONS)
    assert got.dtype == np.float32 and got.shape == reference.shape == (len(CAPTIONS), 256)
    assert np.abs(got - reference).max() < 1e-4
    assert np.abs(full.encode_text(CAPTIONS).numpy() - reference).max() < 1e-4  # serve and bench: ORT too
    assert [query.count_text_tokens(c) for c in CAPTIONS] == [torch_tower.count_text_tokens(c) for c in CAPTIONS]
    assert sorted(p.name.split("-")[0] + p.suffix for p in onnx_dir.iterdir()) == ["text.json", "text.onnx"]  # one export, shared


def test_a_text_query_process_imports_neither_torch_nor_transformers(
    encoders: tuple[QueryEncoder, PretrainedFtfEncoder], onnx_dir: Path, tmp_path: Path
) -> None:
    query, _ = encoders
    rng = np.random.default_rng(0)
    n, r, d = len(DATA.batch), query.num_regions, query.dim
    coarse = unit(rng.standard_normal((n, d)))
    store = EdgeStore(tmp_path / "store", collection="tiles")
    store.ensure_collection(collection_meta(query))
    store.upsert_tiles(TileBatch(ids=DATA.batch.ids, coarse=coarse,
                                 regions=unit(coarse[:, None] + unit(rng.standard_normal((n, r, d)))).astype(np.float16),
                                 payloads=DATA.batch.payloads))
    store.close()
    code = (
        "import sys, json\n"
        "from ftfsearch.model.loading import load_query_encoder\n"
        "from ftfsearch.search import Searcher\n"
        "from ftfsearch.store.edge import EdgeStore\n"
        f"store = EdgeStore(__import__('pathlib').Path({str(tmp_path / 'store')!r}), collection='tiles', read_only=True)\n"
        "hits = Searcher(load_query_encoder(None, 'cpu'), store, vector_cache_bytes=0).search('houses', k=3).results\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'rasterio', 'sentence_transformers') if m in sys.modules)\n"
        "print(json.dumps({'hits': len(hits), 'heavy': heavy}))\n"
    )
    env = {**os.environ, onnx_cache.CACHE_ENV: str(onnx_dir)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"hits": 3, "heavy": []}

    # the CLI's own query path (the command layer, its outcome's device) with the export cached
    run = ("import sys\nfrom ftfsearch.cli import app\n"
           f"sys.argv = ['ftfsearch', 'query', 'houses', '--k', '2', '--json', '--store', {str(tmp_path / 'store')!r}]\napp()\n")
    timed = subprocess.run([sys.executable, "-X", "importtime", "-c", run], capture_output=True, text=True, timeout=300,
                           env={**env, "FTF_CONFIG": os.devnull})
    assert timed.returncode == 0, timed.stderr[-2000:]
    assert len(json.loads(timed.stdout)) == 2
    imported = {line.rsplit("|", 1)[-1].strip() for line in timed.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "transformers", "rasterio"}

    # the CLI as a user runs it, its cache on a "full" disk: the query works and says so once
    cli = subprocess.run(
        [sys.executable, "-c", FULL_DISK, FTF, "query", "houses", "--k", "2", "--json", "--store", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=600,
        env={**env, onnx_cache.CACHE_ENV: str(tmp_path / "fresh-cache"), "FTF_CONFIG": os.devnull},
    )
    assert cli.returncode == 0, cli.stderr
    assert len(json.loads(cli.stdout)) == 2
    said = [line for line in cli.stderr.splitlines() if "ONNX cache" in line]
    assert len(said) == 1 and "cannot be written" in said[0], cli.stderr
    assert not any((tmp_path / "fresh-cache").iterdir())


FULL_DISK = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.parametrize("args", [["query", ""], ["query", "ships", "--k", "0"], ["query", "ships", "--bbox", "1,2,3"]])
def test_a_refused_query_is_refused_before_numpy_the_model_or_the_store_load(args: list[str], tmp_path: Path) -> None:
    """The request is checked first, in a process that has imported nothing heavy: the refusal
    costs the interpreter, the CLI and pydantic (issue 23: a refused argument in under 0.5 s)."""
    run = f"import sys\nfrom ftfsearch.cli import app\nsys.argv = ['ftfsearch', *{args!r}, '--store', {str(tmp_path)!r}]\napp()\n"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", run], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FTF_CONFIG": os.devnull})
    assert proc.returncode == 2 and proc.stderr.rstrip().splitlines()[-1].startswith("error: "), proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"numpy", "onnxruntime", "qdrant_edge", "tokenizers", "torch", "ftfsearch.search"}
    assert not any(tmp_path.iterdir())  # no store was created or opened
