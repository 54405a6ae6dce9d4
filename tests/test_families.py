"""The model families table (ftfsearch/model/families.py): every entry loads its shipped model,
has a real training task (training/train.py's registry), and is what loading, training and the CLI read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ftfsearch.errors import BadInput, ModelNotFound
from ftfsearch.model.families import FAMILIES, SAVED_WITHOUT_FAMILY, family
from ftfsearch.model.loading import DEFAULT_MODEL_DIR, SCRATCH_MODEL_DIR, load_encoder

SHIPPED = (DEFAULT_MODEL_DIR, SCRATCH_MODEL_DIR)


def family_of(root: Path) -> str:
    return str(json.loads((root / "ftf_config.json").read_text()).get("family", SAVED_WITHOUT_FAMILY))


def test_every_family_ships_a_model() -> None:
    assert {family_of(root) for root in SHIPPED} == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_loads_its_model_and_names_its_training_task(name: str) -> None:
    from ftfsearch.training import train

    entry = FAMILIES[name]
    root = next(r for r in SHIPPED if family_of(r) == name)
    raw = json.loads((root / "ftf_config.json").read_text())
    encoder = entry.load(root, raw, torch.device("cpu"))
    vec = encoder.encode_text(["a river next to farmland"])
    assert vec.shape == (1, encoder.dim) and torch.isfinite(vec).all()
    assert load_encoder(str(root), device="cpu").id == encoder.id  # load_encoder goes through the table
    assert set(train.TRAIN_TASKS) == set(FAMILIES)  # one training task per family, registered under its name
    task = train.TRAIN_TASKS[name]
    assert isinstance(task, type)
    # a structural check: the training loop calls these on every task (the protocol has data members,
    # so issubclass cannot check it)
    for method in ("prepare", "param_groups", "batch", "encoder", "extra_state", "save"):
        assert callable(getattr(task, method, None)), f"{task.__name__} lacks {method}"
    assert entry.lr > 0 and entry.summary


def test_an_unknown_family_is_named_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as raised:
        family("resnet")
    assert raised.value.message == "`arch` 'resnet': use " + " or ".join(FAMILIES)
    (tmp_path / "ftf_config.json").write_text(json.dumps({"family": "resnet"}))
    with pytest.raises(ModelNotFound, match="known: " + ", ".join(FAMILIES)):
        load_encoder(str(tmp_path), device="cpu")


def test_train_defaults_come_from_the_family_table() -> None:
    """`ftfsearch train` builds its config with the family's defaults (TrainConfig.for_family); a flag
    given wins, and `train --help` shows the table's values."""
    import dataclasses

    from typer.testing import CliRunner

    from ftfsearch.cli import app
    from ftfsearch.model.families import DEFAULT_FAMILY, TrainDefaults
    from ftfsearch.training.train import TrainConfig

    assert DEFAULT_FAMILY in FAMILIES
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, entry in FAMILIES.items():
        own = {k: v for k, v in dataclasses.asdict(entry.train).items() if v is not None}
        assert set(own) <= fields and own["lr"] == entry.lr
        config = TrainConfig.for_family(name, data=[], out=Path("m"), lr=None, prompt_rate=None, feature_views=None,
                                        base_lr_scale=None)  # as the CLI passes flags not given
        assert config.arch == name and {k: getattr(config, k) for k in own} == own
        bare = TrainConfig(data=[], out=Path("m"))  # what the table leaves out stays TrainConfig's
        for k in {f.name for f in dataclasses.fields(TrainDefaults)} - set(own):
            assert getattr(config, k) == getattr(bare, k)
        assert TrainConfig.for_family(name, data=[], out=Path("m"), lr=0.5, prompt_rate=0.0).lr == 0.5
    helped = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["train", "--help"]).stdout
    shown = " ".join(helped.replace("│", " ").split())
    for flag, field in (("--lr", "lr"), ("--views", "feature_views"), ("--base-lr-scale", "base_lr_scale"),
                        ("--prompt-rate", "prompt_rate")):
        given = [f"{getattr(f.train, field):g} {f.name}" for f in FAMILIES.values() if getattr(f.train, field) is not None]
        assert "(default: " + ", ".join(given) + ")" in shown, (flag, shown)
    assert f"[default: {DEFAULT_FAMILY}]" in shown


def test_train_flags_are_checked_by_the_config_and_the_cli_only_renders_them(tmp_path: Path) -> None:
    """Counts below 1 and a bad --loss-weights are refused by TrainConfig (one line, as the flag), before any
    data is read; --head-norm and --loss-weights reach the config."""
    from typer.testing import CliRunner

    from ftfsearch.cli import app
    from ftfsearch.training.train import TrainConfig
    from ftfsearch.model.families import LossWeights

    config = TrainConfig.for_family("pretrained", data=[], out=Path("m"), head_norm=True, loss_weights="fine=0, text=0.25")
    assert config.pretrained.head_norm is True
    assert config.loss == LossWeights(fine=0.0, text=0.25)
    assert LossWeights.parse(LossWeights().as_text()) == LossWeights()
    for bad in ("fine", "bti=1", "fine=-1", "fine=nan", "fine=x"):
        with pytest.raises(BadInput, match="^loss_weights"):
            LossWeights.parse(bad)
    with pytest.raises(BadInput, match="^num_threads 0: must be at least 1$"):
        TrainConfig(data=[], out=Path("m"), num_threads=0)
    runner = CliRunner()
    missing = str(tmp_path / "absent.json")  # never read: the flags are refused first
    for flags, line in ((["--threads", "0"], "error: --threads 0: must be at least 1"),
                        (["--views", "0"], "error: --views 0: must be at least 1"),
                        (["--epochs", "0"], "error: --epochs 0: must be at least 1"),
                        (["--loss-weights", "fine=-1"],
                         "error: --loss-weights 'fine=-1': the weight of fine must be a number of at least 0")):
        result = runner.invoke(app, ["train", "--data", missing, "--out", str(tmp_path / "m"), *flags])
        assert result.exit_code == 2 and result.stderr.strip() == line, (flags, result.stderr)
