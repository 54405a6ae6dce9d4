"""Turn a checkpoint of a pretrained-arch training run into a model directory, tau/alpha chosen on val.

``ftfsearch train`` keeps only its latest checkpoint; a copy taken after an earlier epoch becomes a
model with this (the shipped model is epoch 5 of its run, see its model card)::

    python experiments/select_epoch.py .cache/runs/P1/ckpt-ep5.pt .cache/runs/P1-e5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import torch

    from ftfsearch.model.pretrained import PretrainedConfig, PretrainedFtfEncoder, build_model, save_pretrained_model
    from ftfsearch.training.datasets import load_datasets, load_pixels
    from ftfsearch.training.evaluate import EVAL_PIXELS, encode_split
    from ftfsearch.training.train import choose_rerank

    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    ckpt = torch.load(argv[0], map_location="cpu", weights_only=False)
    out = Path(argv[1])
    tc = ckpt["train_config"]
    cfg = PretrainedConfig.from_dict(ckpt["model_config"])
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    cache = Path(tc["cache_dir"]) if tc["cache_dir"] else None
    parts = [ds.split("val") for ds in load_datasets([Path(p) for p in tc["data"]], tc["images"])]
    val = [(p, load_pixels(p, EVAL_PIXELS, cache)) for p in parts]
    enc = PretrainedFtfEncoder(model, torch.device("cpu"), "training")
    embs = [encode_split(enc, part, pix) for part, pix in val]
    params, info = choose_rerank(embs, 50, tuple(tc["taus"]), tuple(tc["alphas"]))
    model.cfg.rerank = params
    cfg.rerank = params
    save_pretrained_model(model, out)
    log = {"selected_epoch": ckpt["epoch"], "history": ckpt["history"],
           "rerank": {"tau": params.tau, "alpha": params.alpha, "balanced": params.balanced}, "val": info,
           "train_config": tc}
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps({"epoch": ckpt["epoch"], "rerank": log["rerank"], "coarse": info["coarse_mR"],
                      "ftf": info["best_ftf_mR"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
