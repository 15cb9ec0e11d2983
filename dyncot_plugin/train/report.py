"""Print a run's training curve (loss, cot_ratio, γ, selection loss) from LLaMA-Factory's ``trainer_log.jsonl``
and, for a ``dynamic`` run with ``dyncot_log_selection``, how stable each sample's target is across epochs.

    python -m dyncot_plugin.train.report OUTPUT_DIR

The stability table reads ``dyncot_selection/rank*.jsonl`` (every rank's, merged by sample id: a sample may be
selected on another rank in the next epoch) and prints, per epoch after the first, the share of eligible samples
(those with a usable CoT view in both epochs) whose view (CoT or plain) changed since the previous epoch. A sample
seen more than once in an epoch counts with its last decision.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dyncot_plugin.train.resume import SELECTION_DIR


def training_rows(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir, "trainer_log.jsonl")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trainer_log.jsonl (did the run train with logging_steps set?)")
    return [e for e in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if "loss" in e]


def format_training_report(rows: list[dict]) -> str:
    lines = [f"{'step':>6} {'loss':>8} {'cot_ratio':>10} {'gamma':>8} {'sel_loss':>9}"]
    for e in rows:
        cot = f"{e['cot_ratio']:.3f}" if "cot_ratio" in e else "-"
        gamma = f"{e['gamma']:.3f}" if "gamma" in e else "-"
        sel = f"{e['selection_loss']:.3f}" if "selection_loss" in e else "-"
        lines.append(f"{e['current_steps']:>6} {e['loss']:>8.4f} {cot:>10} {gamma:>8} {sel:>9}")
    with_ratio = [e["cot_ratio"] for e in rows if "cot_ratio" in e]
    if with_ratio:
        lines.append(f"mean cot_ratio {sum(with_ratio) / len(with_ratio):.3f} over {len(with_ratio)} logged steps")
    return "\n".join(lines)


def selection_records(output_dir: str | Path) -> list[dict]:
    """Every rank's selection records, in (step, rank) order; [] when the run wrote none."""
    records = []
    for path in sorted(Path(output_dir, SELECTION_DIR).glob("rank*.jsonl")):
        rank = int(path.stem[len("rank"):]) if path.stem[len("rank"):].isdigit() else 0
        records += [(r["step"], rank, r) for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r]
    return [r for _, _, r in sorted(records, key=lambda x: (x[0], x[1]))]


def view_changes(records: list[dict]) -> tuple[list[dict], int]:
    """Per epoch after the first: ``{"epoch", "samples", "changed", "share"}`` over the samples eligible in that
    epoch and the one before; plus how many rows had no sample id (not counted)."""
    last: dict[int, dict[str, tuple[bool, bool]]] = {}  # epoch -> id -> (eligible, cot), the latest decision
    unnamed = 0
    for record in records:
        epoch = last.setdefault(int(record.get("epoch", 0)), {})
        ids = record.get("id") or [None] * len(record["cot"])
        eligible = record.get("eligible") or [True] * len(record["cot"])
        for sample, ok, cot in zip(ids, eligible, record["cot"]):
            if sample is None:
                unnamed += 1
            else:
                epoch[sample] = (bool(ok), bool(cot))
    rows = []
    for epoch in sorted(last):
        before = last.get(epoch - 1)
        if before is None:
            continue
        both = [s for s, (ok, _) in last[epoch].items() if ok and before.get(s, (False, False))[0]]
        changed = sum(last[epoch][s][1] != before[s][1] for s in both)
        rows.append({"epoch": epoch, "samples": len(both), "changed": changed,
                     "share": changed / len(both) if both else 0.0})
    return rows, unnamed


def format_view_changes(rows: list[dict], unnamed: int) -> str:
    lines = ["view changes since the previous epoch (eligible samples, all ranks)",
             f"{'epoch':>6} {'samples':>8} {'changed':>8} {'share':>7}"]
    lines += [f"{r['epoch']:>6} {r['samples']:>8} {r['changed']:>8} {r['share']:>7.3f}" for r in rows]
    if not rows:
        lines.append("(fewer than two epochs recorded)")
    if unnamed:
        lines.append(f"{unnamed} selection(s) without a sample id not counted (a tokenized_path cache from before ids)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(format_training_report(training_rows(argv[0])))
    records = selection_records(argv[0])
    if records:
        print()
        print(format_view_changes(*view_changes(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
