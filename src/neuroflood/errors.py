"""Errors a user can cause. The CLI prints them on one line and exits non-zero.

Every message says what was wrong *and* what to do about it, e.g.
``VolumeError("no dataset 'img' in data.h5 (has: image, labels); name one of those after ':'")``.
"""

from __future__ import annotations


class NeurofloodError(Exception):
    """Base class of every error that neuroflood raises for bad input."""


class VolumeError(NeurofloodError):
    """A volume spec that cannot be opened, created, read or written as asked."""


class CheckpointError(NeurofloodError):
    """A model checkpoint that is missing, corrupt or for another architecture."""


class ConfigError(NeurofloodError):
    """A configuration value or file that is invalid."""


class DataError(NeurofloodError):
    """Input data that is inconsistent: shapes, dtypes, coordinates, labels."""
