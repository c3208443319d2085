"""Few-shot text classification data: intents (CLINC150, Banking77, HWU64), relations (FewRel) and a
user's own ``label,text`` files, as class-indexed tensors of sentence embeddings.

Each reader (one module per dataset, :mod:`.files` for a user's files) parses the files as
published, checks them against the published counts and stops at the first malformed row with one
line naming the file, the line (or JSON entry) and what is wrong. A :class:`LabelledTexts`
(:mod:`.corpus`) keeps every sentence with its class, its class's group (CLINC150 domain, HWU64
scenario) and the file part it came from (``train``, ``val``, ``test``, ``oos_*``).

Sentences are embedded once by a frozen sentence encoder (:mod:`metalab.models.text`) and cached
in ``$METALAB_CACHE`` (:mod:`.embed`); a class split of the dataset is then a
:class:`ClassIndexedDataset` whose "images" are float vectors ``(total, dim)``, on which every
algorithm runs with a vector backbone (``backbone: mlp``). Class splits are fixed in
:mod:`.splits` (:data:`CLASS_SPLITS`); a class's pool is all its sentences from every file part
except out-of-scope.

    corpus = read_dataset("clinc150", data_dir)            # LabelledTexts, counts checked
    split = text_split(corpus, "default", "test", "all-MiniLM-L6-v2")   # ClassIndexedDataset
"""

from metalab.data.text.banking77 import BANKING77_PARTS, read_banking77
from metalab.data.text.clinc150 import CLINC150_PARTS, CLINC150_PER_INTENT, read_clinc150
from metalab.data.text.corpus import LabelledTexts
from metalab.data.text.datasets import READERS, corpus_info, dataset_root, read_dataset
from metalab.data.text.embed import embed_corpus, embedding_cache_entry, text_split, token_split
from metalab.data.text.fewrel import FEWREL_FILES, mark_entities, read_fewrel
from metalab.data.text.files import (
    TEXT_LAYOUT,
    TEXT_SUFFIXES,
    read_labelled_file,
    read_text_folder,
)
from metalab.data.text.hwu64 import HWU64_COLUMNS, HWU64_PARTS, read_hwu64
from metalab.data.text.splits import (
    BANKING77_INTENTS,
    CLASS_SPLITS,
    CLINC150_DOMAINS,
    FEWREL_RELATIONS,
    HWU64_SCENARIOS,
    SplitScheme,
    build_split,
    scheme_of,
    split_names,
    split_rows,
)

__all__ = [
    "BANKING77_INTENTS",
    "BANKING77_PARTS",
    "CLASS_SPLITS",
    "CLINC150_DOMAINS",
    "CLINC150_PARTS",
    "CLINC150_PER_INTENT",
    "FEWREL_FILES",
    "FEWREL_RELATIONS",
    "HWU64_COLUMNS",
    "HWU64_PARTS",
    "HWU64_SCENARIOS",
    "READERS",
    "TEXT_LAYOUT",
    "TEXT_SUFFIXES",
    "LabelledTexts",
    "SplitScheme",
    "build_split",
    "corpus_info",
    "dataset_root",
    "embed_corpus",
    "embedding_cache_entry",
    "mark_entities",
    "read_banking77",
    "read_clinc150",
    "read_dataset",
    "read_fewrel",
    "read_hwu64",
    "read_labelled_file",
    "read_text_folder",
    "scheme_of",
    "split_names",
    "split_rows",
    "text_split",
    "token_split",
]
