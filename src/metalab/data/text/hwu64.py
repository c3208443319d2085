"""HWU64 (Liu et al. 2019): ``trainset/`` and ``testset/<scenario>_<intent>.csv``, ';'-separated,
checked against the counts of the distributed fold."""

from __future__ import annotations

from pathlib import Path

from metalab.data.text.corpus import LabelledTexts, check_counts, fail, read_csv
from metalab.errors import DataError

HWU64_PARTS = {"trainset": 9960, "testset": 1076}  # the fold distributed in these folders
HWU64_COLUMNS = ("scenario", "intent", "answer_from_user")


def read_hwu64(root: Path) -> LabelledTexts:
    """HWU64 from ``root/trainset/*.csv`` and ``root/testset/*.csv`` (one file per intent, named
    ``<scenario>_<intent>.csv``, ';'-separated, the sentence in ``answer_from_user``): 64 intents in
    18 scenarios, 9,960 / 1,076 sentences. Class names are the file names (``alarm_set``)."""
    out = LabelledTexts("hwu64")
    for folder, expected in HWU64_PARTS.items():
        part = folder.removesuffix("set")
        directory = root / folder
        if not directory.is_dir():
            raise DataError(f"{directory} not found (expected {folder}/<scenario>_<intent>.csv)")
        files = sorted(directory.glob("*.csv"))
        check_counts(directory, "intent files", len(files), 64)
        n = 0
        for path in files:
            out.sources.append(path)
            for line, row in read_csv(path, ";", HWU64_COLUMNS):
                where = f"{path}, line {line}"
                label = f"{row['scenario']}_{row['intent']}"
                if label != path.stem:
                    raise fail(where, f"scenario_intent {label!r} differs from the file name")
                text = row["answer_from_user"].strip()
                if not text:
                    raise fail(where, "answer_from_user is empty")
                out.add(text, label, part)
                out.groups[label] = row["scenario"]
                n += 1
        check_counts(directory, "sentences", n, expected)
    return out
