"""Sentences for ``metalab predict`` on a run trained on text: a support set (a ``label,text`` CSV
or JSONL file, read like a user's text data, or ``{label: [sentences]}``) and query sentences,
checked and embedded by the run's own encoder (``data.encoder``; token ids for a run that fine-tuned
it), not cached: they are few and new."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor

from metalab.data.imaging import IMAGE_EXTENSIONS
from metalab.data.text.corpus import clip
from metalab.data.text.files import read_labelled_file
from metalab.errors import DataError


def looks_like_image(value: object) -> bool:
    """True for an image file name or path (``q.png``, ``support/cat/1.jpg``), not a sentence."""
    s = str(value)
    return Path(s).suffix.lower() in IMAGE_EXTENSIONS and not any(c.isspace() for c in s)


def support_sentences(support: object, run: str) -> tuple[list[str], list[list[str]]]:
    """Class names (file order, or the mapping's) and each class's sentences, checked: a file
    through :func:`read_labelled_file` (one line naming the file, line and fault), a mapping
    class by class (at least one non-empty sentence each)."""
    if isinstance(support, Mapping):
        names, texts = [], []
        for label, sentences in support.items():
            if isinstance(sentences, (str, Path)):
                sentences = [sentences]  # one sentence for the class, not its characters
            sentences = list(sentences)
            if not sentences:
                raise DataError(f"support class {str(label)!r} has no sentences: give at least 1")
            for i, s in enumerate(sentences):
                where = f"support class {str(label)!r}, sentence {i + 1}"
                if looks_like_image(s):
                    raise DataError(
                        f"{where} is the image file {clip(str(s))}, but {run} was trained on "
                        "text: give sentences"
                    )
                if not isinstance(s, str) or not s.strip():
                    raise DataError(f"{where} is {clip(s)}, expected a non-empty sentence")
            names.append(str(label))
            texts.append([s.strip() for s in sentences])
        return names, texts
    path = Path(support)
    if path.is_dir():
        raise DataError(
            f"support {path} is a folder, but {run} was trained on text: give one CSV file with "
            'header \'label,text\' or one JSON-lines file of {"label": ..., "text": ...}'
        )
    corpus = read_labelled_file(path)
    names = list(dict.fromkeys(corpus.labels))  # first-seen order
    texts = [[t for t, c in zip(corpus.texts, corpus.labels) if c == name] for name in names]
    return names, texts


def query_sentences(queries: Sequence[object], run: str) -> list[str]:
    """The query sentences, checked: at least one, none empty, none an image file."""
    out = []
    for i, q in enumerate(queries):
        if looks_like_image(q):
            raise DataError(
                f"query {i + 1} is the image file {clip(str(q))}, but {run} was trained on text: "
                "give sentences"
            )
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"query {i + 1} is {clip(q)}, expected a non-empty sentence")
        out.append(q.strip())
    if not out:
        raise DataError("no query sentences given: pass at least one")
    return out


def embed_sentences(texts: list[str], encoder: str, device: str = "cpu") -> Tensor:
    """``(len(texts), dim)`` float32 on the CPU, by the encoder `encoder` names."""
    from metalab.models.text import resolve_encoder

    return resolve_encoder(encoder).load(device).encode(texts).float().cpu()


def sentence_inputs(texts: list[str], data, device: str = "cpu") -> Tensor:
    """What a run trained with `data` (its DataConfig) reads for `texts`: embeddings by its frozen
    encoder, or (``text_input: tokens``) token ids ``(len(texts), max_tokens)`` as float32."""
    if data.text_input == "tokens":
        from metalab.models.transformer import tokenize

        return tokenize(texts, data.encoder, data.max_tokens).float()
    return embed_sentences(texts, data.encoder, device)
