"""Training of the FTF dual encoder (from scratch) with inter- and intra-modal losses.

Losses per batch of B images with two of their captions each (t1, t2):
- ``coarse``: symmetric InfoNCE between texts and coarse vectors g (in-batch negatives);
- ``fine``: symmetric InfoNCE with the BTI fine scores <t, v_b> as logits (the same
  :func:`ftfsearch.rerank.bti` the query path runs), so regions learn what the rerank needs;
- ``text``: symmetric InfoNCE between the two captions of each image (captions of one image together);
- ``region``: 1 - cos(normalize(mean of regions), g) (pooled regions consistent with the coarse vector);
- ``rerank`` (off unless weighted): symmetric InfoNCE on the query-time score
  (1 - alpha) <t, g> + alpha <t, v_b> with the coarse part held fixed, so the regions learn to
  correct the coarse ranking where it errs instead of repeating it.
Each InfoNCE has its own learnable logit scale (CLIP-style, init 1/0.07, capped at 100).

Images are decoded once into a uint8 cache; augmentation (random resized crop, flips, 90-degree
rotations, brightness/contrast) runs batched on tensors. Every epoch ends with a validation mR and
an atomic checkpoint; ``resume`` continues after the last finished epoch with the same data order
(epoch-seeded). At the end tau/alpha of the rerank are chosen on the validation split(s) and the
model directory is written.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TypeVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ftfsearch.training.datasets import CaptionSplit, load_datasets, load_pixels
from ftfsearch.training.features import TEXT_CHUNK, ChunkedRows, ViewCache, augment, cache_key, load_or_build
from ftfsearch.errors import BadInput, DatasetError
from ftfsearch.training.evaluate import EVAL_PIXELS, Embeddings, encode_split, score
from ftfsearch.model.base import Encoder, RerankParams
from ftfsearch.model.families import LossWeights, family
from ftfsearch.model.ftf import FtfConfig, FtfEncoder, FtfModel, prepare_images, save_ftf_model
from ftfsearch.model.sources import resolve_device
from ftfsearch.model.pretrained import PretrainedConfig
from ftfsearch.model.text import encode_batch, train_tokenizer
from ftfsearch.rerank import bti

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
TRAIN_PIXELS_MARGIN = 1.125
"""Training images are cached at this multiple of the input size so random crops keep detail."""


@dataclass
class TrainConfig:
    """Everything a training run depends on (recorded in the checkpoint).

    The field defaults are a bare config's (the tests' and experiments' runs); ``ftfsearch train``
    builds it with :meth:`for_family`, whose family's table (:data:`ftfsearch.model.families.FAMILIES`)
    sets ``lr``, ``prompt_rate``, ``feature_views`` and ``base_lr_scale``."""

    data: list[Path]
    out: Path
    images: list[Path | None] | None = None
    """Image folder per dataset (None: ``images/`` beside the json)."""
    base: str | None = None
    arch: str = "scratch"
    """``scratch``: the small FTF encoder trained from nothing; ``pretrained``: FTF on the pinned
    EfficientNet-Lite0 and MiniLM towers (:mod:`ftfsearch.model.pretrained`), top blocks fine-tuned."""
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)
    feature_views: int = 2
    """Pretrained arch: frozen-trunk feature maps cached per image for this many views (the plain
    image and augmented copies); each step draws one view per image."""
    base_lr_scale: float = 0.1
    """Pretrained arch: learning rate of the fine-tuned base blocks and layers, relative to the heads."""
    probe_epochs: int = 0
    """The first epochs train only the heads and the region branch (the base blocks and layers frozen);
    the rest fine-tune the base at ``base_lr_scale``. Each phase has its own warm-up and cosine decay."""
    finetune_lr: float | None = None
    """Peak learning rate of the heads while fine-tuning (None: ``lr``); the base runs at ``base_lr_scale`` of it."""
    patience: int | None = None
    """Stop once this many fine-tuning epochs pass without a better validation FTF mR."""
    multi_positive: bool = True
    """Texts shared by several images (identical captions, class prompts) are positives of all of them."""
    prompt_rate: float = 0.0
    """Share of images whose second text is one of its class prompts (``training/prompts.py``)."""
    hard_negatives: int = 0
    """Images from each anchor's mined coarse top-K joined to its batch (0: random batches)."""
    mine_k: int = 20
    """Depth of the coarse top-K that hard negatives are drawn from."""
    ema_decay: float = 0.0
    """Decay of the exponential moving average that is validated and saved (0: the raw weights)."""
    epochs: int = 20
    batch_size: int = 96
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 300
    device: str = "auto"
    resume: bool = False
    seed: int = 0
    model: FtfConfig = field(default_factory=FtfConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    train_tau: float = 0.1
    """BTI attention temperature inside the fine loss."""
    train_balanced: bool = True
    train_alpha: float = 0.25
    """Weight of the fine score in the ``rerank`` loss term (the query-time alpha it trains for)."""
    amp: bool = True
    """Mixed precision: bfloat16 autocast on CPU, float16 with a grad scaler on CUDA."""
    cache_dir: Path | None = None
    max_steps_per_epoch: int | None = None
    max_train_images: int | None = None
    max_val_images: int | None = None
    recall_k: int = 50
    taus: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    recall_ks: tuple[int, ...] = (20, 50, 100)
    """Candidate counts tried on validation with the chosen tau/alpha (the rerank's K)."""
    keep_checkpoint: bool = False
    num_threads: int | None = 2

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_threads", "feature_views"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInput(f"`{name}` {value}: must be at least 1")

    @classmethod
    def for_family(cls, arch: str, head_norm: bool = False, loss_weights: str | None = None,
                   **given: Any) -> "TrainConfig":
        """A run of family ``arch`` as ``ftfsearch train`` builds it: the family's
        :class:`~ftfsearch.model.families.TrainDefaults` where ``given`` leaves them out or None;
        ``head_norm`` and ``loss_weights`` (:meth:`LossWeights.parse`) as the flags give them."""
        table = dataclasses.asdict(family(arch).train)  # None there: not the family's, TrainConfig's default
        own = {k: v for k, v in table.items() if v is not None}
        left = {k: v for k, v in given.items() if not (k in table and v is None)}
        config = cls(arch=arch, **{**own, **left})
        config.pretrained.head_norm = head_norm
        if loss_weights is not None:
            config.loss = LossWeights.parse(loss_weights)
        return config

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"] = [str(p) for p in self.data]
        d["out"] = str(self.out)
        d["images"] = [str(p) if p else None for p in self.images] if self.images else None
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        d["model"] = self.model.to_dict()
        d["pretrained"] = self.pretrained.to_dict()
        return d


@dataclass
class TrainProgress:
    """One progress report: a step of an epoch, or a phase message."""

    phase: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    message: str = ""


@dataclass
class EpochStats:
    epoch: int
    loss: float
    parts: dict[str, float]
    val_mR: float
    seconds: float
    val_ftf: float = 0.0
    """Mean over the validation datasets of FTF mR at each one's best tau/alpha (the selection metric)."""
    val: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per validation dataset: ``coarse`` and ``ftf`` mR."""
    phase: str = "finetune"


@dataclass
class TrainResult:
    out_dir: Path
    history: list[EpochStats]
    rerank: RerankParams
    val: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "history": [dataclasses.asdict(h) for h in self.history],
                "rerank": dataclasses.asdict(self.rerank), "val": self.val, "seconds": round(self.seconds, 1)}


def _splits(cfg: TrainConfig, split: str, limit: int | None) -> list[CaptionSplit]:
    out = []
    for ds in load_datasets(cfg.data, cfg.images):
        part = ds.split(split)
        if limit is not None:
            part = CaptionSplit(part.name, part.split, part.images[:limit])
        out.append(part)
    return out


def _info_nce(logits: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric cross-entropy of a ``[T, I]`` logit matrix; positives on the diagonal, or where ``pos``
    is true (multi-positive: the target spreads evenly over a row's, and a column's, positives)."""
    if pos is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    w = pos.to(logits.dtype)
    rows = -(F.log_softmax(logits, dim=1) * w).sum(1) / w.sum(1)
    cols = -(F.log_softmax(logits, dim=0) * w).sum(0) / w.sum(0)
    return 0.5 * (rows.mean() + cols.mean())


class LossHead(nn.Module):
    """Learnable logit scales of the InfoNCE terms: coarse, fine, text (and rerank when weighted)."""

    def __init__(self, terms: int = 3) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((terms,), math.log(1 / 0.07)))

    def scales(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)


def compute_losses(
    text: torch.Tensor, coarse: torch.Tensor, regions: torch.Tensor, head: LossHead,
    weights: LossWeights, tau: float, balanced: bool, alpha: float = 0.25, pos: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted loss and its parts; ``text`` is ``[2B, D]`` (first and second caption of each image).

    ``pos`` (``[2B, B]`` bool) marks every text that is a positive of an image (its own captions, identical
    captions of other images, its class prompts): the multi-positive loss. Without it, each text's only
    positive is its own image.
    """
    b = coarse.shape[0]
    s = head.scales()
    if pos is None:
        pos = torch.cat([torch.eye(b, dtype=torch.bool, device=text.device)] * 2)
    parts: dict[str, torch.Tensor] = {}
    parts["coarse"] = _info_nce(s[0] * text @ coarse.T, pos)
    if weights.fine or weights.rerank:
        out = bti(text, coarse, regions, tau=tau, alpha=1.0, balanced=balanced)
        fine = out.fine  # [2B, B]
        if weights.fine:
            parts["fine"] = _info_nce(s[1] * fine, pos)
        if weights.rerank:
            mixed = (1.0 - alpha) * out.coarse.detach() + alpha * fine
            parts["rerank"] = _info_nce(s[3] * mixed, pos)
    if weights.text:
        t1, t2 = text[:b], text[b:]
        # caption i and caption j agree when either is a positive of the other's image
        pos_tt = pos[b:].T | pos[:b] | torch.eye(b, dtype=torch.bool, device=text.device)
        parts["text"] = _info_nce(s[2] * t1 @ t2.T, pos_tt)
    if weights.region:
        pooled = F.normalize(regions.mean(dim=1), dim=-1)
        parts["region"] = (1.0 - (pooled * coarse).sum(-1)).mean()
    total = sum(getattr(weights, k) * v for k, v in parts.items())
    assert isinstance(total, torch.Tensor)
    return total, {k: float(v.detach()) for k, v in parts.items()}


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for m in modules:
        for name, p in m.named_parameters():
            (decay if p.dim() >= 2 and "embed" not in name and name != "text.pos" else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, total: int, cfg: TrainConfig, peak: float | None = None) -> float:
    """Linear warm-up, then cosine decay to 0 over ``total`` steps, peaking at ``peak`` (default ``lr``)."""
    peak = cfg.lr if peak is None else peak
    warm = min(cfg.warmup_steps, max(total // 10, 1))
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(total - warm, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def choose_rerank(
    embs: list[Embeddings], recall_k: int, taus: tuple[float, ...], alphas: tuple[float, ...],
    recall_ks: tuple[int, ...] = (), device: torch.device | str = "cpu",
) -> tuple[RerankParams, dict[str, Any]]:
    """Grid search of tau/alpha (balanced BTI) at ``recall_k`` maximising the mean FTF mR over the
    validation splits, then of the candidate count K among ``recall_ks`` at the chosen tau/alpha;
    scored on ``device`` (the model's)."""
    best: tuple[float, RerankParams] | None = None
    grid = []
    for tau in taus:
        for alpha in alphas:
            p = RerankParams(tau=tau, alpha=alpha, balanced=True, k=recall_k)
            m = float(np.mean([score(e, recall_k, p, device).ftf.mR for e in embs]))
            grid.append({"tau": tau, "alpha": alpha, "ftf_mR": round(m, 2)})
            if best is None or m > best[0]:
                best = (m, p)
    assert best is not None
    ks = []
    for k in recall_ks:
        if k == recall_k:
            continue
        p = dataclasses.replace(best[1], k=k)
        m = float(np.mean([score(e, k, p, device).ftf.mR for e in embs]))
        ks.append({"k": k, "ftf_mR": round(m, 2)})
        if m > best[0]:
            best = (m, p)
    coarse = float(np.mean([score(e, best[1].k, best[1], device).coarse.mR for e in embs]))
    return best[1], {"grid": grid, "k_grid": ks, "best_ftf_mR": round(best[0], 2), "coarse_mR": round(coarse, 2)}


SELECT_TAUS = (0.1, 0.2, 0.5)
SELECT_ALPHAS = (0.5, 0.75, 1.0)
"""The small grid that picks the best epoch (the full grid runs once, on the best epoch)."""


class _Task(Protocol):
    """What :func:`train` needs of an architecture: its trained module, batches of unit vectors, an
    encoder for validation, and how to save the result."""

    @property
    def model(self) -> nn.Module: ...

    image_size: int
    rerank: RerankParams
    device: torch.device

    def prepare(self, pixels: np.ndarray, parts: list[CaptionSplit], report: Callable[[TrainProgress], None]) -> None:
        ...

    def param_groups(self, config: TrainConfig) -> list[dict[str, Any]]: ...

    def batch(self, idx: np.ndarray, text_rows: np.ndarray, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ...

    def encoder(self) -> Encoder: ...

    def extra_state(self) -> dict[str, Any]: ...

    def save(self, out: Path, params: RerankParams) -> None: ...


class _PixelTask:
    """Tasks that train on augmented pixels every step (the whole image tower runs)."""

    model: nn.Module
    image_size: int
    device: torch.device

    def prepare(self, pixels: np.ndarray, parts: list[CaptionSplit], report: Callable[[TrainProgress], None]) -> None:
        self.pixels = pixels

    def param_groups(self, config: TrainConfig) -> list[dict[str, Any]]:
        return _param_groups([self.model], config.weight_decay)

    def batch(self, idx: np.ndarray, text_rows: np.ndarray, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chunk = torch.from_numpy(self.pixels[idx])
        x = (prepare_images(chunk, self.image_size) if gen is None else augment(chunk, self.image_size, gen)).to(self.device)
        g, r = self.images(x)
        return g, r, self.texts(text_rows)

    def images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def texts(self, rows: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


T = TypeVar("T", bound=Callable[..., Any])
TRAIN_TASKS: dict[str, Callable[..., _Task]] = {}
"""Model family name (:data:`ftfsearch.model.families.FAMILIES`) -> the task that trains it; each
task registers itself with :func:`trains`. The family table names no task: the model layer never
imports training, and tests/test_families.py checks that the two tables cover the same families."""


def trains(family_name: str) -> Callable[[T], T]:
    """Register the decorated task class as the trainer of ``family_name``."""

    def register(task: T) -> T:
        TRAIN_TASKS[family_name] = task
        return task

    return register


@trains("pretrained")
class _PretrainedTask:
    """Training adapter of FTF on the pinned pretrained towers.

    The frozen lower trunk and text layers run once: their outputs (the stride-16 map and the input
    of the first fine-tuned block per image and view; the hidden states below the first fine-tuned
    text layer per caption) are cached on disk, and each step runs only the fine-tuned top blocks,
    the branch and the heads. That is what makes fine-tuning pay on a 2-core CPU.
    """

    def __init__(self, config: TrainConfig, texts: list[str], ckpt: dict[str, Any] | None, device: torch.device) -> None:
        from ftfsearch.model.pretrained import PretrainedConfig, TextTokenizer, build_model

        self.cfg = PretrainedConfig.from_dict(ckpt["model_config"]) if ckpt is not None else config.pretrained
        self.config = config
        self.texts = texts
        self.device = device
        torch.manual_seed(config.seed)
        self.model = build_model(self.cfg).to(device)
        self.model.set_trainable()
        self.tokenizer = TextTokenizer(self.cfg.max_text_tokens)
        self.image_size = self.cfg.image_size
        self.rerank = self.cfg.rerank
        n_blocks = len(self.model.image.trunk.blocks)
        self.first_block = n_blocks - self.cfg.train_image_blocks
        self.first_layer = len(self._bert().encoder.layer) - self.cfg.train_text_layers

    def _bert(self) -> Any:
        """The MiniLM text model (a transformers ``BertModel``, which ships no type information)."""
        return self.model.text.bert

    def _cache_file(self, name: str) -> Path | None:
        return None if self.config.cache_dir is None else Path(self.config.cache_dir) / f"features-{name}.npy"

    @torch.inference_mode()
    def _image_view(self, pixels: np.ndarray, view: int, report: Callable[[TrainProgress], None]) -> np.ndarray:
        """One view of every image: ``[N, F]`` records of (stride-16 map, input of the first fine-tuned block), float16."""
        from ftfsearch.model.pretrained import fused_trunk

        trunk = fused_trunk(self.model.image.trunk).to(self.device)
        n = len(pixels)
        out = np.empty((n, self.record_size), dtype=np.float16)
        gen = torch.Generator().manual_seed(self.config.seed * 7919 + view)
        for start in range(0, n, 16):  # small batches run fastest on CPU (measured: 61 vs 45 img/s at 64)
            chunk = torch.from_numpy(np.ascontiguousarray(pixels[start:start + 16]))
            x = prepare_images(chunk, self.image_size) if view == 0 else augment(chunk, self.image_size, gen)
            x = self.model.normalize_pixels(x.to(self.device)).contiguous(memory_format=torch.channels_last)
            h = trunk.stem(x)
            for i, block in enumerate(trunk.blocks[: self.first_block]):
                h = block(h)
                if i == trunk.finer_at - 1:
                    finer = h
            if self.first_block == len(trunk.blocks):
                h = trunk.head(h)
            out[start:start + len(chunk)] = torch.cat([finer.flatten(1), h.flatten(1)], dim=1).to(torch.float16).cpu().numpy()
            report(TrainProgress("features", 0, self.config.epochs, start + len(chunk), n,
                                 message=f"caching frozen image features, view {view + 1}/{self.config.feature_views}"))
        return out

    @torch.inference_mode()
    def _text_chunk(self, ids: torch.Tensor, mask: torch.Tensor, report: Callable[[TrainProgress], None], done: int) -> np.ndarray:
        """Hidden states below the first fine-tuned layer for one chunk of texts ``[C, L, W]`` (float16)."""
        bert = self._bert()
        states = np.zeros((len(ids), ids.shape[1], bert.config.hidden_size), dtype=np.float16)
        for start in range(0, len(ids), 256):
            i, m = ids[start:start + 256].to(self.device), mask[start:start + 256].to(self.device)
            hs = bert(input_ids=i, attention_mask=m, output_hidden_states=True).hidden_states[self.first_layer]
            states[start:start + len(i)] = hs.to(torch.float16).cpu().numpy()
            report(TrainProgress("features", 0, self.config.epochs, done + start + len(i), len(self.texts),
                                 message="caching frozen text features"))
        return states

    def prepare(self, pixels: np.ndarray, parts: list[CaptionSplit], report: Callable[[TrainProgress], None]) -> None:
        trunk = self.model.image.trunk
        size16, size32 = self.image_size // 16, self.image_size // 32
        self.finer_shape = (trunk.finer_channels, size16, size16)
        mid_c = trunk.blocks[self.first_block - 1].out_channels if self.first_block < len(trunk.blocks) else trunk.head_channels
        if self.first_block < trunk.finer_at:
            raise BadInput(f"train_image_blocks {self.cfg.train_image_blocks}: at most {len(trunk.blocks) - trunk.finer_at} (the blocks above the stride-16 map)")
        mid_size = size32 if self.first_block > trunk.finer_at else size16
        self.mid_shape = (mid_c, mid_size, mid_size)
        self.record_size = int(np.prod(self.finer_shape) + np.prod(self.mid_shape))
        bases = self.cfg.base_sha256
        image_key = cache_key(images=[str(im.path.resolve()) for p in parts for im in p.images], shape=list(pixels.shape),
                              seed=self.config.seed, blocks=self.first_block, size=self.image_size, bases=bases, aug=2)
        self.images_cache = ViewCache([
            load_or_build(self._cache_file(f"image-{image_key}-v{v}"), (len(pixels), self.record_size),
                          partial(self._image_view, pixels, v, report))
            for v in range(self.config.feature_views)
        ])
        ids, mask = self.tokenizer(self.texts)
        text_key = cache_key(texts=cache_key(texts=self.texts), layers=self.first_layer, tokens=self.cfg.max_text_tokens,
                             width=int(ids.shape[1]), bases=bases)
        width = int(self._bert().config.hidden_size)
        chunks = []
        for c, start in enumerate(range(0, len(self.texts), TEXT_CHUNK)):
            part_ids, part_mask = ids[start:start + TEXT_CHUNK], mask[start:start + TEXT_CHUNK]
            chunks.append(load_or_build(self._cache_file(f"text-{text_key}-c{c}"), (len(part_ids), ids.shape[1], width),
                                        partial(self._text_chunk, part_ids, part_mask, report, start)))
        self.text_states = ChunkedRows(chunks, TEXT_CHUNK)
        self.text_mask = mask.numpy().astype(np.uint8)
        self.model.train()

    def param_groups(self, config: TrainConfig) -> list[dict[str, Any]]:
        base_prefixes = ("image.trunk.", "text.bert.")
        groups = []
        for is_base in (False, True):
            decay: list[nn.Parameter] = []
            no_decay: list[nn.Parameter] = []
            for name, p in self.model.named_parameters():
                if p.requires_grad and name.startswith(base_prefixes) == is_base:
                    (decay if p.dim() >= 2 else no_decay).append(p)
            scale = config.base_lr_scale if is_base else 1.0
            groups += [{"params": decay, "weight_decay": config.weight_decay, "lr_scale": scale, "base": is_base},
                       {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale, "base": is_base}]
        return [g for g in groups if g["params"]]

    def batch(self, idx: np.ndarray, text_rows: np.ndarray, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        views = (np.zeros(len(idx), dtype=np.int64) if gen is None
                 else torch.randint(0, self.images_cache.views, (len(idx),), generator=gen).numpy())
        rec = torch.from_numpy(self.images_cache.rows(views, idx)).to(self.device).float()
        nf = int(np.prod(self.finer_shape))
        finer = rec[:, :nf].view(-1, *self.finer_shape)
        h = rec[:, nf:].view(-1, *self.mid_shape)
        trunk = self.model.image.trunk
        if self.first_block < len(trunk.blocks):
            for block in trunk.blocks[self.first_block:]:
                h = block(h)
            h = trunk.head(h)
        g, r = self.model.image.heads(finer, h)
        mask = torch.from_numpy(self.text_mask[text_rows]).to(self.device)
        width = int(mask.sum(1).max())
        states = torch.from_numpy(self.text_states[text_rows][:, :width]).to(self.device).float()
        t = self.model.text.upper(states, mask[:, :width], self.first_layer)
        return F.normalize(g.float(), dim=-1), F.normalize(r.float(), dim=-1), F.normalize(t.float(), dim=-1)

    def encoder(self) -> Encoder:
        from ftfsearch.model.pretrained import PretrainedFtfEncoder

        enc = PretrainedFtfEncoder(self.model, self.device, weights_digest="training")
        return enc

    def extra_state(self) -> dict[str, Any]:
        return {"model_config": self.cfg.to_dict()}

    def save(self, out: Path, params: RerankParams) -> None:
        from ftfsearch.model.pretrained import save_pretrained_model

        self.cfg.rerank = params
        self.model.cfg = self.cfg
        save_pretrained_model(self.model.cpu(), out)


def _make_task(config: TrainConfig, texts: list[str], ckpt: dict[str, Any] | None, device: torch.device) -> _Task:
    if config.base is not None:
        return _ClipTask(config, texts, ckpt, device)
    task = TRAIN_TASKS[family(config.arch).name]
    return task(config, texts, ckpt, device)


@trains("scratch")
class _FtfTask(_PixelTask):
    """Training adapter of the project's own dual encoder (tokenizer learned from the captions)."""

    model: FtfModel

    def __init__(self, config: TrainConfig, captions: list[str], ckpt: dict[str, Any] | None, device: torch.device) -> None:
        from tokenizers import Tokenizer

        self.cfg = FtfConfig.from_dict(ckpt["model_config"]) if ckpt is not None else config.model
        if ckpt is not None:
            self.tokenizer = Tokenizer.from_str(ckpt["tokenizer"])
        else:
            self.tokenizer = train_tokenizer(captions, self.cfg.vocab_size)
            self.cfg.vocab_size = self.tokenizer.get_vocab_size()
        self.ids = encode_batch(self.tokenizer, captions, self.cfg.max_text_tokens)
        self.device = device
        torch.manual_seed(config.seed)
        self.model = FtfModel(self.cfg).to(device)
        self.image_size = self.cfg.image_size
        self.rerank = self.cfg.rerank

    def images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_images(self.model.normalize_pixels(x))

    def texts(self, rows: np.ndarray) -> torch.Tensor:
        tids = self.ids[rows]
        return self.model.forward_text(tids[:, : int((tids != 0).sum(1).max())].to(self.device))

    def encoder(self) -> Encoder:
        return FtfEncoder(self.model, self.tokenizer, self.device, weights_digest="training")

    def extra_state(self) -> dict[str, Any]:
        return {"model_config": self.cfg.to_dict(), "tokenizer": self.tokenizer.to_str()}

    def save(self, out: Path, params: RerankParams) -> None:
        self.cfg.rerank = params
        self.model.cfg = self.cfg
        save_ftf_model(self.model.cpu(), self.tokenizer, out)


class _ClipTask(_PixelTask):
    """Training adapter of a CLIP model given by ``--base``: regions from patch tokens (one pass)."""

    model: Any
    """The transformers ``CLIPModel`` of the encoder (transformers ships no type information)."""

    def __init__(self, config: TrainConfig, captions: list[str], ckpt: dict[str, Any] | None, device: torch.device) -> None:
        from ftfsearch.model.clip import ClipEncoder  # lazily: transformers is heavy

        assert config.base is not None
        self.enc = ClipEncoder(config.base, device, region_mode="tokens", layout=config.model.region_layout)
        self.model = self.enc.model
        self.captions = captions
        self.device = device
        self.image_size = self.enc.transform.size
        self.rerank = self.enc.rerank_params
        from ftfsearch.model.preprocess import PixelNorm

        t = self.enc.transform
        self.norm = PixelNorm(t.mean, t.std).to(device)

    def images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.enc.token_vectors(self.norm(x))

    def texts(self, rows: np.ndarray) -> torch.Tensor:
        batch = self.enc.tokenizer([self.captions[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.enc.max_text_tokens, return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def encoder(self) -> Encoder:
        self.model.eval()
        return self.enc

    def extra_state(self) -> dict[str, Any]:
        return {}

    def save(self, out: Path, params: RerankParams) -> None:
        import shutil

        from ftfsearch.model.clip import REGION_MODE_FILE, RERANK_FILE

        self.model.save_pretrained(out)
        self.enc.tokenizer.save_pretrained(out)
        if self.enc.files.processor_file is not None:
            shutil.copyfile(self.enc.files.processor_file, out / self.enc.files.processor_file.name)
        (out / RERANK_FILE).write_text(json.dumps(dataclasses.asdict(params)) + "\n")
        (out / REGION_MODE_FILE).write_text(json.dumps({"region_mode": self.enc.region_mode}) + "\n")


def _validate(task: _Task, val: list[tuple[CaptionSplit, np.ndarray]]) -> list[Embeddings]:
    enc = task.encoder()
    try:
        return [encode_split(enc, part, pix) for part, pix in val]
    finally:
        task.model.train()


def _checkpoint_to_resume(config: TrainConfig, ckpt_path: Path) -> dict[str, Any] | None:
    """The checkpoint a resumed run continues from (None for a new run), once the settings are checked."""
    ckpt: dict[str, Any] | None = None
    if config.resume:
        if not ckpt_path.is_file():
            raise BadInput(f"{ckpt_path}: no checkpoint to resume from; run without `resume`")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if config.epochs < 1 or config.batch_size < 2:
        raise BadInput("`epochs` must be >= 1 and `batch_size` >= 2")
    family(config.arch)  # BadInput for an unknown one
    return ckpt


@dataclass
class TrainTexts:
    """The distinct training texts (captions, then class prompts) and which of them belong to each image.

    Identical caption strings are one text: their vectors are identical, so the images that share one
    are all its positives (UCM train: 8,400 captions, 1,637 distinct), never each other's negatives.
    """

    texts: list[str]
    captions: list[np.ndarray]
    """Per training image, the text ids of its captions."""
    prompts: list[np.ndarray]
    """Per training image, the text ids of its class prompts (empty without a label)."""
    owned: np.ndarray
    """``[N, M]`` per image, every text id that is a positive for it (captions and prompts), -1 padded."""

    def positives(self, images: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        """``[T, B]`` bool: text ``text_ids[r]`` is a positive of image ``images[b]``."""
        return (self.owned[images][None, :, :] == text_ids[:, None, None]).any(-1)


def build_texts(parts: list[CaptionSplit]) -> TrainTexts:
    """Distinct texts and per-image ownership of the training images of ``parts``, in order."""
    from ftfsearch.training.prompts import has_phrase, prompts_for

    def prompts(label: str | None) -> list[str]:
        return prompts_for(label) if label and has_phrase(label) else []

    images = [im for p in parts for im in p.images]
    ids: dict[str, int] = {}
    for im in images:
        for c in im.captions:
            ids.setdefault(c, len(ids))
    for im in images:
        for t in prompts(im.label):
            ids.setdefault(t, len(ids))
    captions = [np.asarray([ids[c] for c in im.captions], dtype=np.int64) for im in images]
    prompt_ids = [np.asarray([ids[t] for t in prompts(im.label)], dtype=np.int64) for im in images]
    owned_lists = [np.unique(np.concatenate([c, q])) for c, q in zip(captions, prompt_ids)]
    owned = np.full((len(images), max(len(o) for o in owned_lists)), -1, dtype=np.int64)
    for i, o in enumerate(owned_lists):
        owned[i, :len(o)] = o
    return TrainTexts(list(ids), captions, prompt_ids, owned)


def _steps_per_epoch(config: TrainConfig, n: int) -> int:
    steps = n // config.batch_size
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    if steps < 1:
        raise DatasetError(f"{config.data[0]}: {n} training images are fewer than one batch of {config.batch_size}; lower `batch_size`")
    return steps


@dataclass
class _Optimisation:
    """What a step updates besides the task's model, and the schedule it follows."""

    opt: torch.optim.Optimizer
    head: LossHead
    scaler: torch.amp.GradScaler
    device_type: str
    amp_dtype: torch.dtype
    autocast: bool
    steps_per_epoch: int
    ema: _Ema | None


class _Ema:
    """An exponential moving average of the trained parameters: what is validated and saved."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model carries the averaged weights inside the block, its own weights again after."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> list[torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        for s, v in zip(self.shadow, state):
            s.copy_(v)


def _phase(config: TrainConfig, epoch: int) -> tuple[str, int, int]:
    """(name, first epoch, epochs) of the phase that ``epoch`` (0-based) is in: the probe trains the heads
    and the region branch on the frozen towers; fine-tuning then unfreezes the top blocks and layer."""
    if epoch < config.probe_epochs:
        return "probe", 0, config.probe_epochs
    return "finetune", config.probe_epochs, config.epochs - config.probe_epochs


def _freeze_base(opt: torch.optim.Optimizer, frozen: bool) -> None:
    for group in opt.param_groups:
        if group.get("base"):
            for p in group["params"]:
                p.requires_grad_(not frozen)


def _batches(config: TrainConfig, order: np.ndarray, steps: int, neighbours: np.ndarray | None,
             rng: np.random.Generator) -> list[np.ndarray]:
    """The image indices of each step: slices of ``order``, or anchors from it each joined by
    ``hard_negatives`` images from its mined coarse top-K (so the fine loss meets the candidates the
    rerank will see)."""
    b = config.batch_size
    if neighbours is None or config.hard_negatives <= 0:
        return [np.sort(order[s * b:(s + 1) * b]) for s in range(steps)]
    per = b // (1 + config.hard_negatives)
    out = []
    for s in range(steps):
        anchors = order[s * per:(s + 1) * per]
        picks = np.stack([rng.choice(neighbours[i], config.hard_negatives, replace=False) for i in anchors])
        idx = np.unique(np.concatenate([anchors, picks.ravel()]))
        out.append(idx[:b])
    return out


def _texts_for(config: TrainConfig, texts: TrainTexts, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two text ids per image (``[2B]``, first captions then second): two of its captions, the second
    replaced by one of its class prompts at ``prompt_rate``."""
    two = np.stack([rng.choice(texts.captions[i], 2, replace=len(texts.captions[i]) < 2) for i in idx])
    if config.prompt_rate > 0:
        swap = rng.random(len(idx)) < config.prompt_rate
        for j, i in enumerate(idx):
            if swap[j] and len(texts.prompts[i]):
                two[j, 1] = rng.choice(texts.prompts[i])
    return np.concatenate([two[:, 0], two[:, 1]])


def _train_epoch(
    task: _Task, config: TrainConfig, optim: _Optimisation, texts: TrainTexts, epoch: int, step: int,
    neighbours: np.ndarray | None, report: Callable[[TrainProgress], None],
) -> tuple[float, dict[str, float], int]:
    """One epoch in its epoch-seeded data order: (summed loss, summed loss parts, the next step)."""
    n = len(texts.captions)
    rng = np.random.default_rng([config.seed, epoch])
    gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    torch.manual_seed(config.seed * 1000 + epoch)  # dropout: a resumed epoch draws the same masks
    order = rng.permutation(n)
    phase, first_epoch, phase_epochs = _phase(config, epoch)
    phase_step0 = first_epoch * optim.steps_per_epoch
    phase_total = phase_epochs * optim.steps_per_epoch
    peak = config.finetune_lr if phase == "finetune" and config.finetune_lr is not None else config.lr
    sums: dict[str, float] = {}
    total_loss = 0.0
    opt = optim.opt
    batches = _batches(config, order, optim.steps_per_epoch, neighbours, rng)
    for s, idx in enumerate(batches):
        text_ids = _texts_for(config, texts, idx, rng)
        pos = torch.from_numpy(texts.positives(idx, text_ids)).to(task.device) if config.multi_positive else None
        for group in opt.param_groups:
            group["lr"] = _lr_at(step - phase_step0, phase_total, config, peak) * group.get("lr_scale", 1.0)
        with torch.autocast(optim.device_type, dtype=optim.amp_dtype, enabled=optim.autocast):
            g, r, t = task.batch(idx, text_ids, gen)
        loss, parts_now = compute_losses(
            t, g, r, optim.head, config.loss, config.train_tau, config.train_balanced, config.train_alpha, pos
        )
        opt.zero_grad(set_to_none=True)
        optim.scaler.scale(loss).backward()
        optim.scaler.unscale_(opt)
        nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"] if p.requires_grad], 5.0)
        optim.scaler.step(opt)
        optim.scaler.update()
        if optim.ema is not None:
            optim.ema.update()
        step += 1
        total_loss += float(loss.detach())
        for k, v in parts_now.items():
            sums[k] = sums.get(k, 0.0) + v
        report(TrainProgress("train", epoch + 1, config.epochs, s + 1, optim.steps_per_epoch, float(loss.detach()),
                             message=phase))
    return total_loss, sums, step


@torch.inference_mode()
def _mine_neighbours(task: _Task, texts: TrainTexts, config: TrainConfig, epoch: int) -> np.ndarray:
    """Per training image, the ``mine_k`` images that one of its captions recalls first by the coarse
    score under the current weights, its own positives excluded: the hard negatives of the next epoch."""
    rng = np.random.default_rng([config.seed, epoch, 17])
    n = len(texts.captions)
    task.model.eval()
    try:
        caption = np.asarray([rng.choice(c) for c in texts.captions])
        gs, ts = [], []
        for start in range(0, n, 256):
            idx = np.arange(start, min(start + 256, n))
            g, _, t = task.batch(idx, caption[idx], None)
            gs.append(g.float())
            ts.append(t.float())
    finally:
        task.model.train()
    images, queries = torch.cat(gs), torch.cat(ts)
    k = config.mine_k
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, 1024):
        sims = queries[start:start + 1024] @ images.T
        top = sims.topk(k + 8, dim=1).indices.numpy()
        rows = np.arange(start, min(start + 1024, n))
        for j, i in enumerate(rows):
            cand = top[j]
            keep = ~np.isin(texts.owned[cand], caption[i]).any(1)
            keep &= cand != i
            chosen = cand[keep][:k]
            if len(chosen) < k:
                chosen = np.concatenate([chosen, rng.choice(n, k - len(chosen), replace=False)])
            out[i] = chosen
    return out


def _val_scores(task: _Task, val: list[tuple[CaptionSplit, np.ndarray]], config: TrainConfig) -> tuple[list[Embeddings], dict[str, dict[str, float]]]:
    """Validation embeddings and, per dataset, coarse mR and FTF mR at the rerank the grid picks for it."""
    embs = _validate(task, val)
    per: dict[str, dict[str, float]] = {}
    for (part, _), e in zip(val, embs):
        params, info = choose_rerank([e], config.recall_k, SELECT_TAUS, SELECT_ALPHAS, device=task.device)
        per[part.name] = {"coarse": info["coarse_mR"], "ftf": info["best_ftf_mR"]}
    return embs, per


def train(config: TrainConfig, progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Train (or resume) an FTF model, or fine-tune the CLIP model ``config.base``; write the model to ``config.out``.

    Every epoch is validated (on the EMA weights when ``ema_decay`` is set); the best epoch by the mean
    validation FTF mR over the datasets is the one written, and with ``patience`` the run stops once
    that many fine-tuning epochs pass without a better one.
    """
    t_start = time.perf_counter()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    report = progress or (lambda p: None)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    ckpt = _checkpoint_to_resume(config, ckpt_path)

    report(TrainProgress("data", 0, config.epochs, message="loading and caching images"))
    parts = _splits(config, "train", config.max_train_images)
    texts = build_texts(parts)
    task = _make_task(config, texts.texts, ckpt, device)
    size = task.image_size
    pix = [load_pixels(p, int(round(size * TRAIN_PIXELS_MARGIN)), config.cache_dir) for p in parts]
    pixels = np.concatenate(pix) if len(pix) > 1 else pix[0]
    task.prepare(pixels, parts, report)
    val_parts = _splits(config, "val", config.max_val_images)
    val = [(p, load_pixels(p, EVAL_PIXELS, config.cache_dir)) for p in val_parts]

    model = task.model
    head = LossHead(4 if config.loss.rerank else 3).to(device)
    groups = task.param_groups(config)
    opt = torch.optim.AdamW(groups + _param_groups([head], config.weight_decay), lr=config.lr, betas=(0.9, 0.98))
    trained = [p for g in groups for p in g["params"]]
    steps_per_epoch = _steps_per_epoch(config, len(pixels))
    use_cuda_amp = config.amp and device.type == "cuda"
    use_cpu_amp = config.amp and device.type == "cpu"
    optim = _Optimisation(
        opt=opt, head=head, scaler=torch.amp.GradScaler("cuda", enabled=use_cuda_amp), device_type=device.type,
        amp_dtype=torch.float16 if device.type == "cuda" else torch.bfloat16, autocast=use_cuda_amp or use_cpu_amp,
        steps_per_epoch=steps_per_epoch, ema=_Ema(trained, config.ema_decay) if config.ema_decay > 0 else None,
    )
    history: list[EpochStats] = []
    first_epoch = 0
    best: dict[str, Any] | None = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            optim.scaler.load_state_dict(ckpt["scaler"])
        if optim.ema is not None and ckpt.get("ema") is not None:
            optim.ema.load_state_dict(ckpt["ema"])
        history = [EpochStats(**h) for h in ckpt["history"]]
        first_epoch = int(ckpt["epoch"])
        best = ckpt.get("best")
        log.info("resuming %s after epoch %d", out, first_epoch)

    step = first_epoch * steps_per_epoch
    model.train()
    for epoch in range(first_epoch, config.epochs):
        if best is not None and config.patience and _phase(config, epoch)[0] == "finetune" \
                and epoch - max(best["epoch"], config.probe_epochs) >= config.patience:
            log.info("stopping after epoch %d: no better validation for %d epochs", epoch, config.patience)
            break
        t0 = time.perf_counter()
        _freeze_base(opt, _phase(config, epoch)[0] == "probe")
        neighbours = None
        if config.hard_negatives > 0 and epoch > 0:
            report(TrainProgress("mine", epoch + 1, config.epochs, message="mining hard negatives"))
            neighbours = _mine_neighbours(task, texts, config, epoch)
        total_loss, sums, step = _train_epoch(task, config, optim, texts, epoch, step, neighbours, report)
        report(TrainProgress("val", epoch + 1, config.epochs, message="validating"))
        with optim.ema.applied() if optim.ema is not None else nullcontext():
            _, per = _val_scores(task, val, config)
            val_ftf = float(np.mean([v["ftf"] for v in per.values()]))
            if best is None or val_ftf > best["val_ftf"]:
                best = {"epoch": epoch + 1, "val_ftf": val_ftf, "model": copy.deepcopy(model.state_dict())}
        val_mR = float(np.mean([v["coarse"] for v in per.values()]))
        stats = EpochStats(epoch + 1, total_loss / steps_per_epoch, {k: v / steps_per_epoch for k, v in sums.items()},
                           round(val_mR, 2), round(time.perf_counter() - t0, 1), round(val_ftf, 2), per,
                           _phase(config, epoch)[0])
        history.append(stats)
        log.info("epoch %d/%d loss %.4f val coarse mR %.2f FTF %.2f (%.0fs)", epoch + 1, config.epochs, stats.loss,
                 val_mR, val_ftf, stats.seconds)
        report(TrainProgress("epoch", epoch + 1, config.epochs, loss=stats.loss,
                             message=f"epoch {epoch + 1} ({stats.phase}): loss {stats.loss:.3f}, val mR coarse {val_mR:.2f}, "
                                     f"FTF {val_ftf:.2f}" + (" (best)" if best["epoch"] == epoch + 1 else "")))
        _atomic_save({
            "epoch": epoch + 1, "model": model.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
            "scaler": optim.scaler.state_dict(), "ema": optim.ema.state_dict() if optim.ema is not None else None,
            "best": best, "history": [dataclasses.asdict(h) for h in history], "train_config": config.to_dict(),
            **task.extra_state(),
        }, ckpt_path)

    assert best is not None
    model.load_state_dict(best["model"])
    report(TrainProgress("rerank", config.epochs, config.epochs, message=f"epoch {best['epoch']}: choosing tau/alpha/K on val"))
    embs = _validate(task, val)
    params, val_info = choose_rerank(embs, config.recall_k, config.taus, config.alphas, config.recall_ks, task.device)
    val_info["best_epoch"] = best["epoch"]
    task.save(out, params)
    seconds = time.perf_counter() - t_start
    result = TrainResult(out, history, params, val_info, seconds)
    summary = {**result.to_dict(), "train_config": config.to_dict(), "loss_scales": head.scales().tolist(),
               "torch": torch.__version__, "device": str(device)}
    (out / "train_log.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not config.keep_checkpoint:
        ckpt_path.unlink(missing_ok=True)
    return result
