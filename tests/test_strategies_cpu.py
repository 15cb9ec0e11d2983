"""examples/strategies_cpu.sh (README "Strategies side by side"), cut down: the four strategies trained and predicted on
the CPU demo set, and a table whose every cell is the per-run evaluation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dyncot_plugin.tasks.mmkp.evaluate import evaluate_files
from dyncot_plugin.testing.lf_runner import offline_env

REPO = Path(__file__).resolve().parents[1]
RUNS = ["sft", "cot", "multitask", "dynamic-auto", "dynamic-always", "dynamic-never"]
KEYS = ["f1@1", "f1@3", "f1@5", "f1@M", "map@5"]


def table_row(table: dict, name: str) -> dict:
    return next(r for r in table["runs"] if r["name"] == name)


@pytest.mark.slow
def test_the_strategies_script_prints_the_table_of_its_six_runs(tmp_path, tiny_model_dir):
    shutil.copytree(REPO / "examples", tmp_path / "examples")  # the script writes outputs/ next to examples/
    # cheap: the suite's tiny model instead of building one, one epoch on 32 posts, 200 resamples
    env = offline_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                       "MODEL": tiny_model_dir, "EPOCHS": "1", "MAX_SAMPLES": "32", "RESAMPLES": "200"})
    proc = subprocess.run(["bash", "examples/strategies_cpu.sh"], cwd=tmp_path, env=env, capture_output=True, check=False,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "outputs" / "strategies"
    table = json.loads((out / "table.json").read_text())

    # the shape: six runs in order, Fine-tune-CoT the baseline, every subset scored, 200 resamples
    assert [r["name"] for r in table["runs"]] == RUNS and table["baseline"] == "cot"
    assert table["subsets"] == ["all", "present", "absent", "unseen"] and table["columns"] == KEYS
    assert table["bootstrap"]["resamples"] == 200 and table["bootstrap"]["seed"] == 0
    assert [r["vs_baseline"] is None for r in table["runs"]] == [r == "cot" for r in RUNS]
    markdown = (out / "table.md").read_text()
    assert proc.stdout.count(markdown) == 1  # printed as written
    sections = [s for s in markdown.split("\n**")[1:] if "|" in s]
    assert sections and all(sum(line.startswith("| ") for line in s.splitlines()) == 1 + len(RUNS) for s in sections)
    for f in ("table.csv", "table.tex"):
        assert (out / f).stat().st_size > 0

    # every cell equals the run's own evaluation (dyncot-eval mmkp's function, on the same files). After one epoch of
    # 32 posts the keyphrase scores are still 0 (measured: 32 steps leave F1 at 0 too), so here the cells that tell
    # the runs apart are the CoT rate and length; test_eval_table checks non-zero score cells over four runs.
    files = table["files"]
    n_posts = None
    for row in table["runs"]:
        alone = evaluate_files(tmp_path / row["predictions"], dataset=tmp_path / files["dataset"],
                               train=tmp_path / files["train"])
        n_posts = alone["num_posts"]
        for sub in table["subsets"]:
            scores = alone if sub == "all" else alone[sub]
            assert {k: row["scores"][sub][k] for k in KEYS} == {k: scores[k] for k in KEYS}, (row["name"], sub)
            assert row["scores"][sub]["num_posts"] == scores["num_posts"]
        assert row["cot_rate"] == alone["cot_rate"] and row["gen_len"] == alone["gen_len"]["all"]
        cells = next(line for line in markdown.splitlines() if line.startswith(f"| {row['name']} "))
        assert cells.split("|")[2].split()[0] == f"{100 * alone['f1@1']:.2f}"
    assert table["num_posts"] == n_posts == len(json.loads((tmp_path / files["dataset"]).read_text()))
    # each row is its own run: the strategy the script trained it with, the thinking mode it predicted with
    for name in RUNS:
        strategy, _, mode = name.partition("-")
        assert table_row(table, name)["predictions"] == f"outputs/strategies/pred_{name}/generated_predictions.jsonl"
        assert f"[dyncot] strategy={strategy} " in (out / f"train_{strategy}.log").read_text()
        think = json.loads((out / f"pred_{name}" / "dyncot_think.json").read_text())
        assert think["think"] == (mode or "greedy"), think
    by_name = {r["name"]: r for r in table["runs"]}
    assert by_name["sft"]["cot_rate"] == by_name["dynamic-never"]["cot_rate"] == 0.0  # no think block
    assert by_name["dynamic-always"]["cot_rate"] == 1.0
    assert by_name["dynamic-always"]["vs_baseline"]["cot_rate"]["delta"] == 1.0 - by_name["cot"]["cot_rate"]
