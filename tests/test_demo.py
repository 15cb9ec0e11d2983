"""The README's first command (examples/demo_cpu.sh): the model learns, and it thinks on the posts that need it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from dyncot_plugin.testing.lf_runner import offline_env

REPO = Path(__file__).resolve().parents[1]
_PINNED = not transformers.__version__.startswith("4.")  # constraints.txt (5.x), not constraints-low.txt (4.57)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _auc(positives: list[float], negatives: list[float]) -> float:
    """P(a random positive scores above a random negative), ties counting half."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    return sum(pairs) / len(pairs)


@pytest.mark.slow
@pytest.mark.low_end  # also on the low-end stack (.ci/run)
def test_the_cpu_demo_learns_and_thinks_on_the_posts_that_need_it(tmp_path):
    shutil.copytree(REPO / "examples", tmp_path / "examples")  # the script writes outputs/ next to examples/
    env = offline_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    proc = subprocess.run(["bash", "examples/demo_cpu.sh"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "outputs" / "demo"

    result = json.loads((out / "synth_auto" / "generated_predictions.mmkp_eval.json").read_text())
    assert result["num_posts"] == 48
    assert result["f1@1"] > 0.2
    assert result["outputs"]["well_formed_rate"] == 1.0
    assert {"auto", "always", "never"} <= set(result["modes"])

    # the learned decision: image posts think, text posts do not
    posts = json.loads((out / "data" / "mmkp_synth_eval.json").read_text())
    auto = _rows(out / "synth_auto" / "generated_predictions.jsonl")
    kinds = [p["kind"] for p in posts]
    assert len(auto) == len(posts) == 48 and set(kinds) == {"image", "text"}
    thinks = {k: [r["predict"].startswith("<think>") for r, kind in zip(auto, kinds) if kind == k] for k in kinds}
    assert sum(thinks["image"]) / len(thinks["image"]) >= 0.9
    assert sum(thinks["text"]) / len(thinks["text"]) <= 0.1
    probs = {k: [r["think_prob"] for r, kind in zip(auto, kinds) if kind == k] for k in kinds}
    assert _auc(probs["image"], probs["text"]) >= 0.95
    # the frontier of always / never with think_prob is computed and printed
    assert result["frontier"][0]["think_rate"] == 0.0 and result["frontier"][-1]["think_rate"] == 1.0
    assert "frontier" in proc.stdout

    log = [json.loads(x) for x in (out / "synth_dynamic" / "trainer_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert steps and all("gamma" in e and "cot_ratio" in e for e in steps)
    second_half = [e["cot_ratio"] for e in steps[len(steps) // 2:]]
    assert abs(sum(second_half) / len(second_half) - 0.5) < 0.15  # the target share steers the mix
    # what the user reads: the curve with γ and the per-mode table
    assert "cot_ratio    gamma" in proc.stdout and "auto chose the better mode" in proc.stdout
    # the per-mode tables of each kind of post: the same posts as the full run's, scored apart
    for kind in ("image", "text"):
        assert f"-- the held-out {kind} posts only" in proc.stdout
        part = json.loads((out / "by_kind" / kind / "auto.mmkp_eval.json").read_text())
        assert part["num_posts"] == kinds.count(kind) == 24 and {"auto", "always", "never"} <= set(part["modes"])
        assert part["modes"]["auto"]["cot_rate"] == sum(thinks[kind]) / 24
    # what thinking is worth (issue 29's properties): where the rationale is needed it is worth >= 20 F1@M points,
    # where it is not `never` loses nothing with fewer words, and `auto` keeps the gain at a lower think rate
    by_kind = {k: json.loads((out / "by_kind" / k / "auto.mmkp_eval.json").read_text())["modes"] for k in kinds}
    image, text, modes = by_kind["image"], by_kind["text"], result["modes"]
    # +20 points is the pinned stack's property on the demo's seed here (95.83 vs 66.67). It does not hold across
    # runs (issue 29, open): training seed 1 gives 100 vs 100, and the low end (transformers 4.57) 100 vs 87.50 on
    # the same seed, so there only the sign of the gain is asserted
    gain = image["always"]["f1@M"] - image["never"]["f1@M"]
    assert gain >= 0.20 if _PINNED else gain > 0, (image["always"]["f1@M"], image["never"]["f1@M"])
    assert text["never"]["f1@M"] >= text["always"]["f1@M"] - 0.02
    assert text["never"]["gen_len"]["all"] < text["always"]["gen_len"]["all"]
    assert modes["auto"]["f1@M"] >= modes["always"]["f1@M"] - 0.03 and modes["auto"]["cot_rate"] <= 0.6
    assert modes["auto"]["gen_len"]["all"] <= 0.75 * modes["always"]["gen_len"]["all"]
    assert 0 < result["frontier_summary"]["best"]["think_rate"] < 1
