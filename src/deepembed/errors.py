"""Errors that mean "the user gave bad input": the CLI prints them as one line, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, bad configuration or a missing file; the message names the problem."""


class ConfigError(UserError):
    """A configuration key or value that cannot be used."""


class DataError(UserError):
    """A dataset file that is missing, unreadable or inconsistent."""


class ModelFormatError(UserError):
    """A model directory that is incomplete or written by an incompatible version."""
