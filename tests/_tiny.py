"""A tiny, randomly initialised CLIP model directory, built locally in about a second.

Tests and benchmarks need a real CLIP directory that goes through exactly the loader path of a
user's model, and no model can be downloaded here. This builds one: a transformers ``CLIPModel``
(2 layers, width 32, 64-pixel images in 16-pixel patches, 32-dimensional embeddings), a real
byte-level BPE ``CLIPTokenizer`` learned from the given captions (every byte is in the vocabulary,
so any text tokenizes), and a CLIP image processor config. Its embeddings mean nothing; its shapes,
files and code paths are those of ``clip-ViT-B-32``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch

from ftfsearch.model.sources import force_offline
from ftfsearch.model.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Used when no captions are given: enough words for a few hundred merges.
TINY_CORPUS: tuple[str, ...] = (
    "many buildings and some green trees are around a playground",
    "a river passes through the farmland with several bridges",
    "several ships are parked in the harbor near the port",
    "an airport with many airplanes parked beside the runway",
    "dense residential area with roads and cars",
    "a baseball field is surrounded by green trees and a parking lot",
    "the beach is next to the blue sea with white waves",
    "a bare land with some sparse vegetation and a road",
    "an industrial area with factories storage tanks and warehouses",
    "a forest of dark green trees covers the mountain",
    "a square with a fountain in the center of the church",
    "the stadium is surrounded by buildings and parking lots",
    "a desert with yellow sand dunes and no plants",
    "a viaduct crosses the railway station and the river",
    "meadow and pond next to a school with a tennis court",
)


def _train_bpe(corpus: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-format vocabulary and merges: 256 bytes, 256 word-final bytes, merges, specials last."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    # Train with CLIP's own normaliser and pre-tokeniser, so merges fit what CLIPTokenizer produces.
    backend = Tokenizer.from_str(CLIPTokenizer(vocab={BOS: 0, EOS: 1}, merges=[]).backend_tokenizer.to_str())
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    merges = [(a, b) for a, b in json.loads(backend.to_str())["model"]["merges"]]
    vocab: dict[str, int] = {}
    for symbol in [*alphabet, *(ch + "</w>" for ch in alphabet), *(a + b for a, b in merges), BOS, EOS]:
        vocab.setdefault(symbol, len(vocab))
    return vocab, merges


def _processor_config(image_size: int) -> dict[str, object]:
    return {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }


def build_tiny_clip(
    out_dir: Path,
    seed: int = 0,
    *,
    corpus: Iterable[str] | None = None,
    layout: Literal["transformers", "sentence-transformers"] = "transformers",
    vocab_size: int = 1000,
    image_size: int = 64,
    patch_size: int = 16,
) -> Path:
    """Write a tiny random CLIP model to ``out_dir`` and return it; same seed and corpus, same files.

    ``layout="transformers"`` writes a plain ``CLIPModel`` directory (``tokenizer.json``);
    ``layout="sentence-transformers"`` writes the hub's ``clip-ViT-B-32`` layout: ``modules.json``
    and the model in ``0_CLIPModel/`` with a ``vocab.json`` + ``merges.txt`` tokenizer.
    """
    force_offline()
    import transformers
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    transformers.utils.logging.disable_progress_bar()
    out_dir = Path(out_dir)
    vocab, merges = _train_bpe(list(corpus) if corpus is not None else TINY_CORPUS, vocab_size)
    # transformers annotates merges as list[str]; the tokenizers BPE it passes them to takes (a, b) pairs.
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab[BOS],
            "eos_token_id": vocab[EOS],
            "pad_token_id": vocab[EOS],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()

    model_dir = out_dir / "0_CLIPModel" if layout == "sentence-transformers" else out_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir)
    (model_dir / "preprocessor_config.json").write_text(json.dumps(_processor_config(image_size), indent=2))
    if layout == "transformers":
        tokenizer.save_pretrained(model_dir)
        return out_dir
    # The legacy files the hub's sentence-transformers CLIP models carry.
    (model_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (model_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **specials}, indent=2)
    )
    (model_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    modules = [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    return out_dir

