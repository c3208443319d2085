"""FewRel 1.0 (Han et al. 2018): ``val_wiki.json``, ``val_pubmed.json``; sentences given to the
encoder with their entities marked."""

from __future__ import annotations

from pathlib import Path

from metalab.data.text.corpus import LabelledTexts, check_counts, clip, fail, read_json

FEWREL_FILES = {"val_wiki": (16, 700), "val_pubmed": (10, 100)}  # relations, instances each


def mark_entities(tokens: list[str], head: list[int], tail: list[int]) -> str:
    """The sentence with its head and tail entities marked: ``[E1] Cape Girardeau Bridge [/E1]``,
    ``[E2] ... [/E2]`` (the entity-marker input of Soares et al. 2019, as plain text)."""
    words = list(tokens)
    for positions, (open_, close) in ((head, ("[E1]", "[/E1]")), (tail, ("[E2]", "[/E2]"))):
        words[positions[0]] = f"{open_} {words[positions[0]]}"
        words[positions[-1]] = f"{words[positions[-1]]} {close}"
    return " ".join(words)


def read_fewrel(root: Path, files: tuple[str, ...] = ("val_wiki",)) -> LabelledTexts:
    """FewRel relations from ``root/<file>.json`` (relation → instances with ``tokens`` and ``h``,
    ``t`` = [name, id, [[token positions]]]): val_wiki 16 relations × 700, val_pubmed 10 × 100. The
    part of each sentence is its file's name; a relation's group is its file too. Class names are
    the relation ids (P177), with names from ``pid2name.json`` when present."""
    out = LabelledTexts("fewrel")
    for name in files:
        relations, per = FEWREL_FILES[name]
        path = root / f"{name}.json"
        data = read_json(path)
        out.sources.append(path)
        if not isinstance(data, dict):
            raise fail(str(path), "expected a JSON object relation → list of instances")
        check_counts(path, "relations", len(data), relations)
        for relation, rows in data.items():
            if not isinstance(rows, list):
                raise fail(f'{path}, entry "{relation}"', "expected a list of instances")
            check_counts(path, f"instances of relation {relation!r}", len(rows), per)
            for i, row in enumerate(rows):
                where = f'{path}, entry "{relation}"[{i}]'
                out.add(_fewrel_text(row, where), relation, name)
            out.groups[relation] = name
    return out


def _fewrel_text(row: object, where: str) -> str:
    if not isinstance(row, dict) or not {"tokens", "h", "t"} <= set(row):
        raise fail(where, "expected an object with tokens, h and t")
    tokens = row["tokens"]
    if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
        raise fail(where, "tokens is not a non-empty list of strings")
    spans = []
    for key in ("h", "t"):
        entity = row[key]
        try:
            positions = entity[2][0]
            ok = positions and all(isinstance(p, int) and 0 <= p < len(tokens) for p in positions)
        except (TypeError, IndexError, KeyError):
            ok = False
        if not ok:
            raise fail(where, f"{key} is {clip(entity)}, expected [name, id, [[token positions]]]")
        spans.append(positions)
    return mark_entities(tokens, *spans)
