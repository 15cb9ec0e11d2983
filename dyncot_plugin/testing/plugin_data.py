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


def view_change_count(records: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """A test oracle for ``train.report.view_changes``, counted the plain way: epoch -> (samples eligible in that
    epoch and the one before, samples among them whose view changed), each sample's last decision per epoch, over
    the records of every rank."""
    decision: dict[int, dict[str, bool]] = {}
    eligible: dict[int, set[str]] = {}
    for record in sorted(records, key=lambda r: r["step"]):
        for sample, ok, cot in zip(record["id"], record["eligible"], record["cot"]):
            decision.setdefault(record["epoch"], {})[sample] = cot
            if ok:
                eligible.setdefault(record["epoch"], set()).add(sample)
    out = {}
    for epoch in sorted(decision):
        if epoch - 1 in decision:
            both = eligible.get(epoch, set()) & eligible.get(epoch - 1, set())
            out[epoch] = (len(both), sum(decision[epoch][s] != decision[epoch - 1][s] for s in both))
    return out
