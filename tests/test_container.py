"""The container image and what runs it agree: the Dockerfile, the Kubernetes ingest Job, the compose
file and the Helm values name one image tag (the package's version); each command and flag they
pass exists in the real CLI (the typer app, introspected); each environment variable they set is one
the code reads; the Dockerfile is multi-stage, pins CPU torch as everywhere, runs as a non-root user
with ``ftfsearch`` as its entry point. No container engine runs here: this checks the files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer.main
import yaml

import ftfsearch
from ftfsearch.cli import app
from ftfsearch.config import ENV_VARS

REPO = Path(__file__).resolve().parents[1]
IMAGE = f"ftfsearch:{ftfsearch.__version__}"
READ_BY_CODE = set(ENV_VARS.values()) | {"FTF_CONFIG"}


def _cli() -> Any:
    """The click group typer builds from the app (typer's own click, so not checked by class)."""
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return group


def _check_invocation(argv: list[str]) -> None:
    """``argv`` (after ``ftfsearch``) names a real command, and every ``--flag`` is one of its options."""
    group = _cli()
    assert argv and argv[0] in group.commands, argv
    command = group.commands[argv[0]]
    flags = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    used = [a for a in argv[1:] if a.startswith("-") and not re.match(r"^-?\d", a)]
    assert used and set(used) <= flags, (argv[0], sorted(set(used) - flags))


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def test_the_dockerfile_is_multistage_pinned_non_root_with_the_cli_as_entrypoint() -> None:
    text = _dockerfile()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\w+))?", text, re.M)
    assert len(stages) >= 2 and "--from=build" in text
    assert re.search(r"pip install [^\n]*torch==2\.13\.0", text) and "download.pytorch.org/whl/cpu" in text
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    entry = re.findall(r"^ENTRYPOINT\s+(\[.*\])", text, re.M)
    assert entry and json.loads(entry[-1]) == ["ftfsearch"]
    assert f"docker build -t {IMAGE} ." in text
    for name in re.findall(r"\b(FTF_[A-Z_]+|QDRANT_[A-Z_]+)=", text):
        assert name in READ_BY_CODE, name
    # the default model ships in the wheel the image installs: package data of ftfsearch
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"model/default/*"' in pyproject and (REPO / "ftfsearch" / "model" / "default" / "model.safetensors").exists()


def _env_names(env: list[dict[str, Any]] | dict[str, Any]) -> set[str]:
    return {e["name"] for e in env} if isinstance(env, list) else set(env)


def test_the_k8s_job_compose_and_helm_name_the_same_image_and_real_flags() -> None:
    job = yaml.safe_load((REPO / "deploy" / "k8s" / "ingest-job.yaml").read_text())
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE
    assert container["command"] == ["ftfsearch"]
    _check_invocation([str(a) for a in container["args"]])
    assert _env_names(container["env"]) <= READ_BY_CODE

    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.single.yml").read_text())
    service = compose["services"]["ftfsearch"]
    assert service["image"] == IMAGE
    _check_invocation([str(a) for a in service["command"]])  # after the ENTRYPOINT, ftfsearch
    assert _env_names(service["environment"]) <= READ_BY_CODE

    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    image = values["ftfsearch"]["image"]
    assert f"{image['repository']}:{image['tag']}" == IMAGE


def test_the_invocation_check_refuses_a_flag_the_cli_does_not_have() -> None:
    try:
        _check_invocation(["ingest", "--from", "x", "--no-such-flag"])
    except AssertionError:
        return
    raise AssertionError("an unknown flag passed the check")
