"""Time ``dyncot-eval mmkp``'s quality / think-rate frontier on 37,000 synthetic posts, against what it replaces.

    python benchmarks/bench_frontier.py [--src /work/shared/cmkp/tw_mm_s1/test_src.txt] [--posts 37000]
                                        [--runs 2] [--json OUT]

Posts: the CMKP test file's lines repeated up to ``--posts`` (as ``bench_eval.py``'s big file). An ``always`` and a
``never`` prediction file in LLaMA-Factory's format: keyphrases from ``bench_eval.synth_predictions`` (two seeds),
the ``always`` ones behind a ``<think>`` rationale of post words, and a ``think_prob`` per post drawn uniformly at
random, all distinct: 37,001 frontier points, the worst case.

Measured side by side, each in a fresh Python process (cold caches, as one ``dyncot-eval`` call), minimum over
``--runs``:

* ``modes``: ``evaluate_files`` on the two files without ``think_prob`` (the mode comparison as before);
* ``frontier``: the same files with ``think_prob``: the above plus the frontier (``frontier_s`` is the frontier's
  own share, timed around ``_add_frontier``), and the JSON text the command writes (``dumps_result``);
* ``one_auto``: ``evaluate_files`` on the one ``auto`` file of threshold 0.5 built from the two, cold and then
  warm (a second call in the same process): the warm time is what each further point would cost evaluated one by
  one; its scores are compared with the frontier's point at 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
from pathlib import Path

from _common import best_child_run, cpu_model, emit_json
from bench_eval import DEFAULT_SRC, synth_predictions

_CHILD = r"""
import json, sys, time
kind, src, a, n, auto = sys.argv[1:6]
import dyncot_plugin.tasks.mmkp.evaluate as ev
spent = {}
if kind == "frontier":
    inner = ev._add_frontier
    def timed(*args, **kwargs):
        t = time.perf_counter()
        inner(*args, **kwargs)
        spent["frontier_s"] = time.perf_counter() - t
    ev._add_frontier = timed
t0 = time.perf_counter()
if kind == "one_auto":
    res = ev.evaluate_files(auto, src=src, label_check=False)
else:
    res = ev.evaluate_files([("always", a), ("never", n)], src=src, label_check=False)
t1 = time.perf_counter()
out = {"eval_s": t1 - t0, **spent}
if kind == "one_auto":  # once more, caches warm: what each further point would cost evaluated on its own
    ev.evaluate_files(auto, src=src, label_check=False)
    out["warm_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
if kind == "frontier":
    text = ev.dumps_result(res)  # as the command writes it
    out["json_s"] = time.perf_counter() - t1
    out["json_mb"] = len(text.encode()) / 1e6
    out["points"] = len(res["frontier"])
    s = res["frontier_summary"]
    out["at_0.5"] = s["at_threshold"]
    out["best"] = {k: s["best"][k] for k in ("threshold", "think_rate", "f1@M")}
    out["decisive"] = s["decisive"]
else:
    keys = [k for k in res if k.startswith(("f1@", "map@"))]
    out["scores"] = {k: res[k] for k in keys}
    out["present"] = {k: res["present"][k] for k in keys}
    out["gen_len"] = res["gen_len"]["all"]
print(json.dumps(out))
"""


def _child(kind: str, src: Path, a: Path, n: Path, auto: Path, runs: int) -> dict:
    return best_child_run(_CHILD, [kind, str(src), str(a), str(n), str(auto)], runs, "eval_s")


def _write(path: Path, predicts: list[str], probs: list[float] | None) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i, p in enumerate(predicts):
            row = {"prompt": "", "predict": p, "label": ""}
            if probs is not None:
                row["think_prob"] = probs[i]
            f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=DEFAULT_SRC)
    ap.add_argument("--posts", type=int, default=37_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    src_lines = Path(args.src).read_text(encoding="utf-8").splitlines()
    lines = (src_lines * -(-args.posts // len(src_lines)))[: args.posts]
    rnd = random.Random(args.seed)
    never = synth_predictions(lines, args.seed + 1)
    always = [f"<think>{' '.join(line.split('<sep>')[0].split()[:12])}</think><answer>{kps}</answer>"
              for line, kps in zip(lines, synth_predictions(lines, args.seed + 2))]
    probs = [rnd.random() for _ in lines]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src.txt"
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        _write(tmp / "always.jsonl", always, probs)
        _write(tmp / "never.jsonl", never, probs)
        _write(tmp / "always_old.jsonl", always, None)
        _write(tmp / "never_old.jsonl", never, None)
        _write(tmp / "auto.jsonl", [x if p >= 0.5 else y for x, y, p in zip(always, never, probs)], probs)
        res = {
            "machine": {"python": platform.python_version(), "cpu": cpu_model(), "cores": os.cpu_count(),
                        "load_avg_1m": os.getloadavg()[0]},
            "posts": len(lines),
            "modes": _child("modes", src, tmp / "always_old.jsonl", tmp / "never_old.jsonl", tmp / "auto.jsonl",
                            args.runs),
            "frontier": _child("frontier", src, tmp / "always.jsonl", tmp / "never.jsonl", tmp / "auto.jsonl",
                               args.runs),
            "one_auto": _child("one_auto", src, tmp / "always.jsonl", tmp / "never.jsonl", tmp / "auto.jsonl",
                               args.runs),
        }
    fr, one, modes = res["frontier"], res["one_auto"], res["modes"]
    at = fr["at_0.5"]
    keys = [k for k in at if k.startswith(("f1@", "map@"))]
    diff = max([abs(at[k] - one["scores"][k]) for k in keys] + [abs(at["present"][k] - one["present"][k]) for k in keys]
               + [abs(at["mean_tokens"] - one["gen_len"])])
    res["max_abs_diff_at_0.5"] = diff
    res["naive_s"] = fr["points"] * one["warm_s"]
    print(f"{res['posts']} posts, {fr['points']} frontier points")
    print(f"  mode comparison (always + never, no think_prob): {modes['eval_s']:.2f} s")
    print(f"  the same with the frontier:                      {fr['eval_s']:.2f} s, of which the frontier "
          f"{fr['frontier_s']:.2f} s ({1e6 * fr['frontier_s'] / fr['points']:.1f} us per point); "
          f"JSON {fr['json_mb']:.1f} MB written in {fr['json_s']:.2f} s")
    print(f"  one auto file evaluated on its own:              {one['eval_s']:.2f} s cold, {one['warm_s']:.2f} s warm; "
          f"one warm evaluation per point: {res['naive_s'] / 3600:.1f} h ({res['naive_s'] / fr['frontier_s']:.0f}x "
          f"the frontier)")
    print(f"  point at threshold 0.5 vs that auto file: max |difference| {diff:.1e} over F1@k, MAP, present, length")
    b = fr["best"]
    print(f"  at 0.5: think rate {100 * at['think_rate']:.2f}%, F1@M {100 * at['f1@M']:.2f}; best F1@M "
          f"{100 * b['f1@M']:.2f} at threshold {b['threshold']:.4f}; decisive posts {fr['decisive']['posts']}")
    m = res["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, load average {m['load_avg_1m']:.2f}")
    emit_json(res, Path(args.json) if args.json else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
