"""Print a run's training curve (loss, cot_ratio, γ, selection loss) from LLaMA-Factory's ``trainer_log.jsonl``.

    python -m dyncot_plugin.train.report OUTPUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(format_training_report(training_rows(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
