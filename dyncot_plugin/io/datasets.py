"""The plugin's LLaMA-Factory datasets: rows, sharegpt messages, ``dataset_info.json``.

Row format (one JSON list per split file; ``dyncot-data convert-cmkp`` writes it)::

    {"id": "mmkp_test_000017",
     "messages": [{"role": "user", "content": "<image>...prompt with the post text..."},
                  {"role": "assistant", "content": "kp1; kp2"}],
     "images": ["images/<basename>.jpg"],     # relative to the dataset_dir ([] when text-only)
     "text": "the post text",
     "keyphrases": ["kp1", "kp2"],
     "cot": null}                             # "<think>...</think><answer>kp1; kp2</answer>" after gen-cot

Every reader of a row's messages goes through :func:`messages`, :func:`user_text` and :func:`assistant_text`,
which accept both sharegpt spellings (``messages``/``role``/``content`` and ``conversations``/``from``/``value``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from dyncot_plugin.io.files import StagedWrites, atomic_write_json, locked_dir, locked_files
from dyncot_plugin.io.read import InputError, read_json, read_rows

DatasetError = InputError
"""A dataset file or argument is malformed; the message says which file (and line or row) and why."""

DATASET_INFO = "dataset_info.json"
SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
IMAGE_TOKEN = "<image>"
_ROLES = {"user": ("user", "human"), "assistant": ("assistant", "gpt")}


# ------------------------------------------------------------------------------------------------------- rows


def load_rows(path: str | os.PathLike, allow_empty: bool = False) -> list[dict[str, Any]]:
    """A dataset file as a list of dicts: a JSON list (``.json``) or one JSON object per line (``.jsonl``)."""
    return read_rows(path, allow_empty=allow_empty)


def messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's sharegpt turns as ``[{"role", "content"}]`` (``conversations``/``from``/``value`` accepted)."""
    turns = row.get("messages", row.get("conversations"))
    if not isinstance(turns, list):
        return []
    out = []
    for m in turns:
        if isinstance(m, dict):
            role = m.get("role", m.get("from"))
            out.append({"role": role, "content": m.get("content", m.get("value"))})
    return out


def message_text(row: dict[str, Any], role: str, last: bool | None = None) -> str | None:
    """The content of the row's first user turn or last assistant turn (``last`` overrides), or None."""
    found = [m["content"] for m in messages(row) if m["role"] in _ROLES[role]]
    if not found:
        return None
    text = found[-1] if (role == "assistant" if last is None else last) else found[0]
    return text if isinstance(text, str) else None


def user_text(row: dict[str, Any]) -> str | None:
    """The first user message (with any ``<image>`` placeholders), or None."""
    return message_text(row, "user")


def assistant_text(row: dict[str, Any]) -> str | None:
    """The last assistant message (the plain answer of a plugin dataset), or None."""
    return message_text(row, "assistant")


def require_message(row: dict[str, Any], role: str, where: str) -> str:
    """:func:`message_text`, or an :class:`InputError` naming ``where``."""
    if not messages(row):
        raise InputError(f"{where}: no 'messages' list.")
    text = message_text(row, role)
    if text is None:
        raise InputError(f"{where}: no {role} message with string content.")
    return text


def row_label(row: dict[str, Any] | None, index: int) -> str:
    """``row 3 (id mmkp_train_000003)``: how errors name a row."""
    row_id = row.get("id") if isinstance(row, dict) else None
    return f"row {index}" + (f" (id {row_id})" if row_id is not None else "")


# ---------------------------------------------------------------------------------------------- dataset_info.json

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_dataset_name(name: str, what: str = "dataset name") -> str:
    """``name`` itself when it can name a file inside the dataset folder (``<name>.json``): letters, digits, ``_``,
    ``-``, ``.``, no folder part (so ``../x`` and absolute paths are refused, naming ``what``)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError(
            f"{what} {name!r}: names a file <name>.json inside the dataset folder; use letters, digits, '_', '-' "
            f"and '.' only (no folders)."
        )
    return name



def dataset_entry(
    file_name: str, *, has_images: bool = True, cot_column: str | None = "cot", formatting: str = "sharegpt"
) -> dict[str, Any]:
    """The ``dataset_info.json`` entry of one of our sharegpt files.

    ``columns`` maps ``messages``/``images`` (LLaMA-Factory) and ``cot`` (read by the plugin, ignored by vanilla
    LLaMA-Factory); ``has_images=False`` leaves ``images`` out, ``cot_column=None`` leaves ``cot`` out.
    """
    if formatting != "sharegpt":
        raise ValueError(f"dataset_entry: only 'sharegpt' formatting is produced by the plugin, got {formatting!r}")
    columns: dict[str, str] = {"messages": "messages"}
    if has_images:
        columns["images"] = "images"
    if cot_column:
        columns["cot"] = cot_column
    return {"file_name": file_name, "formatting": formatting, "columns": columns, "tags": dict(SHAREGPT_TAGS)}


def read_dataset_info(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """``<dataset_dir>/dataset_info.json`` as a dict (empty when the file does not exist or is empty)."""
    info_path = Path(dataset_dir) / DATASET_INFO
    if not info_path.exists():
        return {}
    if info_path.is_file() and not info_path.read_bytes().strip():
        return {}
    try:
        info = read_json(info_path)
    except InputError as exc:
        raise InputError(f"{exc} Fix or remove it.") from None
    if not isinstance(info, dict):
        raise InputError(f"{info_path}: expected a JSON object of dataset entries.")
    return info


def resolve_dataset_file(dataset_dir: str | os.PathLike, name: str) -> Path:
    """The file behind dataset ``name`` in ``<dataset_dir>/dataset_info.json``."""
    info_path = Path(dataset_dir) / DATASET_INFO
    if not info_path.is_file():
        raise InputError(f"{info_path} not found; expected a LLaMA-Factory dataset_dir.")
    info = read_dataset_info(dataset_dir)
    if name not in info:
        known = ", ".join(repr(k) for k in sorted(info)[:20]) or "none"
        raise InputError(f"{info_path}: no dataset {name!r}; it declares {known}.")
    file_name = info[name].get("file_name") if isinstance(info[name], dict) else None
    if not file_name:
        raise InputError(f"{info_path}: dataset {name!r} has no 'file_name'.")
    return Path(dataset_dir) / file_name


def update_dataset_info(
    dataset_dir: str | os.PathLike,
    name: str,
    file_name: str,
    has_images: bool = True,
    cot_column: str | None = "cot",
    *,
    entry: dict[str, Any] | None = None,
) -> Path:
    """Add or replace entry ``name`` in ``<dataset_dir>/dataset_info.json``, keeping every other entry.

    The entry is :func:`dataset_entry` ``(file_name, has_images=..., cot_column=...)`` unless ``entry`` is given.
    The file is rewritten atomically under an inter-process lock, so concurrent converters do not lose entries.
    Returns the path of ``dataset_info.json``.
    """
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    new = entry if entry is not None else dataset_entry(file_name, has_images=has_images, cot_column=cot_column)
    info_path = dataset_dir / DATASET_INFO
    with locked_dir(dataset_dir):
        info = read_dataset_info(dataset_dir)
        info[name] = new
        atomic_write_json(info_path, info, indent=2)
    return info_path


def write_registered_datasets(
    output_dir: str | os.PathLike, datasets: dict[str, list[dict[str, Any]]], register: bool = True, **entry: Any
) -> dict[str, Path]:
    """Write ``{name: rows}`` as ``<output_dir>/<name>.json``, all or nothing and under the files' write locks, and
    (``register``) enter each in ``dataset_info.json`` with :func:`dataset_entry` ``(file_name, **entry)``."""
    output_dir = Path(output_dir)
    paths = {name: output_dir / f"{check_dataset_name(name)}.json" for name in datasets}
    with locked_files(paths.values()):
        with StagedWrites() as staged:
            for name, rows in datasets.items():
                staged.write_json(paths[name], rows)
        if register:
            for name, path in paths.items():
                update_dataset_info(output_dir, name, path.name, entry=dataset_entry(path.name, **entry))
    return paths


__all__ = [
    "write_registered_datasets",
    "DATASET_INFO",
    "IMAGE_TOKEN",
    "SHAREGPT_TAGS",
    "DatasetError",
    "assistant_text",
    "check_dataset_name",
    "dataset_entry",
    "load_rows",
    "message_text",
    "messages",
    "read_dataset_info",
    "require_message",
    "resolve_dataset_file",
    "row_label",
    "update_dataset_info",
    "user_text",
]
