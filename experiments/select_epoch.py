"""Turn a checkpoint of a pretrained-arch training run into a model directory, tau/alpha chosen on val.

``ftfsearch train`` keeps only its latest checkpoint; a copy taken after an earlier epoch becomes a
model with this (the shipped model is epoch 5 of its run, see its model card)::

    python scripts/select_epoch.py .cache/runs/P1/ckpt-ep5.pt .cache/runs/P1-e5
"""

import json
import sys

import torch
from pathlib import Path
from ftfsearch.model.pretrained import PretrainedConfig, build_model, save_pretrained_model, PretrainedFtfEncoder
from ftfsearch.training.train import choose_rerank
from ftfsearch.training.datasets import load_datasets, load_pixels
from ftfsearch.training.evaluate import EVAL_PIXELS, encode_split
torch.set_num_threads(2)
ckpt = torch.load(sys.argv[1], map_location='cpu', weights_only=False)
out = Path(sys.argv[2])
tc = ckpt['train_config']
cfg = PretrainedConfig.from_dict(ckpt['model_config'])
m = build_model(cfg); m.load_state_dict(ckpt['model']); m.eval()
cache = Path(tc['cache_dir']) if tc['cache_dir'] else None
parts = [ds.split('val') for ds in load_datasets([Path(p) for p in tc['data']], tc['images'])]
val = [(p, load_pixels(p, EVAL_PIXELS, cache)) for p in parts]
enc = PretrainedFtfEncoder(m, torch.device('cpu'), 'training')
embs = [encode_split(enc, part, pix) for part, pix in val]
params, info = choose_rerank(embs, 50, tuple(tc['taus']), tuple(tc['alphas']))
m.cfg.rerank = params; cfg.rerank = params
save_pretrained_model(m, out)
log = {"selected_epoch": ckpt['epoch'], "history": ckpt['history'], "rerank": {"tau": params.tau, "alpha": params.alpha, "balanced": params.balanced}, "val": info, "train_config": tc}
(out / 'train_log.json').write_text(json.dumps(log, indent=2) + "\n")
print(json.dumps({"epoch": ckpt['epoch'], "rerank": log['rerank'], "coarse": info['coarse_mR'], "ftf": info['best_ftf_mR']}))
