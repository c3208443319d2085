"""A text dataset by name: its folder under ``--data-dir``, its reader, and what
``metalab data info`` prints about its class splits."""

from __future__ import annotations

from pathlib import Path

from metalab.data.text.banking77 import read_banking77
from metalab.data.text.clinc150 import read_clinc150
from metalab.data.text.corpus import LabelledTexts
from metalab.data.text.fewrel import read_fewrel
from metalab.data.text.files import read_text_folder
from metalab.data.text.hwu64 import read_hwu64
from metalab.data.text.splits import scheme_of, split_names, split_rows
from metalab.errors import DataError

READERS = {
    "clinc150": read_clinc150,
    "banking77": read_banking77,
    "hwu64": read_hwu64,
}


def dataset_root(data_dir: Path, name: str) -> Path:
    """``DIR/<name>``, ``DIR/text/<name>`` or DIR itself when it is the dataset's folder."""
    data_dir = Path(data_dir)
    for candidate in (data_dir / name, data_dir / "text" / name):
        if candidate.is_dir():
            return candidate
    if data_dir.name == name and data_dir.is_dir():
        return data_dir
    raise DataError(
        f"{name} not found under {data_dir}: expected {data_dir}/{name}/ or {data_dir}/text/{name}/"
    )


def read_dataset(name: str, data_dir: Path, scheme: str = "default") -> LabelledTexts:
    """A dataset's sentences by name (``clinc150``, ``banking77``, ``hwu64``, ``fewrel``, ``text``:
    for ``text``, `data_dir` is the user's file or folder)."""
    if name == "text":
        return read_text_folder(Path(data_dir))
    root = dataset_root(data_dir, name)
    if name == "fewrel":  # val_pubmed when present (scheme "pubmed" needs it): one embedding pass
        pubmed = (root / "val_pubmed.json").is_file() or scheme == "pubmed"
        return read_fewrel(root, ("val_wiki", "val_pubmed") if pubmed else ("val_wiki",))
    return READERS[name](root)


def corpus_info(corpus: LabelledTexts, scheme: str) -> dict:
    """Classes, sentences and groups per split (what ``metalab data info`` prints)."""
    s = scheme_of(corpus.name, scheme)
    splits = {}
    for split in split_names(corpus.name, scheme, corpus):
        classes, rows = split_rows(corpus, s, split)
        groups = {corpus.groups.get(c, "") for c in classes} - {""}
        row = {"classes": len(classes), "sentences": sum(map(len, rows))}
        if groups:
            row["groups"] = len(groups)
        row["fewest"] = min(map(len, rows))
        splits[split] = row
    name = "default" if scheme == "vinyals" else scheme
    return {"dataset": corpus.name, "scheme": name, "about": s.doc, "splits": splits}
