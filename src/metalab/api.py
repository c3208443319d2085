"""The Python API: what the command line does, as functions (exported by ``metalab``).

    import metalab

    cfg = metalab.load_config("configs/omniglot/protonet-cpu.yaml", ["train.steps=200"])
    metalab.train(cfg, "runs/pn", data_dir="../shared/data")
    report = metalab.evaluate("runs/pn", ways=5, shots=1)          # mean accuracy ± 95% CI
    rows = metalab.predict("runs/pn", {"alpha": ["a1.png"], "beta": ["b1.png"]}, ["q.png"])
    rows = metalab.predict("runs/pn-b77", "intents.csv", ["what's my balance"])  # a text run

Every function takes a run directory (or checkpoint file) where the command line does, raises a
:class:`~metalab.errors.MetalabError` with a one-line message on bad input, and works unchanged
under torchrun (ranks share the work; every rank returns the same result).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from metalab.config import Config
from metalab.config import load_config as _load_config
from metalab.errors import ConfigError

PathLike = str | Path


def load_config(path: PathLike, overrides: Sequence[str] = ()) -> Config:
    """A YAML config checked against the typed schema, with ``key=value`` overrides applied
    (e.g. ``["train.steps=200", "algorithm.distance=cosine"]``)."""
    return _load_config(str(path), list(overrides))


def train(
    config: Config | PathLike,
    out: PathLike,
    *,
    data_dir: PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
    registry: str | None = None,
):
    """Meta-train ``config`` (a :class:`~metalab.config.Config` or a YAML path) into the run folder
    ``out``; returns the :class:`~metalab.engine.trainer.TrainResult` (step, why it stopped, best
    validation score). ``data_dir`` sets ``data.data_dir``. The run is recorded in the run
    registry like ``metalab train``'s (``registry``: a SQLAlchemy URL or SQLite file, ``"off"``;
    default ``$METALAB_REGISTRY`` or the user's registry)."""
    import dataclasses

    from metalab.engine.trainer import Trainer
    from metalab.experiments.record import fit_recorded

    cfg = config if isinstance(config, Config) else load_config(config)
    if data_dir is not None:
        resolved = str(Path(data_dir).expanduser().resolve())
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=resolved))
    trainer = Trainer(cfg, out, resume, progress=progress)
    return fit_recorded(trainer, out, "metalab.train(...)", registry)


def load_learner(run: PathLike, *, device: str = "auto", checkpoint: str = "best"):
    """The trained learner of a run folder or checkpoint file (in eval mode), with its config and
    checkpoint state: ``(learner, config, state)``."""
    from metalab.engine.build import load_learner as _load
    from metalab.engine.build import resolve_device

    learner, cfg, state = _load(run, resolve_device(device), checkpoint)
    return learner.eval(), cfg, state


def evaluate(
    run: PathLike,
    *,
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    split: str | None = None,
    dataset: str | None = None,
    data_dir: PathLike | None = None,
    device: str = "auto",
    checkpoint: str = "best",
    ensemble: Sequence[PathLike] = (),
    registry: str | None = None,
) -> dict[str, Any]:
    """The field's protocol on a trained run: fixed test episodes (a function of split, ways,
    shots, queries, episodes and seed), ``accuracy`` and ``ci95`` in percent (``mse`` for
    regression) — the report ``metalab eval --json`` prints. Unset arguments take the run's
    ``eval:`` settings; ``dataset``/``data_dir`` score it on another dataset, decoded as the run's
    own (cross-domain); ``ensemble`` scores ``run`` with these runs, their class probabilities
    averaged (``metalab eval --ensemble``). Recorded in the run registry as ``metalab eval`` is
    (``registry`` as in :func:`train`)."""
    from metalab.engine.distributed import current_world
    from metalab.experiments.record import record_eval
    from metalab.protocols import PROTOCOLS, Evaluation, choose

    options = argparse.Namespace(
        ways=ways,
        shots=shots,
        queries=queries,
        episodes=episodes,
        seed=seed,
        split=split,
        dataset=dataset,
        data_dir=str(data_dir) if data_dir is not None else None,
        device=device,
        checkpoint=checkpoint,
        ensemble=[str(r) for r in ensemble],
    )
    ev = Evaluation.load(run, options)
    report = choose(PROTOCOLS, ev).run(ev)
    if ev.members:
        report["ensemble"] = ev.members
    if current_world().is_main:
        record_eval(
            report, ev.cfg, ev.__dict__.get("split"), "metalab.evaluate(...)", registry, ev.data
        )
    return report


def compare(
    runs: Sequence[PathLike],
    out: PathLike,
    *,
    ways: Sequence[int] = (5, 20),
    shots: Sequence[int] = (1, 5),
    queries: int = 15,
    episodes: int = 1000,
    seed: int = 0,
    dataset: str | None = None,
    data_dir: PathLike | None = None,
    device: str = "auto",
    checkpoint: str = "best",
    registry: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Several runs on the same fixed episodes for every (ways, shots): mean ± CI per method and
    paired differences; writes compare.md, compare.json and compare.png into ``out``. Recorded in
    the run registry as ``metalab compare`` is (``registry`` as in :func:`train`). ``command``:
    the command line a script calling this ran, recorded in the report (default
    ``metalab.compare(...)``)."""
    from metalab.engine.distributed import current_world, init_world
    from metalab.experiments.record import record_compare
    from metalab.protocols.compare import compare_runs

    report = compare_runs(
        [Path(r) for r in runs],
        Path(data_dir) if data_dir is not None else None,
        Path(out),
        ways=tuple(ways),
        shots=tuple(shots),
        queries=queries,
        episodes=episodes,
        seed=seed,
        device=init_world(device)[1],
        checkpoint=checkpoint,
        command=command or "metalab.compare(...)",
        dataset=dataset,
    )
    if current_world().is_main:
        record_compare(report, registry, dataset)
    return report


def predict(
    run: PathLike,
    support: PathLike | Mapping[str, Sequence[PathLike]],
    queries: Sequence[PathLike] | str,
    *,
    device: str = "auto",
    checkpoint: str = "best",
) -> list[dict[str, Any]]:
    """Adapt a trained learner to your own few examples and classify queries: images for a run
    trained on images, sentences for a run trained on text (embedded by the run's encoder).

    Args:
        run: a run folder or checkpoint.
        support: images: a folder of class folders (``DIR/<class>/<images>``) or
            ``{class: [image files]}``; text: a ``label,text`` CSV or JSONL file or
            ``{class: [sentences]}``. Any number of examples per class (at least one), at least
            two classes.
        queries: image files, or sentences (a single string is one query).

    Returns:
        One dict per query: ``query``, ``class``, ``probability`` and ``probabilities`` (by class).
    """
    from metalab.tasks.episodes import Episode, to_float

    learner, cfg, state = load_learner(run, device=device, checkpoint=checkpoint)
    if isinstance(queries, (str, Path)):
        queries = [queries]
    queries = list(queries)
    if _is_text_run(cfg):
        names, counts, support_x, query_x = _text_inputs(learner, cfg, state, support, queries)
    else:
        names, counts, support_x, query_x = _image_inputs(cfg, state, support, queries)
    if len(names) < 2:
        raise ConfigError(
            f"the support set has {len(names)} class(es): a prediction needs at least 2 to choose "
            f"between (with one, every query would get probability 1)"
        )
    if learner.fixed_ways and len(names) != learner.ways:
        raise ConfigError(
            f"the support set has {len(names)} classes, but {state['path']} "
            f"({cfg.algorithm_name}) has one output unit per class and was trained with "
            f"{learner.ways}: give it exactly {learner.ways} classes"
        )
    labels = torch.repeat_interleave(torch.arange(len(names)), counts)
    episode = Episode(
        to_float(support_x)[None],
        labels[None],
        to_float(query_x)[None],
        torch.zeros(1, len(query_x), dtype=torch.long),
        len(names),
    ).to(next(learner.parameters()).device)
    with torch.no_grad():
        probs = learner.predict(episode)[0].softmax(-1).cpu()
    return [
        {
            "query": str(q),
            "class": names[int(p.argmax())],
            "probability": round(float(p.max()), 4),
            "probabilities": {c: round(float(v), 4) for c, v in zip(names, p)},
        }
        for q, p in zip(queries, probs)
    ]


def _is_text_run(cfg: Config) -> bool:
    from metalab.tasks.text_sources import TEXT_DATASETS

    return cfg.data.dataset in TEXT_DATASETS


def _image_inputs(cfg: Config, state: dict, support, queries: list) -> tuple:
    """Class names, examples per class, support images and query images of an image run."""
    from metalab.data.base import Preprocess
    from metalab.data.folder import load_image_folder
    from metalab.data.imaging import load_images
    from metalab.data.text import TEXT_SUFFIXES

    if state.get("preprocess") is None:
        raise ConfigError(
            f"{state['path']} was trained on '{cfg.data.dataset}', which has no images; predict "
            f"classifies images with a run trained on an image dataset, sentences with one "
            f"trained on text"
        )
    if not isinstance(support, Mapping) and Path(support).suffix.lower() in TEXT_SUFFIXES:
        raise ConfigError(
            f"--support {support} is a label,text file, but {state['path']} was trained on images "
            f"('{cfg.data.dataset}'): give a folder of class folders (SUPPORT/<class>/<images>)"
        )
    if not queries:
        raise ConfigError("no query images given: pass at least one image file")
    pre = Preprocess(**state["preprocess"])
    if isinstance(support, Mapping):
        names = list(support)
        images = [load_images([Path(p) for p in support[c]], pre) for c in names]
        counts = torch.tensor([len(x) for x in images])
        support_x = torch.cat(images) if images else torch.empty(0)
    else:
        folder = load_image_folder(Path(support), pre, name=f"support folder {support}")
        names, counts, support_x = folder.class_names, folder.counts, folder.images
    return names, counts, support_x, load_images([Path(q) for q in queries], pre)


def _text_inputs(learner, cfg: Config, state: dict, support, queries: list) -> tuple:
    """Class names, sentences per class, and the support and query sentences as the run reads them
    (embedded by its ``data.encoder``, or its token ids)."""
    from metalab.data.text.support import query_sentences, sentence_inputs, support_sentences

    run = f"{state['path']} ('{cfg.data.dataset}')"
    names, texts = support_sentences(support, run)
    sentences = query_sentences(queries, run)
    flat = [t for class_texts in texts for t in class_texts]
    device = str(next(learner.parameters()).device)
    vectors = sentence_inputs(flat + sentences, cfg.data, device)
    counts = torch.tensor([len(t) for t in texts])
    return names, counts, vectors[: len(flat)], vectors[len(flat) :]
