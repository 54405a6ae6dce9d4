"""The Kubernetes Indexed Job and the Slurm array script: valid, consistent with each other's N and
with the Helm values' secret, and running a command line the real CLI accepts (a renamed flag fails here)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer.main
import yaml

from ftfsearch.cli import app
from ingest.batch import Shard

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "deploy" / "k8s" / "ingest-job.yaml"
SLURM = REPO / "deploy" / "slurm" / "ingest-array.sh"
HELM = REPO / "deploy" / "helm" / "values.yaml"


def _parse_cli(argv: list[str]):  # type: ignore[no-untyped-def]
    """Parse ``ftfsearch ARGV`` with the real command (flags, types, required options) without running it."""
    group = typer.main.get_command(app)
    assert argv[0] == "ingest", argv
    command = group.commands["ingest"]  # type: ignore[attr-defined]
    return command.make_context("ingest", list(argv[1:]))


def _job() -> dict:
    docs = list(yaml.safe_load_all(JOB.read_text()))
    assert len(docs) == 1
    return docs[0]


def test_job_is_an_indexed_job_whose_pods_run_their_shard():
    job = _job()
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    n = spec["completions"]
    assert spec["completionMode"] == "Indexed" and 1 <= spec["parallelism"] <= n
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # backoffLimitPerIndex needs it; a retry is a new pod
    [container] = pod["containers"]
    argv = container["command"] + container["args"]
    assert argv[0] == "ftfsearch"
    for k in range(n):  # what the kubelet makes of $(JOB_COMPLETION_INDEX) in pod k
        ctx = _parse_cli([a.replace("$(JOB_COMPLETION_INDEX)", str(k)) for a in argv[1:]])
        assert Shard.parse(ctx.params["shard"]) == Shard(k, n)
        assert ctx.params["from_list"] == Path("/data/list.txt") and ctx.params["paths"] in (None, [], ())
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/data" in mounts
    rules = spec["podFailurePolicy"]["rules"]
    assert all(r.get("onExitCodes", {}).get("containerName", container["name"]) == container["name"] for r in rules)


def test_job_reads_the_key_from_the_helm_secret_and_talks_to_its_service():
    helm = yaml.safe_load(HELM.read_text())
    [server_key] = [e["valueFrom"]["secretKeyRef"] for e in helm["env"] if e["name"] == "QDRANT__SERVICE__API_KEY"]
    release = re.search(r"helm install (\S+) qdrant/qdrant", HELM.read_text()).group(1)
    env = {e["name"]: e for e in _job()["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"] == server_key  # same secret, the read-write key
    assert "value" not in env["QDRANT_API_KEY"]
    assert env["QDRANT_URL"]["value"] == f"http://{release}:6333"


def test_job_gpu_option_is_valid_when_enabled():
    text = JOB.read_text()
    assert "#gpu " in text
    enabled = yaml.safe_load(text.replace("#gpu ", ""))
    limits = enabled["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1 and limits["memory"] == "8Gi"
    assert "nvidia.com/gpu" not in _job()["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def _sbatch(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if m:
            out[m.group(1)] = m.group(2) or ""
    return out


def test_slurm_array_matches_its_shards_and_runs_the_cli(tmp_path):
    text = SLURM.read_text()
    options = _sbatch(text)
    m = re.fullmatch(r"0-(\d+)(?:%\d+)?", options["array"])
    assert m, options["array"]
    shards = int(re.search(r"^SHARDS=(\d+)$", text, re.M).group(1))
    assert int(m.group(1)) == shards - 1  # indexes 0..N-1
    assert "gres" not in options  # the GPU request is an option, off by default
    assert re.search(r"^##SBATCH --gres=gpu:1$", text, re.M)
    assert subprocess.run(["bash", "-n", str(SLURM)]).returncode == 0

    # run the script as Slurm would, with a stand-in `ftfsearch` that records its argv
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv"
    fake = bindir / "ftfsearch"
    fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path), "FTF_LIST": "/scratch/batch/list.txt",
           "QDRANT_URL": "http://qdrant:6333", "QDRANT_API_KEY": "k" * 32}
    for k in (0, shards - 1):
        proc = subprocess.run(["bash", str(SLURM)], env={**env, "SLURM_ARRAY_TASK_ID": str(k)},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        argv = record.read_text().splitlines()
        ctx = _parse_cli(argv)
        assert Shard.parse(ctx.params["shard"]) == Shard(k, shards)
        assert ctx.params["from_list"] == Path("/scratch/batch/list.txt")
    outside = subprocess.run(["bash", str(SLURM)], env={**env, "SLURM_ARRAY_TASK_ID": str(shards)},
                             capture_output=True, text=True)
    assert outside.returncode == 2 and "outside" in outside.stderr
    missing = subprocess.run(["bash", str(SLURM)], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "sbatch --array" in missing.stderr


def test_job_and_slurm_use_the_same_ingest_options():
    """Workers of one batch must tile alike: both files pass the same tiling and collection flags."""
    def options(argv: list[str]) -> dict:
        params = _parse_cli(argv).params
        return {k: params[k] for k in ("tile_size", "overlap", "levels", "bands", "shards", "replication_factor")}

    container = _job()["spec"]["template"]["spec"]["containers"][0]
    job_argv = [a.replace("$(JOB_COMPLETION_INDEX)", "0") for a in container["args"]]
    line = " ".join(SLURM.read_text().split("exec ftfsearch ", 1)[1].split("\\\n"))
    slurm_argv = [a.replace("$SLURM_ARRAY_TASK_ID/$SHARDS", "0/8").replace("$FTF_LIST", "/l.txt")
                  for a in shlex.split(line)]
    assert options(job_argv) == options(slurm_argv)


@pytest.mark.parametrize("flag", ["--from", "--shard"])
def test_a_renamed_flag_would_fail_these_checks(flag):
    """The parse above is strict: an unknown flag is an error, so a renamed --from/--shard breaks the tests."""
    argv = ["ingest", "--from", "/data/list.txt", "--shard", "0/8"]
    renamed = [a.replace(flag, flag + "-renamed") for a in argv]
    with pytest.raises(Exception, match="No such option"):  # typer's own (vendored) click UsageError
        _parse_cli(renamed)
    assert _parse_cli(argv).params["shard"] == "0/8"
