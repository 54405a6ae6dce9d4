"""Ablation of the FTF model on pretrained towers (the model card's table), at a short schedule.

Each variant trains the shipped configuration (``arch=pretrained``, batch 128, lr 1e-3) with one
change for ``--epochs`` epochs, through ``experiments/train_variant.py`` (one torch thread, two runs at
a time on a 2-core machine), chooses tau/alpha on the validation splits, and reports the mean
validation mR (RSICD val and UCM val) of coarse recall and of FTF. Validation only: the test
splits are for the shipped model.

    python experiments/pretrained_ablation.py [--epochs 1] [--parallel 2] [--only base,nofine]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["arch=pretrained", "train.batch_size=128", "train.lr=1e-3"]
VARIANTS = {
    "base": [],
    "nocoarse": ["loss.coarse=0"],
    "nofine": ["loss.fine=0"],
    "notext": ["loss.text=0"],
    "noregion": ["loss.region=0"],
    "lastmap": ['pretrained.region_source="last"'],
    "frozen": ["pretrained.train_image_blocks=0", "pretrained.train_text_layers=0", "train.feature_views=1"],
}
LABELS = {
    "base": "shipped configuration",
    "nocoarse": "without the coarse InfoNCE",
    "nofine": "without the fine (BTI) InfoNCE",
    "notext": "without the caption-caption term",
    "noregion": "without the region-coarse consistency term",
    "lastmap": "regions from the last map only (no finer branch)",
    "frozen": "towers frozen (heads and branch trained; 1 cached view)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--only", default=",".join(VARIANTS))
    ap.add_argument("--prefix", default="abl")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    runs = Path(".cache/runs")
    pending = [n for n in names if not (runs / f"{args.prefix}-{n}" / "train_log.json").is_file()]
    active: list[tuple[str, subprocess.Popen[bytes]]] = []
    while pending or active:
        while pending and len(active) < args.parallel:
            n = pending.pop(0)
            log = (runs / f"{args.prefix}-{n}.log").open("wb")
            cmd = [sys.executable, str(Path(__file__).with_name("train_variant.py")), f"{args.prefix}-{n}", str(args.epochs), *COMMON, *VARIANTS[n]]
            active.append((n, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(5)
        for item in list(active):
            if item[1].poll() is not None:
                active.remove(item)
                if item[1].returncode != 0:
                    print(f"{item[0]} failed (exit {item[1].returncode}); see {runs / (args.prefix + '-' + item[0])}.log")
    print(f"| variant ({args.epochs} epoch(s)) | val coarse mR | val FTF mR | FTF - coarse | tau / alpha |")
    print("|---|---|---|---|---|")
    for n in names:
        path = runs / f"{args.prefix}-{n}" / "train_log.json"
        if not path.is_file():
            print(f"| {LABELS[n]} | failed | | | |")
            continue
        log = json.loads(path.read_text())
        c, f = log["val"]["coarse_mR"], log["val"]["best_ftf_mR"]
        r = log["rerank"]
        print(f"| {LABELS[n]} | {c:.2f} | {f:.2f} | {f - c:+.2f} | {r['tau']} / {r['alpha']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
