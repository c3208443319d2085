"""Download the official Omniglot zips from github.com/brendenlake/omniglot, verified by sha256."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from metalab.errors import DataError

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}"

# sha256 of the upstream files, as recorded by TensorFlow Datasets (url_checksums/omniglot.txt); the
# two small sets were also checked against local upstream copies.
OMNIGLOT_SHA256 = {
    "images_background.zip": "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    "images_evaluation.zip": "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
    "images_background_small1.zip": (
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"
    ),
    "images_background_small2.zip": (
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"
    ),
}

log = logging.getLogger("metalab")


def download_omniglot(
    root: Path, names: Iterable[str] = ("images_background.zip", "images_evaluation.zip")
) -> None:
    """Fetch each of `names` into ``root/<name>`` (temporary file, sha256 check, then rename).

    Raises:
        DataError: a network or disk failure, or a checksum mismatch; the message says how to
            put the file in place by hand.
    """
    root = Path(root)
    for name in names:
        url = OMNIGLOT_URL.format(name=name)
        destination = root / name
        by_hand = f"download {url} by hand and put it at {destination}"
        log.info("downloading %s", url)
        temp = None
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=root)
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as file, urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    file.write(chunk)
            _verify(name, digest.hexdigest(), by_hand)
            os.replace(temp, destination)
            temp = None
        except OSError as error:  # urllib's URLError and HTTPError are OSErrors too
            raise DataError(f"cannot download {url} ({error}); {by_hand}") from error
        finally:
            if temp is not None:
                Path(temp).unlink(missing_ok=True)


def _verify(name: str, sha256: str, by_hand: str) -> None:
    expected = OMNIGLOT_SHA256.get(name)
    if expected is None:
        log.warning("no known sha256 for %s: the download could not be verified", name)
    elif sha256 != expected:
        raise DataError(
            f"downloaded {name} has sha256 {sha256}, expected {expected}; try again or {by_hand}"
        )
