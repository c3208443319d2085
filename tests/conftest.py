"""Shared fixtures: the data directory (../shared/data by default, or $METALAB_TEST_DATA) and a
private cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    return Path(os.environ.get("METALAB_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if not (d / "omniglot").exists():
        pytest.skip(f"Omniglot not found under {d}; set METALAB_TEST_DATA")
    return d


@pytest.fixture(scope="session", autouse=True)
def _session_registry(tmp_path_factory) -> None:
    """Runs the tests train are recorded in a registry of this test session, never the user's
    (unless $METALAB_REGISTRY is set by the caller)."""
    if "METALAB_REGISTRY" not in os.environ:
        path = tmp_path_factory.mktemp("metalab-registry") / "registry.db"
        os.environ["METALAB_REGISTRY"] = str(path)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory) -> None:
    """Decoded datasets are cached once per test session (unless $METALAB_CACHE is set by the
    caller)."""
    if "METALAB_CACHE" not in os.environ:
        os.environ["METALAB_CACHE"] = str(tmp_path_factory.mktemp("metalab-cache"))
