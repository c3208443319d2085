"""Lake, Salakhutdinov & Tenenbaum (Science, 2015)'s one-shot classification challenge on Omniglot.

Twenty runs of 20-way 1-shot classification within one alphabet of the evaluation set: each run
shows one image of each of 20 characters (``training/``) and 20 test images (``test/``), one per
character, drawn by other people; a trial is one test image, so the challenge has 400 trials.
Published error rates: humans 4.5%, Bayesian Program Learning (BPL) 3.3%, a Siamese ConvNet (Koch
et al. 2015) 8.0%, a simple ConvNet 13.5%; trained on a minimal background set of 5 alphabets only
(small1 / small2): BPL 4.3% / 4.0%, the ConvNet 24.0% / 22.3%.

Two evaluation modes:

- :func:`evaluate_challenge` reads the official runs
  (``python/one-shot-classification/all_runs.zip`` of github.com/brendenlake/omniglot, the zip
  itself or unzipped): folders ``run01/`` … ``run20/``, each with ``class_labels.txt`` whose lines
  pair a test image with its true training image, e.g.
  ``run01/test/item01.png run01/training/class08.png`` (paths relative to the folder holding the
  runs).
- :func:`evaluate_within_alphabet` samples fixed 20-way 1-shot episodes (one query per class)
  within one alphabet of the evaluation set (``data.scheme: lake``, split ``test``,
  ``within_group``) — the same kind of task in any number, with a confidence interval. Unlike the
  official runs it does not control that support and query images come from different drawers.

The runs come from the evaluation alphabets, so a model must be trained on the background alphabets
only (``data.scheme`` lake, lake-small1 or lake-small2), as Lake et al. did.
:func:`check_background_only` refuses a run trained on the Vinyals split, which trains on some
evaluation alphabets. :class:`Challenge` is the protocol ``metalab eval --challenge-runs`` and
``--within-alphabet`` pick.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from metalab.algorithms.base import MetaLearner, accuracy, eval_mode
from metalab.config import Config
from metalab.data.base import Preprocess
from metalab.data.imaging import decode_image
from metalab.engine.evaluate import evaluate
from metalab.errors import ConfigError, DataError
from metalab.protocols.base import Evaluation, Protocol
from metalab.tasks.episodes import Episode, FixedEpisodes, to_float
from metalab.tasks.sources import load_split

LABELS = "class_labels.txt"
BACKGROUND_ONLY = ("lake", "lake-small1", "lake-small2")
BACKGROUND_PRESETS = (
    "configs/omniglot/baseline-lake.yaml",
    "configs/omniglot/baseline-pp-lake.yaml",
    "configs/omniglot/protonet-lake.yaml",
    "configs/omniglot/{baseline,protonet}-lake-small1.yaml",
    "configs/omniglot/{baseline,protonet}-lake-small2.yaml",
)
_RUN = re.compile(r"^(.*?)(run\d+)/" + re.escape(LABELS) + "$")


@dataclass
class ChallengeRun:
    """One run: an episode of one task with support = the training images (sorted by file name,
    label = position) and query = the test images in ``class_labels.txt`` order, labelled with
    their true class."""

    name: str
    support_files: list[str]
    query_files: list[str]
    episode: Episode


@contextlib.contextmanager
def _open_runs(path: Path) -> Iterator[tuple[list[str], Callable[[str], bytes], str]]:
    """The runs' ``class_labels.txt`` paths, a reader of paths relative to the folder holding the
    runs, and how to name that folder in messages. ``path``: all_runs.zip, the unzipped folder, or
    a folder holding either."""
    path = Path(path)
    if path.is_dir() and not any(path.glob(f"*/{LABELS}")):
        for candidate in (path / "all_runs.zip", path / "all_runs"):
            if candidate.exists():
                path = candidate
                break
    if path.is_file() and path.suffix == ".zip":
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"cannot read {path} ({e}); download all_runs.zip again") from None
        names = set(archive.namelist())
        labels = sorted(n for n in names if _RUN.match(n))
        prefix = _RUN.match(labels[0]).group(1) if labels else ""

        def read(rel: str) -> bytes:
            if prefix + rel not in names:
                raise DataError(f"{path} has no member {prefix + rel}")
            return archive.read(prefix + rel)

        with archive:
            yield [n[len(prefix) :] for n in labels], read, str(path)
        return
    if path.is_dir():

        def read_file(rel: str) -> bytes:
            if not (path / rel).is_file():
                raise DataError(f"{path / rel} not found")
            return (path / rel).read_bytes()

        yield (
            sorted(p.relative_to(path).as_posix() for p in path.glob(f"*/{LABELS}")),
            read_file,
            str(path),
        )
        return
    raise DataError(
        f"challenge runs {path} not found: pass all_runs.zip (github.com/brendenlake/omniglot, "
        f"python/one-shot-classification/) or the folder it unzips to (run01/ ... run20/)"
    )


def read_challenge_runs(path: Path, preprocess: Preprocess) -> list[ChallengeRun]:
    """Read the official runs format into one 1-task episode per run, images decoded as
    ``preprocess`` says.

    Shapes per run: support_x (1, T, C, H, W) with T training images, support_y (1, T) = 0..T-1;
    query_x (1, Q, C, H, W), query_y (1, Q) the position of each test image's true training image.
    """
    with _open_runs(path) as (label_files, read, where):
        if not label_files:
            raise DataError(
                f"{where} holds no run folders with {LABELS} (expected run01/{LABELS} ... "
                f"run20/{LABELS})"
            )
        return [_read_run(label_file, read, where, preprocess) for label_file in label_files]


def _read_run(
    label_file: str, read: Callable[[str], bytes], where: str, preprocess: Preprocess
) -> ChallengeRun:
    """One run from its class_labels.txt: the training images it names are the support set
    (sorted)."""
    run = label_file.split("/")[0]
    pairs = [line.split() for line in read(label_file).decode().splitlines() if line.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise DataError(
            f"{where}/{label_file}: expected lines 'runNN/test/itemNN.png "
            "runNN/training/classNN.png'"
        )
    support_files = sorted({train for _, train in pairs})
    query_files = [test for test, _ in pairs]
    query_y = torch.tensor([support_files.index(train) for _, train in pairs])

    def load(files: list[str]) -> torch.Tensor:
        return torch.stack([decode_image(read(f), preprocess, f"{where}/{f}") for f in files])

    episode = Episode(
        to_float(load(support_files))[None],
        torch.arange(len(support_files))[None],
        to_float(load(query_files))[None],
        query_y[None],
        len(support_files),
    )
    return ChallengeRun(run, support_files, query_files, episode)


def evaluate_challenge(
    learner: MetaLearner,
    runs_dir: Path,
    preprocess: Preprocess,
    device: torch.device = torch.device("cpu"),
) -> dict:
    """Error rate of ``learner.predict`` on the official runs (every test image is one trial).

    Returns:
        ``{"error_rate": percent over all trials, "trials": 400, "runs": 20,
        "per_run_error": [percent, ...], "errors": count}`` (trials and runs as found in
        ``runs_dir``).
    """
    runs = read_challenge_runs(runs_dir, preprocess)
    wrong, per_run = 0, []
    with eval_mode(learner), torch.no_grad():
        for run in runs:
            episode = run.episode.to(device)
            correct = accuracy(learner.predict(episode), episode.query_y)  # (1,)
            errors = round(float(1.0 - correct) * episode.query_y.shape[1])
            wrong += errors
            per_run.append(round(100.0 * errors / episode.query_y.shape[1], 4))
    trials = sum(run.episode.query_y.shape[1] for run in runs)
    return {
        "error_rate": round(100.0 * wrong / trials, 4),
        "trials": trials,
        "runs": len(runs),
        "per_run_error": per_run,
        "errors": wrong,
    }


def check_background_only(cfg: Config) -> str | None:
    """Refuse a run whose training data may include the challenge's evaluation alphabets.

    Returns None for Omniglot trained on background alphabets only (``data.scheme`` lake,
    lake-small1, lake-small2) and a warning string for any other dataset (metalab cannot tell what
    a folder holds).

    Raises:
        ConfigError: the run was trained on the Vinyals split, whose train and val splits include
            evaluation alphabets; the message names the background-only presets.
    """
    data = cfg.data
    if data.dataset != "omniglot":
        return (
            f"this run was trained on dataset '{data.dataset}' ({data.data_dir}); metalab cannot "
            "check that it holds none of Omniglot's evaluation alphabets, from which the "
            "challenge's runs are drawn: the error rate means nothing if it does"
        )
    if data.scheme not in BACKGROUND_ONLY:
        raise ConfigError(
            f"this run was trained on Omniglot data.scheme '{data.scheme}', whose training "
            "classes include evaluation alphabets, from which the one-shot challenge's runs are "
            "drawn; train on the background alphabets only "
            f"(data.scheme {', '.join(BACKGROUND_ONLY)}), e.g. "
            f"{', '.join(BACKGROUND_PRESETS)}"
        )
    return None


def within_alphabet_episodes(
    cfg: Config,
    data_dir: Path | None = None,
    episodes: int = 1000,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
) -> FixedEpisodes:
    """Fixed 20-way 1-shot episodes with one query per class, each within one evaluation alphabet
    (Omniglot ``lake`` scheme, split ``test``, no rotations), at the run's image size."""
    data = dataclasses.replace(
        cfg.data,
        dataset="omniglot",
        scheme="lake",
        rotations=None,
        within_group=True,
        data_dir=str(data_dir) if data_dir else cfg.data.data_dir,
    )
    split = load_split(data, "test").to(device)
    return FixedEpisodes(split, 20, 1, 1, episodes, seed, within_group=True)


def evaluate_within_alphabet(
    learner: MetaLearner,
    cfg: Config,
    data_dir: Path | None = None,
    episodes: int = 1000,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    batch: int = 25,
) -> dict:
    """Error rate (and its 95% CI) of ``learner`` on :func:`within_alphabet_episodes`: 20 trials
    per episode."""
    fixed = within_alphabet_episodes(cfg, data_dir, episodes, seed, device)
    result = evaluate(learner, fixed, batch)
    return {
        "error_rate": round(100.0 - result.accuracy, 4),
        "ci95": round(result.ci95, 4),
        "trials": 20 * episodes,
        "episodes": episodes,
        "ways": 20,
        "shots": 1,
        "seed": seed,
        "dataset": fixed.sampler.dataset.name,
        "protocol": "within-alphabet 20-way 1-shot",
    }


class Challenge(Protocol):
    """``metalab eval --challenge-runs RUNS`` (the official 20 runs) or ``--within-alphabet``
    (fixed 20-way 1-shot episodes within one evaluation alphabet): error rate in percent."""

    name = "omniglot-challenge"
    flags = ("challenge_runs", "within_alphabet")

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--challenge-runs",
            metavar="DIR",
            help="Lake et al.'s one-shot challenge: the official runs (all_runs.zip or its "
            "folder); reports error_rate",
        )
        parser.add_argument(
            "--within-alphabet",
            action="store_true",
            help="20-way 1-shot within-alphabet episodes on the evaluation alphabets (Lake et al. "
            "2015)",
        )

    def refusal(self, ev: Evaluation) -> str | None:
        runs = getattr(ev.options, "challenge_runs", None)
        flag = "--challenge-runs" if runs else "--within-alphabet"
        dataset = getattr(ev.options, "dataset", None)
        pre = ev.state.get("preprocess")
        if dataset and dataset != "omniglot":
            return (
                f"{flag} evaluates on Omniglot's evaluation alphabets, not on --dataset {dataset}; "
                "drop --dataset"
            )
        if pre is None:
            return (
                f"{flag} classifies images, but {ev.state['path']} was trained on "
                f"'{ev.cfg.data.dataset}', which has none; evaluate a run trained on images"
            )
        within = flag == "--within-alphabet"
        if (
            within
            and ev.cfg.data.dataset != "omniglot"
            and not getattr(ev.options, "data_dir", None)
        ):
            return (
                f"{flag} draws Omniglot's evaluation alphabets, but {ev.state['path']} was trained "
                f"on '{ev.cfg.data.dataset}'; pass --data-dir DIR holding Omniglot"
            )
        if within and pre["channels"] != 1:
            return (
                f"{flag} draws grayscale Omniglot images, but {ev.state['path']} was trained on "
                f"{pre['channels']}-channel images; use --challenge-runs, decoded as the run was"
            )
        return None

    def run(self, ev: Evaluation) -> dict:
        options = ev.options
        warning = check_background_only(ev.cfg)  # refuses a run trained on evaluation alphabets
        if getattr(options, "challenge_runs", None):
            report = evaluate_challenge(
                ev.learner,
                Path(options.challenge_runs),
                Preprocess(**ev.state["preprocess"]),
                ev.device,
            )
        else:
            data_dir = getattr(options, "data_dir", None)
            report = evaluate_within_alphabet(
                ev.learner,
                ev.cfg,
                Path(data_dir) if data_dir else None,
                getattr(options, "episodes", None) or 1000,
                getattr(options, "seed", None) or 0,
                ev.device,
            )
        return report | {
            "algorithm": ev.cfg.algorithm_name,
            "checkpoint": str(ev.state["path"]),
            "step": ev.state["step"],
            "warning": warning,
        }

    def text(self, report: dict) -> str:
        warning = report.get("warning")
        return (
            f"{report['algorithm']}: error rate {report['error_rate']:.2f}% over "
            f"{report['trials']} trials" + (f" (warning: {warning})" if warning else "")
        )
