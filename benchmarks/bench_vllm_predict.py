"""dyncot-predict (vLLM) against a ``llamafactory-cli train`` prediction run of the same recipe, whole commands.

    python benchmarks/bench_vllm_predict.py --model MODEL_DIR [--posts 200] [--max-new-tokens 24] [--mode auto]

Builds ``--posts`` image posts (the toy rows of the tests), writes one prediction recipe, runs both commands one
after the other (each timed from start to exit: model/engine load included) and prints the ratio and how many
predictions agree. Without ``--model`` it trains the tiny hidden-128 Qwen2-VL of tests/test_serve_vllm.py first.
The vLLM venv: scripts/make_vllm_venv.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dyncot_plugin.testing.lf_runner import offline_env, run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import write_plugin_dataset

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_vllm_"))
    data = work / "data"
    write_plugin_dataset(data, "bench", n=args.posts, image_size=(72, 60))
    model = args.model
    if model is None:
        from dyncot_plugin.testing.tiny_model import build_tiny_qwen2vl

        base = build_tiny_qwen2vl(work / "base", seed=0, hidden_size=128)
        write_plugin_dataset(data, "toy", n=16)
        cfg = tiny_sft_config(base, data, "toy", work / "model", dyncot_strategy="dynamic",
                              dyncot_target_cot_ratio=0.5, max_steps=24, num_train_epochs=3, learning_rate=3e-3)
        run_llamafactory("train", cfg, workdir=work)
        model = str(work / "model")
    recipe = {"model_name_or_path": model, "stage": "sft", "do_train": False, "do_predict": True,
              "predict_with_generate": True, "finetuning_type": "full", "eval_dataset": "bench",
              "dataset_dir": str(data), "template": "qwen2_vl", "cutoff_len": 256, "overwrite_cache": True,
              "preprocessing_num_workers": 1, "overwrite_output_dir": True, "report_to": "none",
              "per_device_eval_batch_size": 16, "max_new_tokens": args.max_new_tokens, "do_sample": False,
              "bf16": False, "dyncot_think": args.mode}
    lf_yaml, v_yaml = work / "lf.yaml", work / "vllm.yaml"
    lf_yaml.write_text(yaml.safe_dump({**recipe, "output_dir": str(work / "lf")}))
    v_yaml.write_text(yaml.safe_dump({**recipe, "output_dir": str(work / "vllm")}))
    venv = subprocess.run(["bash", str(REPO / "scripts/make_vllm_venv.sh")], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]
    cli = str(Path(sys.executable).with_name("llamafactory-cli"))
    times, notes = {}, []
    for name, argv, env in (
        ("llamafactory-cli", [cli, "train", str(lf_yaml)], offline_env()),
        ("dyncot-predict", [f"{venv}/bin/python", "-m", "dyncot_plugin.serve.predict", str(v_yaml)],
         offline_env({"PYTHONPATH": str(REPO)})),
    ):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
        times[name] = time.perf_counter() - start
        notes += [line for line in proc.stderr.splitlines() if line.startswith("[dyncot-predict]")]
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
    rows = {n: [json.loads(x) for x in open(work / n / "generated_predictions.jsonl")] for n in ("lf", "vllm")}
    same = sum(a["predict"] == b["predict"] for a, b in zip(rows["lf"], rows["vllm"]))
    print(json.dumps({"posts": args.posts, "mode": args.mode, "max_new_tokens": args.max_new_tokens,
                      "seconds": {k: round(v, 1) for k, v in times.items()},
                      "speedup": round(times["llamafactory-cli"] / times["dyncot-predict"], 2),
                      "same_predictions": same, "cpus": os.cpu_count(), "dyncot_predict_log": notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
