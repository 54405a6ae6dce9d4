"""Train the FTF dual encoder with loss weights or architecture fields the CLI does not expose.

The model card's experiments: the same data, batch, schedule and pixel cache as the shipped
model's run, one torch thread, a checkpoint kept for ``resume=1``; ``loss.X=V`` sets a
``LossWeights`` field, ``model.X=JSON`` an ``FtfConfig`` field. The model lands in ``.cache/runs/NAME``.

    python scripts/train_variant.py H 10 loss.rerank=1.0
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from ftfsearch.model.ftf import FtfConfig
    from ftfsearch.train import LossWeights, TrainConfig, train

    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    name, epochs = argv[0], int(argv[1])
    kw = dict(a.split("=", 1) for a in argv[2:])
    loss = LossWeights(**{k[5:]: float(v) for k, v in kw.items() if k.startswith("loss.")})
    model = FtfConfig(**{k[6:]: json.loads(v) for k, v in kw.items() if k.startswith("model.")})
    data = [Path("../shared/data/rsicd/dataset_rsicd.json"), Path("../shared/data/ucm/dataset_ucm.json")]
    cfg = TrainConfig(
        data=data, out=Path(f".cache/runs/{name}"), epochs=epochs, batch_size=96, device="cpu",
        cache_dir=Path(".cache/pixels"), num_threads=1, model=model, loss=loss, keep_checkpoint=True,
        resume=kw.get("resume") == "1",
    )
    print(json.dumps(train(cfg).to_dict()["val"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
