"""Errors of the experiments package (registry, tuning, warm starts): one line each, naming the
URL, file, key or value and the fix."""

from __future__ import annotations

from metalab.errors import ConfigError, MetalabError


class RegistryError(MetalabError):
    """The run registry cannot be opened or read (names the URL or the run and what to do)."""


class SearchSpaceError(ConfigError):
    """A tuning search space with an unknown key, a bad range or a bad type (names the file and
    the key)."""


class MissingExtraError(MetalabError):
    """An optional dependency is not installed (names the extra that brings it)."""


def require(module: str, extra: str):
    """Import an optional dependency, or stop with one line naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"the Python package '{module}' is not installed; install it with "
            f"pip install 'metalab[{extra}]'"
        ) from None
