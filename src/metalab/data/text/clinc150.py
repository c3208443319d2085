"""CLINC150 (Larson et al. 2019): ``data_full.json`` (+ ``domains.json``), checked against the
published counts."""

from __future__ import annotations

from pathlib import Path

from metalab.data.text.corpus import LabelledTexts, check_counts, check_text, clip, fail, read_json

CLINC150_PARTS = {  # part → sentences in the published data_full.json
    "train": 15000,
    "val": 3000,
    "test": 4500,
    "oos_train": 100,
    "oos_val": 100,
    "oos_test": 1000,
}
CLINC150_PER_INTENT = {"train": 100, "val": 20, "test": 30}


def read_clinc150(root: Path) -> LabelledTexts:
    """CLINC150 from ``root/data_full.json`` (and ``root/domains.json`` for the 10 domains):
    150 intents × 100 / 20 / 30 sentences (train / val / test) and out-of-scope 100 / 100 / 1000,
    label ``oos``."""
    path, domains_path = root / "data_full.json", root / "domains.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise fail(str(path), f"expected a JSON object with keys {', '.join(CLINC150_PARTS)}")
    out = LabelledTexts("clinc150", sources=[path])
    for part in CLINC150_PARTS:
        rows = data.get(part)
        if not isinstance(rows, list):
            raise fail(str(path), f'no list "{part}" (expected {", ".join(CLINC150_PARTS)})')
        for i, row in enumerate(rows):
            where = f'{path}, entry "{part}"[{i}]'
            if not (isinstance(row, list) and len(row) == 2):
                raise fail(where, f"expected [text, intent], got {clip(row)}")
            text = check_text(row[0], where)
            if not isinstance(row[1], str) or not row[1]:
                raise fail(where, f"the intent is {clip(row[1])}, expected a name")
            if part.startswith("oos") != (row[1] == "oos"):
                raise fail(where, f"intent {row[1]!r} in part {part!r}")
            out.add(text, row[1], part)
    for part, expected in CLINC150_PARTS.items():  # rows first: a bad row is named before counts
        check_counts(path, f'sentences in "{part}"', out.parts.count(part), expected)
    check_counts(path, "intents", len(out.classes(("train",))), 150)
    for part, expected in CLINC150_PER_INTENT.items():
        for intent, n in out.counts((part,)).items():
            check_counts(path, f'"{part}" sentences of intent {intent!r}', n, expected)
    if domains_path.is_file():
        out.sources.append(domains_path)
        domains = read_json(domains_path)
        for domain, intents in domains.items():
            for intent in intents:
                if intent not in out.groups:
                    raise fail(str(domains_path), f"intent {intent!r} is not in {path.name}")
                out.groups[intent] = domain
        missing = [c for c in out.classes(("train",)) if not out.groups[c]]
        if missing:
            raise fail(
                str(domains_path), f"{len(missing)} intents have no domain, e.g. {missing[0]}"
            )
    return out
