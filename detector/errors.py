"""User-facing errors.

Everything that comes from the user (a config value, a dataset path, an annotation file, a
checkpoint) is validated where it enters the framework and, when wrong, raises a subclass of
:class:`DetectorError` whose message is one line naming the file or key and the problem.
``tools/*.py`` catch :class:`DetectorError` and print that line instead of a traceback from deep
inside torch. Internal invariants are checked with ``assert`` instead (STYLE.md, rule 8).
"""

from __future__ import annotations


class DetectorError(Exception):
    """Base class of errors caused by user input; ``str(err)`` is a complete one-line message."""


class ConfigError(DetectorError):
    """A config value is missing, of the wrong type, or out of range."""


class DatasetError(DetectorError):
    """A dataset path is missing, or an annotation file or image cannot be read or is malformed."""


class CheckpointError(DetectorError):
    """A checkpoint cannot be read, or does not fit the model or dataset it is used with."""
