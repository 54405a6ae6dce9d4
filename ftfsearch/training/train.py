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

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ftfsearch.training.datasets import CaptionSplit, load_datasets, load_pixels
from ftfsearch.errors import BadInput, DatasetError
from ftfsearch.training.evaluate import EVAL_PIXELS, Embeddings, encode_split, score
from ftfsearch.model.base import Encoder, RerankParams
from ftfsearch.model.families import family
from ftfsearch.model.ftf import FtfConfig, FtfEncoder, FtfModel, save_ftf_model
from ftfsearch.model.loading import resolve_device
from ftfsearch.model.pretrained import PretrainedConfig
from ftfsearch.model.text import encode_batch, train_tokenizer
from ftfsearch.rerank import bti

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
TRAIN_PIXELS_MARGIN = 1.125
"""Training images are cached at this multiple of the input size so random crops keep detail."""


@dataclass
class LossWeights:
    coarse: float = 0.5
    fine: float = 2.0
    """The fine (BTI) term leads: at full scale (1, 1) -> (0.5, 2) raised val FTF mR from 18.49 to
    19.94 and RSICD test FTF mR from 10.12 to 10.99 (model card)."""
    text: float = 0.5
    region: float = 0.1
    """Low on purpose: at 0.5 the regions collapsed onto the coarse vector within two epochs
    (their loss fell to 0.02) and the rerank added nothing (see the model card)."""
    rerank: float = 0.0
    """The residual rerank term (module docstring); 0 keeps the head, and so checkpoints, as before."""


@dataclass
class TrainConfig:
    """Everything a training run depends on (recorded in the checkpoint)."""

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
    image and augmented copies); each epoch draws one view per image."""
    base_lr_scale: float = 0.1
    """Pretrained arch: learning rate of the fine-tuned base blocks and layers, relative to the heads."""
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
    taus: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    alphas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    keep_checkpoint: bool = False
    num_threads: int | None = 2

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


def augment(batch: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, size, size]`` in 0..1, randomly cropped/flipped/rotated/jittered."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    b = x.shape[0]
    side = torch.empty(b).uniform_(0.7, 1.0, generator=gen)  # crop side as a fraction of the image
    aspect = torch.exp(torch.empty(b).uniform_(-0.15, 0.15, generator=gen))
    sx = (side * aspect.sqrt()).clamp(max=1.0)
    sy = (side / aspect.sqrt()).clamp(max=1.0)
    tx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sx)
    ty = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sy)
    k = torch.randint(0, 4, (b,), generator=gen).float() * (math.pi / 2)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(k), torch.sin(k)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos * sx * flip
    theta[:, 0, 1] = -sin * sy
    theta[:, 1, 0] = sin * sx * flip
    theta[:, 1, 1] = cos * sy
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bright = torch.empty(b, 1, 1, 1).uniform_(-0.08, 0.08, generator=gen)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.85, 1.15, generator=gen)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + bright).clamp_(0.0, 1.0)


def _info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of a square logit matrix whose diagonal holds the positives."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class LossHead(nn.Module):
    """Learnable logit scales of the InfoNCE terms: coarse, fine, text (and rerank when weighted)."""

    def __init__(self, terms: int = 3) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((terms,), math.log(1 / 0.07)))

    def scales(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)


def compute_losses(
    text: torch.Tensor, coarse: torch.Tensor, regions: torch.Tensor, head: LossHead,
    weights: LossWeights, tau: float, balanced: bool, alpha: float = 0.25,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted loss and its parts; ``text`` is ``[2B, D]`` (first and second caption of each image)."""
    b = coarse.shape[0]
    s = head.scales()
    t1, t2 = text[:b], text[b:]
    parts: dict[str, torch.Tensor] = {}
    parts["coarse"] = 0.5 * (_info_nce(s[0] * t1 @ coarse.T) + _info_nce(s[0] * t2 @ coarse.T))
    if weights.fine or weights.rerank:
        out = bti(text, coarse, regions, tau=tau, alpha=1.0, balanced=balanced)
        fine = out.fine  # [2B, B]
        if weights.fine:
            parts["fine"] = 0.5 * (_info_nce(s[1] * fine[:b]) + _info_nce(s[1] * fine[b:]))
        if weights.rerank:
            mixed = (1.0 - alpha) * out.coarse.detach() + alpha * fine
            parts["rerank"] = 0.5 * (_info_nce(s[3] * mixed[:b]) + _info_nce(s[3] * mixed[b:]))
    if weights.text:
        parts["text"] = _info_nce(s[2] * t1 @ t2.T)
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


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = min(cfg.warmup_steps, max(total // 10, 1))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(total - warm, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def choose_rerank(embs: list[Embeddings], recall_k: int, taus: tuple[float, ...], alphas: tuple[float, ...]) -> tuple[RerankParams, dict[str, Any]]:
    """Grid search of tau/alpha (balanced BTI) maximising the mean FTF mR over the validation splits."""
    best: tuple[float, RerankParams] | None = None
    grid = []
    for tau in taus:
        for alpha in alphas:
            p = RerankParams(tau=tau, alpha=alpha, balanced=True)
            mrs = [score(e, recall_k, p).ftf.mR for e in embs]
            m = float(np.mean(mrs))
            grid.append({"tau": tau, "alpha": alpha, "ftf_mR": round(m, 2)})
            if best is None or m > best[0]:
                best = (m, p)
    assert best is not None
    coarse = float(np.mean([score(e, recall_k, best[1]).coarse.mR for e in embs]))
    return best[1], {"grid": grid, "best_ftf_mR": round(best[0], 2), "coarse_mR": round(coarse, 2)}


class _Task(Protocol):
    """What :func:`train` needs of an architecture: its trained module, batches of unit vectors, an
    encoder for validation, and how to save the result."""

    @property
    def model(self) -> nn.Module: ...

    image_size: int
    rerank: RerankParams

    def prepare(self, pixels: np.ndarray, parts: list[CaptionSplit], report: Callable[[TrainProgress], None]) -> None:
        ...

    def param_groups(self, config: TrainConfig) -> list[dict[str, Any]]: ...

    def batch(self, idx: np.ndarray, text_rows: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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

    def batch(self, idx: np.ndarray, text_rows: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = augment(torch.from_numpy(self.pixels[idx]), self.image_size, gen).to(self.device)
        g, r = self.images(x)
        return g, r, self.texts(text_rows)

    def images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def texts(self, rows: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


class _PretrainedTask:
    """Training adapter of FTF on the pinned pretrained towers.

    The frozen lower trunk and text layers run once: their outputs (the stride-16 map and the input
    of the first fine-tuned block per image and view; the hidden states below the first fine-tuned
    text layer per caption) are cached on disk, and each step runs only the fine-tuned top blocks,
    the branch and the heads. That is what makes fine-tuning pay on a 2-core CPU.
    """

    def __init__(self, config: TrainConfig, captions: list[str], ckpt: dict[str, Any] | None, device: torch.device) -> None:
        from ftfsearch.model.pretrained import PretrainedConfig, TextTokenizer, build_model

        self.cfg = PretrainedConfig.from_dict(ckpt["model_config"]) if ckpt is not None else config.pretrained
        self.config = config
        self.captions = captions
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

    def _cache_path(self, pixels: np.ndarray, parts: list[CaptionSplit], what: str) -> Path | None:
        if self.config.cache_dir is None:
            return None
        import hashlib

        key = hashlib.sha256(json.dumps({
            "images": [str(im.path.resolve()) for p in parts for im in p.images], "shape": list(pixels.shape),
            "what": what, "views": self.config.feature_views, "seed": self.config.seed,
            "blocks": self.first_block, "layers": self.first_layer, "size": self.image_size,
            "tokens": self.cfg.max_text_tokens, "bases": self.cfg.base_sha256,
        }, sort_keys=True).encode()).hexdigest()[:16]
        return Path(self.config.cache_dir) / f"features-{what}-{key}.npy"

    def _cached(self, path: Path | None, make: Callable[[], np.ndarray]) -> np.ndarray:
        if path is not None and path.is_file():
            return np.load(path, mmap_mode="r")
        arr = make()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, arr)
            os.replace(tmp, path)
            return np.load(path, mmap_mode="r")
        return arr

    @torch.inference_mode()
    def _image_features(self, pixels: np.ndarray, report: Callable[[TrainProgress], None]) -> np.ndarray:
        """``[V, N]`` records of (stride-16 map, input of the first fine-tuned block), float16."""
        from ftfsearch.model.ftf import prepare_images
        from ftfsearch.model.pretrained import fused_trunk

        trunk = fused_trunk(self.model.image.trunk).to(self.device)
        n, views = len(pixels), self.config.feature_views
        out: np.ndarray | None = None
        gen = torch.Generator().manual_seed(self.config.seed + 7919)
        for v in range(views):
            for start in range(0, n, 16):  # small batches run fastest on CPU (measured: 61 vs 45 img/s at 64)
                chunk = torch.from_numpy(np.ascontiguousarray(pixels[start:start + 16]))
                x = prepare_images(chunk, self.image_size) if v == 0 else augment(chunk, self.image_size, gen)
                x = self.model.normalize_pixels(x.to(self.device)).contiguous(memory_format=torch.channels_last)
                h = trunk.stem(x)
                for i, block in enumerate(trunk.blocks[: self.first_block]):
                    h = block(h)
                    if i == trunk.finer_at - 1:
                        finer = h
                if self.first_block == len(trunk.blocks):
                    h = trunk.head(h)
                flat = torch.cat([finer.flatten(1), h.flatten(1)], dim=1).to(torch.float16).cpu().numpy()
                if out is None:
                    out = np.empty((views, n, flat.shape[1]), dtype=np.float16)
                    self.finer_shape = tuple(finer.shape[1:])
                    self.mid_shape = tuple(h.shape[1:])
                out[v, start:start + len(flat)] = flat
                report(TrainProgress("features", 0, self.config.epochs, v * n + start + len(flat), views * n,
                                     message="caching frozen image features"))
        assert out is not None
        return out

    @torch.inference_mode()
    def _text_features(self, report: Callable[[TrainProgress], None]) -> tuple[np.ndarray, np.ndarray]:
        """Hidden states below the first fine-tuned layer ``[Q, L, W]`` (float16) and masks ``[Q, L]``."""
        bert = self._bert()
        ids, mask = self.tokenizer(self.captions)
        states = np.zeros((len(self.captions), ids.shape[1], bert.config.hidden_size), dtype=np.float16)
        for start in range(0, len(self.captions), 256):
            i, m = ids[start:start + 256].to(self.device), mask[start:start + 256].to(self.device)
            hs = bert(input_ids=i, attention_mask=m, output_hidden_states=True).hidden_states[self.first_layer]
            states[start:start + len(i)] = hs.to(torch.float16).cpu().numpy()
            report(TrainProgress("features", 0, self.config.epochs, start + len(i), len(self.captions),
                                 message="caching frozen text features"))
        return states, mask.numpy().astype(np.uint8)

    def prepare(self, pixels: np.ndarray, parts: list[CaptionSplit], report: Callable[[TrainProgress], None]) -> None:
        trunk = self.model.image.trunk
        size16, size32 = self.image_size // 16, self.image_size // 32
        self.finer_shape = (trunk.finer_channels, size16, size16)
        mid_c = trunk.blocks[self.first_block - 1].out_channels if self.first_block < len(trunk.blocks) else trunk.head_channels
        if self.first_block < trunk.finer_at:
            raise BadInput(f"train_image_blocks {self.cfg.train_image_blocks}: at most {len(trunk.blocks) - trunk.finer_at} (the blocks above the stride-16 map)")
        mid_size = size32 if self.first_block > trunk.finer_at else size16
        self.mid_shape = (mid_c, mid_size, mid_size)
        self.images_cache = self._cached(self._cache_path(pixels, parts, "image"), lambda: self._image_features(pixels, report))
        text_path = self._cache_path(pixels, parts, "text")
        mask_path = text_path.with_name(text_path.stem + "-mask.npy") if text_path is not None else None
        if text_path is not None and mask_path is not None and text_path.is_file() and mask_path.is_file():
            self.text_states, self.text_mask = np.load(text_path, mmap_mode="r"), np.load(mask_path)
        else:
            states, mask = self._text_features(report)
            self.text_states = self._cached(text_path, lambda: states)
            self.text_mask = self._cached(mask_path, lambda: mask)
        self.text_mask = np.asarray(self.text_mask)
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
            groups += [{"params": decay, "weight_decay": config.weight_decay, "lr_scale": scale},
                       {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale}]
        return [g for g in groups if g["params"]]

    def batch(self, idx: np.ndarray, text_rows: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        views = torch.randint(0, self.images_cache.shape[0], (len(idx),), generator=gen).numpy()
        rec = torch.from_numpy(np.stack([self.images_cache[v, i] for v, i in zip(views, idx)])).to(self.device).float()
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
        states = torch.from_numpy(np.asarray(self.text_states[text_rows][:, :width])).to(self.device).float()
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


def _make_task(config: TrainConfig, captions: list[str], ckpt: dict[str, Any] | None, device: torch.device) -> _Task:
    if config.base is not None:
        return _ClipTask(config, captions, ckpt, device)
    task: type[_Task] = globals()[family(config.arch).train_task]  # the families table names it
    return task(config, captions, ckpt, device)  # type: ignore[call-arg]


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


def _caption_rows(parts: list[CaptionSplit]) -> list[np.ndarray]:
    """Per training image (in the order of ``parts``), the rows of its captions in the joined caption list."""
    rows: list[np.ndarray] = []
    start = 0
    for p in parts:
        for im in p.images:
            rows.append(np.arange(start, start + len(im.captions)))
            start += len(im.captions)
    return rows


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
    total_steps: int


def _train_epoch(
    task: _Task, config: TrainConfig, optim: _Optimisation, rows: list[np.ndarray], epoch: int, step: int,
    report: Callable[[TrainProgress], None],
) -> tuple[float, dict[str, float], int]:
    """One epoch in its epoch-seeded data order: (summed loss, summed loss parts, the next step)."""
    n = len(rows)
    rng = np.random.default_rng([config.seed, epoch])
    gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    torch.manual_seed(config.seed * 1000 + epoch)  # dropout: a resumed epoch draws the same masks
    order = rng.permutation(n)
    sums: dict[str, float] = {}
    total_loss = 0.0
    opt = optim.opt
    for s in range(optim.steps_per_epoch):
        idx = np.sort(order[s * config.batch_size:(s + 1) * config.batch_size])
        two = np.stack([rng.choice(rows[i], 2, replace=len(rows[i]) < 2) for i in idx])
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, optim.total_steps, config) * group.get("lr_scale", 1.0)
        with torch.autocast(optim.device_type, dtype=optim.amp_dtype, enabled=optim.autocast):
            g, r, t = task.batch(idx, np.concatenate([two[:, 0], two[:, 1]]), gen)
        loss, parts_now = compute_losses(
            t, g, r, optim.head, config.loss, config.train_tau, config.train_balanced, config.train_alpha
        )
        opt.zero_grad(set_to_none=True)
        optim.scaler.scale(loss).backward()
        optim.scaler.unscale_(opt)
        nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], 5.0)
        optim.scaler.step(opt)
        optim.scaler.update()
        step += 1
        total_loss += float(loss.detach())
        for k, v in parts_now.items():
            sums[k] = sums.get(k, 0.0) + v
        report(TrainProgress("train", epoch + 1, config.epochs, s + 1, optim.steps_per_epoch, float(loss.detach())))
    return total_loss, sums, step


def train(config: TrainConfig, progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Train (or resume) an FTF model, or fine-tune the CLIP model ``config.base``; write the model to ``config.out``."""
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
    captions = [c for p in parts for im in p.images for c in im.captions]
    rows = _caption_rows(parts)
    task = _make_task(config, captions, ckpt, device)
    size = task.image_size
    pix = [load_pixels(p, int(round(size * TRAIN_PIXELS_MARGIN)), config.cache_dir) for p in parts]
    pixels = np.concatenate(pix) if len(pix) > 1 else pix[0]
    task.prepare(pixels, parts, report)
    val_parts = _splits(config, "val", config.max_val_images)
    val = [(p, load_pixels(p, EVAL_PIXELS, config.cache_dir)) for p in val_parts]

    model = task.model
    head = LossHead(4 if config.loss.rerank else 3).to(device)
    opt = torch.optim.AdamW(task.param_groups(config) + _param_groups([head], config.weight_decay),
                            lr=config.lr, betas=(0.9, 0.98))
    steps_per_epoch = _steps_per_epoch(config, len(pixels))
    history: list[EpochStats] = []
    first_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["optimizer"])
        history = [EpochStats(**h) for h in ckpt["history"]]
        first_epoch = int(ckpt["epoch"])
        log.info("resuming %s after epoch %d", out, first_epoch)

    use_cuda_amp = config.amp and device.type == "cuda"
    use_cpu_amp = config.amp and device.type == "cpu"
    optim = _Optimisation(
        opt=opt, head=head, scaler=torch.amp.GradScaler("cuda", enabled=use_cuda_amp), device_type=device.type,
        amp_dtype=torch.float16 if device.type == "cuda" else torch.bfloat16, autocast=use_cuda_amp or use_cpu_amp,
        steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * config.epochs,
    )
    step = first_epoch * steps_per_epoch
    model.train()
    for epoch in range(first_epoch, config.epochs):
        t0 = time.perf_counter()
        total_loss, sums, step = _train_epoch(task, config, optim, rows, epoch, step, report)
        report(TrainProgress("val", epoch + 1, config.epochs, message="validating"))
        embs = _validate(task, val)
        val_mR = float(np.mean([score(e, config.recall_k, task.rerank).coarse.mR for e in embs]))
        stats = EpochStats(epoch + 1, total_loss / steps_per_epoch, {k: v / steps_per_epoch for k, v in sums.items()},
                           round(val_mR, 2), round(time.perf_counter() - t0, 1))
        history.append(stats)
        log.info("epoch %d/%d loss %.4f val coarse mR %.2f (%.0fs)", epoch + 1, config.epochs, stats.loss, val_mR, stats.seconds)
        report(TrainProgress("epoch", epoch + 1, config.epochs, loss=stats.loss,
                             message=f"epoch {epoch + 1}: loss {stats.loss:.3f}, val coarse mR {val_mR:.2f}"))
        _atomic_save({
            "epoch": epoch + 1, "model": model.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
            "history": [dataclasses.asdict(h) for h in history], "train_config": config.to_dict(), **task.extra_state(),
        }, ckpt_path)

    report(TrainProgress("rerank", config.epochs, config.epochs, message="choosing tau/alpha on val"))
    embs = _validate(task, val)
    params, val_info = choose_rerank(embs, config.recall_k, config.taus, config.alphas)
    task.save(out, params)
    seconds = time.perf_counter() - t_start
    result = TrainResult(out, history, params, val_info, seconds)
    summary = {**result.to_dict(), "train_config": config.to_dict(), "loss_scales": head.scales().tolist(),
               "torch": torch.__version__, "device": str(device)}
    (out / "train_log.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not config.keep_checkpoint:
        ckpt_path.unlink(missing_ok=True)
    return result
