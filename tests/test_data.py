"""Data: Omniglot splits and decoding, the decode cache, user image folders, downloads (never
online)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalab.data import (
    Preprocess,
    cache,
    download,
    load_image_folder,
    load_images,
    load_omniglot,
    omniglot_info,
)
from metalab.data.omniglot import find_omniglot_root
from metalab.errors import ConfigError, DataError

VINYALS_SIZES = {"train": 1028, "val": 172, "test": 423, "trainval": 1200}


@pytest.fixture(scope="module")
def vinyals(data_dir: Path) -> dict:
    return {split: load_omniglot(data_dir, "vinyals", split) for split in VINYALS_SIZES}


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _fake_omniglot(root: Path, characters: int = 2, drawings: int = 3, size: int = 28) -> Path:
    """root/images_background/Alpha/characterNN/*.png with random one-bit-like images."""
    rng = np.random.default_rng(0)
    for c in range(1, characters + 1):
        folder = root / "images_background" / "Alpha" / f"character{c:02d}"
        folder.mkdir(parents=True)
        for d in range(1, drawings + 1):
            pixels = np.where(rng.random((size, size)) < 0.8, 255, 0).astype(np.uint8)
            (folder / f"{c:04d}_{d:02d}.png").write_bytes(_png(pixels))
    return root


# --- Omniglot on the shared data ------------------------------------------------------------------


@pytest.mark.parametrize("split", list(VINYALS_SIZES))
def test_vinyals_split_matches_reference_files(vinyals, data_dir, split):
    reference = (data_dir / "omniglot" / "splits" / "vinyals" / f"{split}.txt").read_text().split()
    assert len(reference) == len(set(reference)) == VINYALS_SIZES[split] * 4
    assert set(vinyals[split].class_names) == set(reference)


def test_vinyals_images(vinyals):
    for split, dataset in vinyals.items():
        assert dataset.num_classes == VINYALS_SIZES[split] * 4
        assert dataset.counts.eq(20).all()
        assert dataset.images.shape == (VINYALS_SIZES[split] * 80, 1, 28, 28)
        assert dataset.images.dtype == torch.uint8
        assert dataset.name == f"omniglot-vinyals-{split}"
    images = vinyals["test"].images
    assert (
        images.float().mean() < 60 and images.max() == 255 and images.min() == 0
    )  # bright strokes on black


def test_rotation_classes_are_rot90_of_upright(vinyals):
    dataset = vinyals["val"]
    index = {name: i for i, name in enumerate(dataset.class_names)}

    def images(name: str) -> torch.Tensor:
        c = index[name]
        return dataset.images[dataset.offsets[c] : dataset.offsets[c] + dataset.counts[c]]

    upright = images("Hebrew/character03/rot000")
    for degrees in (90, 180, 270):
        rotated = torch.rot90(upright, degrees // 90, (-2, -1))
        assert torch.equal(images(f"Hebrew/character03/rot{degrees:03d}"), rotated)
    assert dataset.group_names[dataset.groups[index["Hebrew/character03/rot090"]]] == "Hebrew"


def test_rotation_is_counter_clockwise_like_pil(tmp_path):
    _fake_omniglot(tmp_path, characters=1, drawings=1)
    dataset = load_omniglot(
        tmp_path, "lake", "train", rotations=(0, 90), cache_dir=tmp_path / "cache"
    )
    (path,) = (tmp_path / "images_background").rglob("*.png")
    rotated = 255 - torch.from_numpy(np.array(Image.open(path).convert("L").rotate(90)))
    assert dataset.class_names == ["Alpha/character01/rot000", "Alpha/character01/rot090"]
    assert torch.equal(dataset.images[1, 0], rotated)


@pytest.mark.parametrize(
    ("scheme", "train", "test"),
    [("lake", 964, 659), ("lake-small1", 136, 659), ("lake-small2", 156, 659)],
)
def test_lake_schemes(data_dir, scheme, train, test):
    for split, characters in (("train", train), ("test", test)):
        dataset = load_omniglot(data_dir / "omniglot", scheme, split)
        assert dataset.num_classes == characters and dataset.counts.eq(20).all()
        assert all(name.endswith("/rot000") for name in dataset.class_names)


def test_omniglot_info(data_dir):
    info = omniglot_info(data_dir)
    assert set(info["sources"]) == {
        "images_background",
        "images_evaluation",
        "images_background_small1",
        "images_background_small2",
    }
    for split, characters in VINYALS_SIZES.items():
        numbers = info["splits"][split]
        assert numbers["characters"] == characters
        assert (numbers["classes"], numbers["images"]) == (characters * 4, characters * 80)
    assert [info["splits"][s]["alphabets"] for s in ("train", "val", "test")] == [33, 5, 13]
    lake = omniglot_info(data_dir, "lake")["splits"]
    assert (lake["train"]["alphabets"], lake["train"]["characters"]) == (30, 964)
    assert (lake["test"]["alphabets"], lake["test"]["images"]) == (20, 659 * 20)


def test_root_is_found_from_parent_or_itself(data_dir):
    assert (
        find_omniglot_root(data_dir)
        == find_omniglot_root(data_dir / "omniglot")
        == data_dir / "omniglot"
    )


def test_unknown_scheme_split_or_rotation(data_dir):
    with pytest.raises(ConfigError, match="'imagenet'.*vinyals, lake"):
        load_omniglot(data_dir, "imagenet")
    with pytest.raises(ConfigError, match="'val'.*train, test"):
        load_omniglot(data_dir, "lake", "val")
    with pytest.raises(ConfigError, match="rotations"):
        load_omniglot(data_dir, rotations=(45,))


# --- Omniglot errors on fakes ---------------------------------------------------------------------


def test_missing_omniglot_says_what_to_download(tmp_path):
    with pytest.raises(DataError, match="images_background.zip.*--download") as error:
        load_omniglot(tmp_path / "nowhere")
    assert "\n" not in str(error.value)


def test_missing_evaluation_source_is_named(tmp_path):
    _fake_omniglot(tmp_path)
    with pytest.raises(DataError, match="images_evaluation.zip not found"):
        load_omniglot(tmp_path, "lake", "test", cache_dir=tmp_path / "cache")


def test_corrupt_png_in_folder_is_named(tmp_path):
    _fake_omniglot(tmp_path)
    bad = tmp_path / "images_background" / "Alpha" / "character02" / "0002_02.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="0002_02.png.*remove or replace"):
        load_omniglot(tmp_path, "lake", "train", cache_dir=tmp_path / "cache")


def test_corrupt_png_in_zip_is_named(tmp_path):
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        archive.writestr(
            "images_background/Alpha/character01/0001_01.png", _png(np.zeros((28, 28), np.uint8))
        )
        archive.writestr(
            "images_background/Alpha/character01/0001_02.png",
            _png(np.zeros((28, 28), np.uint8))[:40],
        )
    with pytest.raises(
        DataError, match=r"images_background.zip:images_background/Alpha/character01/0001_02.png"
    ):
        load_omniglot(tmp_path, "lake", "train", cache_dir=tmp_path / "cache")


def test_download_flag_fetches_missing_files(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(
        "metalab.data.omniglot.download_omniglot", lambda root, names: fetched.append((root, names))
    )
    with pytest.raises(DataError):  # the fake download wrote nothing
        load_omniglot(tmp_path, "lake-small1", "test", download=True)
    assert fetched == [(tmp_path, ["images_evaluation.zip"])]


# --- cache
# ------------------------------------------------------------------------------------------


@pytest.fixture
def cached(tmp_path):
    """A source file, a counting build and a call of load_or_build on them."""
    source = tmp_path / "source.txt"
    source.write_text("v1")
    builds = []

    def build():
        builds.append(1)
        return {"x": torch.arange(6, dtype=torch.uint8).reshape(2, 3), "names": ["a", "b"], "n": 2}

    def load():
        return cache.load_or_build("test", {"size": 3}, [source], build, tmp_path / "cache")

    return source, builds, load


def test_cache_hit_skips_build(cached):
    _, builds, load = cached
    first, second = load(), load()
    assert len(builds) == 1
    assert (
        torch.equal(first["x"], second["x"]) and second["names"] == ["a", "b"] and second["n"] == 2
    )


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_is_rebuilt(cached, tmp_path, caplog, damage):
    _, builds, load = cached
    load()
    (path,) = (tmp_path / "cache").glob("test-*.pt")
    data = path.read_bytes()
    path.write_bytes(b"garbage" * 100 if damage == "garbage" else data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="metalab"):
        assert load()["n"] == 2
    assert len(builds) == 2 and "rebuilding" in caplog.text
    load()
    assert len(builds) == 2  # the rebuilt file is valid


def test_tampered_payload_fails_checksum(cached, tmp_path, caplog):
    _, builds, load = cached
    load()
    (path,) = (tmp_path / "cache").glob("test-*.pt")
    entry = torch.load(path, weights_only=True)
    entry["payload"]["x"][0, 0] = 99
    torch.save(entry, path)
    with caplog.at_level(logging.WARNING, logger="metalab"):
        assert load()["x"][0, 0] == 0
    assert len(builds) == 2 and "does not match" in caplog.text


def test_changed_source_rebuilds(cached):
    source, builds, load = cached
    load()
    source.write_text("v2, longer")
    load()
    assert len(builds) == 2


def test_unwritable_cache_still_returns_payload(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="metalab"):
        payload = cache.load_or_build("t", {}, [blocker], lambda: {"n": 1}, blocker / "cache")
    assert payload == {"n": 1} and "cannot write the cache" in caplog.text


# --- image folders and query images ---------------------------------------------------------------


def _fake_folder(root: Path) -> Path:
    for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), colour).save(root / name / f"{i}.jpg")
    return root


def test_image_folder(tmp_path, caplog):
    root = _fake_folder(tmp_path / "pets")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level(logging.WARNING, logger="metalab"):
        dataset = load_image_folder(root, Preprocess(16, 3, False), cache_dir=tmp_path / "cache")
    assert "notes.txt" in caplog.text
    assert dataset.class_names == ["cat", "dog"] and dataset.counts.tolist() == [3, 3]
    assert dataset.images.shape == (6, 3, 16, 16) and dataset.images.dtype == torch.uint8
    assert (
        dataset.images[0, 0].float().mean() > 200 and dataset.images[3, 2].float().mean() > 200
    )  # red cat, blue dog
    assert dataset.name == "pets" and dataset.group_names == [""]
    again = load_image_folder(root, Preprocess(16, 3, False), cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, dataset.images)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found.*<class name>"):
        load_image_folder(tmp_path / "missing", Preprocess())
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    with pytest.raises(DataError, match="no class folders"):
        load_image_folder(tmp_path / "flat", Preprocess())
    root = _fake_folder(tmp_path / "pets")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty has no images"):
        load_image_folder(root, Preprocess())
    (root / "empty").rmdir()
    (root / "dog" / "1.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(DataError, match=r"dog[/\\]1.jpg.*remove or replace"):
        load_image_folder(root, Preprocess(), cache_dir=tmp_path / "cache")


def test_load_images(tmp_path):
    _fake_folder(tmp_path)
    images = load_images(
        [tmp_path / "cat" / "0.jpg", tmp_path / "dog" / "1.jpg"], Preprocess(20, 1, True)
    )
    assert images.shape == (2, 1, 20, 20) and images.dtype == torch.uint8
    with pytest.raises(DataError, match="missing.png not found"):
        load_images([tmp_path / "missing.png"], Preprocess())


# --- download (offline)
# -----------------------------------------------------------------------------


def test_download_without_network(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="images_background.zip.*by hand") as error:
        load_omniglot(tmp_path, download=True)
    assert "\n" not in str(error.value)
    assert os.listdir(tmp_path) == []  # no partial file left


def test_download_checks_sha256(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"fake zip"))
    with pytest.raises(DataError, match="sha256"):
        download.download_omniglot(tmp_path, ["images_evaluation.zip"])
    assert os.listdir(tmp_path) == []
    monkeypatch.setitem(
        download.OMNIGLOT_SHA256, "images_evaluation.zip", hashlib.sha256(b"fake zip").hexdigest()
    )
    download.download_omniglot(tmp_path, ["images_evaluation.zip"])
    assert (tmp_path / "images_evaluation.zip").read_bytes() == b"fake zip"


def test_info_download_fetches_the_schemes_sources(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(
        "metalab.data.omniglot.download_omniglot", lambda root, names: fetched.extend(names)
    )
    with pytest.raises(DataError):  # the fake download wrote nothing
        omniglot_info(tmp_path, "lake-small2", download=True)
    assert fetched == ["images_background_small2.zip", "images_evaluation.zip"]
