"""Text datasets as task sources: intents (``clinc150``, ``banking77``, ``hwu64``), relations
(``fewrel``) and a user's own ``label,text`` file or folder (``text``).

Each split is a :class:`~metalab.data.base.ClassIndexedDataset` of sentence embeddings (input shape
``(dim,)``, 384 for the default all-MiniLM-L6-v2), embedded once by ``data.encoder`` and cached, so
every algorithm runs on it with a vector backbone (``algorithm.backbone: mlp``). With
``data.text_input: tokens`` a split holds token ids instead (``(max_tokens,)``), for a
backbone that fine-tunes the encoder (``transformer``, ``transformer-topL``). ``data.scheme``
picks the class split (:data:`metalab.data.text.CLASS_SPLITS`; the config's default ``vinyals``
means the dataset's ``default``); ``data.data_dir`` holds the dataset's folder (or ``text/<name>``),
for ``text`` the user's file or a folder of ``train``, ``val``, ``test`` files.
"""

from __future__ import annotations

from metalab.config import DataConfig
from metalab.data.base import ClassIndexedDataset
from metalab.data.text import corpus_info, read_dataset, split_names, text_split, token_split
from metalab.registry import DATASETS
from metalab.tasks.sources import DatasetSpec, data_dir_of

TEXT_DATASETS = ("clinc150", "banking77", "hwu64", "fewrel", "text")


def _spec(name: str) -> DatasetSpec:
    def load(data: DataConfig, split: str) -> ClassIndexedDataset:
        corpus = read_dataset(name, data_dir_of(data), data.scheme)
        if data.text_input == "tokens":
            return token_split(corpus, data.scheme, split, data.encoder, data.max_tokens)
        return text_split(corpus, data.scheme, split, data.encoder)

    def splits(data: DataConfig) -> tuple[str, ...]:
        if name == "text":  # the files present decide
            return split_names(name, data.scheme, read_dataset(name, data_dir_of(data)))
        return split_names(name, data.scheme)

    def info(data: DataConfig) -> dict:
        corpus = read_dataset(name, data_dir_of(data), data.scheme)
        return corpus_info(corpus, data.scheme) | {"data_dir": str(data_dir_of(data))}

    return DatasetSpec(load=load, splits=splits, info=info)


for _name in TEXT_DATASETS:
    DATASETS.register(_name)(_spec(_name))
