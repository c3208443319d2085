"""Banking77 (Casanueva et al. 2020): ``train.csv``, ``test.csv`` with header ``text,category``,
checked against the published counts."""

from __future__ import annotations

from pathlib import Path

from metalab.data.text.corpus import LabelledTexts, check_counts, check_text, fail, read_csv

BANKING77_PARTS = {"train": 10003, "test": 3080}


def read_banking77(root: Path) -> LabelledTexts:
    """Banking77 from ``root/train.csv`` and ``root/test.csv`` (columns text, category): 77 intents,
    10,003 / 3,080 sentences, 40 test sentences per intent."""
    out = LabelledTexts("banking77")
    for part, expected in BANKING77_PARTS.items():
        path = root / f"{part}.csv"
        out.sources.append(path)
        n = 0
        for line, row in read_csv(path, ",", ("text", "category")):
            where = f"{path}, line {line}"
            text = check_text(row["text"], where)
            if not row["category"].strip():
                raise fail(where, "the category is empty")
            out.add(text, row["category"].strip(), part)
            n += 1
        check_counts(path, "sentences", n, expected)
        check_counts(path, "intents", len(out.classes((part,))), 77)
    for intent, n in out.counts(("test",)).items():
        check_counts(root / "test.csv", f"sentences of intent {intent!r}", n, 40)
    return out
