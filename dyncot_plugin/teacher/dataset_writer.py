"""The dataset gen-cot writes: every accepted CoT of the cache put into its row, merged under the dataset file's
lock with what other runs wrote meanwhile.

The write holds the file's lock (``.<file>.lock``, shared by every ``dyncot-data`` command that writes datasets)
only while it re-reads the file, puts this run's CoTs in and writes it atomically; a CoT another run wrote meanwhile
is kept, so concurrent runs with different caches end with the union of their CoTs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dyncot_plugin.io.datasets import load_rows, update_dataset_info
from dyncot_plugin.io.files import atomic_write_json, atomic_write_text, locked_files
from dyncot_plugin.tasks.mmkp.rows import row_keyphrases
from dyncot_plugin.teacher.cache import JsonlCache
from dyncot_plugin.teacher.samples import Sample, build_samples, same_gold


def _write_rows(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        atomic_write_json(path, rows)


def _merge_cots(rows: list[dict], other: list[dict]) -> int:
    """Give each row without a CoT the CoT of the row of ``other`` with the same id, text and keyphrases; returns
    how many were taken."""
    by_id = {str(r["id"]): r for r in other if r.get("id") is not None and r.get("cot") not in (None, "")}
    n = 0
    for row in rows:
        o = by_id.get(str(row.get("id")))
        if o is None or row.get("cot") not in (None, ""):
            continue
        if o.get("text") != row.get("text") or row_keyphrases(o) != row_keyphrases(row):
            continue
        row["cot"] = o["cot"]
        if "cot_source" in o:
            row["cot_source"] = o["cot_source"]
        n += 1
    return n


def write_dataset(
    src_path: Path,
    out_path: Path,
    in_place: bool,
    entry: dict,
    out_name: str,
    dataset_dir: Path,
    media_dir: Path,
    cache: JsonlCache,
    args: argparse.Namespace,
) -> int:
    """Under the dataset file's write lock: re-read it (another run may have written CoTs meanwhile: they are
    kept), put in every accepted CoT of the cache, write it, update dataset_info.json. Returns how many rows got a
    teacher CoT."""
    with locked_files(out_path):
        rows = load_rows(src_path)
        if not in_place and out_path.is_file():
            _merge_cots(rows, load_rows(out_path, allow_empty=True))
        samples, _ = build_samples(rows, media_dir)
        written = _apply(rows, samples, cache, args)
        _write_rows(out_path, rows)
        new_entry = json.loads(json.dumps(entry))
        new_entry["file_name"] = Path(os.path.relpath(out_path, dataset_dir)).as_posix()
        new_entry.setdefault("columns", {})["cot"] = "cot"
        update_dataset_info(dataset_dir, out_name, new_entry["file_name"], entry=new_entry)
    return written


def _apply(rows: list[dict], samples: list[Sample], cache: JsonlCache, args: argparse.Namespace) -> int:
    """Put every accepted CoT from the cache into its row; returns how many rows got a teacher CoT."""
    n = 0
    for s in samples:
        row = rows[s.index]
        row.setdefault("cot", None)
        state = cache.states.get(s.id)
        final = state.final if state is not None else None
        if final is None or final["status"] != "done":
            continue
        if not same_gold(final.get("keyphrases") or [], s.keyphrases):
            if row.get("cot") == final.get("cot"):  # a teacher CoT for keyphrases the row no longer has
                row["cot"] = None
                row.pop("cot_source", None)
            continue
        if row.get("cot") not in (None, "") and not args.overwrite and row.get("cot") != final["cot"]:
            continue
        row["cot"] = final["cot"]
        row["cot_source"] = f"teacher:{final.get('model', args.model)}"
        n += 1
    return n
