"""Benchmark: the cost of Dynamic CoT's selection pass, `dynamic` (γ = 0) against `sft`, on the same batches.

With ``dyncot_gamma: 0`` no sample ever selects its CoT view, so `dynamic` trains exactly the targets `sft` trains
and the difference between the two is the selection pass alone: one no-grad, eval-mode forward over the plain view
(image encoding included) that computes logits only at answer positions; with the vision tower frozen (the default
here, as in LLaMA-Factory) the training forward then reuses that pass's image features, so the tower runs once per
step in both arms (``--variants recompute_vision`` times the run without the reuse). The script checks that they really
train the same thing (same loss, step for step, from the same weights).

What runs is exactly what ``llamafactory-cli train`` builds for each arm's recipe: ``dyncot_plugin.testing.assemble``
runs LLaMA-Factory's own ``run_sft`` under the plugin's swap tables (model loading with LLaMA-Factory's defaults:
full fine-tuning, frozen vision tower, gradient checkpointing; the plugin's dataset, ``DualViewDataCollator`` and
``DynCotTrainer``) and stops it at ``trainer.train()``. Each arm has its own model, loaded from the same folder. One
timed step of an arm is one optimizer step as the Trainer's loop runs it:

    trainer.get_batch_samples(iter([batch]), 1, device)   # dynamic: selection forward + gamma + merge_views;
                                                          # then the token count (num_items_in_batch)
    trainer.training_step(model, batch, num_items)        # forward + backward (LLaMA-Factory's loss)
    clip_grad_norm_ + optimizer.step() + zero_grad()

on batches collated beforehand by the run's collator (collation is timed separately: with
``dataloader_num_workers > 0`` it runs in the loader workers). The model is a random-init Qwen2-VL (tokenizer and
processor from ``dyncot_plugin.testing.tiny_model``; model sizes from ``--shape``, see ``_models.py``), built in a
temp dir. Samples are synthetic MMKP-shaped rows as the CMKP converter writes them: one image, a post, a plain answer
("kp1; kp2") and a CoT answer ("<think>…</think><answer>…</answer>"), lengths drawn from ``--prompt-len`` /
``--answer-len`` / ``--cot-len``.

``--variants target`` adds an arm with ``dyncot_target_cot_ratio: 0.5``: γ is re-estimated from every step's losses
(``dyncot_plugin/train/gamma.py``), so about half the rows train on their (longer) CoT view. Its cost of interest is
the controller's own: its update is timed inside the step (``gamma ms``) and compared with the step.
``--variants target,rescore`` adds the same with ``dyncot_target_rescore`` = the batch size: every step also
re-scores the next micro-batch (one extra no-grad selection forward), handed to ``get_batch_samples`` behind the
step's batch as the epoch iterator would hand it; reported against ``dynamic+target`` (whole step and select phase,
paired medians).

Time: all arms run in ONE process, interleaved over the same batches: round r runs every arm (in an order that
rotates and reverses from round to round) over that round's batches, each arm starting from the same weights and
optimizer state (restored before each segment, untimed). Drift of the machine therefore hits all arms alike.

Peak memory: each arm in its own fresh process (same set-up, warm-up step, then the measured steps). On CUDA,
``torch.cuda.max_memory_allocated`` (reset after the warm-up step). On CPU there is no allocator statistic, so the
process's peak resident set (``VmHWM``) is used, reset after the warm-up step with ``/proc/self/clear_refs`` (so the
peak of model loading does not mask the steps), with glibc told to return freed blocks to the kernel
(``MALLOC_MMAP_THRESHOLD_=65536``) so that resident memory follows live tensors. Reported: the peak, and the peak
minus the resident memory just before the measured steps (weights, optimizer state, data: the part the steps add).

    python benchmarks/bench_dynamic.py                          # CPU: the `mid` shape, 8 timed steps per arm
    python benchmarks/bench_dynamic.py --vocab-size 151936      # same, Qwen2's real vocabulary
    python benchmarks/bench_dynamic.py --shape qwen2vl-2b       # GPU: Qwen2-VL-2B's shape, bf16
    python benchmarks/bench_dynamic.py --variants recompute_vision  # also time dynamic without image-feature reuse
    python benchmarks/bench_dynamic.py --variants target        # also time the target-share controller
    python benchmarks/bench_dynamic.py --variants target,rescore --no-memory   # and re-scoring's extra forward
    python benchmarks/bench_dynamic.py --estimate-only --shape qwen2vl-2b   # FLOP estimate only, no model

The last line of the output is ``BENCH_JSON {...}`` (also written with ``--json PATH``). Exit status 0 whatever the
ratios (this is a benchmark, not a test); the targets of the issue are 1.40x time and 1.10x peak memory.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_model, emit_json
from _models import SHAPES, build_model_dir, write_rows

TIME_TARGET, MEMORY_TARGET = 1.40, 1.10

# Extra `dynamic` arms: a candidate change to DynCotTrainer tried by subclassing, or a plugin option.
VARIANTS = {
    "inference_mode": "selection forward under torch.inference_mode() instead of torch.no_grad()",
    "recompute_vision": "dyncot_reuse_image_features: false (the vision tower runs in both forwards)",
    "target": "dyncot_target_cot_ratio: 0.5 (gamma re-estimated every step; about half the rows train on CoT)",
    "rescore": "target + dyncot_target_rescore: one batch of rows (the next micro-batch re-scored every step)",
}
TARGET_RATIO = 0.5
RESULT_PREFIX = "BENCH_RESULT "
QWEN2_VL_SHAPES = sorted(name for name, shape in SHAPES.items() if shape["family"] == "qwen2_vl")  # FLOP model's


# ------------------------------------------------------------------------------------------------ helpers
def int_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    lo, hi = int(lo), int(hi or lo)
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI with 0 < LO <= HI, got {text!r}")
    return lo, hi


def image_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    w, h = int(w), int(h or w)
    if w % 28 or h % 28:
        raise argparse.ArgumentTypeError("image sides must be multiples of 28 (one image token = 28x28 pixels)")
    return w, h


def proc_status_kib(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "min": min(values),
            "max": max(values), "n": len(values)}



# --------------------------------------------------------------------------------- trainer variants
def make_trainer_class(variant: str | None):
    import torch

    from dyncot_plugin.train.trainer import DynCotTrainer

    if variant == "inference_mode":
        class InferenceModeSelection(DynCotTrainer):
            def selection_losses(self, plain, record=True):
                with torch.inference_mode():
                    return DynCotTrainer.selection_losses.__wrapped__(self, plain, record)

        return InferenceModeSelection
    if variant in (None, "recompute_vision", "target", "rescore"):
        return None  # the run's own DynCotTrainer; the arm's dyncot_* keys make the difference
    raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


def arm_keys(arm: str, batch_size: int = 4) -> dict:
    """The recipe's dyncot_* keys of one arm (gamma 0: dynamic trains exactly what sft trains)."""
    strategy, _, variant = arm.partition("+")
    keys = {"dyncot_strategy": strategy}
    if strategy == "dynamic":
        keys["dyncot_gamma"] = 0.0
        keys["dyncot_reuse_image_features"] = variant != "recompute_vision"
        if variant in ("target", "rescore"):
            keys["dyncot_target_cot_ratio"] = TARGET_RATIO
        if variant == "rescore":
            keys["dyncot_target_rescore"] = batch_size
    return keys


# ------------------------------------------------------------------------------------------- worker
class Bench:
    """Each arm is the run `llamafactory-cli train` builds for its recipe (``assemble_sft``: LLaMA-Factory's run_sft
    under the plugin's swap tables, stopped at ``trainer.train()``), with its own model loaded from the same folder."""

    def __init__(self, ctx: dict, arms: list[str]):
        import torch

        from dyncot_plugin.testing.assemble import assemble_sft
        from dyncot_plugin.testing.lf_runner import tiny_sft_config

        self.torch = torch
        self.cuda = ctx["device"] == "cuda"
        recipe = tiny_sft_config(
            ctx["model_dir"], ctx["data_dir"], "bench", ctx["out_dir"], freeze_vision_tower=True, cutoff_len=2048,
            per_device_train_batch_size=ctx["batch_size"], learning_rate=5e-5, max_steps=1000, bf16=self.cuda,
            logging_steps=1000, image_max_pixels=ctx["max_pixels"],
            disable_gradient_checkpointing=not ctx["gradient_checkpointing"],
        )
        bs = ctx["batch_size"]
        self.arms = arms
        self.trainers, self.batches, self.collate_s, self.gamma_s = {}, {}, {}, {}
        for arm in arms:
            trainer_class = make_trainer_class(arm.partition("+")[2] or None)
            built = assemble_sft({**recipe, **arm_keys(arm, bs)}, trainer_class=trainer_class)
            trainer, dataset = built.trainer, built.train_dataset
            features = [[dataset[i] for i in range(b * bs, (b + 1) * bs)] for b in range(len(dataset) // bs)]
            self.batches[arm], times = [], []
            for feats in features:
                start = time.perf_counter()
                self.batches[arm].append(built.collator(copy.deepcopy(feats)))
                times.append(time.perf_counter() - start)
            self.collate_s[arm] = summary(times[1:] or times)
            # What Trainer.train does before its loop: accelerator.prepare (autocast on GPU bf16), the optimizer.
            trainer.model_wrapped = trainer.accelerator.prepare_model(trainer.model)
            trainer.create_optimizer()
            trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop
            if trainer.gamma.adaptive:
                self._time_gamma(arm, trainer)
            self.trainers[arm] = trainer
        self.training_args = built.training_args
        self.model = self.trainers[arms[0]].model
        self.device = built.training_args.device

    def _time_gamma(self, arm: str, trainer) -> None:
        """Accumulate the time of the target-share controller's update (the whole of its per-step cost)."""
        update = trainer.gamma.update
        self.gamma_s[arm] = 0.0

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return update(*args, **kwargs)
            finally:
                self.gamma_s[arm] += time.perf_counter() - start

        trainer.gamma.update = timed

    # ------------------------------------------------------------------------------------ measurements
    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def step(self, arm: str, index: int) -> dict[str, float]:
        """One optimizer step as Trainer's loop runs it: get_batch_samples (the plugin's selection, then the token
        count), training_step (forward + backward), clip + optimizer step."""
        trainer, batch = self.trainers[arm], self.batches[arm][index]
        gamma0, cot0, rows0 = self.gamma_s.get(arm, 0.0), trainer._metrics["cot_rows"], trainer._metrics["rows"]
        self.sync()
        t0 = time.perf_counter()
        batches = self.batches[arm]  # re-scoring: the next micro-batches follow, as in the epoch iterator
        upcoming = [batches[(index + 1 + i) % len(batches)] for i in range(trainer.rescore_micro_batches)]
        trained, num_items = trainer.get_batch_samples(iter([batch, *upcoming]), 1, self.device)
        self.sync()
        t1 = time.perf_counter()
        loss = trainer.training_step(trainer.model_wrapped, trained[0], num_items)
        self.sync()
        t2 = time.perf_counter()
        trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), self.training_args.max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        self.sync()
        t3 = time.perf_counter()
        rows = trainer._metrics["rows"] - rows0
        return {"select": t1 - t0, "train": t2 - t1, "optim": t3 - t2, "total": t3 - t0, "loss": float(loss),
                "gamma": self.gamma_s.get(arm, 0.0) - gamma0,
                "cot_share": (trainer._metrics["cot_rows"] - cot0) / rows if rows else 0.0}

    def snapshot(self, arm: str) -> None:
        """``arm``'s weights and optimizer state, which :meth:`restore` loads into any arm."""
        trainer = self.trainers[arm]
        self._weights = {k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}
        cpu = lambda x: x.detach().to("cpu", copy=True) if self.torch.is_tensor(x) else copy.deepcopy(x)  # noqa: E731
        state = trainer.optimizer.state_dict()
        self._optim = {"state": {k: {n: cpu(v) for n, v in s.items()} for k, s in state["state"].items()},
                       "param_groups": copy.deepcopy(state["param_groups"])}

    def restore(self, arm: str) -> None:
        trainer = self.trainers[arm]
        trainer.model.load_state_dict(self._weights)
        trainer.optimizer.load_state_dict(copy.deepcopy(self._optim))

    def batch_stats(self) -> dict:
        """Shapes of the plain view (and CoT view) of every batch, for the report and the FLOP estimate."""
        from dyncot_plugin.train.selection import answer_positions

        arm = next(a for a in self.arms if a != "sft")
        out = []
        for batch in self.batches[arm]:
            labels, cot_labels = batch["labels"], batch["cot_labels"]
            first = (labels[:, 1:] != -100).float().argmax(dim=1) + 1
            grid = batch["image_grid_thw"]
            out.append({
                "rows": int(labels.size(0)),
                "seq": int(labels.size(1)),
                "tokens": int(batch["attention_mask"].bool().sum()),
                "prompt": [int(x) for x in first],
                "answer": [int(x) for x in (labels != -100).sum(dim=1)],
                "cot_answer": [int(x) for x in (cot_labels != -100).sum(dim=1)],
                "image_patches": [int(x) for x in grid.prod(dim=1)],
                "kept_positions": int(answer_positions(labels).numel()),
            })
        return out


def run_worker(kind: str, ctx: dict) -> dict:
    import torch

    if kind == "stats":  # the model folder holds the 1-layer model of the tiny builder: batch shapes only
        bench = Bench(ctx, ["dynamic"])
        return {"batches": bench.batch_stats()}
    if kind == "time":
        arms = ctx["arms"]
        bench = Bench(ctx, arms)
        n_params = sum(p.numel() for p in bench.model.parameters())
        n_trainable = sum(p.numel() for p in bench.model.parameters() if p.requires_grad)
        # Warm-up (allocator, optimizer state, kernels), untimed: one step per arm, chained through the arms'
        # models as if they were one, so that every segment starts from the same state.
        for i, arm in enumerate(arms):
            if i:
                bench.restore(arm)
            bench.step(arm, 0)
            bench.snapshot(arm)
        rounds, per_round = ctx["rounds"], ctx["per_round"]
        records = {arm: [] for arm in arms}
        for r in range(rounds):
            order = arms[r % len(arms):] + arms[: r % len(arms)]
            if r % 2:
                order = order[::-1]
            indices = [1 + r * per_round + i for i in range(per_round)]
            for arm in order:
                bench.restore(arm)
                for i in indices:
                    rec = bench.step(arm, i)
                    rec.update(round=r, batch=i)
                    records[arm].append(rec)
        return {
            "records": records,
            "collate_s": bench.collate_s,
            "batches": bench.batch_stats(),
            "params": n_params,
            "trainable_params": n_trainable,
            "gradient_checkpointing": bool(getattr(bench.model, "is_gradient_checkpointing", False)),
            "vision_frozen": not any(p.requires_grad for p in bench.model.model.visual.parameters()),
            "dtype": str(next(p for p in bench.model.parameters() if p.requires_grad).dtype),
            "torch_threads": torch.get_num_threads(),
        }
    if kind == "memory":
        arm = ctx["arm"]
        bench = Bench(ctx, [arm])
        bench.step(arm, 0)
        bench.step(arm, 1)  # warm-up: optimizer state exists, allocator warm
        steps = range(2, 2 + ctx["memory_steps"])
        if bench.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for i in steps:
                bench.step(arm, i)
            torch.cuda.synchronize()
            peak, method = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            base = proc_status_kib("VmRSS") * 1024
            for i in steps:
                bench.step(arm, i)
            peak, method = proc_status_kib("VmHWM") * 1024, "VmHWM (peak RSS), reset via /proc/self/clear_refs"
        return {"arm": arm, "peak_bytes": peak, "base_bytes": base, "method": method, "steps": len(steps)}
    raise SystemExit(f"unknown worker {kind}")


# --------------------------------------------------------------------------------------- FLOP estimate
def flop_estimate(shape: dict, vocab: int, batches: list[dict], gc: bool) -> dict:
    """Matmul FLOPs of one sft step and of one selection pass (mean over the batches).

    sft = vision fwd (frozen) + text fwd x (3, +1 recompute with gradient checkpointing) + LM head x 3 (all positions)
    selection = vision fwd + text fwd + LM head at the kept (answer) positions.
    """
    h, L, kv = shape["hidden"], shape["layers"], shape["kv_heads"] * (shape["hidden"] // shape["heads"])
    text_w = L * (2 * h * h + 2 * h * kv + 3 * h * shape["intermediate"])
    e, d = shape["vision_embed"], shape["vision_depth"]
    vis_w = d * (4 * e * e + 2 * e * e * shape["mlp_ratio"])
    merger_w = (4 * e) ** 2 + 4 * e * h  # per merged (= image) token
    sft_f, sel_f, vis_f = [], [], []
    for b in batches:
        tokens = b["rows"] * b["seq"]
        text_fwd = 2 * text_w * tokens + 4 * L * h * b["rows"] * b["seq"] ** 2
        vision = sum(2 * vis_w * p + 4 * d * e * p * p + 2 * merger_w * p // 4 for p in b["image_patches"])
        head_all = 2 * h * vocab * tokens
        head_kept = 2 * h * vocab * b["rows"] * b["kept_positions"]
        sft_f.append(vision + text_fwd * (4 if gc else 3) + 3 * head_all)
        sel_f.append(vision + text_fwd + head_kept)
        vis_f.append(vision)
    sft, sel, vis = statistics.fmean(sft_f), statistics.fmean(sel_f), statistics.fmean(vis_f)
    return {"sft_tflop": sft / 1e12, "selection_tflop": sel / 1e12, "vision_tflop": vis / 1e12,
            "ratio": (sft + sel) / sft, "ratio_cache_vision": (sft + sel - vis) / sft}


# --------------------------------------------------------------------------------------------- parent
def worker_env(memory: bool) -> dict:
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true", "WANDB_MODE": "disabled",
        "DISABLE_VERSION_CHECK": "1", "LLAMAFACTORY_VERBOSITY": "WARN", "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore", "FORCE_TORCHRUN": "0", "PYTHONUNBUFFERED": "1",
    })
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return env


def call_worker(kind: str, ctx: dict, work: Path, timeout: float) -> dict:
    ctx_path = work / f"ctx_{kind}_{ctx.get('arm', 'all')}.json"
    ctx_path.write_text(json.dumps(ctx))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--ctx", str(ctx_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(kind == "memory"), timeout=timeout,
                          cwd=work)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    sys.exit(f"worker {kind} failed ({proc.returncode})\n--- stdout ---\n{proc.stdout[-3000:]}\n"
             f"--- stderr ---\n{proc.stderr[-6000:]}")


def length_stats(batches: list[dict]) -> dict:
    def col(key):
        return [x for b in batches for x in b[key]]

    image_tokens = [p // 4 for p in col("image_patches")]
    return {
        "rows_per_batch": batches[0]["rows"],
        "padded_seq_mean": statistics.fmean(b["seq"] for b in batches),
        "prompt_tokens": summary(col("prompt")),
        "image_tokens": summary(image_tokens),
        "answer_tokens": summary(col("answer")),
        "cot_answer_tokens": summary(col("cot_answer")),
        "kept_positions": summary([b["kept_positions"] for b in batches]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=QWEN2_VL_SHAPES, help="model shape (default: mid on CPU, qwen2vl-2b on GPU)")
    parser.add_argument("--vocab-size", type=int, help="model vocabulary (default: the shape's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per arm (default 8)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaving rounds the steps are split into")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per batch (default 4, the recipe's)")
    parser.add_argument("--prompt-len", "--seq", type=int_range, default=(40, 120),
                        help="text tokens of the user turn besides the image (default 40-120); the system turn, "
                        "image tokens and answer come on top")
    parser.add_argument("--image-size", type=image_size, default=(280, 336),
                        help="WxH, multiples of 28 (default 280x336 = 120 image tokens)")
    parser.add_argument("--answer-len", type=int_range, default=(5, 15), help="plain answer tokens")
    parser.add_argument("--cot-len", type=int_range, default=(60, 150), help="CoT answer tokens")
    parser.add_argument("--no-gradient-checkpointing", action="store_true",
                        help="disable_gradient_checkpointing: true (LLaMA-Factory's default is on)")
    parser.add_argument("--variants", default="", help=f"comma-separated extra dynamic arms: {', '.join(VARIANTS)}")
    parser.add_argument("--memory-steps", type=int, default=2, help="measured steps per memory process")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--estimate-only", action="store_true", help="FLOP estimate from the batch shapes; no model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, help="keep the model, data and worker files here")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker process")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ctx", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = run_worker(args.worker, json.loads(args.ctx.read_text()))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    shape_name = args.shape or ("qwen2vl-2b" if device == "cuda" else "mid")
    shape = SHAPES[shape_name]
    vocab = args.vocab_size or shape["vocab"]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    arms = ["sft", "dynamic"] + [f"dynamic+{v}" for v in variants]
    rounds = max(1, min(args.rounds, args.steps))
    per_round = math.ceil(args.steps / rounds)
    n_batches = 1 + max(rounds * per_round, 2 + args.memory_steps)
    gc = not args.no_gradient_checkpointing

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_dynamic_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        max_pixels = max(262144, args.image_size[0] * args.image_size[1])
        model_dir = build_model_dir(work / "model", shape, vocab, max_pixels, args.seed,
                                    weights=not args.estimate_only, device=device)
        data_dir = work / "data"
        write_rows(data_dir, model_dir, n_batches * args.batch_size, "bench", prompt_len=args.prompt_len,
                   answer_len=args.answer_len, cot_len=args.cot_len, image_size=args.image_size, seed=args.seed)
        ctx = {"model_dir": str(model_dir), "data_dir": str(data_dir), "out_dir": str(work / "out"),
               "device": device, "batch_size": args.batch_size, "max_pixels": max_pixels,
               "gradient_checkpointing": gc, "arms": arms, "rounds": rounds, "per_round": per_round,
               "memory_steps": args.memory_steps}
        build_s = time.perf_counter() - started
        if args.estimate_only:
            timing = call_worker("stats", ctx, work, args.timeout)
            memory = {}
        else:
            timing = call_worker("time", ctx, work, args.timeout)
            memory = {} if args.no_memory else {
                arm: call_worker("memory", {**ctx, "arm": arm}, work, args.timeout) for arm in arms
            }
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    batches = timing["batches"]
    report = {
        "shape": shape_name, "model": {**shape, "vocab": vocab}, "device": device,
        "gradient_checkpointing": gc, "batch_size": args.batch_size, "image_size": list(args.image_size),
        "lengths": length_stats(batches),
        "flop_estimate": flop_estimate(shape, vocab, batches, gc),
        "machine": {
            "cpu": cpu_model(), "cores_visible": os.cpu_count(), "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
    }
    import torch
    import transformers

    report["machine"].update(torch=torch.__version__, transformers=transformers.__version__)
    if device == "cuda":
        report["machine"]["gpu"] = torch.cuda.get_device_name(0)
    est = report["flop_estimate"]
    lengths = report["lengths"]
    print(f"shape {shape_name}: hidden {shape['hidden']}, {shape['layers']} layers, {shape['heads']}/"
          f"{shape['kv_heads']} heads, intermediate {shape['intermediate']}, vocab {vocab:,}; vision depth "
          f"{shape['vision_depth']}, embed {shape['vision_embed']}; device {device}; gradient checkpointing "
          f"{'on' if gc else 'off'}")
    print(f"batches of {args.batch_size}: prompt {lengths['prompt_tokens']['mean']:.0f} tokens (incl. "
          f"{lengths['image_tokens']['mean']:.0f} image tokens), plain answer {lengths['answer_tokens']['mean']:.1f}, "
          f"CoT answer {lengths['cot_answer_tokens']['mean']:.0f}, padded length {lengths['padded_seq_mean']:.0f}, "
          f"kept logits positions {lengths['kept_positions']['mean']:.0f}")
    print(f"FLOP estimate per step: sft {est['sft_tflop']:.3f} TFLOP, selection {est['selection_tflop']:.3f} "
          f"(vision {est['vision_tflop']:.3f}) -> ratio {est['ratio_cache_vision']:.3f} with the image features "
          f"reused (frozen tower, the default), {est['ratio']:.3f} recomputed")
    if args.estimate_only:
        emit_json(report, args.json)
        return 0

    records = timing["records"]
    base = records["sft"]
    arms_report = {}
    for arm in arms:
        recs = records[arm]
        total = [r["total"] for r in recs]
        micro = [r["select"] + r["train"] for r in recs]
        paired = [r["total"] / b["total"] for r, b in zip(recs, base)]
        entry = {
            "step_s": summary(total),
            "select_s": summary([r["select"] for r in recs]),
            "train_s": summary([r["train"] for r in recs]),
            "optim_s": summary([r["optim"] for r in recs]),
            "collate_s": timing["collate_s"][arm],
            "time_ratio": statistics.fmean(total) / statistics.fmean([b["total"] for b in base]),
            "time_ratio_median_paired": statistics.median(paired),
            "time_ratio_without_optimizer": statistics.fmean(micro)
            / statistics.fmean([b["select"] + b["train"] for b in base]),
            "max_abs_loss_diff_vs_sft": max(abs(r["loss"] - b["loss"]) for r, b in zip(recs, base)),
            "gamma_update_s": summary([r["gamma"] for r in recs]),
            "cot_share": statistics.fmean(r["cot_share"] for r in recs),
        }
        if arm in memory:
            m, mb = memory[arm], memory["sft"]
            entry.update(
                peak_mb=m["peak_bytes"] / 2**20, base_mb=m["base_bytes"] / 2**20,
                memory_ratio=m["peak_bytes"] / mb["peak_bytes"],
                step_memory_ratio=(m["peak_bytes"] - m["base_bytes"]) / max(1, mb["peak_bytes"] - mb["base_bytes"]),
            )
            report["memory_method"] = m["method"]
        arms_report[arm] = entry
    report.update(arms=arms_report, params=timing["params"], trainable_params=timing["trainable_params"],
                  vision_frozen=timing["vision_frozen"], train_dtype=timing["dtype"],
                  torch_threads=timing["torch_threads"], steps_per_arm=len(base), rounds=rounds,
                  wall_s=round(time.perf_counter() - started, 1), build_s=round(build_s, 1),
                  targets={"time": TIME_TARGET, "memory": MEMORY_TARGET})
    dyn = arms_report["dynamic"]
    report["within_targets"] = dyn["time_ratio"] <= TIME_TARGET and dyn.get("memory_ratio", 0) <= MEMORY_TARGET

    print(f"{timing['params'] / 1e6:.1f} M parameters ({timing['trainable_params'] / 1e6:.1f} M trainable, "
          f"{timing['dtype']}), vision frozen: {timing['vision_frozen']}; {len(base)} timed steps per arm in "
          f"{rounds} interleaved rounds; {report['machine']['cpu']}, {report['machine']['cores_visible']} cores")
    head = (f"{'arm':<24} {'step s':>7} {'median':>7} {'select':>7} {'train':>7} {'optim':>7} {'collate':>8} "
            f"{'time x':>7} {'paired':>7} {'no-opt':>7}")
    if memory:
        head += f" {'peak MB':>8} {'mem x':>6} {'step-mem x':>10}"
    print(head)
    for arm, e in arms_report.items():
        line = (f"{arm:<24} {e['step_s']['mean']:>7.3f} {e['step_s']['median']:>7.3f} {e['select_s']['mean']:>7.3f} "
                f"{e['train_s']['mean']:>7.3f} {e['optim_s']['mean']:>7.3f} {e['collate_s']['mean']:>8.3f} "
                f"{e['time_ratio']:>7.3f} {e['time_ratio_median_paired']:>7.3f} "
                f"{e['time_ratio_without_optimizer']:>7.3f}")
        if "peak_mb" in e:
            line += f" {e['peak_mb']:>8.0f} {e['memory_ratio']:>6.3f} {e['step_memory_ratio']:>10.3f}"
        print(line)
    print(f"max |loss(dynamic, gamma=0) - loss(sft)| over the paired steps: {dyn['max_abs_loss_diff_vs_sft']:.3g}")
    if "dynamic+target" in arms_report:
        tgt = arms_report["dynamic+target"]
        paired_select = statistics.median(
            r["select"] / d["select"] for r, d in zip(records["dynamic+target"], records["dynamic"])
        )
        controller = tgt["gamma_update_s"]["mean"]
        report["target_share"] = {
            "target": TARGET_RATIO, "cot_share_trained": tgt["cot_share"], "controller_s": controller,
            "controller_share_of_dynamic_step": controller / dyn["step_s"]["mean"],
            "select_ratio_median_paired_vs_dynamic": paired_select,
        }
        print(f"target share {TARGET_RATIO}: CoT share trained {tgt['cot_share']:.3f}; controller update "
              f"{controller * 1e3:.3f} ms per step = {controller / dyn['step_s']['mean']:.2e} of the dynamic step; "
              f"select phase vs dynamic (paired median) {paired_select:.3f}x (includes merging the CoT rows)")
    if "dynamic+rescore" in arms_report and "dynamic+target" in arms_report:
        res, tgt = arms_report["dynamic+rescore"], arms_report["dynamic+target"]
        pairs = list(zip(records["dynamic+rescore"], records["dynamic+target"]))
        step_x = statistics.median(r["total"] / t["total"] for r, t in pairs)
        select_x = statistics.median(r["select"] / t["select"] for r, t in pairs)
        report["rescore"] = {"rows": args.batch_size, "cot_share_trained": res["cot_share"],
                             "step_ratio_median_paired_vs_target": step_x,
                             "select_ratio_median_paired_vs_target": select_x,
                             "extra_s_per_step": res["select_s"]["mean"] - tgt["select_s"]["mean"]}
        extra = report["rescore"]["extra_s_per_step"]
        report["rescore"]["extra_share_of_target_step"] = extra / tgt["step_s"]["mean"]
        # The whole step also moves with the CoT share trained (CoT rows are longer): the cost of re-scoring is the
        # select phase's extra time (one more no-grad forward of a micro-batch), read against the step.
        print(f"re-scoring {args.batch_size} rows (one micro-batch) per step: select phase {select_x:.3f}x "
              f"dynamic+target (paired median), +{extra:.3f} s per step = {extra / tgt['step_s']['mean']:.3f} of the "
              f"dynamic+target step; whole step {step_x:.3f}x (CoT share trained {res['cot_share']:.3f} against "
              f"{tgt['cot_share']:.3f})")
    if memory:
        print(f"memory: {report['memory_method']}")
    print(f"targets: time <= {TIME_TARGET}x -> {dyn['time_ratio']:.3f}x; peak memory <= {MEMORY_TARGET}x -> "
          + (f"{dyn['memory_ratio']:.3f}x" if "memory_ratio" in dyn else "not measured"))
    emit_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
