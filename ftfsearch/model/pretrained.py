"""The FTF dual encoder on pretrained towers (DESIGN.md family 1, second generation).

Image tower: EfficientNet-Lite0 (ImageNet). One forward pass gives two maps: the stride-16 map
(112 channels, 14x14 at 224 px) and the head's stride-32 map (1280 channels, 7x7).
- coarse = MLP(mean of the head map);
- region j = MLP_r([box-pool_j(head map), box-pool_j(branch(stride-16 map))]) over the multi-scale
  grid: the branch (a trainable inverted-residual block and a 1x1 widening) gives each region
  detail at twice the coarse map's resolution, which the coarse vector pools away.
Text tower: all-MiniLM-L6-v2 (6-layer BERT), mean pooling over tokens, MLP head.

Which blocks train is part of the config (``train_image_blocks``, ``train_text_layers``): the
lower blocks and layers stay exactly the pinned base weights, so the model directory holds only
what training changed (fine-tuned top blocks and layers, the branch and the heads, ~10 MB in
float16), and the base packages supply the rest at load time, checked by sha256. BatchNorm
statistics are frozen (ImageNet's) and folded into the convolutions for inference.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ftfsearch.errors import BadInput, ModelNotFound
from ftfsearch.model import onnx_cache
from ftfsearch.model.backbones import LITE_MEAN, LITE_STD, EfficientNetLite, MBConv, load_lite0, load_minilm
from ftfsearch.model.ftf import FtfEncoderBase, prepare_images
from ftfsearch.model.preprocess import PixelNorm
from ftfsearch.model.pretrained_config import FAMILY, PretrainedConfig, read_pretrained_config
from ftfsearch.model.query import TEXT_TOWER, OrtTextPath, TextTokenizer, ort_session, query_threads
from ftfsearch.model.regions import box_pooling_matrix, layout_boxes
from ftfsearch.model.weights import CONFIG_NAME, WEIGHTS_NAME, weights_digest

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from transformers import BertModel

def _mlp(cin: int, hidden: int, cout: int, dropout: float, norm: bool = False) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(cin, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, cout))
    return nn.Sequential(nn.LayerNorm(cin), mlp) if norm else mlp


class PretrainedImageTower(nn.Module):
    """Lite0 trunk + region branch + heads -> (coarse [B, D], regions [B, R, D]), not normalised."""

    def __init__(self, cfg: PretrainedConfig, trunk: EfficientNetLite | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = trunk if trunk is not None else EfficientNetLite()
        head_c = self.trunk.head_channels
        self.coarse_head = _mlp(head_c, cfg.hidden, cfg.dim, cfg.dropout, cfg.head_norm)
        region_in = head_c
        self.branch: nn.Module | None = None
        if cfg.region_source == "both":
            fc = self.trunk.finer_channels
            self.branch = nn.Sequential(
                MBConv(fc, fc, 6, 5, 1),
                nn.Conv2d(fc, cfg.branch_channels, 1, bias=False),
                nn.BatchNorm2d(cfg.branch_channels),
                nn.ReLU6(),
            )
            region_in += cfg.branch_channels
        elif cfg.region_source != "last":
            raise BadInput(f"region_source {cfg.region_source!r}: use 'both' or 'last'")
        self.region_head = _mlp(region_in, cfg.hidden, cfg.dim, cfg.dropout, cfg.head_norm)
        self.boxes = layout_boxes(cfg.region_layout)
        self._pool_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def _pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, R, C]`` box means (fractional cell overlap)."""
        _, _, h, w = fmap.shape
        key = (h, w, str(fmap.device))
        if key not in self._pool_cache:
            self._pool_cache[key] = box_pooling_matrix(self.boxes, h, w).to(fmap.device)
        return torch.einsum("rn,bcn->brc", self._pool_cache[key].to(fmap.dtype), fmap.flatten(2))

    def heads(self, finer: torch.Tensor, top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained part above the two maps (``finer`` stride 16, ``top`` the head's stride-32 map)."""
        coarse = self.coarse_head(top.mean(dim=(2, 3)))
        pooled = self._pool(top)
        if self.branch is not None:
            pooled = torch.cat([pooled, self._pool(self.branch(finer))], dim=-1)
        return coarse, self.region_head(pooled)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        finer, top = self.trunk.forward_split(x)
        return self.heads(finer, top)


class PretrainedTextTower(nn.Module):
    """MiniLM token states -> mean pool -> MLP -> ``[B, D]``, not normalised."""

    def __init__(self, cfg: PretrainedConfig, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert
        width = int(bert.config.hidden_size)
        self.head = _mlp(width, cfg.hidden, cfg.dim, cfg.dropout, cfg.head_norm)

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(states.dtype)
        return self.head((states * m).sum(1) / m.sum(1).clamp_min(1.0))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.pool(states, mask)

    def upper(self, states: torch.Tensor, mask: torch.Tensor, first: int) -> torch.Tensor:
        """Run layers ``first..`` on cached hidden states (training on a frozen lower stack)."""
        ext = (1.0 - mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
        for layer in self.bert.encoder.layer[first:]:
            out = layer(states, attention_mask=ext)
            states = out[0] if isinstance(out, tuple) else out
        return self.pool(states, mask)


class PretrainedFtfModel(nn.Module):
    """Both towers; :meth:`forward_images` / :meth:`forward_text` return unit float32 vectors."""


    def __init__(self, cfg: PretrainedConfig, trunk: EfficientNetLite | None = None, bert: BertModel | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.image = PretrainedImageTower(cfg, trunk)
        self.text = PretrainedTextTower(cfg, bert if bert is not None else load_minilm())
        self.pixel_norm = PixelNorm(LITE_MEAN, LITE_STD)

    def normalize_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_norm(x)

    def forward_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, r = self.image(x)
        return F.normalize(g.float(), dim=-1), F.normalize(r.float(), dim=-1)

    def forward_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids, mask).float(), dim=-1)

    def trainable_prefixes(self) -> list[str]:
        """State-dict prefixes that training changes: all that a model directory stores."""
        cfg = self.cfg
        n_blocks = len(self.image.trunk.blocks)
        out = ["image.coarse_head.", "image.region_head.", "text.head."]
        if self.image.branch is not None:
            out.append("image.branch.")
        if cfg.train_image_blocks > 0:
            out += [f"image.trunk._blocks.{i}." for i in range(n_blocks - cfg.train_image_blocks, n_blocks)]
            out += ["image.trunk._conv_head.", "image.trunk._bn1."]
        n_layers = len(self.text.bert.encoder.layer)
        out += [f"text.bert.encoder.layer.{i}." for i in range(n_layers - cfg.train_text_layers, n_layers)]
        return out

    def trained_state(self) -> dict[str, torch.Tensor]:
        prefixes = tuple(self.trainable_prefixes())
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def set_trainable(self) -> list[nn.Parameter]:
        """Freeze everything but the trainable prefixes; frozen BatchNorm keeps ImageNet statistics."""
        prefixes = tuple(self.trainable_prefixes())
        params = []
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
            if p.requires_grad:
                params.append(p)
        return params

    def train(self, mode: bool = True) -> PretrainedFtfModel:
        super().train(mode)
        for m in self.image.trunk.modules():  # frozen statistics: batch statistics of 96 tiles are noise
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def fused_trunk(trunk: EfficientNetLite) -> EfficientNetLite:
    """A copy with every BatchNorm folded into its convolution, channels-last: the inference trunk
    (1.3-2x the eager forward on CPU, same vectors within 1e-4; see BENCHMARKS.md)."""
    net = copy.deepcopy(trunk).eval()
    net.fold_batchnorm_()
    for p in net.parameters():
        p.requires_grad_(False)
    # nn.Module.to documents memory_format; torch's overloads for it leave the keyword out.
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


class _FusedImagePath(nn.Module):
    """Standardised pixels -> unit (coarse, regions): the fused trunk and the trained heads, for export."""

    def __init__(self, image: PretrainedImageTower, trunk: EfficientNetLite) -> None:
        super().__init__()
        self.image = image
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        finer, top = self.trunk.forward_split(x)
        g, r = self.image.heads(finer, top)
        return F.normalize(g, dim=-1), F.normalize(r, dim=-1)


def _onnx_bytes(module: nn.Module, example: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str],
                dynamic: dict[str, dict[int, str]]) -> bytes:
    """A module's ONNX graph, in memory (TorchScript exporter)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        # torch annotates f as a path; its TorchScript exporter (dynamo=False) writes to a file
        # object as well, which keeps the graph in memory.
        torch.onnx.export(module.eval(), example, buf, input_names=inputs,  # type: ignore[arg-type]
                          output_names=outputs, dynamic_axes=dynamic, dynamo=False)
    return buf.getvalue()


class OrtImagePath:
    """The image path in ONNX Runtime: on these CPUs 1.7x the fused torch trunk (123 vs 74 tiles/s
    at 224 px, measured side by side, BENCHMARKS.md), the same vectors within 1e-4.

    Exported from the loaded weights once per model and library versions, and kept in the ONNX
    cache (:mod:`ftfsearch.model.onnx_cache`), so a process reads it instead of exporting it; used
    on CPU only. ``None`` from :meth:`build` when onnxruntime or the exporter is unavailable: the
    encoder then runs the fused torch path.
    """

    def __init__(self, graph: bytes, threads: int) -> None:
        self.graph = graph
        self.threads = threads
        self.session = ort_session(graph, threads)

    @classmethod
    def build(cls, cached: Callable[[Callable[[], bytes]], bytes], make: Callable[[], _FusedImagePath],
              size: int) -> OrtImagePath | None:
        """The path at ``size`` px: ``cached(export)`` gives the graph (from the ONNX cache, or
        ``export()``, which exports ``make()``)."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return None
        example = torch.zeros(2, 3, size, size)
        try:
            graph = cached(lambda: _onnx_bytes(make(), (example,), ["x"], ["coarse", "regions"], {"x": {0: "b"}}))
        except Exception as exc:  # the exporter raises many types; the torch path stays correct
            log.warning("ONNX export of the image path failed (%s); using torch", exc)
            return None
        return cls(graph, torch.get_num_threads())

    def with_threads(self, threads: int) -> OrtImagePath:
        return self if threads == self.threads else OrtImagePath(self.graph, threads)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, r = self.session.run(None, {"x": x.contiguous().numpy()})
        return torch.from_numpy(g), torch.from_numpy(r)


class _TextPath(nn.Module):
    """Token ids and mask -> unit text vectors: the text tower, for export."""

    def __init__(self, text: PretrainedTextTower) -> None:
        super().__init__()
        self.text = text

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids, mask).float(), dim=-1)


def export_text_graph(text: PretrainedTextTower) -> bytes:
    """The text tower's ONNX graph (batch and length dynamic): what :class:`OrtTextPath` runs."""
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2023, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    return _onnx_bytes(_TextPath(text).eval(), (ids, mask), ["ids", "mask"], ["text"],
                       {"ids": {0: "b", 1: "l"}, "mask": {0: "b", 1: "l"}})


CPU_IMAGE_CHUNK = 16
"""Images per forward pass on the CPU: small chunks stay in cache (training's feature pass measured
61 vs 45 img/s at 64; the ONNX Runtime path was measured at batch 16, BENCHMARKS.md)."""
CUDA_IMAGE_CHUNK = 256
"""Images per forward pass on CUDA: a GPU needs large batches to be busy (an ingest batch is
encoded in one pass up to this size)."""


def image_chunk(device: torch.device) -> int:
    """Images per forward pass of the image tower on ``device``."""
    return CPU_IMAGE_CHUNK if device.type == "cpu" else CUDA_IMAGE_CHUNK


class PretrainedFtfEncoder(FtfEncoderBase):
    """The :class:`~ftfsearch.model.base.Encoder` over a :class:`PretrainedFtfModel`."""

    text_chunk = 256

    def __init__(self, model: PretrainedFtfModel, device: torch.device, weights_digest: str,
                 batch_size: int | None = None, runtime: str = "auto", cache: bool = False) -> None:
        """``cache``: keep the ONNX exports on disk under the model id; only for an id that names
        the weights (a digest of a model directory's file, not of weights still training)."""
        if runtime not in ("auto", "torch", "onnxruntime"):
            raise BadInput(f"runtime {runtime!r}: use auto, torch or onnxruntime")
        self.model = model.to(device).eval()
        self._setup(model.cfg, device, weights_digest, batch_size or image_chunk(device))
        self.tokenizer = TextTokenizer(self.cfg.max_text_tokens)
        self.runtime = runtime if runtime != "auto" else ("onnxruntime" if device.type == "cpu" else "torch")
        self.cache = cache
        self._trunk: EfficientNetLite | None = None
        self._ort: OrtImagePath | None = None
        self._ort_tried = False
        self._ort_text: OrtTextPath | None = None
        self._ort_text_tried = False

    @property
    def trunk(self) -> EfficientNetLite:
        """The fused inference trunk, built on first use: a process that only encodes text never pays for it."""
        if self._trunk is None:
            self._trunk = fused_trunk(self.model.image.trunk).to(self.device)
        return self._trunk

    def _embed_images(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.model.normalize_pixels(prepare_images(chunk, self.cfg.image_size))
        ort_path = self._ort_path()
        if ort_path is not None:
            return ort_path(x)
        finer, top = self.trunk.forward_split(x.contiguous(memory_format=torch.channels_last))
        g, r = self.model.image.heads(finer, top)
        return F.normalize(g.float(), dim=-1), F.normalize(r.float(), dim=-1)

    @property
    def image_runtime(self) -> str:
        """What encodes images: ``onnxruntime`` when its exported path is in use; ``torch`` when
        asked for, or when onnxruntime or its exporter is unavailable (the silent fallback)."""
        return "torch" if self._ort_path() is None else "onnxruntime"

    def _cached(self, tower: str, export: Callable[[], bytes]) -> bytes:
        """An export: through the ONNX cache when the id names the weights, else made now."""
        if not self.cache:
            return export()
        return onnx_cache.cached_export(onnx_cache.ExportKey(tower, self.id), export)

    def _ort_path(self) -> OrtImagePath | None:
        """The ONNX Runtime image path, read from the ONNX cache or exported on first use (text-only
        processes never pay for it); a new session when the torch thread count changed, so both
        runtimes use the threads asked for."""
        if self.runtime != "onnxruntime":
            return None
        if not self._ort_tried:
            self._ort_tried = True
            self._ort = OrtImagePath.build(
                lambda export: self._cached(f"image-{self.cfg.image_size}", export),
                lambda: _FusedImagePath(self.model.image, self.trunk), self.cfg.image_size)
        elif self._ort is not None:
            self._ort = self._ort.with_threads(torch.get_num_threads())
        return self._ort

    def text_graph(self) -> bytes:
        """The text tower's ONNX export (what a query process runs without torch)."""
        return self._cached(TEXT_TOWER, lambda: export_text_graph(self.model.text))

    def _ort_text_path(self) -> OrtTextPath | None:
        """Text in ONNX Runtime on CPU (a query: 3-4x the eager BERT); None when asked for torch or
        the export fails (then the torch tower, with a warning)."""
        if self.runtime != "onnxruntime":
            return None
        if not self._ort_text_tried:
            self._ort_text_tried = True
            try:
                self._ort_text = OrtTextPath(ort_session(self.text_graph(), query_threads()), self.tokenizer)
            except Exception as exc:  # the exporter raises many types; the torch tower stays correct
                log.warning("ONNX export of the text tower failed (%s); using torch", exc)
        return self._ort_text

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        ort_text = self._ort_text_path()
        if ort_text is not None:
            return torch.from_numpy(ort_text(texts))
        ids, mask = self.tokenizer(texts)
        return self.model.forward_text(ids.to(self.device), mask.to(self.device))

    def count_text_tokens(self, text: str) -> int:
        return self.tokenizer.count(text)


def build_model(cfg: PretrainedConfig) -> PretrainedFtfModel:
    """A fresh model on the pinned base weights (heads and branch randomly initialised)."""
    return PretrainedFtfModel(cfg, load_lite0(), load_minilm())


def save_pretrained_model(model: PretrainedFtfModel, out_dir: Path) -> Path:
    """Write the config and what training changed (float16); the bases come from their packages."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.trained_state().items()}
    tmp = out_dir / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "family": FAMILY})
    tmp.replace(out_dir / WEIGHTS_NAME)
    cfg_tmp = out_dir / (CONFIG_NAME + ".tmp")
    cfg_tmp.write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    cfg_tmp.replace(out_dir / CONFIG_NAME)
    return out_dir


def load_pretrained_encoder(path: Path, raw: dict[str, Any], device: torch.device) -> PretrainedFtfEncoder:
    """Load a model directory of this family: bases from their packages, then the trained weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_pretrained_config(path, raw)
    if not (path / WEIGHTS_NAME).is_file():
        raise ModelNotFound(f"{path}: incomplete model directory ({WEIGHTS_NAME} is missing); re-run ftfsearch train or restore it")
    try:
        state = load_file(str(path / WEIGHTS_NAME))
    except (SafetensorError, OSError) as exc:
        raise ModelNotFound(f"{path / WEIGHTS_NAME}: cannot read the weights ({exc}); the file is truncated or corrupt") from None
    model = build_model(cfg)
    expected = set(model.trained_state())
    if set(state) != expected:
        missing = sorted(expected - set(state))[:2]
        extra = sorted(set(state) - expected)[:2]
        raise ModelNotFound(f"{path / WEIGHTS_NAME}: weights do not match {CONFIG_NAME} (missing {missing}, unexpected {extra})")
    own = model.state_dict()
    try:
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    except RuntimeError as exc:
        raise ModelNotFound(f"{path / WEIGHTS_NAME}: weights do not match {CONFIG_NAME} ({str(exc).splitlines()[0]})") from None
    return PretrainedFtfEncoder(model, torch.device(device), weights_digest(state), cache=True)
