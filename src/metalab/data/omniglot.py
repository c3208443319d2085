"""Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015): 1623 handwritten characters of 50 alphabets, 20
drawings each.

The data directory holds the official files of github.com/brendenlake/omniglot (``python/``): the
zips ``images_background.zip`` (30 alphabets, 964 characters), ``images_evaluation.zip`` (20
alphabets, 659 characters), ``images_background_small1.zip`` / ``images_background_small2.zip`` (5
alphabets each), or their extracted folders ``images_background/<Alphabet>/characterNN/*.png``. A
zip is preferred to its folder when both exist. Each source is decoded once (105x105 →
``image_size`` Lanczos, inverted so that strokes are bright and the background 0) and cached.

Schemes (see :data:`SCHEMES`):
    vinyals: the few-shot split of Vinyals et al. (2016) as shipped by the Prototypical Networks
        code (Snell et al., 2017): 1028 / 172 / 423 characters for train / val / test, by alphabet
        except Gurmukhi, whose characters 1-41 are train and 42-45 test; each character at
        rotations 0, 90, 180 and 270 degrees is 4 classes. trainval = train + val.
    lake: Lake et al.'s background set (train) and evaluation set (test), no rotations.
    lake-small1, lake-small2: the minimal 5-alphabet background sets (train) and the evaluation set
        (test).

Rotations are applied to the decoded images with ``torch.rot90`` over (H, W): 90 degrees turns an
image counter-clockwise, as PIL's ``Image.rotate(90)`` does.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch

from metalab.data.base import ClassIndexedDataset, Preprocess
from metalab.data.cache import Payload, load_or_build
from metalab.data.download import download_omniglot
from metalab.data.imaging import IMAGE_EXTENSIONS, decode_image
from metalab.errors import ConfigError, DataError

SCHEMES = {
    "vinyals": ("train", "val", "test", "trainval"),
    "lake": ("train", "test"),
    "lake-small1": ("train", "test"),
    "lake-small2": ("train", "test"),
}
DEFAULT_ROTATIONS = {
    "vinyals": (0, 90, 180, 270),
    "lake": (0,),
    "lake-small1": (0,),
    "lake-small2": (0,),
}
SOURCES = (
    "images_background",
    "images_evaluation",
    "images_background_small1",
    "images_background_small2",
)

# Which source each (scheme, split) reads; the vinyals splits mix background and evaluation
# alphabets.
_SCHEME_SOURCES = {
    "lake": {"train": ("images_background",), "test": ("images_evaluation",)},
    "lake-small1": {"train": ("images_background_small1",), "test": ("images_evaluation",)},
    "lake-small2": {"train": ("images_background_small2",), "test": ("images_evaluation",)},
}
_VINYALS_SOURCES = ("images_background", "images_evaluation")

# The Vinyals et al. (2016) split by alphabet. Gurmukhi is in none of these lists: it is cut in two.
VINYALS_ALPHABETS = {
    "train": (
        "Alphabet_of_the_Magi",
        "Angelic",
        "Anglo-Saxon_Futhorc",
        "Arcadian",
        "Asomtavruli_(Georgian)",
        "Atemayar_Qelisayer",
        "Atlantean",
        "Aurek-Besh",
        "Avesta",
        "Balinese",
        "Blackfoot_(Canadian_Aboriginal_Syllabics)",
        "Braille",
        "Burmese_(Myanmar)",
        "Cyrillic",
        "Futurama",
        "Ge_ez",
        "Glagolitic",
        "Grantha",
        "Greek",
        "Gujarati",
        "Inuktitut_(Canadian_Aboriginal_Syllabics)",
        "Japanese_(hiragana)",
        "Japanese_(katakana)",
        "Korean",
        "Latin",
        "Malay_(Jawi_-_Arabic)",
        "N_Ko",
        "Ojibwe_(Canadian_Aboriginal_Syllabics)",
        "Sanskrit",
        "Syriac_(Estrangelo)",
        "Tagalog",
        "Tifinagh",
    ),
    "val": ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"),
    "test": (
        "Kannada",
        "Keble",
        "Malayalam",
        "Manipuri",
        "Mongolian",
        "Old_Church_Slavonic_(Cyrillic)",
        "Oriya",
        "Sylheti",
        "Syriac_(Serto)",
        "Tengwar",
        "Tibetan",
        "ULOG",
    ),
}
GURMUKHI_LAST_TRAIN_CHARACTER = 41  # Gurmukhi characters 1-41 are train, 42-45 test


def vinyals_split_of(alphabet: str, character: str) -> str | None:
    """The Vinyals split of a character, e.g. ``("Gurmukhi", "character42") -> "test"``; None if
    unknown."""
    if alphabet == "Gurmukhi":
        number = int(character.removeprefix("character"))
        return "train" if number <= GURMUKHI_LAST_TRAIN_CHARACTER else "test"
    return next(
        (split for split, alphabets in VINYALS_ALPHABETS.items() if alphabet in alphabets), None
    )


def find_omniglot_root(data_dir: Path) -> Path:
    """The folder holding the Omniglot zips or folders: `data_dir` itself or
    ``data_dir/omniglot``."""
    root = _root_or_none(Path(data_dir))
    if root is None:
        raise DataError(
            f"Omniglot not found in {data_dir} or {Path(data_dir) / 'omniglot'}: put "
            "images_background.zip and "
            "images_evaluation.zip (github.com/brendenlake/omniglot, folder python/) in "
            f"{data_dir}, "
            f"or pass --download"
        )
    return root


def load_omniglot(
    data_dir: Path,
    scheme: str = "vinyals",
    split: str = "train",
    *,
    image_size: int = 28,
    rotations: Iterable[int] | None = None,
    cache_dir: Path | None = None,
    download: bool = False,
) -> ClassIndexedDataset:
    """One split of Omniglot as a class-indexed uint8 dataset.

    Args:
        data_dir: folder with the official zips or folders, or its parent (holding ``omniglot/``).
        scheme, split: see :data:`SCHEMES`.
        image_size: side of the square images.
        rotations: degrees, each a class of its own (default (0, 90, 180, 270) for vinyals, else
            (0,)).
        cache_dir: decoded-image cache (default $METALAB_CACHE or ~/.cache/metalab).
        download: fetch the missing official zips from GitHub first.

    Returns:
        Classes named ``"Alphabet/characterNN/rotDDD"`` (sorted), grouped by alphabet; images
        (N, 1, image_size, image_size) uint8, strokes bright.

    Example:
        >>> train = load_omniglot("data", "vinyals", "train")   # 4112 classes x 20 images
    """
    _check_split(scheme, split)
    rotations = _check_rotations(scheme, rotations)
    if image_size < 1:
        raise ConfigError(
            f"Omniglot image_size {image_size} is invalid; it must be a positive number of pixels"
        )
    paths = _source_paths(Path(data_dir), _sources_of(scheme, split), download)
    classes = []  # (class name, images, alphabet)
    for path in paths:
        payload = _decoded(path, image_size, cache_dir)
        ends = torch.tensor(payload["counts"]).cumsum(0).tolist()
        for character, end, count in zip(payload["characters"], ends, payload["counts"]):
            if _keeps(scheme, split, character):
                drawings = payload["images"][end - count : end]  # (20, 1, H, W)
                for degrees in rotations:
                    rotated = torch.rot90(drawings, degrees // 90, dims=(-2, -1))
                    classes.append(
                        (f"{character}/rot{degrees:03d}", rotated, character.split("/")[0])
                    )
    if not classes:
        raise DataError(
            f"no characters of Omniglot {scheme}/{split} found in {', '.join(map(str, paths))}"
        )
    classes.sort(key=lambda c: c[0])
    names, images, alphabets = zip(*classes)
    return ClassIndexedDataset.from_class_tensors(
        f"omniglot-{scheme}-{split}",
        list(images),
        list(names),
        list(alphabets),
        Preprocess(image_size, 1, True),
    )


def omniglot_info(data_dir: Path, scheme: str = "vinyals", *, download: bool = False) -> dict:
    """Per split of `scheme`: alphabets, characters, classes and images (with rotations); the
    sources found.

    A split whose source file is missing is reported as ``{"missing": [file names]}`` (unless
    `download` fetches it first). Nothing is decoded: the zips' listings suffice.
    """
    _check_scheme(scheme)
    if download:
        needed = dict.fromkeys(
            source for split in SCHEMES[scheme] for source in _sources_of(scheme, split)
        )
        _source_paths(Path(data_dir), tuple(needed), download=True)
    root = find_omniglot_root(Path(data_dir))
    found = {source: _source_path(root, source) for source in SOURCES}
    listings: dict[Path, dict[str, list[str]]] = {}
    rotations = DEFAULT_ROTATIONS[scheme]
    splits = {}
    for split in SCHEMES[scheme]:
        sources = _sources_of(scheme, split)
        missing = [f"{source}.zip" for source in sources if found[source] is None]
        if missing:
            splits[split] = {"missing": missing}
            continue
        drawings = {}
        for source in sources:
            if found[source] not in listings:
                listings[found[source]] = _list_source(found[source])
            listing = listings[found[source]]
            drawings.update(
                {c: len(files) for c, files in listing.items() if _keeps(scheme, split, c)}
            )
        splits[split] = {
            "alphabets": len({character.split("/")[0] for character in drawings}),
            "characters": len(drawings),
            "classes": len(drawings) * len(rotations),
            "images": sum(drawings.values()) * len(rotations),
            "rotations": list(rotations),
        }
    sources_found = {source: str(path) for source, path in found.items() if path is not None}
    return {"root": str(root), "scheme": scheme, "sources": sources_found, "splits": splits}


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown Omniglot scheme '{scheme}'; choices: {', '.join(SCHEMES)}")


def _check_split(scheme: str, split: str) -> None:
    _check_scheme(scheme)
    if split not in SCHEMES[scheme]:
        choices = ", ".join(SCHEMES[scheme])
        raise ConfigError(
            f"unknown split '{split}' of Omniglot scheme '{scheme}'; choices: {choices}"
        )


def _check_rotations(scheme: str, rotations: Iterable[int] | None) -> tuple[int, ...]:
    rotations = DEFAULT_ROTATIONS[scheme] if rotations is None else tuple(rotations)
    if (
        not rotations
        or len(set(rotations)) != len(rotations)
        or any(r not in (0, 90, 180, 270) for r in rotations)
    ):
        raise ConfigError(
            f"Omniglot rotations {list(rotations)} are invalid; choose distinct values among 0, "
            "90, 180, 270"
        )
    return rotations


def _sources_of(scheme: str, split: str) -> tuple[str, ...]:
    return _VINYALS_SOURCES if scheme == "vinyals" else _SCHEME_SOURCES[scheme][split]


def _keeps(scheme: str, split: str, character: str) -> bool:
    """Whether `character` ("Alphabet/characterNN") of a scheme's sources belongs to `split`."""
    if scheme != "vinyals":
        return True
    wanted = ("train", "val") if split == "trainval" else (split,)
    return vinyals_split_of(*character.split("/")) in wanted


def _root_or_none(data_dir: Path) -> Path | None:
    for root in (data_dir, data_dir / "omniglot"):
        if any(_source_path(root, source) for source in SOURCES):
            return root
    return None


def _source_path(root: Path, source: str) -> Path | None:
    """``root/<source>.zip`` if present, else the extracted folder ``root/<source>``, else None."""
    for path in (root / f"{source}.zip", root / source):
        if path.is_file() if path.suffix == ".zip" else path.is_dir():
            return path
    return None


def _source_paths(data_dir: Path, sources: tuple[str, ...], download: bool) -> list[Path]:
    """The files of `sources`, downloading the missing ones first if asked."""
    root = _root_or_none(data_dir)
    if download:
        root = root or data_dir
        missing = [f"{source}.zip" for source in sources if _source_path(root, source) is None]
        if missing:
            download_omniglot(root, missing)
    if root is None:
        find_omniglot_root(data_dir)  # raises the "not found" error
    paths = []
    for source in sources:
        path = _source_path(root, source)
        if path is None:
            raise DataError(
                f"{source}.zip not found in {root}: put it there "
                "(github.com/brendenlake/omniglot, folder python/) "
                f"or its extracted folder {root / source}, or pass --download"
            )
        paths.append(path)
    return paths


def _list_source(path: Path) -> dict[str, list[str]]:
    """``"Alphabet/characterNN"`` → its drawings (zip member names or paths relative to the folder),
    sorted."""
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(
                f"cannot read {path} ({error}); remove or replace it, or pass --download"
            ) from error
    else:
        names = [file.relative_to(path).as_posix() for file in path.rglob("*") if file.is_file()]
    characters: dict[str, list[str]] = {}
    for name in sorted(names):
        parts = name.split("/")
        hidden = any(part.startswith((".", "__MACOSX")) for part in parts)
        if len(parts) >= 3 and not hidden and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
            characters.setdefault(f"{parts[-3]}/{parts[-2]}", []).append(name)
    if not characters:
        raise DataError(
            f"{path} holds no Omniglot images; expected <Alphabet>/characterNN/*.png inside"
        )
    return dict(sorted(characters.items()))


def _decoded(path: Path, image_size: int, cache_dir: Path | None) -> Payload:
    """The drawings of one source at 0 degrees: images (N, 1, S, S), characters, counts per
    character."""
    preprocess = Preprocess(image_size, 1, True)

    def build() -> Payload:
        characters = _list_source(path)
        members = [member for files in characters.values() for member in files]
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                images = [
                    decode_image(_read(archive, path, m), preprocess, f"{path}:{m}")
                    for m in members
                ]
        else:
            images = [decode_image(path / m, preprocess, str(path / m)) for m in members]
        counts = [len(files) for files in characters.values()]
        return {"images": torch.stack(images), "characters": list(characters), "counts": counts}

    params = {"source": path.name, "image_size": image_size, "invert": True}
    return load_or_build(f"omniglot-{path.stem}-{image_size}", params, [path], build, cache_dir)


def _read(archive: zipfile.ZipFile, path: Path, member: str) -> bytes:
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as error:
        raise DataError(
            f"cannot read {path}:{member} ({error}); replace {path}, or pass --download"
        ) from error
