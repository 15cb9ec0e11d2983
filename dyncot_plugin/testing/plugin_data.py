"""Plugin datasets for tests and benchmarks: toy keyphrase rows with both a plain and a CoT target."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dyncot_plugin.testing.lf_runner import toy_rows, write_sharegpt_dataset


def write_plugin_dataset(
    dataset_dir: str | Path,
    name: str = "toy",
    n: int = 8,
    cot_rows: Iterable[int] | None = None,
    image_size: tuple[int, int] = (64, 64),
    mutate: Any = None,
) -> str:
    """Write ``n`` rows (plain answer in ``messages``, CoT text in ``cot``) and their dataset_info entry.

    ``cot_rows``: the row indices that get a CoT text (default: all; the others get ``null``).
    ``mutate(rows)`` may edit the rows before they are written (to build bad input). Returns ``name``.
    """
    dataset_dir = Path(dataset_dir)
    plain = toy_rows(dataset_dir, n=n, cot=False, image_size=image_size)
    with_cot = toy_rows(dataset_dir, n=n, cot=True, image_size=image_size)
    keep = set(range(n)) if cot_rows is None else set(cot_rows)
    rows = []
    for i, (p, c) in enumerate(zip(plain, with_cot)):
        row = {"id": f"{name}_{i:06d}", **p, "cot": c["messages"][1]["content"] if i in keep else None}
        rows.append(row)
    if mutate is not None:
        mutate(rows)
    write_sharegpt_dataset(dataset_dir, name, rows)
    info_path = dataset_dir / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info[name]["columns"]["cot"] = "cot"
    info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return name


def read_log(output_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step entries of LLaMA-Factory's ``trainer_log.jsonl`` (those with a training loss)."""
    lines = Path(output_dir, "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [entry for entry in map(json.loads, lines) if "loss" in entry]


def read_losses(output_dir: str | Path) -> list[float]:
    return [entry["loss"] for entry in read_log(output_dir)]
