"""Loss-term ablation of the FTF dual encoder at reduced scale (the model card's table).

Each run trains the shipped architecture with one loss term switched off (``full`` keeps all),
on one dataset's train split at a reduced input size and epoch count, chooses tau/alpha on its
val split, and evaluates coarse and FTF on its test split. Runs are independent processes, so
two can share a 2-core machine (``--parallel 2``, one torch thread each).

    python experiments/loss_ablation.py --data ../shared/data/ucm/dataset_ucm.json --out .cache/ablation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

TERMS = ("fine", "text", "region")


def run_one(name: str, args: argparse.Namespace) -> dict:
    import torch

    from ftfsearch.training.datasets import load_dataset
    from ftfsearch.training.evaluate import evaluate
    from ftfsearch.model.ftf import FtfConfig, load_ftf_encoder
    from ftfsearch.training.train import LossWeights, TrainConfig, train

    torch.set_num_threads(1)
    weights = LossWeights()
    if name != "full":
        weights = dataclasses.replace(weights, **{name.removeprefix("no-"): 0.0})
    out = args.out / name
    cfg = TrainConfig(
        data=[args.data], out=out, epochs=args.epochs, batch_size=args.batch_size, device="cpu",
        cache_dir=Path(".cache/pixels"), num_threads=1, seed=0, loss=weights,
        model=dataclasses.replace(FtfConfig(), image_size=args.image_size),
    )
    result = train(cfg)
    enc = load_ftf_encoder(out, torch.device("cpu"))
    rep = evaluate(enc, load_dataset(args.data), "test", 50, cache_dir=Path(".cache/pixels"))
    row = {
        "run": name, "train_s": round(result.seconds), "val": result.val,
        "test": {"coarse": rep.coarse.to_dict(), "ftf": rep.ftf.to_dict()}, "rerank": dataclasses.asdict(rep.rerank),
    }
    (out / "ablation.json").write_text(json.dumps(row, indent=2))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(".cache/ablation"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--image-size", type=int, default=80)
    ap.add_argument("--runs", default="full," + ",".join(f"no-{t}" for t in TERMS))
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args.one, args)
        return 0
    runs = args.runs.split(",")
    base = [sys.executable, __file__, "--data", str(args.data), "--out", str(args.out), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]
    pending = list(runs)
    active: list[subprocess.Popen] = []
    while pending or active:
        while pending and len(active) < args.parallel:
            active.append(subprocess.Popen(base + ["--one", pending.pop(0)]))
        active[0].wait()
        if active[0].returncode != 0:
            raise SystemExit(f"an ablation run failed (exit {active[0].returncode})")
        active.pop(0)
    print("| run | val coarse mR | val FTF mR | test coarse mR | test FTF mR | tau | alpha | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in runs:
        r = json.loads((args.out / name / "ablation.json").read_text())
        print(f"| {name} | {r['val']['coarse_mR']} | {r['val']['best_ftf_mR']} | {r['test']['coarse']['mR']} | "
              f"{r['test']['ftf']['mR']} | {r['rerank']['tau']} | {r['rerank']['alpha']} | {r['train_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
