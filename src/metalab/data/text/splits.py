"""Class splits (meta-train / meta-val / meta-test on disjoint classes), fixed in the package per
dataset in :data:`CLASS_SPLITS`, and a split cut out of a corpus's embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metalab.data.base import ClassIndexedDataset
from metalab.data.text.corpus import LabelledTexts
from metalab.errors import DataError

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
    """A split as a class-indexed dataset of one row of `embeddings` per sentence: embedding vectors
    ``(total, dim)`` float32, or token ids."""
    classes, rows = split_rows(corpus, scheme, split)
    per_class = [embeddings[torch.tensor(r)] for r in rows]
    return ClassIndexedDataset.from_class_tensors(
        f"{corpus.name}-{split}",
        per_class,
        classes,
        group_of_class=[corpus.groups.get(c, "") for c in classes],
    )
