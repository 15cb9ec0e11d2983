"""benchmarks/gpu_check.sh, the one-command GPU check, in its CPU dry run (--tiny) so that it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dyncot_plugin.testing.lf_runner import offline_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_trains_benchmarks_and_evaluates(tmp_path):
    env = offline_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    summary = tmp_path / "summary.json"
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--tiny", "--work", str(tmp_path / "work"),
                           "--json", str(summary)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(summary.read_text())
    assert result["tiny"] is True and result["device"] == "cpu"
    bench, train = result["bench"], result["train"]
    assert bench["ok"] and bench["max_abs_loss_diff"] == 0  # dynamic at γ=0 trains what sft trains
    assert bench["time_ratio"] > 0 and bench["memory_ratio"] > 0
    assert train["ok"] and len(train["gamma"]) == len(train["cot_ratio"]) == train["steps"] > 0
    assert all(0.0 <= r <= 1.0 for r in train["cot_ratio"])
    assert "eval_f1@1" in train["eval"] and train["generations_file"] is True  # the eval wrote its generations
    assert "dyncot GPU check on cpu" in proc.stdout
