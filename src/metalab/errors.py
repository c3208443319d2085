"""The error hierarchy. Every message names the offending file, flag or value and says what to do.

The CLI prints a ``MetalabError`` as one line on stderr and exits non-zero (traceback only with
``--debug``).
"""


class MetalabError(Exception):
    """Base of every error metalab raises on bad input or a failed run."""


class DataError(MetalabError):
    """Missing, corrupt or insufficient data (names the file, folder or class)."""


class ConfigError(MetalabError):
    """An unknown or invalid configuration key, flag or value (names it and lists the choices)."""


class CheckpointError(MetalabError):
    """A checkpoint that is missing, unreadable, incomplete, unwritable or written by another
    algorithm."""


class RunDirError(CheckpointError):
    """A run directory that must not be written: it holds another run or other files, or another
    training holds its lock (a CheckpointError, as the overwrite guard always raised)."""


class TrainingError(MetalabError):
    """Training cannot go on (the loss or the weights became non-finite, a checkpoint could not be
    written, a forced stop); the message says which checkpoint holds the last good state."""
