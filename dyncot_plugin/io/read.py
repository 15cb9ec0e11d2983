"""The one input reader of every command: text, lines, JSON, JSON lines and dataset rows, with errors that name the
file and the line.

Every ``dyncot-data`` / ``dyncot-eval`` command reads its inputs through these functions, so that any bad file
(missing, not UTF-8, not JSON, empty, the wrong shape) stops the command with one :class:`InputError` line such as
``data/x.json:12: not valid JSON (Expecting ',' delimiter)`` instead of a traceback. The CLI dispatcher prints it
and exits with 2 (see :mod:`dyncot_plugin.cli._dispatch`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dyncot_plugin.io.errors import InputError  # defined there so io.files can raise it too; exported from here
from dyncot_plugin.io.files import paused_gc


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_text(path: str | os.PathLike, what: str = "file", *, universal_newlines: bool = True) -> str:
    """The whole file as text (UTF-8; a BOM is dropped). Universal newlines: ``\\r\\n`` and ``\\r`` read as ``\\n``
    (``universal_newlines=False`` keeps them: CMKP source files are split on ``\\n`` only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file." if not path.exists() else f"{path}: not a file.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc}).") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}:{_line_of(data, exc.start)}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8."
        ) from None
    if not universal_newlines:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_lines(path: str | os.PathLike, what: str = "file") -> list[str]:
    """Lines as CMKP reads them (``open(...).readlines()``: universal newlines), without the line ends."""
    lines = read_text(path, what).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _json_error(path: Path, exc: json.JSONDecodeError, lineno: int | None = None) -> InputError:
    return InputError(f"{path}:{lineno or exc.lineno}: not valid JSON ({exc.msg}).")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """A JSON document."""
    path = Path(path)
    text = read_text(path, what)
    if not text.strip():
        raise InputError(f"{path}: the file is empty; expected JSON.")
    try:
        with paused_gc():
            return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _json_error(path, exc) from None


def read_jsonl(path: str | os.PathLike, what: str = "file") -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped)."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    with paused_gc():
        for lineno, line in enumerate(read_text(path, what).split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _json_error(path, exc, lineno) from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}.")
            rows.append(row)
    return rows


def read_rows(path: str | os.PathLike, what: str = "dataset file", allow_empty: bool = False) -> list[dict[str, Any]]:
    """Dataset rows: a JSON list of objects (``.json``) or JSON lines (``.jsonl``, or a ``.json`` file that is not one
    JSON document). An empty file or list is an error unless ``allow_empty``."""
    path = Path(path)
    text = read_text(path, what)
    if not text.strip():
        if allow_empty:
            return []
        raise InputError(f"{path}: the {what} is empty; expected a JSON list of rows or JSON lines.")
    if path.suffix == ".jsonl":
        rows: Any = read_jsonl(path, what)
    else:
        try:
            with paused_gc():
                rows = json.loads(text)
        except json.JSONDecodeError as exc:
            if not text.lstrip().startswith("{"):
                raise _json_error(path, exc) from None
            rows = read_jsonl(path, what)  # a .json file holding JSON lines
        if not isinstance(rows, list):
            raise InputError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}.")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"{path}: row {i} is a {type(row).__name__}, expected an object.")
    if not rows and not allow_empty:
        raise InputError(f"{path}: the {what} has no rows.")
    return rows


def require_rows(rows: list[Any], source: str | os.PathLike, what: str = "rows") -> list[Any]:
    """``rows`` itself, or an :class:`InputError` naming ``source`` when it is empty."""
    if not rows:
        raise InputError(f"{source}: no {what}; nothing to do.")
    return rows


def inside_dir(
    path: str | os.PathLike, folder: str | os.PathLike, what: str, *, allow: bool = False, flag: str = ""
) -> Path:
    """``path`` itself when, after resolving links (``os.path.realpath``), it lies inside ``folder``; else an
    :class:`InputError` naming ``what``, both paths and ``flag`` (the option that allows
    it). ``allow=True`` skips the check."""
    if allow:
        return Path(path)
    real, root = os.path.realpath(path), os.path.realpath(folder)
    if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
        return Path(path)
    shown = f"{path}" + (f" (resolves to {real})" if os.path.abspath(path) != real else "")
    raise InputError(
        f"{what} {shown} lies outside {folder}; refused" + (f" (pass {flag} to allow it)." if flag else ".")
    )


__all__ = ["InputError", "inside_dir", "read_json", "read_jsonl", "read_lines", "read_rows", "read_text", "require_rows"]
