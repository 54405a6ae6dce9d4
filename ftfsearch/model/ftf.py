"""The project's own FTF dual encoder (DESIGN.md, family 1), trained from scratch.

Image tower: a compact ResNet-style CNN. Its last feature map gives, in one forward pass, the
coarse vector (global average pool + projection) and the R region vectors (average pool of the
feature map over each box of the multi-scale grid layout + a shared projection). Pooling over a
box uses the exact fractional overlap of feature cells with the box, so any layout works at any
input size. Text tower: a small pre-norm transformer over a WordPiece vocabulary learned from the
training captions, masked mean pooling, projection.

A model directory holds ``ftf_config.json`` (architecture, region layout, rerank tau/alpha,
format version), ``model.safetensors`` (float16 weights) and ``tokenizer.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ftfsearch.errors import BadInput, ModelNotFound
from ftfsearch.model.base import RerankParams, check_texts
from ftfsearch.model.preprocess import PixelNorm, check_images
from ftfsearch.model.regions import DEFAULT_LAYOUT, box_pooling_matrix, layout_boxes
from ftfsearch.model.sources import exact_float32
from ftfsearch.model.text import count_tokens, encode_batch, load_tokenizer
from ftfsearch.model.weights import CONFIG_NAME, WEIGHTS_NAME, model_id, weights_digest

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""2: optional ``region_branch`` (regions from the finer, second-to-last stage). Format-1 dirs load unchanged."""
TOKENIZER_NAME = "tokenizer.json"

# Per-channel RGB statistics of RSICD+UCM training images (rounded); fixed so that a model
# directory does not depend on the data it was trained on.
PIXEL_MEAN = (0.38, 0.40, 0.36)
PIXEL_STD = (0.20, 0.19, 0.19)


@dataclass
class FtfConfig:
    """Architecture and inference settings recorded with the weights."""

    name: str = "ftf-small"
    dim: int = 256
    image_size: int = 112
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    region_layout: str = DEFAULT_LAYOUT
    region_branch: bool = True
    """Regions from their own residual block on the second-to-last stage's feature map (twice the
    resolution of the coarse vector's map) instead of from the last map: regions then see detail
    the coarse vector pools away, which is what the rerank needs to add to recall."""
    vocab_size: int = 4000
    text_width: int = 256
    text_layers: int = 2
    text_heads: int = 4
    max_text_tokens: int = 32
    dropout: float = 0.1
    rerank: RerankParams = field(default_factory=RerankParams)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FtfConfig:
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        d["blocks"] = tuple(d["blocks"])
        d["rerank"] = RerankParams(**d.get("rerank", {}))
        d.setdefault("region_branch", False)  # format 1 had no branch
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class _Block(nn.Module):
    """Basic residual block (two 3x3 convs), optional stride-2 downsampling."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # start as identity: trains faster from scratch
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.short(x), inplace=True)


class ImageTower(nn.Module):
    """CNN -> feature map -> (coarse [B, D], regions [B, R, D]), not yet normalised."""

    def __init__(self, cfg: FtfConfig) -> None:
        super().__init__()
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 3, 2, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True),
            nn.Conv2d(w0, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        cin = w0
        for i, (width, n) in enumerate(zip(cfg.widths, cfg.blocks)):
            for j in range(n):
                layers.append(_Block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
        self.body = nn.Sequential(*layers)
        self.coarse_head = nn.Linear(cin, cfg.dim)
        self.region_branch: nn.Module | None = None
        self.branch_at = len(layers)  # body layers that run before the region branch
        region_in = cin
        if cfg.region_branch:
            if len(cfg.widths) < 2:
                raise BadInput(f"model config: region_branch needs at least two stages, got widths {list(cfg.widths)}")
            self.branch_at = len(layers) - cfg.blocks[-1]
            region_in = cfg.widths[-2]
            self.region_branch = _Block(region_in, region_in, 1)
        self.region_head = nn.Linear(region_in, cfg.dim)
        self.boxes = layout_boxes(cfg.region_layout)
        self._pool_cache: dict[tuple[int, int], torch.Tensor] = {}

    def pooling(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w)
        if key not in self._pool_cache:
            self._pool_cache[key] = box_pooling_matrix(self.boxes, h, w)
        return self._pool_cache[key].to(device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.body[: self.branch_at](self.stem(x))
        region_map = fmap
        if self.region_branch is not None:
            region_map = self.region_branch(fmap)
            fmap = self.body[self.branch_at:](fmap)
        coarse = self.coarse_head(fmap.flatten(2).mean(dim=2))
        _, _, h, w = region_map.shape
        flat = region_map.flatten(2)  # [B, C, h*w]
        pooled = torch.einsum("rn,bcn->brc", self.pooling(h, w, flat.device).to(flat.dtype), flat)
        return coarse, self.region_head(pooled)


class TextTower(nn.Module):
    """Token ids ``[B, L]`` (0 = pad) -> text vector ``[B, D]``, not yet normalised."""

    def __init__(self, cfg: FtfConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.text_width, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(cfg.max_text_tokens, cfg.text_width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.text_width, cfg.text_heads, 2 * cfg.text_width, cfg.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_width)
        self.proj = nn.Linear(cfg.text_width, cfg.dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.proj((x * m).sum(1) / m.sum(1).clamp_min(1.0))


class FtfModel(nn.Module):
    """Both towers; :meth:`forward_images` / :meth:`forward_text` return unit vectors."""


    def __init__(self, cfg: FtfConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image = ImageTower(cfg)
        self.text = TextTower(cfg)
        self.pixel_norm = PixelNorm(PIXEL_MEAN, PIXEL_STD)

    def normalize_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """float ``[B, 3, S, S]`` in 0..1 -> standardised input."""
        return self.pixel_norm(x)

    def forward_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised ``[B, 3, S, S]`` -> unit ``(coarse [B, D], regions [B, R, D])`` in float32."""
        g, r = self.image(x)
        return F.normalize(g.float(), dim=-1), F.normalize(r.float(), dim=-1)

    def forward_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids).float(), dim=-1)


def prepare_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` of any size -> float ``[B, 3, size, size]`` in 0..1 (antialiased resize)."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class FtfEncoderBase:
    """What both FTF families' encoders share: identity, region boxes, and encoding in chunks.

    Subclasses set ``model`` (with ``cfg``) and implement ``_embed_images`` (uint8 chunk on the
    device -> unit coarse and regions) and ``_embed_texts``.
    """

    text_chunk = 512

    def _setup(self, cfg: Any, device: torch.device, weights_digest: str, batch_size: int) -> None:
        exact_float32(device)
        self.cfg = cfg
        self.device = device
        self.dim = cfg.dim
        self.region_layout = cfg.region_layout
        self._boxes = layout_boxes(cfg.region_layout)
        self.num_regions = int(self._boxes.shape[0])
        self.rerank_params = cfg.rerank
        self.max_text_tokens = cfg.max_text_tokens
        self.id = model_id(cfg.name, weights_digest)
        self.batch_size = batch_size

    @property
    def region_boxes(self) -> np.ndarray:
        return self._boxes.copy()

    def _embed_images(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = check_images(images)
        gs, rs = [], []
        for start in range(0, images.shape[0], self.batch_size):
            g, r = self._embed_images(images[start:start + self.batch_size].to(self.device))
            gs.append(g.float().cpu())
            rs.append(r.float().cpu())
        if not gs:
            return torch.zeros(0, self.dim), torch.zeros(0, self.num_regions, self.dim)
        return torch.cat(gs), torch.cat(rs)

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        texts = check_texts(texts)
        out = [self._embed_texts(texts[start:start + self.text_chunk]).cpu()
               for start in range(0, len(texts), self.text_chunk)]
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)


class FtfEncoder(FtfEncoderBase):
    """The :class:`~ftfsearch.model.base.Encoder` over an :class:`FtfModel` and its tokenizer."""

    def __init__(self, model: FtfModel, tokenizer: Any, device: torch.device, weights_digest: str,
                 batch_size: int = 128) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self._setup(model.cfg, device, weights_digest, batch_size)

    def _embed_images(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_images(self.model.normalize_pixels(prepare_images(chunk, self.cfg.image_size)))

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.forward_text(encode_batch(self.tokenizer, texts, self.max_text_tokens).to(self.device))

    def count_text_tokens(self, text: str) -> int:
        return count_tokens(self.tokenizer, text)


def save_ftf_model(model: FtfModel, tokenizer: Any, out_dir: Path) -> Path:
    """Write a loadable model directory (float16 weights, config, tokenizer); returns it."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    tmp = out_dir / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out_dir / WEIGHTS_NAME)
    tok_tmp = out_dir / (TOKENIZER_NAME + ".tmp")
    tokenizer.save(str(tok_tmp))
    tok_tmp.replace(out_dir / TOKENIZER_NAME)
    cfg_tmp = out_dir / (CONFIG_NAME + ".tmp")
    cfg_tmp.write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    cfg_tmp.replace(out_dir / CONFIG_NAME)
    return out_dir


def read_ftf_config(path: Path) -> FtfConfig:
    """Config of a model directory; incomplete, unreadable or newer-format dirs raise :class:`ModelNotFound`."""
    path = Path(path)
    cfg_path = path / CONFIG_NAME
    for name in (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME):
        if not (path / name).is_file():
            raise ModelNotFound(f"{path}: incomplete FTF model directory ({name} is missing); re-run ftfsearch train or restore it")
    try:
        raw = json.loads(cfg_path.read_text())
        version = int(raw.get("format_version", 0))
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelNotFound(f"{cfg_path}: unreadable model config ({exc})") from None
    if version > FORMAT_VERSION:
        raise ModelNotFound(
            f"{path}: model format {version} is newer than this ftfsearch supports ({FORMAT_VERSION}); upgrade ftfsearch"
        )
    try:
        return FtfConfig.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelNotFound(f"{cfg_path}: invalid model config ({exc})") from None


def load_ftf_model(path: Path) -> tuple[FtfModel, Any, str]:
    """(model in float32 on CPU, tokenizer, weights sha256) of a model directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_ftf_config(path)
    model = FtfModel(cfg)
    try:
        state = load_file(str(path / WEIGHTS_NAME))
        tokenizer = load_tokenizer(path / TOKENIZER_NAME)
    except (SafetensorError, OSError, Exception) as exc:  # tokenizers raises plain Exception
        raise ModelNotFound(f"{path}: cannot read the model weights or tokenizer ({exc})") from None
    own = model.state_dict()
    try:
        model.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelNotFound(f"{path / WEIGHTS_NAME}: weights do not match {CONFIG_NAME} ({str(exc).splitlines()[0]})") from None
    return model, tokenizer, weights_digest(state)


def load_ftf_encoder(path: Path, device: torch.device) -> FtfEncoder:
    """Load a model directory written by ``ftfsearch train`` as an Encoder (the loader's entry point)."""
    model, tokenizer, digest = load_ftf_model(Path(path))
    return FtfEncoder(model, tokenizer, torch.device(device), digest)
