"""Pretrained CLIP models as Encoders (DESIGN.md, model family 2).

Any transformers ``CLIPModel`` directory works, bare or inside a sentence-transformers pipeline
(the hub's ``clip-ViT-B-32`` layout with ``0_CLIPModel/``, or the current layout with the model at
the root). The weights load through transformers rather than ``SentenceTransformer``: the
"tokens" region mode needs the vision tower's patch tokens, which the sentence-transformers
wrapper does not expose, and the embeddings are the same (``get_image_features`` /
``get_text_features`` = pooled output through the projection).

Coarse vector: the CLIP image embedding of the whole tile. Region vectors, one per box of the
layout, in one of two modes:
- ``crops`` (accurate): each box is cut from the tile at full resolution, resized to the model's
  input and embedded like an image; all crops of all tiles go through the model together, in
  forward passes of up to ``max_batch`` images. A box covering the whole tile reuses the coarse
  vector, so ``grid-1-2-3`` costs 14 images per tile, not 15.
- ``tokens`` (fast, one pass): the vision transformer's patch tokens are averaged inside each box,
  weighted by the exact overlap of each patch with the box, then passed through the final layer
  norm and the visual projection like the class token.

Rerank hyperparameters: ``RerankParams()`` defaults, unless the model directory (or its CLIP
sub-directory) holds ``ftf_rerank.json`` with ``{"tau": float, "alpha": float}`` and optionally
``"balanced": bool``, chosen by ``ftfsearch eval`` on a validation split for this model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ftfsearch.errors import BadInput, ModelNotFound
from ftfsearch.model.base import RerankParams, check_texts
from ftfsearch.model.sources import ModelSource, exact_float32, force_offline, locate_model, resolve_device
from ftfsearch.model.preprocess import ImageTransform, check_images
from ftfsearch.model.regions import DEFAULT_LAYOUT, box_pooling_matrix, layout_boxes

log = logging.getLogger(__name__)

REGION_MODES = ("crops", "tokens")
RERANK_FILE = "ftf_rerank.json"
# sentence-transformers module types that hold the CLIP model itself, and those that are harmless after it.
_ST_MODEL_TYPES = ("CLIPModel", "Transformer")
_ST_HARMLESS_TYPES = ("Normalize",)


@dataclass(frozen=True)
class ClipFiles:
    """The checked files of a CLIP model: where transformers loads from and what identifies it."""

    root: Path
    """The directory the user named (a sentence-transformers pipeline or the model itself)."""
    model_dir: Path
    """The transformers ``CLIPModel`` directory: ``config.json``, weights, tokenizer."""
    weights: tuple[Path, ...]
    tokenizer: tuple[Path, ...]
    processor_file: Path | None
    processor_config: dict[str, Any]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: not readable JSON ({exc}); replace it with the model's original file") from exc


def _st_model_dir(root: Path) -> Path:
    """The CLIP module directory of a sentence-transformers pipeline (``modules.json``)."""
    modules = _read_json(root / "modules.json")
    if not isinstance(modules, list):
        raise BadInput(f"{root / 'modules.json'}: expected a list of modules")
    model_dir: Path | None = None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind in _ST_MODEL_TYPES and model_dir is None:
            model_dir = root / str(module.get("path", ""))
        elif kind not in _ST_HARMLESS_TYPES:
            raise BadInput(
                f"{root / 'modules.json'}: module {module.get('type')!r} changes the embeddings; "
                "only plain CLIP pipelines (a CLIP model, optionally Normalize) are supported"
            )
    if model_dir is None:
        raise BadInput(f"{root / 'modules.json'}: no CLIPModel or Transformer module; this is not a CLIP pipeline")
    return model_dir


def _weight_files(model_dir: Path) -> tuple[Path, ...]:
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / single).is_file():
            return (model_dir / single,)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = model_dir / index_name
        if index.is_file():
            shards = sorted({str(name) for name in _read_json(index).get("weight_map", {}).values()})
            missing = [name for name in shards if not (model_dir / name).is_file()]
            if missing or not shards:
                raise ModelNotFound(f"{index}: weight shards missing ({', '.join(missing) or 'none listed'}); copy the whole model")
            return (index, *(model_dir / name for name in shards))
    raise ModelNotFound(
        f"model directory {model_dir}: no weights (model.safetensors or pytorch_model.bin); "
        "the directory is incomplete, copy the whole model"
    )


def _tokenizer_files(model_dir: Path) -> tuple[Path, ...]:
    if (model_dir / "tokenizer.json").is_file():
        return (model_dir / "tokenizer.json",)
    pair = (model_dir / "vocab.json", model_dir / "merges.txt")
    if all(p.is_file() for p in pair):
        return pair
    raise ModelNotFound(
        f"model directory {model_dir}: no tokenizer (tokenizer.json, or vocab.json and merges.txt); "
        "the directory is incomplete, copy the whole model"
    )


def _processor_config(dirs: list[Path]) -> tuple[Path | None, dict[str, Any]]:
    """The image processor settings: ``preprocessor_config.json`` or ``processor_config.json``."""
    for d in dirs:
        if (d / "preprocessor_config.json").is_file():
            return d / "preprocessor_config.json", dict(_read_json(d / "preprocessor_config.json"))
        if (d / "processor_config.json").is_file():
            config = _read_json(d / "processor_config.json")
            if isinstance(config.get("image_processor"), dict):
                return d / "processor_config.json", dict(config["image_processor"])
    log.warning("%s: no image processor config; using OpenAI CLIP mean/std and bicubic resizing", dirs[0])
    return None, {}


def find_clip_files(root: Path) -> ClipFiles:
    """Check that ``root`` holds a complete CLIP model before anything heavy loads."""
    if not root.is_dir():
        raise ModelNotFound(f"model directory {root} does not exist; set `model` to an existing directory")
    has_modules = (root / "modules.json").is_file()
    model_dir = _st_model_dir(root) if has_modules else root
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        if has_modules:
            raise ModelNotFound(f"{config_path} is missing (named in {root / 'modules.json'}); copy the whole model")
        raise ModelNotFound(
            f"model directory {root}: no ftf_config.json, config.json or modules.json; "
            "it is neither an FTF nor a CLIP model directory"
        )
    model_type = _read_json(config_path).get("model_type")
    if model_type != "clip":
        raise BadInput(
            f"{config_path}: model_type {model_type!r} is not 'clip'; ftfsearch loads FTF model directories "
            "and CLIP models"
        )
    processor_file, processor_config = _processor_config([model_dir, root])
    return ClipFiles(
        root=root,
        model_dir=model_dir,
        weights=_weight_files(model_dir),
        tokenizer=_tokenizer_files(model_dir),
        processor_file=processor_file,
        processor_config=processor_config,
    )


REGION_MODE_FILE = "ftf_region_mode.json"


def recorded_region_mode(model_dir: Path) -> str | None:
    """The region mode stored with a fine-tuned CLIP (``{"region_mode": "tokens"}``), if any."""
    path = model_dir / REGION_MODE_FILE
    if not path.is_file():
        return None
    values = _read_json(path)
    mode = values.get("region_mode") if isinstance(values, dict) else None
    if mode not in REGION_MODES:
        raise BadInput(f"{path}: expected {{\"region_mode\": one of {', '.join(REGION_MODES)}}}")
    return str(mode)


def read_rerank_params(dirs: list[Path]) -> RerankParams:
    """Rerank tau/alpha/K from the first ``ftf_rerank.json`` among ``dirs``, else the defaults."""
    for d in dirs:
        path = d / RERANK_FILE
        if not path.is_file():
            continue
        values = _read_json(path)
        known = {f.name for f in dataclasses.fields(RerankParams)}
        if not isinstance(values, dict) or set(values) - known:
            raise BadInput(f"{path}: expected an object with keys from {sorted(known)}")
        try:
            params = RerankParams(**values)
            tau, alpha, k = float(params.tau), float(params.alpha), int(params.k)
        except (TypeError, ValueError) as exc:
            raise BadInput(f"{path}: tau, alpha and k must be numbers ({exc})") from exc
        if not tau > 0 or not 0.0 <= alpha <= 1.0 or k < 1:
            raise BadInput(f"{path}: need tau > 0, 0 <= alpha <= 1 and k >= 1, got tau={tau}, alpha={alpha}, k={k}")
        return RerankParams(tau=tau, alpha=alpha, balanced=bool(params.balanced), k=k)
    return RerankParams()


def fingerprint(files: ClipFiles, chunk: int = 1 << 16, samples: int = 16) -> str:
    """Short content hash of config, weights and tokenizer, so two models never share an id.

    Large weight files are sampled (size plus ``samples`` evenly spaced chunks): fine-tuning changes
    every tensor, and hashing gigabytes on every start would cost seconds.
    """
    digest = hashlib.blake2b(digest_size=4)
    paths = [files.model_dir / "config.json", *files.weights, *files.tokenizer]
    if files.processor_file is not None:
        paths.append(files.processor_file)
    for path in paths:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}\n".encode())
        with path.open("rb") as fh:
            if size <= chunk * samples:
                digest.update(fh.read())
                continue
            for i in range(samples):
                fh.seek((size - chunk) * i // (samples - 1))
                digest.update(fh.read(chunk))
    return digest.hexdigest()


def _source(model: str | Path | ModelSource, cache_dir: Path | None) -> ModelSource:
    if isinstance(model, ModelSource):
        return model
    return locate_model(str(model), cache_dir=cache_dir)


class ClipEncoder:
    """A pretrained CLIP model behind the Encoder protocol (outputs unit-norm float32 on the CPU)."""

    def __init__(
        self,
        model: str | Path | ModelSource,
        device: str | torch.device = "auto",
        region_mode: str | None = None,
        layout: str = DEFAULT_LAYOUT,
        max_batch: int = 256,
        cache_dir: Path | None = None,
    ) -> None:
        if max_batch < 1:
            raise BadInput(f"`max_batch` {max_batch}: must be at least 1")
        self.device = resolve_device(device)
        exact_float32(self.device)
        source = _source(model, cache_dir)
        self.files = find_clip_files(source.root)
        # A model fine-tuned by `ftfsearch train --base` records the region mode it learned with.
        region_mode = region_mode or recorded_region_mode(self.files.root) or "crops"
        if region_mode not in REGION_MODES:
            raise BadInput(f"`region_mode` {region_mode!r}: use one of {', '.join(REGION_MODES)}")
        self.region_mode = region_mode
        self.region_layout = layout
        self._boxes = layout_boxes(layout)
        self.num_regions = len(self._boxes)
        self.max_batch = max_batch
        self.model, self.tokenizer = self._load(self.files)
        config = self.model.config
        self.dim = int(config.projection_dim)
        vision = config.vision_config
        self.transform = ImageTransform.from_processor_config(self.files.processor_config, int(vision.image_size))
        self._grid = int(vision.image_size) // int(vision.patch_size)
        self._token_weights = box_pooling_matrix(self._boxes, self._grid, self._grid).to(self.device)
        full = np.flatnonzero(np.all(np.isclose(self._boxes, [0.0, 0.0, 1.0, 1.0]), axis=1))
        self._full_box: int | None = int(full[0]) if len(full) else None
        self.max_text_tokens = int(min(self.tokenizer.model_max_length, config.text_config.max_position_embeddings))
        self.rerank_params = read_rerank_params([self.files.root, self.files.model_dir])
        self.id = f"clip:{source.label}@{fingerprint(self.files)}:{region_mode}:{layout}"
        log.info("loaded %s from %s on %s", self.id, self.files.model_dir, self.device)

    def _load(self, files: ClipFiles) -> tuple[Any, Any]:
        force_offline()
        import transformers
        from transformers import AutoTokenizer, CLIPModel

        transformers.utils.logging.disable_progress_bar()
        # transformers 5 renamed torch_dtype to dtype
        dtype_kw: dict[str, Any] = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch.float32}
        try:
            model = CLIPModel.from_pretrained(files.model_dir, local_files_only=True, **dtype_kw)
            tokenizer = AutoTokenizer.from_pretrained(files.model_dir, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure means the directory cannot be used
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFound(f"model directory {files.model_dir}: cannot be loaded ({first})") from exc
        return model.eval().to(self.device), tokenizer

    def __repr__(self) -> str:
        return f"ClipEncoder({self.id!r}, device={self.device})"

    @property
    def region_boxes(self) -> np.ndarray:
        """Region boxes ``[R, 4]`` as ``(x0, y0, x1, y1)`` fractions of the tile."""
        return self._boxes.copy()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pooled vision features (after the final layer norm) -> unit embeddings, float32."""
        return F.normalize(self.model.visual_projection(hidden).float(), dim=-1)

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.vision_model(pixel_values=pixels)
        return self._project(out.pooler_output)

    def _embed_stream(self, batches: Iterator[torch.Tensor]) -> torch.Tensor:
        """Embed model inputs arriving in pieces, in forward passes of ``max_batch`` images."""
        out: list[torch.Tensor] = []
        pending: list[torch.Tensor] = []
        count = 0
        for piece in batches:
            pending.append(piece)
            count += len(piece)
            while count >= self.max_batch:
                joined = torch.cat(pending)
                out.append(self._embed_pixels(joined[: self.max_batch]))
                rest = joined[self.max_batch :]
                pending, count = ([rest] if len(rest) else []), len(rest)
        if count:
            out.append(self._embed_pixels(torch.cat(pending)))
        return torch.cat(out)

    def _encode_crops(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(x)
        boxes = [r for r in range(self.num_regions) if r != self._full_box]

        def pieces() -> Iterator[torch.Tensor]:
            yield self.transform.resize(x)
            for r in boxes:
                yield self.transform.crop(x, self._boxes[r])

        emb = self._embed_stream(pieces())
        coarse = emb[:n]
        by_box = {r: emb[(i + 1) * n : (i + 2) * n] for i, r in enumerate(boxes)}
        regions = torch.stack([by_box.get(r, coarse) for r in range(self.num_regions)], dim=1)
        return coarse, regions

    def token_vectors(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One vision pass over normalised pixels -> unit ``(coarse [B, D], regions [B, R, D])``:
        regions are patch tokens pooled over each box (overlap-weighted), then the final layer norm
        and the projection. Differentiable: training runs the same function."""
        vision = self.model.vision_model
        out = vision(pixel_values=pixel_values)
        patches = out.last_hidden_state[:, 1:, :]
        if patches.shape[1] != self._grid * self._grid:
            raise BadInput(f"{self.files.model_dir}: expected {self._grid}x{self._grid} patch tokens, got {patches.shape[1]}")
        pooled = torch.einsum("rp,bph->brh", self._token_weights.to(patches.dtype), patches)
        return self._project(out.pooler_output), self._project(vision.post_layernorm(pooled))

    def _encode_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coarse, regions = [], []
        for start in range(0, len(x), self.max_batch):
            c, r = self.token_vectors(self.transform.resize(x[start : start + self.max_batch]))
            coarse.append(c)
            regions.append(r)
        return torch.cat(coarse), torch.cat(regions)

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8 [B, H, W, 3]`` -> ``(coarse [B, D], regions [B, R, D])``, unit-norm float32 on the CPU."""
        images = check_images(images)
        if len(images) == 0:
            return torch.empty(0, self.dim), torch.empty(0, self.num_regions, self.dim)
        with torch.inference_mode(), self._autocast():
            x = self.transform.to_float(images, self.device)
            if self.region_mode == "tokens":
                coarse, regions = self._encode_tokens(x)
            else:
                coarse, regions = self._encode_crops(x)
        return coarse.cpu().contiguous(), regions.cpu().contiguous()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """``list[str]`` -> ``[B, D]``; texts longer than ``max_text_tokens`` are truncated."""
        texts = check_texts(texts)
        if not texts:
            return torch.empty(0, self.dim)
        out: list[torch.Tensor] = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), self.max_batch):
                batch = self.tokenizer(
                    list(texts[start : start + self.max_batch]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_text_tokens,
                    return_tensors="pt",
                ).to(self.device)
                pooled = self.model.text_model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).pooler_output
                out.append(F.normalize(self.model.text_projection(pooled).float(), dim=-1))
        return torch.cat(out).cpu().contiguous()

    def count_text_tokens(self, text: str) -> int:
        """Tokens the text encoder would see before truncation, start and end tokens included."""
        return len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])
