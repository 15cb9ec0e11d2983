"""The GPU check's measurements (run by ``benchmarks/gpu_check.sh``, which installs the stack first).

1. ``bench_dynamic.py`` at Qwen2-VL-2B's shape in bf16: step-time and CUDA peak-memory ratios of `dynamic` (γ = 0)
   to `sft`, losses equal step for step.
2. A ``llamafactory-cli train`` run of ``examples/qwen2_5vl_7b_dyncot_lora.yaml``'s method (LoRA, bf16) on a
   random Qwen2.5-VL-7B of the real widths (depth cut by ``--layers`` / ``--vision-depth``), with
   ``dyncot_target_cot_ratio: 0.5`` so that ``cot_ratio`` and ``gamma`` move on a random model, for a few steps:
   step time (from the run's own TensorBoard events, between the second and the last step), peak memory
   (the Trainer's memory metrics), ``cot_ratio`` and ``gamma`` per step from ``trainer_log.jsonl``.
3. The training-time evaluation (``dyncot_eval_samples``) at the last step of that run: ``eval_f1@1``,
   ``eval_cot_rate``, ``eval_gen_len``.

Prints one summary (and writes it as JSON with ``--json``). ``--tiny``: tiny shapes, any device, a few steps: what
``tests/test_gpu_check.py`` runs on a CPU so that this script cannot rot. Exit status 1 when a part failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _models import SHAPES, build_model_dir, write_rows  # noqa: E402


def run(cmd: list[str], timeout: float, log: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT,
                              env={**os.environ, **(env or {})})
    return proc


def tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.is_file() else ""


def bench_part(args, work: Path) -> dict:
    shape = "tiny" if args.tiny else "qwen2vl-2b"
    out = work / "bench.json"
    cmd = [sys.executable, str(HERE / "bench_dynamic.py"), "--shape", shape, "--device", args.device,
           "--steps", str(args.bench_steps), "--rounds", str(min(3, args.bench_steps)), "--memory-steps", "2",
           "--json", str(out), "--timeout", str(args.part_timeout)]
    proc = run(cmd, args.part_timeout, work / "bench.log")
    if proc.returncode != 0 or not out.is_file():
        return {"ok": False, "error": tail(work / "bench.log")}
    report = json.loads(out.read_text())
    dyn = report["arms"]["dynamic"]
    return {"ok": True, "shape": shape, "dtype": report["train_dtype"], "time_ratio": dyn["time_ratio"],
            "time_ratio_paired": dyn["time_ratio_median_paired"], "memory_ratio": dyn.get("memory_ratio"),
            "memory_method": report.get("memory_method"), "max_abs_loss_diff": dyn["max_abs_loss_diff_vs_sft"],
            "sft_step_s": report["arms"]["sft"]["step_s"]["median"], "dynamic_step_s": dyn["step_s"]["median"],
            "flop_ratio": report["flop_estimate"]["ratio_cache_vision"]}


def tensorboard_step_times(output_dir: Path) -> list[tuple[int, float]]:
    """(step, wall time) of every ``train/loss`` event the run's TensorBoard writer recorded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for path in glob.glob(str(output_dir / "runs" / "**" / "events.out.tfevents.*"), recursive=True):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags().get("scalars", []):
            points.update({e.step: e.wall_time for e in acc.Scalars("train/loss")})
    return sorted(points.items())


def train_part(args, work: Path) -> dict:
    import yaml

    from dyncot_plugin.testing.lf_runner import tiny_sft_config
    from dyncot_plugin.testing.plugin_data import read_log

    shape_name = "tiny-qwen2_5vl" if args.tiny else "qwen2_5vl-7b"
    shape = SHAPES[shape_name]
    started = time.perf_counter()
    model_dir = build_model_dir(work / "model7b", shape, shape["vocab"], 262144, seed=0, weights=True,
                                device=args.device, layers=None if args.tiny else args.layers,
                                vision_depth=None if args.tiny else args.vision_depth)
    build_s = time.perf_counter() - started
    data_dir = work / "data7b"
    rows, eval_rows = 4 * (args.train_steps + 1), args.eval_samples
    write_rows(data_dir, model_dir, rows + eval_rows, "gpu", prompt_len=(40, 120), answer_len=(5, 15),
               cot_len=(60, 150), image_size=(280, 336), seed=0, eval_rows=eval_rows)
    recipe = yaml.safe_load((ROOT / "examples" / "qwen2_5vl_7b_dyncot_lora.yaml").read_text())
    keep = ("stage", "do_train", "finetuning_type", "lora_rank", "lora_target", "freeze_vision_tower", "template",
            "cutoff_len", "image_max_pixels", "learning_rate", "dyncot_strategy", "dyncot_gamma")
    out = work / "out7b"
    cuda = args.device == "cuda"
    config = tiny_sft_config(
        model_dir, data_dir, "gpu", out, **{k: recipe[k] for k in keep},
        max_steps=args.train_steps, per_device_train_batch_size=4, bf16=cuda, report_to="tensorboard",
        dyncot_target_cot_ratio=0.5, skip_memory_metrics=False,
        eval_dataset="gpu_eval", eval_strategy="steps", eval_steps=args.train_steps, per_device_eval_batch_size=4,
        dyncot_eval_samples=args.eval_samples, dyncot_eval_max_new_tokens=args.max_new_tokens,
    )
    (work / "train7b.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {"FORCE_TORCHRUN": "0", "DISABLE_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "WANDB_DISABLED": "true", "TOKENIZERS_PARALLELISM": "false"}
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cli = str(Path(sys.executable).parent / "llamafactory-cli")
    proc = run([cli if os.path.exists(cli) else "llamafactory-cli", "train", str(work / "train7b.yaml")],
               args.part_timeout, work / "train7b.log", env=env)
    if proc.returncode != 0:
        return {"ok": False, "error": tail(work / "train7b.log")}
    log = read_log(out)
    entries = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    evals = [e for e in entries if "eval_loss" in e]
    results = json.loads((out / "train_results.json").read_text())
    times = tensorboard_step_times(out)
    step_s = (times[-1][1] - times[0][1]) / (times[-1][0] - times[0][0]) if len(times) > 1 else None
    part = {
        "ok": True, "shape": shape_name, "layers": model_cfg(model_dir), "build_s": build_s,
        "steps": len(log), "step_s": step_s, "train_runtime_s": results.get("train_runtime"),
        "cot_ratio": [e.get("cot_ratio") for e in log], "gamma": [e.get("gamma") for e in log],
        "eval": {k: evals[-1].get(k) for k in ("eval_loss", "eval_f1@1", "eval_f1@M", "eval_cot_rate",
                                               "eval_gen_len")} if evals else None,
        "generations_file": bool(list((out / "dyncot_eval").glob("step*.jsonl"))),
    }
    if "train_mem_gpu_peaked_delta" in results:
        # allocated when train() began (weights, LoRA, optimizer) + what it added + its peak above the end
        begin = results.get("before_init_mem_gpu", 0) + results.get("init_mem_gpu_alloc_delta", 0)
        part["peak_gpu_gib"] = (begin + results["train_mem_gpu_alloc_delta"]
                                + results["train_mem_gpu_peaked_delta"]) / 2**30
    return part


def model_cfg(model_dir: Path) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    return {"hidden": text["hidden_size"], "layers": text["num_hidden_layers"], "vocab": text["vocab_size"],
            "vision_depth": vision["depth"], "vision_width": vision["hidden_size"]}


def fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, any device: the dry run")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the 7B shape (real: 28)")
    parser.add_argument("--vision-depth", type=int, default=8, help="ViT blocks of the 7B shape (real: 32)")
    parser.add_argument("--bench-steps", type=int, default=6)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--part-timeout", type=float, default=150, help="seconds per part")
    parser.add_argument("--install-s", type=float, help="time the installation took (printed in the summary)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.tiny:
        args.bench_steps, args.train_steps = min(args.bench_steps, 2), min(args.train_steps, 3)
        args.eval_samples, args.max_new_tokens = min(args.eval_samples, 4), min(args.max_new_tokens, 8)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "transformers", "llamafactory", "deepspeed", "peft", "accelerate", "datasets", "trl",
                 "dyncot-plugin"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    summary = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "tiny": args.tiny,
               "python": sys.version.split()[0], "versions": versions, "install_s": args.install_s}
    for name, part in (("bench", bench_part), ("train", train_part)):
        t0 = time.perf_counter()
        try:
            summary[name] = part(args, args.work)
        except Exception as exc:  # a part's failure is reported in the summary, the other part still runs
            summary[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        summary[name]["wall_s"] = round(time.perf_counter() - t0, 1)
    summary["wall_s"] = round(time.perf_counter() - started, 1)

    b, t = summary["bench"], summary["train"]
    print("=" * 100)
    print(f"dyncot GPU check on {summary['device']} (python {summary['python']}; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()) + ")")
    if args.install_s is not None:
        print(f"install from wheels: {args.install_s:.0f} s")
    if b["ok"]:
        print(f"[bench_dynamic {b['shape']}, {b['dtype']}] dynamic/sft step time {b['time_ratio']:.3f}x "
              f"(paired median {b['time_ratio_paired']:.3f}x; FLOP estimate {b['flop_ratio']:.3f}x), peak memory "
              f"{fmt(b['memory_ratio'])}x ({b['memory_method']}); median step sft {b['sft_step_s']:.3f} s, dynamic "
              f"{b['dynamic_step_s']:.3f} s; max |loss diff| {b['max_abs_loss_diff']:.3g}  ({b['wall_s']} s)")
    else:
        print(f"[bench_dynamic] FAILED ({b['wall_s']} s):\n{b['error']}")
    if t["ok"]:
        print(f"[train {t['shape']} {t['layers']}, LoRA, dynamic, target CoT share 0.5] {t['steps']} steps: step "
              f"{fmt(t['step_s'])} s, peak GPU memory {fmt(t.get('peak_gpu_gib'), '.2f')} GiB; cot_ratio "
              f"{t['cot_ratio']}; gamma {t['gamma']}  (model built in {t['build_s']:.0f} s; {t['wall_s']} s)")
        print(f"[training-time eval, {args.eval_samples} samples] {t['eval']}; generations saved: "
              f"{t['generations_file']}")
    else:
        print(f"[train] FAILED ({t['wall_s']} s):\n{t['error']}")
    print(f"total {summary['wall_s']} s" + (f" + install {args.install_s:.0f} s" if args.install_s else ""))
    print("=" * 100)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if b["ok"] and t["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
