"""Train the FTF dual encoder with loss weights or architecture fields the CLI does not expose.

The model card's experiments: the same data, batch, schedule and pixel cache as the shipped
model's run, one torch thread, a checkpoint kept for ``resume=1``; ``loss.X=V`` sets a
``LossWeights`` field, ``model.X=JSON`` an ``FtfConfig`` field, ``pretrained.X=JSON`` a
``PretrainedConfig`` field (``arch=pretrained``), ``train.X=JSON`` any other ``TrainConfig`` field.
The model lands in ``.cache/runs/NAME``.

    python experiments/train_variant.py H 10 loss.rerank=1.0
    python experiments/train_variant.py A-nofine 3 arch=pretrained loss.fine=0 train.batch_size=128 train.lr=1e-3
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from ftfsearch.model.ftf import FtfConfig
    from ftfsearch.model.pretrained import PretrainedConfig
    from ftfsearch.training.train import LossWeights, TrainConfig, train

    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    name, epochs = argv[0], int(argv[1])
    kw = dict(a.split("=", 1) for a in argv[2:])
    loss = LossWeights(**{k[5:]: float(v) for k, v in kw.items() if k.startswith("loss.")})
    model = FtfConfig(**{k[6:]: json.loads(v) for k, v in kw.items() if k.startswith("model.")})
    pretrained = PretrainedConfig(**{k[11:]: json.loads(v) for k, v in kw.items() if k.startswith("pretrained.")})
    extra = {k[6:]: json.loads(v) for k, v in kw.items() if k.startswith("train.")}
    data = [Path("../shared/data/rsicd/dataset_rsicd.json"), Path("../shared/data/ucm/dataset_ucm.json")]
    cfg = TrainConfig(
        data=data, out=Path(f".cache/runs/{name}"), epochs=epochs, batch_size=96, device="cpu",
        cache_dir=Path(".cache/pixels"), num_threads=1, model=model, loss=loss, keep_checkpoint=True,
        resume=kw.get("resume") == "1", arch=kw.get("arch", "scratch"), pretrained=pretrained,
    )
    cfg = dataclasses.replace(cfg, **extra)
    print(json.dumps(train(cfg).to_dict()["val"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
