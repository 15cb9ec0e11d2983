"""dyncot-predict on real vLLM (CPU) for a LLaVA model against a ``llamafactory-cli train`` prediction run.

A tiny LLaVA (CLIP tower + Llama decoder, hidden 128 with 4 heads: vLLM's CPU attention needs a head size >= 32),
saved by transformers 5 as ``llamafactory-cli`` saves it (names vLLM cannot map: dyncot-predict hands vLLM a renamed
copy, :mod:`dyncot_plugin.serve.checkpoint`); posts with non-flat images of two sizes and one without an image;
greedy, float32, ``dyncot_think: auto``. One engine load, one LLaMA-Factory run: about 70 s on 2 cores.
Skips with the reason where the vLLM venv cannot be built (see tests/test_serve_vllm.py).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from test_serve_vllm import _vllm_python, predict_cmd, predict_env, rows  # tests/ is on sys.path (rootdir)

from dyncot_plugin.testing.lf_runner import make_image, run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import write_plugin_dataset

pytestmark = pytest.mark.slow
N_EVAL = 8


def test_llava_prompts_labels_and_predictions_equal_llamafactorys(tmp_path):
    import yaml

    from dyncot_plugin.testing.tiny_families import build_tiny_model

    python = _vllm_python()
    model = build_tiny_model(tmp_path / "model", "llava", seed=0, hidden_size=128)
    data = tmp_path / "data"

    def mutate(rows_):
        rows_[3]["images"] = [make_image(data / "big_3.png", seed=33, size=(200, 150))]
        rows_[5]["images"] = []  # a text-only post
        rows_[5]["messages"][0]["content"] = rows_[5]["messages"][0]["content"].replace("<image>", "")

    write_plugin_dataset(data, "toy_eval", n=N_EVAL, image_size=(72, 60), mutate=mutate)
    recipe = tiny_sft_config(model, data, None, tmp_path / "lf", do_train=False, do_predict=True, template="llava",
                             predict_with_generate=True, eval_dataset="toy_eval", max_new_tokens=16, do_sample=False,
                             per_device_eval_batch_size=4, dyncot_think="auto", dyncot_think_threshold=0.5)
    for key in ("logging_steps", "save_strategy", "per_device_train_batch_size", "gradient_accumulation_steps",
                "learning_rate", "num_train_epochs", "max_steps", "lr_scheduler_type", "plot_loss"):
        recipe.pop(key, None)
    run_llamafactory("train", recipe, workdir=tmp_path)
    lf = rows(tmp_path / "lf" / "generated_predictions.jsonl")

    weights = {f: (model / f).read_bytes() for f in os.listdir(model) if f.endswith(".safetensors")}
    vrecipe = tmp_path / "vllm.yaml"
    vrecipe.write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp_path / "vllm")}), encoding="utf-8")
    env = {**predict_env(), "DYNCOT_VLLM_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(predict_cmd(python, vrecipe), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = rows(tmp_path / "vllm" / "generated_predictions.jsonl")

    assert len(lf) == len(ours) == N_EVAL
    same = 0
    for a, b in zip(lf, ours):
        assert a["prompt"] == b["prompt"]  # byte-identical: default system, USER:/ASSISTANT: slots, <image> * 4
        assert a["label"] == b["label"]
        assert abs(a["think_prob"] - b["think_prob"]) <= 1e-3, (a["think_prob"], b["think_prob"])
        same += a["predict"] == b["predict"]
    assert same >= 0.95 * N_EVAL, same
    image_posts = [r["prompt"] for r in ours if "<image>" in r["prompt"]]
    assert len(image_posts) == N_EVAL - 1 and all(p.count("<image>") == 4 for p in image_posts)
    # vLLM read a renamed copy; the model folder is untouched
    assert "vLLM loads a renamed copy" in proc.stderr and "model.language_model.model.*" in proc.stderr
    assert weights == {f: (model / f).read_bytes() for f in os.listdir(model) if f.endswith(".safetensors")}
    copies = [p for p in (tmp_path / "cache" / "checkpoints").iterdir() if not p.name.startswith(".")]  # not .lock
    assert len(copies) == 1 and (copies[0] / "config.json").resolve() == (model / "config.json").resolve()
    settings = json.loads((tmp_path / "vllm" / "dyncot_think.json").read_text())
    assert settings["engine"] == "vllm" and settings["think"] == "auto"
