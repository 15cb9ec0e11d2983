"""Time ``dyncot-eval table``'s paired bootstrap: 1,000 resamples of 5,000 posts for 4 runs, against the scoring alone.

    python benchmarks/bench_bootstrap.py [--src /work/shared/cmkp/tw_mm_s1/test_src.txt] [--train VALID_SRC]
                                         [--posts 5000] [--runs 4] [--resamples 1000] [--repeat 3] [--json OUT]

Posts: the first ``--posts`` lines of the CMKP test file (its valid file stands in as the training file, for the
unseen columns); ``--runs`` CMKP-format prediction files from ``bench_eval.synth_predictions`` with seeds 0, 1, ...
Measured side by side, each in a fresh Python process (cold caches, as one command), minimum over ``--repeat``:

* ``score``: ``build_table`` with ``resamples=0``: reading, scoring every run, the differences without intervals;
* ``table``: ``build_table`` with ``--resamples``: the same plus the per-post statistics (``statistics_s``, timed
  around ``run_matrices``) and the bootstrap (``bootstrap_s``, around ``compare_runs``); ``table_s / score_s`` is
  what the intervals cost;
* the interval of one difference, printed as a check that the two processes scored the same runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

from _common import best_child_run, cpu_model, emit_json
from bench_eval import DEFAULT_SRC, synth_predictions

_CHILD = r"""
import json, sys, time
src, train, resamples, *preds = sys.argv[1:]
import dyncot_plugin.tasks.mmkp.bootstrap as bs
import dyncot_plugin.tasks.mmkp.table as table
spent = {}
def timer(key, inner):
    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        spent[key] = time.perf_counter() - t
        return out
    return timed
bs.compare_runs = timer("bootstrap_s", bs.compare_runs)  # imported by build_table when it runs
table.run_matrices = timer("statistics_s", table.run_matrices)
t0 = time.perf_counter()
res = table.build_table([(f"r{i}", p) for i, p in enumerate(preds)], src=src, train=train, resamples=int(resamples))
t1 = time.perf_counter()
f1m = res["runs"][1]["vs_baseline"]["all"]["f1@M"]
print(json.dumps({"total_s": t1 - t0, **spent, "posts": res["num_posts"], "r1_f1@M": f1m,
                  "unseen_posts": res["runs"][0]["scores"]["unseen"]["num_posts"]}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=DEFAULT_SRC)
    ap.add_argument("--train", default=None, help="training file (default: valid_src.txt next to --src)")
    ap.add_argument("--posts", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    src_path = Path(args.src)
    train = Path(args.train) if args.train else src_path.with_name("valid_src.txt")
    lines = src_path.read_text(encoding="utf-8").splitlines()[: args.posts]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.txt"
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        preds = []
        for seed in range(args.runs):
            p = Path(tmp) / f"pred{seed}.txt"
            p.write_text("\n".join(synth_predictions(lines, seed=seed)) + "\n", encoding="utf-8")
            preds.append(str(p))
        base = [str(src), str(train)]
        score = best_child_run(_CHILD, base + ["0", *preds], args.repeat, "total_s")
        full = best_child_run(_CHILD, base + [str(args.resamples), *preds], args.repeat, "total_s")
    report = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_avg": os.getloadavg()[0], "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
        "posts": full["posts"], "runs": args.runs, "resamples": args.resamples,
        "score_s": score["total_s"], "table_s": full["total_s"], "statistics_s": full.get("statistics_s"),
        "bootstrap_s": full.get("bootstrap_s"),
        "ratio_table_to_score": full["total_s"] / score["total_s"],
        "unseen_posts": full["unseen_posts"], "r1_minus_r0_f1@M": full["r1_f1@M"],
    }
    print(f"{report['posts']} posts x {args.runs} runs, {args.resamples} resamples "
          f"({report['machine']['cpu']}, {report['machine']['cores']} cores, load {report['machine']['load_avg']:.1f})")
    print(f"  scoring only (resamples 0):       {report['score_s']:7.2f} s")
    print(f"  table with the bootstrap:         {report['table_s']:7.2f} s  (x{report['ratio_table_to_score']:.2f})")
    print(f"  of which per-post statistics:     {report['statistics_s']:7.2f} s")
    print(f"  of which the bootstrap itself:    {report['bootstrap_s']:7.2f} s")
    d = full["r1_f1@M"]
    print(f"  check: r1 - r0 F1@M {100 * d['delta']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] "
          f"p {d['p_value']:.3f}")
    emit_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
