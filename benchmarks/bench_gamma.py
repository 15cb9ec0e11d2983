"""Benchmark: the target-share controller's update per optimizer step (target: <= 5 ms at 1,024 rows per step).

``GammaController.update`` (``dyncot_plugin/train/gamma.py``) runs on every rank at every optimizer step of a
``dyncot_target_cot_ratio`` run, between the selection pass and the training forward. This times it in a loop, one
process, no communication (the all-gather of one float64 per row is the trainer's), on falling losses after a
warm-up that fills its buffer (the default window: 4,096 rows, i.e. 4 steps at 1,024 rows; 512 steps at 1 row),
so every step computes its full bank of candidates. Reported: median and 95th percentile per step, at 1, 8, 64,
1,024 and 4,096 rows per step.

    python benchmarks/bench_gamma.py              # 200 timed steps per size
    python benchmarks/bench_gamma.py --steps 500 --json gamma.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dyncot_plugin.train.gamma import MAX_STEPS, GammaController


def time_updates(rows: int, steps: int, seed: int = 0) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    controller = GammaController(0.4, target=0.5)
    warm = MAX_STEPS if rows == 1 else max(8, 4096 // rows + 2)

    def losses(t: int) -> torch.Tensor:
        level = 1.0 + 3.0 * torch.exp(torch.tensor(-t / 100.0))
        return (level * torch.exp(0.2 * torch.randn(rows, generator=generator))).float()

    for t in range(warm):
        controller.update(losses(t))
    batches = [losses(warm + t) for t in range(steps)]
    out = []
    for batch in batches:
        start = time.perf_counter()
        controller.update(batch)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    for rows in (1, 8, 64, 1024, 4096):
        times = sorted(time_updates(rows, args.steps))
        results[rows] = {"median_ms": 1e3 * statistics.median(times), "p95_ms": 1e3 * times[int(0.95 * len(times))]}
        print(f"{rows:5d} rows/step: median {results[rows]['median_ms']:.3f} ms, p95 {results[rows]['p95_ms']:.3f} ms",
              flush=True)
    verdict = "met" if results[1024]["median_ms"] <= 5.0 else "NOT met"
    print(f"target <= 5 ms per update at 1,024 rows per step: {results[1024]['median_ms']:.3f} ms ({verdict})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
