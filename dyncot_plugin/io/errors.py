"""The error every command reports as one line and exit code 2 (see :mod:`dyncot_plugin.cli._dispatch`), in a
module of its own so that both the reader (:mod:`dyncot_plugin.io.read`) and the writers' locks
(:mod:`dyncot_plugin.io.files`) can raise it."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (a file, a row, a flag value): the message names the file (and line or row) and what was expected."""


__all__ = ["InputError"]
