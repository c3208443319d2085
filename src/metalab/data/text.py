"""Few-shot text classification data: intents (CLINC150, Banking77, HWU64), relations (FewRel) and a
user's own ``label,text`` files, as class-indexed tensors of sentence embeddings.

Each reader parses the files as published, checks them against the published counts and stops at
the first malformed row with one line naming the file, the line (or JSON entry) and what is wrong.
A :class:`LabelledTexts` keeps every sentence with its class, its class's group (CLINC150 domain,
HWU64 scenario) and the file part it came from (``train``, ``val``, ``test``, ``oos_*``).

Sentences are embedded once by a frozen sentence encoder (:mod:`metalab.models.text`) and cached
in ``$METALAB_CACHE`` under a fingerprint of the source files and of the encoder (its name and its
model files), like decoded images; a class split of the dataset is then a
:class:`ClassIndexedDataset` whose "images" are float vectors ``(total, dim)``, on which every
algorithm runs with a vector backbone (``backbone: mlp``).

Class splits (meta-train / meta-val / meta-test on disjoint classes) are fixed in this module, in
:data:`CLASS_SPLITS`; a class's pool is all its sentences from every file part except out-of-scope.

    corpus = read_dataset("clinc150", data_dir)            # LabelledTexts, counts checked
    split = text_split(corpus, "default", "test", "all-MiniLM-L6-v2")   # ClassIndexedDataset
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from metalab.data.base import ClassIndexedDataset
from metalab.data.cache import cache_root, fingerprint, load_or_build
from metalab.errors import DataError

# --- What the readers produce ---------------------------------------------------------------------


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


def _fail(where: str, why: str) -> DataError:
    return DataError(f"{where}: {why}")


def _clip(text: object) -> str:
    """A value shown in an error message: one line, at most 60 characters."""
    s = repr(text)
    return s if len(s) <= 60 else s[:57] + "..."


def _check_text(text: object, where: str) -> str:
    if not isinstance(text, str):
        raise _fail(where, f"the text is {type(text).__name__} {_clip(text)}, expected a string")
    if not text.strip():
        raise _fail(where, "the text is empty")
    return text.strip()


def _check_counts(path: Path, what: str, got: int, expected: int) -> None:
    if got != expected:
        raise DataError(
            f"{path}: {got} {what}, but the published dataset has {expected}; the file is "
            "incomplete or another version (replace it with the published one)"
        )


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise DataError(f"{path} not found")
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None


# --- CLINC150 (Larson et al. 2019): data_full.json ----------------------------------------------

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
    data = _read_json(path)
    if not isinstance(data, dict):
        raise _fail(str(path), f"expected a JSON object with keys {', '.join(CLINC150_PARTS)}")
    out = LabelledTexts("clinc150", sources=[path])
    for part in CLINC150_PARTS:
        rows = data.get(part)
        if not isinstance(rows, list):
            raise _fail(str(path), f'no list "{part}" (expected {", ".join(CLINC150_PARTS)})')
        for i, row in enumerate(rows):
            where = f'{path}, entry "{part}"[{i}]'
            if not (isinstance(row, list) and len(row) == 2):
                raise _fail(where, f"expected [text, intent], got {_clip(row)}")
            text = _check_text(row[0], where)
            if not isinstance(row[1], str) or not row[1]:
                raise _fail(where, f"the intent is {_clip(row[1])}, expected a name")
            if part.startswith("oos") != (row[1] == "oos"):
                raise _fail(where, f"intent {row[1]!r} in part {part!r}")
            out.add(text, row[1], part)
    for part, expected in CLINC150_PARTS.items():  # rows first: a bad row is named before counts
        _check_counts(path, f'sentences in "{part}"', out.parts.count(part), expected)
    _check_counts(path, "intents", len(out.classes(("train",))), 150)
    for part, expected in CLINC150_PER_INTENT.items():
        for intent, n in out.counts((part,)).items():
            _check_counts(path, f'"{part}" sentences of intent {intent!r}', n, expected)
    if domains_path.is_file():
        out.sources.append(domains_path)
        domains = _read_json(domains_path)
        for domain, intents in domains.items():
            for intent in intents:
                if intent not in out.groups:
                    raise _fail(str(domains_path), f"intent {intent!r} is not in {path.name}")
                out.groups[intent] = domain
        missing = [c for c in out.classes(("train",)) if not out.groups[c]]
        if missing:
            raise _fail(
                str(domains_path), f"{len(missing)} intents have no domain, e.g. {missing[0]}"
            )
    return out


# --- Banking77 (Casanueva et al. 2020): train.csv, test.csv with header text,category ------------

BANKING77_PARTS = {"train": 10003, "test": 3080}


def _read_csv(path: Path, delimiter: str, columns: tuple[str, ...]):
    """Rows of a CSV file with a header holding `columns`: yields (line number, {column: value})."""
    if not path.is_file():
        raise DataError(f"{path} not found")
    try:
        with open(path, encoding="utf-8", newline="") as file:
            reader = csv.reader(file, delimiter=delimiter)
            header = next(reader, None)
            if header is None or any(c not in header for c in columns):
                raise _fail(
                    f"{path}, line 1",
                    f"the header is {_clip(delimiter.join(header or []))}, expected the columns "
                    + delimiter.join(columns),
                )
            index = [header.index(c) for c in columns]
            start = reader.line_num + 1
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    raise _fail(
                        f"{path}, line {line}",
                        f"{len(row)} fields, expected {len(header)} ({delimiter.join(header)})",
                    )
                yield line, {c: row[i] for c, i in zip(columns, index)}
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not valid CSV ({e})") from None


def read_banking77(root: Path) -> LabelledTexts:
    """Banking77 from ``root/train.csv`` and ``root/test.csv`` (columns text, category): 77 intents,
    10,003 / 3,080 sentences, 40 test sentences per intent."""
    out = LabelledTexts("banking77")
    for part, expected in BANKING77_PARTS.items():
        path = root / f"{part}.csv"
        out.sources.append(path)
        n = 0
        for line, row in _read_csv(path, ",", ("text", "category")):
            where = f"{path}, line {line}"
            text = _check_text(row["text"], where)
            if not row["category"].strip():
                raise _fail(where, "the category is empty")
            out.add(text, row["category"].strip(), part)
            n += 1
        _check_counts(path, "sentences", n, expected)
        _check_counts(path, "intents", len(out.classes((part,))), 77)
    for intent, n in out.counts(("test",)).items():
        _check_counts(root / "test.csv", f"sentences of intent {intent!r}", n, 40)
    return out


# --- HWU64 (Liu et al. 2019): trainset/ and testset/<scenario>_<intent>.csv, ';'-separated -----

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
        _check_counts(directory, "intent files", len(files), 64)
        n = 0
        for path in files:
            out.sources.append(path)
            for line, row in _read_csv(path, ";", HWU64_COLUMNS):
                where = f"{path}, line {line}"
                label = f"{row['scenario']}_{row['intent']}"
                if label != path.stem:
                    raise _fail(where, f"scenario_intent {label!r} differs from the file name")
                text = row["answer_from_user"].strip()
                if not text:
                    raise _fail(where, "answer_from_user is empty")
                out.add(text, label, part)
                out.groups[label] = row["scenario"]
                n += 1
        _check_counts(directory, "sentences", n, expected)
    return out


# --- FewRel 1.0 (Han et al. 2018): val_wiki.json, val_pubmed.json --------------------------------

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
        data = _read_json(path)
        out.sources.append(path)
        if not isinstance(data, dict):
            raise _fail(str(path), "expected a JSON object relation → list of instances")
        _check_counts(path, "relations", len(data), relations)
        for relation, rows in data.items():
            if not isinstance(rows, list):
                raise _fail(f'{path}, entry "{relation}"', "expected a list of instances")
            _check_counts(path, f"instances of relation {relation!r}", len(rows), per)
            for i, row in enumerate(rows):
                where = f'{path}, entry "{relation}"[{i}]'
                out.add(_fewrel_text(row, where), relation, name)
            out.groups[relation] = name
    return out


def _fewrel_text(row: object, where: str) -> str:
    if not isinstance(row, dict) or not {"tokens", "h", "t"} <= set(row):
        raise _fail(where, "expected an object with tokens, h and t")
    tokens = row["tokens"]
    if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
        raise _fail(where, "tokens is not a non-empty list of strings")
    spans = []
    for key in ("h", "t"):
        entity = row[key]
        try:
            positions = entity[2][0]
            ok = positions and all(isinstance(p, int) and 0 <= p < len(tokens) for p in positions)
        except (TypeError, IndexError, KeyError):
            ok = False
        if not ok:
            raise _fail(
                where, f"{key} is {_clip(entity)}, expected [name, id, [[token positions]]]"
            )
        spans.append(positions)
    return mark_entities(tokens, *spans)


# --- A user's own file: label,text rows (CSV with header, or JSON lines) -------------------------

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
                    raise _fail(where, f"not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or "label" not in row or "text" not in row:
                    raise _fail(where, 'expected an object with "label" and "text"')
                out.add(_check_text(row["text"], where), _check_label(row["label"], where), part)
    elif path.suffix == ".csv":
        for line, row in _read_csv(path, ",", ("label", "text")):
            where = f"{path}, line {line}"
            out.add(_check_text(row["text"], where), _check_label(row["label"], where), part)
    else:
        raise DataError(f"{path}: unknown file type; expected {TEXT_LAYOUT}")
    if not out.texts:
        raise DataError(f"{path} has no sentences; expected {TEXT_LAYOUT}")
    return out


def _check_label(label: object, where: str) -> str:
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
        raise _fail(where, f"the label is {_clip(label)}, expected a non-empty name")
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


# --- Class splits, fixed in the package ---------------------------------------------------------

# CLINC150: by domain, 60 / 30 / 60 intents (no domain is shared between splits).
CLINC150_DOMAINS = {
    "train": ("auto_and_commute", "banking", "credit_cards", "work"),
    "val": ("meta", "small_talk"),
    "test": ("home", "kitchen_and_dining", "travel", "utility"),
}
# HWU64: by scenario, 24 / 16 / 24 intents.
HWU64_SCENARIOS = {
    "train": ("general", "iot", "qa"),
    "val": ("cooking", "datetime", "lists", "music", "news", "recommendation", "social", "weather"),
    "test": ("alarm", "audio", "calendar", "email", "play", "takeaway", "transport"),
}
# Banking77 has no domains: 25 / 25 / 27 intents drawn once (torch.randperm(77) with seed 77 over
# categories.json's order) and written out here, so they never depend on a random generator.
BANKING77_INTENTS = {
    "train": (
        "Refund_not_showing_up age_limit atm_support balance_not_updated_after_bank_transfer "
        "balance_not_updated_after_cheque_or_cash_deposit card_about_to_expire "
        "card_delivery_estimate card_payment_fee_charged compromised_card exchange_via_app "
        "failed_transfer lost_or_stolen_phone pending_card_payment pending_transfer pin_blocked "
        "receiving_money request_refund reverted_card_payment? supported_cards_and_currencies "
        "top_up_limits transaction_charged_twice transfer_timing verify_source_of_funds "
        "visa_or_mastercard wrong_exchange_rate_for_cash_withdrawal"
    ).split(),
    "val": (
        "activate_my_card apple_pay_or_google_pay cancel_transfer card_acceptance card_arrival "
        "card_not_working card_payment_not_recognised cash_withdrawal_charge country_support "
        "declined_transfer disposable_card_limits extra_charge_on_statement "
        "get_disposable_virtual_card get_physical_card getting_virtual_card "
        "pending_cash_withdrawal pending_top_up topping_up_by_card transfer_into_account "
        "transfer_not_received_by_recipient "
        "unable_to_verify_identity verify_my_identity verify_top_up virtual_card_not_working "
        "why_verify_identity"
    ).split(),
    "test": (
        "automatic_top_up beneficiary_not_allowed card_linking card_payment_wrong_exchange_rate "
        "card_swallowed cash_withdrawal_not_recognised change_pin contactless_not_working "
        "declined_card_payment declined_cash_withdrawal direct_debit_payment_not_recognised "
        "edit_personal_details exchange_charge exchange_rate fiat_currency_support "
        "getting_spare_card lost_or_stolen_card order_physical_card passcode_forgotten "
        "terminate_account top_up_by_bank_transfer_charge top_up_by_card_charge "
        "top_up_by_cash_or_cheque top_up_failed top_up_reverted transfer_fee_charged "
        "wrong_amount_of_cash_received"
    ).split(),
}
# FewRel val_wiki's 16 relations: 8 / 8 (torch.randperm(16), seed 16); scheme "pubmed" trains on
# all 16 wiki relations and tests on val_pubmed's 10 biomedical relations (a domain shift).
FEWREL_RELATIONS = {
    "train": ("P26", "P59", "P155", "P177", "P364", "P412", "P463", "P921"),
    "test": ("P25", "P40", "P206", "P361", "P410", "P413", "P641", "P2094"),
}


@dataclass(frozen=True)
class SplitScheme:
    """Which classes (and which file parts of their sentences) make each split.

    ``classes(corpus, split)`` lists the split's class names; ``parts`` are the file parts a class's
    pool is drawn from (None: every part but out-of-scope)."""

    splits: dict[str, object]  # split → group names (by="group") or class names (by="class")
    by: str = "group"
    parts: dict[str, tuple[str, ...]] | None = None  # split → file parts (None: all in-scope)
    doc: str = ""

    def classes(self, corpus: LabelledTexts, split: str) -> list[str]:
        wanted = self.splits[split]
        if wanted == "all":
            return corpus.classes(self.parts_of(split))
        if self.by == "group":
            names = [c for c, g in corpus.groups.items() if g in wanted]
        else:
            names = list(wanted)
        if not names:
            raise DataError(f"{corpus.name}: split '{split}' has no classes (groups {wanted})")
        missing = [c for c in names if c not in corpus.groups]
        if missing:
            raise DataError(
                f"{corpus.name}: class {missing[0]!r} of split '{split}' not in the data"
            )
        return sorted(names)

    def parts_of(self, split: str) -> tuple[str, ...] | None:
        return None if self.parts is None else self.parts.get(split)


CLASS_SPLITS: dict[str, dict[str, SplitScheme]] = {
    "clinc150": {
        "default": SplitScheme(
            dict(CLINC150_DOMAINS),
            doc="by domain: 4 / 2 / 4 domains, 60 / 30 / 60 intents, 150 sentences each",
        ),
        "full": SplitScheme(
            {"train": "all", "val": "all", "test": "all"},
            parts={"train": ("train",), "val": ("val",), "test": ("test",)},
            doc="all 150 intents, the published train / val / test sentences (100 / 20 / 30 each)",
        ),
    },
    "banking77": {
        "default": SplitScheme(
            BANKING77_INTENTS, by="class", doc="25 / 25 / 27 intents fixed in the package"
        ),
        "full": SplitScheme(
            {"train": "all", "test": "all"},
            parts={"train": ("train",), "test": ("test",)},
            doc="all 77 intents, the published train / test sentences",
        ),
    },
    "hwu64": {
        "default": SplitScheme(
            HWU64_SCENARIOS, doc="by scenario: 3 / 8 / 7 scenarios, 24 / 16 / 24 intents"
        ),
        "full": SplitScheme(
            {"train": "all", "test": "all"},
            parts={"train": ("train",), "test": ("test",)},
            doc="all 64 intents, the trainset / testset sentences",
        ),
    },
    "fewrel": {
        "default": SplitScheme(
            FEWREL_RELATIONS, by="class", doc="val_wiki's 16 relations: 8 train / 8 test"
        ),
        "pubmed": SplitScheme(
            {"train": ("val_wiki",), "test": ("val_pubmed",)},
            doc="train on val_wiki's 16 relations, test on val_pubmed's 10 (biomedical domain)",
        ),
    },
    "text": {
        "default": SplitScheme(
            {"train": "all", "val": "all", "test": "all"},
            parts={"train": ("train",), "val": ("val",), "test": ("test",)},
            doc="the classes of each file (train, val, test)",
        ),
    },
}


def scheme_of(dataset: str, scheme: str) -> SplitScheme:
    """A dataset's class-split scheme; ``vinyals`` (the config's default, Omniglot's) means
    ``default``."""
    schemes = CLASS_SPLITS[dataset]
    name = "default" if scheme in ("vinyals", "default") else scheme
    if name not in schemes:
        from metalab.errors import ConfigError

        raise ConfigError(
            f"data.scheme '{scheme}' is unknown for {dataset}; choices: {', '.join(schemes)}"
        )
    return schemes[name]


def split_names(dataset: str, scheme: str, corpus: LabelledTexts | None = None) -> tuple[str, ...]:
    """The splits a scheme offers (for ``text``, the files present)."""
    s = scheme_of(dataset, scheme)
    names = tuple(s.splits)
    if corpus is not None and s.parts is not None:
        present = set(corpus.parts)
        names = tuple(n for n in names if set(s.parts_of(n) or ()) & present)
    return names


def split_rows(corpus: LabelledTexts, scheme: SplitScheme, split: str) -> tuple[list[str], Tensor]:
    """The split's class names and the rows of its sentences (class-major, file order within a
    class)."""
    if split not in scheme.splits:
        raise DataError(
            f"split '{split}' is unknown for {corpus.name}; choices: {', '.join(scheme.splits)}"
        )
    classes = scheme.classes(corpus, split)
    parts = scheme.parts_of(split)
    index = {c: i for i, c in enumerate(classes)}
    rows: list[list[int]] = [[] for _ in classes]
    for r, (c, p) in enumerate(zip(corpus.labels, corpus.parts)):
        if c in index and (p in parts if parts is not None else not p.startswith("oos")):
            rows[index[c]].append(r)
    empty = [c for c, r in zip(classes, rows) if not r]
    if empty:
        raise DataError(f"{corpus.name} split '{split}': class {empty[0]!r} has no sentences")
    return classes, rows


def build_split(
    corpus: LabelledTexts, scheme: SplitScheme, split: str, embeddings: Tensor
) -> ClassIndexedDataset:
    """A split as a class-indexed dataset of embedding vectors ``(total, dim)`` float32."""
    classes, rows = split_rows(corpus, scheme, split)
    per_class = [embeddings[torch.tensor(r)] for r in rows]
    return ClassIndexedDataset.from_class_tensors(
        f"{corpus.name}-{split}",
        per_class,
        classes,
        group_of_class=[corpus.groups.get(c, "") for c in classes],
    )


# --- Embedding, cached -------------------------------------------------------------------------


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


# --- By name -----------------------------------------------------------------------------------

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
