"""Every VLM family LLaMA-Factory trains: the strategy equivalences through ``llamafactory-cli train`` on a tiny
random model of each (dynamic γ=0 ≡ sft, dynamic γ huge ≡ cot), and the family table that makes them hold."""

from __future__ import annotations

import pytest

from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import read_losses, write_plugin_dataset
from dyncot_plugin.testing.tiny_families import FAMILIES, build_tiny_model
from dyncot_plugin.train.families import DEFAULT_FAMILY, MODEL_TYPE_TO_FAMILY

# qwen2_vl runs the same checks in test_train_strategies.py
VLM_FAMILIES = ("qwen2_5_vl", "qwen3_vl", "llava", "gemma3", "internvl")
REUSES_IMAGE_FEATURES = {"qwen2_5_vl", "qwen3_vl"}


def test_every_tiny_family_has_a_row_in_the_family_table():
    for name, spec in FAMILIES.items():
        row = MODEL_TYPE_TO_FAMILY.get(spec.model_type, DEFAULT_FAMILY)
        if name != "qwen2":  # text-only: the default layout
            assert row.name == name, name
            assert spec.template in row.templates, name


@pytest.mark.slow
@pytest.mark.parametrize(  # gemma3 (token_type_ids, processor tokens on the tokenizer) also on the low-end stack
    "family", [pytest.param(f, marks=pytest.mark.low_end) if f == "gemma3" else f for f in VLM_FAMILIES]
)
def test_strategy_equivalences_per_family(family, tmp_path):
    model = build_tiny_model(tmp_path / "model", family)
    write_plugin_dataset(tmp_path / "data", "toy", n=4)
    template = FAMILIES[family].template

    def run(name, **overrides):
        config = tiny_sft_config(model, tmp_path / "data", "toy", tmp_path / name / "out", template=template,
                                 max_steps=2, **overrides)
        proc = run_llamafactory("train", config, tmp_path / name)
        return read_losses(tmp_path / name / "out"), proc.stdout + proc.stderr

    sft, _ = run("sft", dyncot_strategy="sft")
    dyn0, _ = run("dyn0", dyncot_strategy="dynamic", dyncot_gamma=0.0)
    cot, _ = run("cot", dyncot_strategy="cot")
    dyn_huge, log = run("dyn_huge", dyncot_strategy="dynamic", dyncot_gamma=1.0e6)
    assert len(sft) == 2 and sft != cot
    assert dyn0 == sft
    assert dyn_huge == cot
    if family in REUSES_IMAGE_FEATURES:
        assert "image features reused in 2 training forwards, recomputed in 0" in log
    else:
        assert f"image features are computed twice per step: the {family} family" in log


@pytest.mark.slow
def test_dyncot_tiny_model_builds_a_family(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "gemma3"
    proc = subprocess.run([sys.executable, "-m", "dyncot_plugin.cli.tiny_model", str(out), "--family", "gemma3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["model_type"] == "gemma3"
