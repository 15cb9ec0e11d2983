"""The README's first command (examples/demo_cpu.sh): the model learns, and its think-or-not decision varies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dyncot_plugin.testing.lf_runner import offline_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_cpu_demo_learns_and_thinks_on_some_posts_only(tmp_path):
    shutil.copytree(REPO / "examples", tmp_path / "examples")  # the script writes outputs/ next to examples/
    env = offline_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    proc = subprocess.run(["bash", "examples/demo_cpu.sh"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "outputs" / "demo"

    result = json.loads((out / "synth_auto" / "generated_predictions.mmkp_eval.json").read_text())
    assert result["num_posts"] == 48
    assert result["f1@1"] > 0.2
    assert 0.0 < result["cot_rate"] < 1.0
    assert result["outputs"]["well_formed_rate"] == 1.0
    assert set(result["modes"]) == {"auto", "always", "never"}

    log = [json.loads(x) for x in (out / "synth_dynamic" / "trainer_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert steps and all("gamma" in e and "cot_ratio" in e for e in steps)
    second_half = [e["cot_ratio"] for e in steps[len(steps) // 2:]]
    assert abs(sum(second_half) / len(second_half) - 0.5) < 0.15  # the target share steers the mix
    # what the user reads: the curve with γ and the per-mode table
    assert "cot_ratio    gamma" in proc.stdout and "auto chose the better mode" in proc.stdout
