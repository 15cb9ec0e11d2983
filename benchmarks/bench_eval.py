"""Time ``dyncot-eval mmkp`` (CMKP protocol) on a CMKP test file and on a 360,000-post file.

    python benchmarks/bench_eval.py [--src /work/shared/cmkp/tw_mm_s1/test_src.txt] [--predictions PRED]
                                    [--big-posts 360000] [--runs 3] [--json OUT]

Predictions: ``--predictions`` (a CMKP-format file, one ';'-separated line per post, e.g. CMKP's published
``sh/sample_pred/best_pred.txt``), or else synthetic ones written by :func:`synth_predictions`: five keyphrases per
post like a beam-search model's -- the gold keyphrase first half of the time, otherwise popular keyphrases of the
file, recombined gold words, words of the post, and now and then a duplicate or an ``<unk>``. They resemble CMKP's
published ``best_pred.txt`` (five keyphrases per post, 2.1 words per keyphrase here vs 2.4 there).

Each timing runs in a fresh Python process, so the stem caches start cold, exactly like one ``dyncot-eval`` call;
it counts the evaluation work (reading the two files, parsing the outputs, scoring, summarising), not the
interpreter start-up or imports, which are reported separately. The big file repeats the test file's lines up to
``--big-posts`` posts. The minimum over ``--runs`` runs is reported (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

from _common import best_child_run, cpu_model

DEFAULT_SRC = "/work/shared/cmkp/tw_mm_s1/test_src.txt"

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from dyncot_plugin.tasks.mmkp.evaluate import evaluate_files
t1 = time.perf_counter()
c1 = time.process_time()
res = evaluate_files(sys.argv[1], src=sys.argv[2])
t2 = time.perf_counter()
c2 = time.process_time()
res2 = evaluate_files(sys.argv[1], src=sys.argv[2])
t3 = time.perf_counter()
assert res2["f1@5"] == res["f1@5"]
print(json.dumps({"import_s": t1 - t0, "cold_s": t2 - t1, "cold_cpu_s": c2 - c1, "warm_s": t3 - t2,
                  "posts": res["num_posts"],
                  "scores": {k: res[k] for k in ("f1@1", "f1@3", "f1@5", "f1@M", "map@5")},
                  "present_f1@3": res["present"]["f1@3"], "absent_f1@3": res["absent"]["f1@3"]}))
"""


def synth_predictions(src_lines: list[str], seed: int = 0, n_pred: int = 5) -> list[str]:
    """Synthetic CMKP-format prediction lines for ``src_lines`` (deterministic for a seed)."""
    rnd = random.Random(seed)
    posts = []
    counts: Counter = Counter()
    for line in src_lines:
        parts = line.strip().split("<sep>")
        golds = [g.strip() for g in parts[1].split(";") if g.strip()]
        posts.append((parts[0].split(), golds))
        counts.update(golds)
    popular = [kp for kp, _ in counts.most_common(2000)]
    weights = [counts[kp] for kp in popular]
    out = []
    for words, golds in posts:
        preds: list[str] = []
        if golds and rnd.random() < 0.55:
            preds.append(rnd.choice(golds))
        pool = [w for g in golds for w in g.split()] or ["the"]
        while len(preds) < n_pred:
            r = rnd.random()
            if r < 0.5:
                preds.append(rnd.choices(popular, weights)[0])
            elif r < 0.8:
                preds.append(" ".join(rnd.choice(pool) for _ in range(rnd.randint(2, 4))))
            elif r < 0.9 and words:
                i = rnd.randrange(len(words))
                preds.append(" ".join(words[i : i + rnd.randint(1, 2)]))
            elif r < 0.97 and preds:
                preds.append(rnd.choice(preds))
            else:
                preds.append("<unk> " + rnd.choice(pool))
        out.append(";".join(preds))
    return out


def _time_child(pred: Path, src: Path, runs: int) -> dict:
    return best_child_run(_CHILD, [str(pred), str(src)], runs, "cold_s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=DEFAULT_SRC)
    ap.add_argument("--predictions", help="CMKP-format predictions for --src (default: synthetic)")
    ap.add_argument("--big-posts", type=int, default=360_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    src = Path(args.src)
    src_lines = src.read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.predictions:
            pred = Path(args.predictions)
            pred_lines = pred.read_text(encoding="utf-8").splitlines()
        else:
            pred_lines = synth_predictions(src_lines, args.seed)
            pred = tmp / "pred.txt"
            pred.write_text("\n".join(pred_lines) + "\n", encoding="utf-8")
        if len(pred_lines) != len(src_lines):
            raise SystemExit(f"{pred} has {len(pred_lines)} lines, {src} has {len(src_lines)}")
        reps = -(-args.big_posts // len(src_lines))
        big_src, big_pred = tmp / "big_src.txt", tmp / "big_pred.txt"
        big_src.write_text("\n".join((src_lines * reps)[: args.big_posts]) + "\n", encoding="utf-8")
        big_pred.write_text("\n".join((pred_lines * reps)[: args.big_posts]) + "\n", encoding="utf-8")

        results = {
            "machine": {"python": platform.python_version(), "cpu": cpu_model(), "cores": os.cpu_count(),
                        "load_avg_1m": os.getloadavg()[0]},
            "predictions": str(args.predictions or f"synthetic (seed {args.seed})"),
            "test": _time_child(pred, src, args.runs),
            "big": _time_child(big_pred, big_src, max(1, min(args.runs, 2))),
        }
    for name in ("test", "big"):
        r = results[name]
        print(f"{name:5} {r['posts']:>7} posts: cold {r['cold_s']:.3f} s (CPU {r['cold_cpu_s']:.3f} s, "
              f"{1e6 * r['cold_s'] / r['posts']:.1f} us/post), "
              f"warm {r['warm_s']:.3f} s; imports {r['import_s']:.2f} s; F1@1/3/5/M "
              + "/".join(f"{100 * r['scores'][k]:.2f}" for k in ("f1@1", "f1@3", "f1@5", "f1@M")))
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, load average {m['load_avg_1m']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
