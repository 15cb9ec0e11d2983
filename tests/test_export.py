"""``llamafactory-cli export`` and LlamaBoard's Export tab write the adapter's ``dyncot_think.json`` next to the merged
model (real LLaMA-Factory exports of the LoRA adapter of the tiny Qwen2-VL), and a malformed one stops the export
before the model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dyncot_plugin.testing.lf_runner import LlamaFactoryRunError, offline_env, run_llamafactory

pytestmark = pytest.mark.slow


def _export_config(lora, export_dir, adapter=None):
    return {"model_name_or_path": lora["base"], "adapter_name_or_path": adapter or lora["adapter"],
            "template": "qwen2_vl", "finetuning_type": "lora", "export_dir": str(export_dir), "export_size": 1,
            "export_device": "cpu", "infer_dtype": "float32", "trust_remote_code": False}


def test_export_writes_the_adapters_dyncot_think_json(qwen2vl_lora_adapter, tmp_path):
    lora = qwen2vl_lora_adapter
    saved = Path(lora["adapter"], "dyncot_think.json")
    assert json.loads(saved.read_text())["threshold"] == 0.0
    proc = run_llamafactory("export", _export_config(lora, tmp_path / "merged"), workdir=tmp_path)
    merged = tmp_path / "merged"
    assert (merged / "model.safetensors").exists()
    assert (merged / "dyncot_think.json").read_bytes() == saved.read_bytes()
    assert f"[dyncot] dyncot_think.json (threshold 0.0) copied from {saved} to {merged / 'dyncot_think.json'}" in (
        proc.stdout + proc.stderr)


def test_llamaboard_export_tab_writes_it_too(qwen2vl_lora_adapter, tmp_path):
    """The Export tab's own handler (``save_model``, what its button runs) with LlamaBoard's folder layout
    (``saves/<model>/lora/<adapter>``)."""
    lora = qwen2vl_lora_adapter
    (tmp_path / "saves" / "Custom" / "lora").mkdir(parents=True)
    os.symlink(lora["adapter"], tmp_path / "saves" / "Custom" / "lora" / "mine")
    code = f"""
from llamafactory.webui.components.export import save_model
for message in save_model("en", "Custom", {lora['base']!r}, "lora", ["mine"], "qwen2_vl", 1, "none", "", "cpu",
                          False, {str(tmp_path / 'merged')!r}, "", '{{"infer_dtype": "float32"}}'):
    print(message, flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=offline_env(), capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert (tmp_path / "merged" / "dyncot_think.json").read_bytes() == Path(lora["adapter"], "dyncot_think.json").read_bytes()


def test_a_malformed_dyncot_think_json_stops_the_export_before_the_model_loads(qwen2vl_lora_adapter, tmp_path):
    import shutil

    lora = qwen2vl_lora_adapter
    adapter = tmp_path / "adapter"
    shutil.copytree(lora["adapter"], adapter)
    (adapter / "dyncot_think.json").write_text('{"think": "auto", "threshold": -1}')
    with pytest.raises(LlamaFactoryRunError) as e:
        run_llamafactory("export", _export_config(lora, tmp_path / "merged", str(adapter)), workdir=tmp_path)
    out = e.value.proc.stdout + e.value.proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("[dyncot-plugin] error:")]
    expected = (f"[dyncot-plugin] error: {adapter}/dyncot_think.json: threshold: got -1; expected a finite number >= 0 "
                "(above 1 never thinks).")
    assert errors == [expected], out[-2000:]
    assert "Traceback" not in out and not (tmp_path / "merged").exists()
