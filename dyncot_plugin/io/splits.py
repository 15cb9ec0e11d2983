"""Split names and ``SPLIT=PATH`` arguments, the same in every command."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from dyncot_plugin.io.read import InputError

SPLITS = ("train", "valid", "test")
"""The split names every ``dyncot-data`` tool accepts (anything else is an error)."""


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise :class:`InputError`."""
    if split not in SPLITS:
        raise InputError(f"unknown split name {split!r}; use one of {', '.join(SPLITS)}.")
    return split


def infer_split(path: str | os.PathLike) -> str | None:
    """The split a file name announces (``test_src.txt``, ``mmkp_valid.json`` -> ``test``, ``valid``), else None."""
    stem = Path(path).name.split(".", 1)[0]
    found = [s for s in SPLITS if s in stem.replace("-", "_").split("_")]
    return found[0] if len(found) == 1 else None


def parse_split_spec(spec: str, *, infer: bool = True) -> tuple[str, Path]:
    """``"test=path/to/file"`` -> ``("test", Path(...))``.

    Without ``split=``, the split is read from the file name (``test_src.txt``) when ``infer`` is true.
    Unknown split names raise :class:`InputError`.
    """
    if "=" in spec:
        split, path = spec.split("=", 1)
        split = split.strip()
        if split not in SPLITS:
            raise InputError(f"unknown split name {split!r} in {spec!r}; use one of {', '.join(SPLITS)}.")
        if not path:
            raise InputError(f"{spec!r}: no file after {split}=.")
        return split, Path(path)
    split = infer_split(spec) if infer else None
    if split is None:
        raise InputError(
            f"{spec!r}: cannot tell the split from the file name; write it as SPLIT=PATH with SPLIT one of "
            f"{', '.join(SPLITS)}."
        )
    return split, Path(spec)


def parse_split_specs(
    specs: Iterable[str], *, what: str = "inputs", infer: bool = True, default_split: str | None = None
) -> dict[str, Path]:
    """Several ``SPLIT=PATH`` arguments as ``{split: path}``; a split given twice is an error.

    ``default_split``: the split of a bare ``PATH`` (no ``SPLIT=``), where there is only one split it can mean.
    """
    out: dict[str, Path] = {}
    for spec in specs:
        if default_split is not None and "=" not in spec:
            split, path = default_split, Path(spec)
        else:
            split, path = parse_split_spec(spec, infer=infer)
        if split in out:
            raise InputError(f"{what}: split {split} given twice ({out[split]} and {path}).")
        out[split] = path
    return out


def sample_id(dataset: str, split: str, index: int) -> str:
    """The stable row id: ``sample_id("mmkp", "test", 17) == "mmkp_test_000017"`` (index = 0-based source line)."""
    return f"{dataset}_{split}_{index:06d}"


__all__ = ["SPLITS", "check_split", "infer_split", "parse_split_spec", "parse_split_specs", "sample_id"]
