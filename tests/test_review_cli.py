"""``ftfsearch review`` and ``classify --estimate`` end to end on both backends (the CLI app in
process, a real ingested scene): start a review file from marks, answer its tiles, read the count
with its interval; and the refusals, one line each, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _cli import InProcess, assert_one_line_error

SCENE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"


@pytest.fixture(params=["edge", pytest.param("server", marks=pytest.mark.server)])
def cli(request, tmp_path, tiny_clip_dir) -> InProcess:
    env = {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(tmp_path / "none.toml")}
    if request.param == "edge":
        env["FTF_STORE"] = str(tmp_path / "store")
    else:
        env["QDRANT_URL"] = request.getfixturevalue("qdrant_server")
        env["FTF_COLLECTION"] = f"review_{tmp_path.name[-20:].replace('-', '_')}"
    return InProcess(env)


def test_review_answers_and_the_estimate(cli: InProcess, tmp_path: Path) -> None:
    ing = cli("ingest", str(SCENE), "--tile-size", "128", "--levels", "1")
    assert ing.returncode == 0, ing.stderr
    ranked = json.loads(cli("query", "a river", "--k", "10", "--json").stdout)
    ids = [r["id"] for r in ranked]
    marks = tmp_path / "marks.geojson"
    made = cli("labels", "export", "a river", *[f"--like={i}" for i in ids[:4]], *[f"--unlike={i}" for i in ids[-2:]],
               "-o", str(marks))
    assert made.returncode == 0, made.stderr

    review = tmp_path / "review.geojson"
    first = cli("review", str(review), "--labels", str(marks), "--seed", "5", "--json")
    assert first.returncode == 0, first.stderr
    step = json.loads(first.stdout)
    saved = json.loads(review.read_text())
    assert saved["review"]["seed"] == 5 and len(saved["features"]) == 6
    scope = step["quality"]["scope"]
    assert scope == sum(s["size"] for s in step["strata"]) > 10
    kinds = []
    for n in range(6):
        item = step["item"]
        assert item is not None and item["id"] not in [f["id"] for f in saved["features"]]
        kinds.append(item["kind"])
        hit = "y" if item["probability"] >= 0.5 else "n"
        out = cli("review", str(review), f"--answer={item['id']}={hit}", "--json")
        assert out.returncode == 0, out.stderr
        step = json.loads(out.stdout)
        saved = json.loads(review.read_text())
        assert len(saved["features"]) == 7 + n  # each answer is a mark in the file
        assert step["quality"]["positives"] + step["quality"]["negatives"] == 7 + n
    assert kinds[0] == "estimate"
    drawn = sum(s["reviewed"] for s in step["strata"])
    assert step["estimate"]["reviewed"] == drawn >= kinds.count("estimate")  # a drawn marked tile counts unasked
    assert step["timings_ms"]["train"] > 0
    assert step["quality"]["validated_marks"] == 6  # refitted on every answer, cross-validated at the start only
    checked = cli("review", str(review), "--cross-validate", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["quality"]["validated_marks"] == 12

    # the plain form: the estimate, the tile to check and how to answer it
    plain = cli("review", str(review))
    assert plain.returncode == 0 and "95% CI" in plain.stdout and "check tile" in plain.stdout
    assert f"ftfsearch review {review} --answer" in plain.stderr
    assert "cross-validated (now)" in plain.stderr

    detections = tmp_path / "detections.parquet"
    counted = cli("classify", "--labels", str(review), "--estimate", "--json", "-o", str(detections))
    assert counted.returncode == 0, counted.stderr
    summary = json.loads(counted.stdout)
    tiles = summary["estimate"]["tiles"]
    assert tiles["reviewed"] == drawn and tiles["low"] <= tiles["count"] <= tiles["high"] <= scope
    assert tiles["text"].startswith("≈ ") and f"from {drawn} reviewed" in tiles["text"]
    assert summary["quality"]["scope"] == scope and detections.is_file()
    if summary["detections"]:
        assert summary["estimate"]["objects"]["count"] <= tiles["count"] + 1e-6
    text = cli("classify", "--labels", str(review), "--estimate", "-o", str(tmp_path / "d.geojson"))
    assert "hit tiles ≈" in text.stdout and "95% CI" in text.stdout

    # refusals: one line, exit 2, nothing written
    no_file = cli("review", str(tmp_path / "none.geojson"))
    assert_one_line_error(no_file, "start one with --labels")
    exists = cli("review", str(review), "--labels", str(marks))
    assert_one_line_error(exists, "exists")
    bad_answer = cli("review", str(review), "--answer", "not-a-tile=y")
    assert_one_line_error(bad_answer, "--answer", "not a tile id")
    bad_word = cli("review", str(review), f"--answer={ids[0]}=maybe")
    assert_one_line_error(bad_word, "--answer")
    plain_labels = cli("classify", "--labels", str(marks), "--estimate", "-o", str(tmp_path / "x.parquet"))
    assert_one_line_error(plain_labels, "--estimate", "no review answers")
    other_scope = cli("classify", "--labels", str(review), "--estimate", "--bbox", "0,0,1,1",
                      "-o", str(tmp_path / "y.parquet"))
    assert_one_line_error(other_scope, "another scope")
    one_hit = tmp_path / "one.geojson"
    cli("labels", "export", f"--like={ids[0]}", "-o", str(one_hit))
    too_few = cli("review", str(tmp_path / "new.geojson"), "--labels", str(one_hit))
    assert_one_line_error(too_few, "at least 3")
    for path in ("x.parquet", "y.parquet", "new.geojson", "none.geojson"):
        assert not (tmp_path / path).exists(), path
    assert all(p.returncode == 2 for p in (no_file, exists, bad_answer, plain_labels, other_scope, too_few))
