"""A user's own sentences: ``label,text`` rows in a CSV file (with header) or JSON lines, one file
or a folder of ``train``, ``val``, ``test`` files."""

from __future__ import annotations

import json
from pathlib import Path

from metalab.data.text.corpus import LabelledTexts, check_text, clip, fail, read_csv
from metalab.errors import DataError

TEXT_LAYOUT = (
    'a CSV file with header \'label,text\' or JSON lines {"label": ..., "text": ...}; a folder '
    "may hold train, val and test files"
)
TEXT_SUFFIXES = (".csv", ".jsonl")


def read_labelled_file(path: Path, part: str = "test") -> LabelledTexts:
    """A user's sentences from a CSV file with a header holding ``label`` and ``text`` (any order,
    other columns ignored) or a JSON-lines file of objects with ``label`` and ``text``."""
    path = Path(path)
    out = LabelledTexts("text", sources=[path])
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise DataError(f"{path} not found")
        with open(path, encoding="utf-8") as file:
            for line, raw in enumerate(file, 1):
                if not raw.strip():
                    continue
                where = f"{path}, line {line}"
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise fail(where, f"not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or "label" not in row or "text" not in row:
                    raise fail(where, 'expected an object with "label" and "text"')
                out.add(check_text(row["text"], where), _check_label(row["label"], where), part)
    elif path.suffix == ".csv":
        for line, row in read_csv(path, ",", ("label", "text")):
            where = f"{path}, line {line}"
            out.add(check_text(row["text"], where), _check_label(row["label"], where), part)
    else:
        raise DataError(f"{path}: unknown file type; expected {TEXT_LAYOUT}")
    if not out.texts:
        raise DataError(f"{path} has no sentences; expected {TEXT_LAYOUT}")
    return out


def _check_label(label: object, where: str) -> str:
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
        raise fail(where, f"the label is {clip(label)}, expected a non-empty name")
    return str(label).strip()


def read_text_folder(root: Path) -> LabelledTexts:
    """``root/{train,val,test}.{csv,jsonl}`` (any of them) as one LabelledTexts, parts by file; a
    single file is the part ``test``."""
    root = Path(root)
    if root.is_file():
        return read_labelled_file(root, "test")
    out = LabelledTexts("text")
    for part in ("train", "val", "test"):
        found = [root / f"{part}{s}" for s in TEXT_SUFFIXES if (root / f"{part}{s}").is_file()]
        if len(found) > 1:
            raise DataError(f"{root} has both {found[0].name} and {found[1].name}; keep one")
        if found:
            piece = read_labelled_file(found[0], part)
            for t, c in zip(piece.texts, piece.labels):
                out.add(t, c, part)
            out.sources += piece.sources
    if not out.sources:
        raise DataError(f"{root} has no train/val/test .csv or .jsonl file; expected {TEXT_LAYOUT}")
    return out
