"""What every text reader produces (:class:`LabelledTexts`) and the row checks they share: one
line naming the file, the line (or JSON entry) and what is wrong."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from metalab.errors import DataError


@dataclass
class LabelledTexts:
    """Every sentence of one dataset with its class, in file order.

    Attributes:
        name: the dataset (``clinc150``, ``banking77``, ``hwu64``, ``fewrel``, ``text``).
        texts, labels, parts: one entry per sentence: its text, class name and file part.
        groups: class name → group name (domain, scenario; "" when the dataset has none).
        sources: the files read (they enter the embedding cache's fingerprint).
    """

    name: str
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)

    def add(self, text: str, label: str, part: str) -> None:
        self.texts.append(text)
        self.labels.append(label)
        self.parts.append(part)
        self.groups.setdefault(label, "")

    def classes(self, parts: tuple[str, ...] | None = None) -> list[str]:
        """Class names (sorted) with at least one sentence in `parts` (None: any part)."""
        return sorted({c for c, p in zip(self.labels, self.parts) if parts is None or p in parts})

    def counts(self, parts: tuple[str, ...] | None = None) -> Counter:
        return Counter(c for c, p in zip(self.labels, self.parts) if parts is None or p in parts)

    def subset(self, rows: list[int]) -> LabelledTexts:
        """The sentences at `rows` (same name, groups and sources)."""
        return LabelledTexts(
            self.name,
            [self.texts[r] for r in rows],
            [self.labels[r] for r in rows],
            [self.parts[r] for r in rows],
            dict(self.groups),
            list(self.sources),
        )

    def fingerprint(self) -> str:
        """sha256 of the texts, labels and parts (the embedding cache keys on it)."""
        digest = hashlib.sha256()
        for t, c, p in zip(self.texts, self.labels, self.parts):
            digest.update(f"{t}\0{c}\0{p}\n".encode())
        return digest.hexdigest()


def fail(where: str, why: str) -> DataError:
    return DataError(f"{where}: {why}")


def clip(text: object) -> str:
    """A value shown in an error message: one line, at most 60 characters."""
    s = repr(text)
    return s if len(s) <= 60 else s[:57] + "..."


def check_text(text: object, where: str) -> str:
    if not isinstance(text, str):
        raise fail(where, f"the text is {type(text).__name__} {clip(text)}, expected a string")
    if not text.strip():
        raise fail(where, "the text is empty")
    return text.strip()


def check_counts(path: Path, what: str, got: int, expected: int) -> None:
    if got != expected:
        raise DataError(
            f"{path}: {got} {what}, but the published dataset has {expected}; the file is "
            "incomplete or another version (replace it with the published one)"
        )


def read_json(path: Path) -> object:
    if not path.is_file():
        raise DataError(f"{path} not found")
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None


def read_csv(path: Path, delimiter: str, columns: tuple[str, ...]):
    """Rows of a CSV file with a header holding `columns`: yields (line number, {column: value})."""
    if not path.is_file():
        raise DataError(f"{path} not found")
    try:
        with open(path, encoding="utf-8", newline="") as file:
            reader = csv.reader(file, delimiter=delimiter)
            header = next(reader, None)
            if header is None or any(c not in header for c in columns):
                raise fail(
                    f"{path}, line 1",
                    f"the header is {clip(delimiter.join(header or []))}, expected the columns "
                    + delimiter.join(columns),
                )
            index = [header.index(c) for c in columns]
            start = reader.line_num + 1
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    raise fail(
                        f"{path}, line {line}",
                        f"{len(row)} fields, expected {len(header)} ({delimiter.join(header)})",
                    )
                yield line, {c: row[i] for c, i in zip(columns, index)}
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not valid CSV ({e})") from None
