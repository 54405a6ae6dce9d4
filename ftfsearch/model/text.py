"""Tokenizer of the FTF text tower: a word vocabulary built from the training captions.

Remote-sensing captions use a few thousand words; a vocabulary learned from them (lower-cased,
accents stripped, BERT-style punctuation split) beats any generic one we could not download
anyway. The vocabulary is built by counting words ourselves and ordering by (count, word), so the
same captions always give the same tokenizer (the ``tokenizers`` trainers break ties
nondeterministically, which would make seeded training irreproducible). Saved as ``tokenizer.json``.
"""

from __future__ import annotations

from pathlib import Path
from collections import Counter
from typing import Iterable

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from ftfsearch.errors import ModelNotFound

PAD, UNK = "[PAD]", "[UNK]"


def train_tokenizer(captions: Iterable[str], vocab_size: int = 4000, min_count: int = 2) -> Tokenizer:
    """Word-level vocabulary (PAD id 0, UNK id 1) of the most frequent caption words."""
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in captions:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    vocab = {PAD: 0, UNK: 1}
    for w in words[: max(vocab_size - 2, 0)]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    """A saved FTF tokenizer; refused (ModelNotFound) when it has no UNK token."""
    tok = Tokenizer.from_file(str(path))
    unk_id(tok, path)
    return tok


def unk_id(tok: Tokenizer, source: Path | None = None) -> int:
    """The id of UNK, which every tokenizer of :func:`train_tokenizer` has (an empty text encodes as it)."""
    found = tok.token_to_id(UNK)
    if found is None:
        raise ModelNotFound(f"{source or 'tokenizer'}: no {UNK} token; not an FTF tokenizer")
    return found


def encode_batch(tok: Tokenizer, texts: list[str], max_tokens: int) -> torch.Tensor:
    """Token ids ``[B, L]`` (0 = padding), truncated to ``max_tokens``; L is the longest kept row.

    An empty text keeps one UNK token so every row attends to something.
    """
    encs = tok.encode_batch(texts)
    unk = unk_id(tok)
    rows = [e.ids[:max_tokens] or [unk] for e in encs]
    width = max(len(r) for r in rows)
    out = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def count_tokens(tok: Tokenizer, text: str) -> int:
    return len(tok.encode(text).ids)
