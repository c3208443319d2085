"""Sentences embedded once by a frozen encoder (:mod:`metalab.models.text`) and cached in
``$METALAB_CACHE`` under a fingerprint of the source files, the texts and the encoder; a class split
as a :class:`ClassIndexedDataset` of embedding vectors, or of token ids for a fine-tuned encoder
(:func:`token_split`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from metalab.data.base import ClassIndexedDataset
from metalab.data.cache import cache_root, fingerprint, load_or_build
from metalab.data.text.corpus import LabelledTexts
from metalab.data.text.splits import build_split, scheme_of, split_rows
from metalab.errors import DataError


def embedding_cache_entry(corpus: LabelledTexts, encoder: str) -> tuple[str, dict, list[Path]]:
    """The cache file name prefix, parameters and source files the embeddings are keyed on."""
    from metalab.models.text import resolve_encoder

    ref = resolve_encoder(encoder)
    params = {"texts": corpus.fingerprint(), "encoder": ref.identity}
    return f"text-{corpus.name}-{ref.slug}", params, corpus.sources + ref.sources


def embed_corpus(
    corpus: LabelledTexts,
    encoder: str,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> Tensor:
    """Every sentence of `corpus` embedded by `encoder`: (sentences, dim) float32, computed once and
    cached under a fingerprint of the source files, the texts and the encoder (name and model
    files); a change to any of them embeds again."""
    from metalab.models.text import resolve_encoder

    def build() -> dict:
        model = resolve_encoder(encoder).load(device)
        vectors = model.encode(corpus.texts, batch_size=batch_size)
        return {"embeddings": vectors.float().cpu().contiguous(), "count": len(corpus.texts)}

    name, params, sources = embedding_cache_entry(corpus, encoder)
    payload = load_or_build(name, params, sources, build, cache_dir)
    vectors = payload["embeddings"]
    if payload["count"] != len(corpus.texts) or vectors.shape[0] != len(corpus.texts):
        raise DataError(f"embedding cache of {corpus.name} has the wrong size; delete it")
    return vectors


def text_split(
    corpus: LabelledTexts,
    scheme: str,
    split: str,
    encoder: str,
    cache_dir: Path | None = None,
) -> ClassIndexedDataset:
    """One class split of `corpus`, embedded (cached) by `encoder`.

    When the whole corpus is already embedded (``embed_corpus``, e.g. by benchmarks/text_embed.py)
    the split is cut from that cache; otherwise only the split's sentences are embedded, and cached
    on their own, so evaluating the held-out classes never waits for the training classes."""
    s = scheme_of(corpus.name, scheme)
    classes, rows = split_rows(corpus, s, split)  # checks the split before embedding anything
    name, params, sources = embedding_cache_entry(corpus, encoder)
    if (cache_root(cache_dir) / f"{name}-{fingerprint(params, sources)[:16]}.pt").exists():
        return build_split(corpus, s, split, embed_corpus(corpus, encoder, cache_dir))
    flat = [r for class_rows in rows for r in class_rows]
    subset = corpus.subset(flat)
    vectors = embed_corpus(subset, encoder, cache_dir)
    embeddings = torch.zeros(len(corpus.texts), vectors.shape[1])
    embeddings[torch.tensor(flat)] = vectors
    return build_split(corpus, s, split, embeddings)


def token_split(
    corpus: LabelledTexts, scheme: str, split: str, encoder: str, max_tokens: int
) -> ClassIndexedDataset:
    """One class split of `corpus` as token ids ``(total, max_tokens)`` int32 by `encoder`'s
    tokenizer (truncated, padded with its pad id), for a backbone that fine-tunes the encoder
    (:mod:`metalab.models.transformer`). Not cached: a fast tokenizer takes well under a second
    for a dataset's sentences."""
    from metalab.models.transformer import tokenize

    s = scheme_of(corpus.name, scheme)
    classes, rows = split_rows(corpus, s, split)
    flat = [r for class_rows in rows for r in class_rows]
    ids = tokenize([corpus.texts[r] for r in flat], encoder, max_tokens)
    table = torch.zeros(len(corpus.texts), ids.shape[1], dtype=ids.dtype)
    table[torch.tensor(flat)] = ids
    return build_split(corpus, s, split, table)
