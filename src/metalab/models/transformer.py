"""A sentence-transformers encoder as a trainable backbone: token ids in, sentence embeddings out.

The fine-tuned text mode (``data.text_input: tokens``, issue 15): instead of embedding every
sentence once with a frozen encoder (:mod:`metalab.models.text`), a split holds each sentence's
token ids and the learner's backbone is the encoder itself, trained by the meta-learner —
ProtoNet end to end, or only the top L transformer layers (the bottom layers and the token
embeddings stay frozen and run in eval mode, without dropout and without a gradient graph).

Backbone names (``algorithm.backbone``): ``transformer`` trains every weight; ``transformer-topL``
trains the last L transformer layers (L ≥ 1). The model is the run's ``data.encoder`` — the
tokenizer that made the ids and the model that reads them must be the same — so the backbone is
built inside :func:`encoder_scope`, which :func:`metalab.engine.build.build_learner` opens from
the run's config; outside it, building a ``transformer`` backbone is refused in one line.

Inputs: ``(batch, max_tokens)`` token ids (any dtype; padded with the tokenizer's pad id, which
also marks the attention mask); a batch runs sorted by length in chunks, each cut to its longest
sentence.
Output: the encoder's sentence embedding (its own pooling and normalisation), ``(batch, dim)``.

Frozen-prefix cache (``transformer-topL`` with frozen layers below): the frozen layers compute the
same hidden states for a sentence every time it is seen (eval mode, fixed weights), and a K-shot
set is seen again every few steps. So the hidden states that leave the last frozen layer are kept
per sentence (:attr:`TransformerBackbone.CACHE` sentences at most); a chunk whose sentences are
all kept skips the frozen layers and feeds the kept states, zero-padded, to the trained layers
(padded positions are masked out of attention and pooling, so the output is unchanged). Loading
weights, or moving or casting the module, empties it.

    ids = tokenize(["book a flight", "what's my balance"], "all-MiniLM-L6-v2", max_tokens=64)
    with encoder_scope("all-MiniLM-L6-v2"):
        net = build_backbone("transformer-top2", in_channels=64, hidden=64)
    net(ids.float())                                    # (2, 384)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from metalab.errors import ConfigError
from metalab.registry import BACKBONES

_ENCODER: contextvars.ContextVar[str | None] = contextvars.ContextVar("encoder", default=None)
NAME = re.compile(r"transformer(?:-top(\d+))?")


@contextlib.contextmanager
def encoder_scope(encoder: str) -> Iterator[None]:
    """Within it, a ``transformer`` backbone loads `encoder` (the run's ``data.encoder``)."""
    token = _ENCODER.set(encoder)
    try:
        yield
    finally:
        _ENCODER.reset(token)


def model_folder(encoder: str) -> Path:
    """The local sentence-transformers folder `encoder` names; a hash encoder has none."""
    from metalab.models.text import resolve_encoder

    ref = resolve_encoder(encoder)
    if ref.identity.get("kind") != "sentence-transformers":
        raise ConfigError(
            f"data.encoder '{encoder}' has no transformer to fine-tune (data.text_input: tokens); "
            "give all-MiniLM-L6-v2 or a local sentence-transformers model folder"
        )
    return ref.sources[0]


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # no bar per model load


def load_sentence_transformer(folder: Path):
    _offline()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: Path):
    """The tokenizer of the sentence-transformers model in `folder` (its Transformer module's
    folder, from ``modules.json``), without loading the weights."""
    _offline()
    from transformers import AutoTokenizer

    body = folder
    modules = folder / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            if module.get("type", "").endswith("models.Transformer"):
                body = folder / module.get("path", "")
                break
    return AutoTokenizer.from_pretrained(str(body))


def tokenize(texts: list[str], encoder: str, max_tokens: int) -> Tensor:
    """``(len(texts), max_tokens)`` int32 token ids by `encoder`'s tokenizer, truncated and padded
    with its pad id to `max_tokens` (every split and every prediction has the run's input shape;
    the backbone cuts each batch to its longest sentence)."""
    tokenizer = load_tokenizer(model_folder(encoder))
    out = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_tokens,
        padding="max_length",
        return_tensors="pt",
    )
    return out["input_ids"].to(torch.int32)


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers of a Hugging Face model (BERT: ``encoder.layer``): the
    module list as long as ``config.num_hidden_layers``."""
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ConfigError(f"{type(model).__name__}: no list of {depth} transformer layers found")


@BACKBONES.register("transformer")
class TransformerBackbone(nn.Module):
    """The run's sentence encoder, trained: every weight (``top=None``) or its last `top` layers.

    Shapes: (batch, T) token ids → (batch, dim)."""

    CHUNK = 32  # sentences per forward pass
    CACHE = 20_000  # sentences whose frozen-prefix hidden states are kept (see the module doc)
    vmappable = False  # chunks are cut by sentence length: data-dependent shapes

    def __init__(
        self,
        in_channels: int = 64,
        hidden: int = 64,
        track_running_stats: bool = True,
        top: int | None = None,
    ) -> None:
        super().__init__()
        del hidden, track_running_stats  # the encoder fixes its own shape
        encoder = _ENCODER.get()
        if encoder is None:
            raise ConfigError(
                "backbone 'transformer' reads sentences as token ids: set data.text_input: tokens "
                "on a text dataset (it fine-tunes data.encoder)"
            )
        self.model = load_sentence_transformer(model_folder(encoder))
        self.pad_id = int(self.model.tokenizer.pad_token_id or 0)
        self.dim = int(
            (
                getattr(self.model, "get_embedding_dimension", None)
                or (self.model.get_sentence_embedding_dimension)
            )()
        )
        body = self.model[0].auto_model
        positions = getattr(body.config, "max_position_embeddings", None)
        if positions is not None and in_channels > positions:  # in_channels: data.max_tokens
            raise ConfigError(
                f"data.max_tokens = {in_channels} but encoder '{encoder}' reads at most "
                f"{positions} tokens; set data.max_tokens to {positions} or less"
            )
        layers = transformer_layers(body)
        if top is not None and not 1 <= top <= len(layers):
            raise ConfigError(
                f"backbone 'transformer-top{top}': the encoder has {len(layers)} layers; "
                f"give transformer-top1 .. transformer-top{len(layers)}, or transformer for all"
            )
        self.frozen: list[nn.Module] = []
        # sentence ids → its hidden states after the frozen layers (see the module doc)
        self._prefix: dict[tuple[int, ...], Tensor] = {}
        self._keys: list[tuple[int, ...]] | None = None  # the chunk being recorded
        self._replay: Tensor | None = None  # the chunk's kept states, while it replays
        self._tuple_out = False  # the layers' output format (a tuple before transformers 5)
        if top is not None:
            self.model.requires_grad_(False)
            for layer in layers[len(layers) - top :]:
                layer.requires_grad_(True)
            trained = {id(m) for layer in layers[len(layers) - top :] for m in layer.modules()}
            # every module holding no trained layer, containers included: attention modules
            # read their own `training` flag for dropout on the attention weights
            self.frozen = [
                m
                for m in self.model.modules()
                if m is not self.model and not any(id(x) in trained for x in m.modules())
            ]
        self._skips = top is not None and top < len(layers)  # frozen layers below: cache them
        if self._skips:
            self._skip_frozen(list(layers[: len(layers) - top]))
        self.register_load_state_dict_pre_hook(self._forget)
        self.train(True)

    def _skip_frozen(self, below: list[nn.Module]) -> None:
        """Record each chunk's states after the last frozen layer (:meth:`_record`); while
        :attr:`_replay` is set, the frozen layers pass their input on and the last one returns the
        kept states (:class:`_Skippable`). Bound methods and objects, not closures, so that a deep
        copy of the backbone points at the copy."""
        below[-1].register_forward_hook(self._record)
        for i, layer in enumerate(below):
            layer.forward = _Skippable(self, layer.forward, last=i == len(below) - 1)

    def _record(self, module: nn.Module, args, output) -> None:
        self._tuple_out = isinstance(output, tuple)
        if self._keys is None:
            return
        hidden = (output[0] if self._tuple_out else output).detach()
        for row, key in enumerate(self._keys):
            if len(self._prefix) >= self.CACHE:
                break
            states = _outside_transforms(hidden[row, : len(key)].clone())
            if states is None:
                return
            if key:  # not an all-padding row (a shape probe)
                self._prefix[key] = states

    def _forget(self, *args) -> None:
        """New weights, device or dtype: the kept states would not match."""
        self._prefix.clear()

    def _apply(self, fn, recurse=True):
        self._forget()  # .to(device), .double()
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> TransformerBackbone:
        super().train(mode)
        for module in self.frozen:  # frozen layers: no dropout, as when embedding once
            module.eval()
        return self

    def forward(self, ids: Tensor) -> Tensor:
        """Sentences sorted by length and run in chunks of :attr:`CHUNK`, each cut to its longest
        sentence (as sentence-transformers' ``encode`` does): short sentences are not padded to
        the batch's longest. Outputs in input order."""
        ids = ids.flatten(1).long()
        lengths = (ids != self.pad_id).sum(1)
        order = lengths.argsort(descending=True)
        out = []
        for chunk in order.split(self.CHUNK):
            length = max(int(lengths[chunk[0]]), 1)
            part = ids[chunk, :length]
            features = {"input_ids": part, "attention_mask": (part != self.pad_id).long()}
            out.append(self._encode(features, part, lengths[chunk]))
        return torch.cat(out).index_select(0, order.argsort())

    def _encode(self, features: dict, part: Tensor, lengths: Tensor) -> Tensor:
        """One chunk through the encoder, replaying its frozen prefix when every sentence's is
        kept, recording it otherwise (no cache without frozen layers)."""
        if not self._skips:
            return self.model(features)["sentence_embedding"]
        keys = [tuple(row[:n]) for row, n in zip(part.tolist(), lengths.tolist())]
        kept = [self._prefix.get(key) for key in keys]
        try:
            if all(k is not None for k in kept):
                replay = kept[0].new_zeros(len(kept), part.shape[1], kept[0].shape[-1])
                for row, states in enumerate(kept):
                    replay[row, : len(states)] = states
                self._replay = replay.to(part.device)
            else:
                self._keys = keys
            return self.model(features)["sentence_embedding"]
        finally:
            self._replay = self._keys = None


def _outside_transforms(t: Tensor) -> Tensor | None:
    """`t`'s value outside torch.func's gradient transforms (an inner loop runs the frozen layers
    inside ``torch.func.grad``; their states do not depend on the differentiated weights, so the
    value is the same). None inside vmap (states per batch element) or where this torch build
    gives no way to unwrap: nothing is kept then."""
    functorch = getattr(torch._C, "_functorch", None)
    try:
        while functorch is not None and functorch.is_functorch_wrapped_tensor(t):
            if functorch.is_batchedtensor(t):
                return None
            t = functorch.get_unwrapped(t)
    except (AttributeError, RuntimeError):
        return None
    return t


class _Skippable:
    """A frozen layer's forward: the layer itself, or, while its backbone replays a chunk, its
    input passed on (the last frozen layer: the kept states) in the layer's output format."""

    def __init__(self, owner: TransformerBackbone, forward, last: bool) -> None:
        self.owner, self.forward, self.last = owner, forward, last

    def __call__(self, hidden: Tensor, *args, **kwargs):
        replay = self.owner._replay
        if replay is None:
            return self.forward(hidden, *args, **kwargs)
        out = replay if self.last else hidden
        return (out,) if self.owner._tuple_out else out


def build_transformer(name: str, **kwargs) -> nn.Module | None:
    """``transformer`` or ``transformer-topL`` built (None for any other backbone name)."""
    match = NAME.fullmatch(name)
    if match is None:
        return None
    top = int(match.group(1)) if match.group(1) else None
    return TransformerBackbone(**kwargs, top=top)
