"""Benchmark: `dyncot-data convert-cmkp` + `dyncot-data stats` over 360,000 CMKP posts on one CPU core.

The corpus is the real CMKP lines (../shared/cmkp/tw_mm_s1/{valid,test}_src.txt, or the bundled test lines when
that folder is absent) repeated to --posts posts and cut into train (94.4%) and test (the rest); every image is
an empty file (the converter only checks that it exists). Each command runs as its own process, pinned to one
core with `taskset -c <cpu>` when available, so the times include Python start-up and imports.

    python benchmarks/bench_data.py                 # 360,000 posts, budget 30 s
    python benchmarks/bench_data.py --json out.json # also write the numbers

Exit status 1 when convert + stats take longer than --budget seconds (wall clock).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CMKP = ROOT.parent / "shared" / "cmkp" / "tw_mm_s1"
BUNDLED = ROOT / "tests" / "data"


def source_lines(cmkp_dir: Path) -> tuple[list[str], str]:
    files = [cmkp_dir / "valid_src.txt", cmkp_dir / "test_src.txt"]
    if not all(f.is_file() for f in files):
        files = [BUNDLED / "cmkp_test_src.txt", BUNDLED / "cmkp_train_src.txt"]
    lines = [line for f in files for line in f.read_text(encoding="utf-8").split("\n") if line]
    return lines, ", ".join(str(f) for f in files)


def timed(cmd: list[str], pin: list[str]) -> dict[str, float]:
    """Run ``cmd``; its own wall time, CPU time (user + sys) and peak RSS (``os.wait4``: this child only)."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(pin + cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            out.seek(0)
            sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out.read()}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "max_rss_mb": round(usage.ru_maxrss / 1024),  # Linux: KiB
    }


def stem_cost_per_word(lines: list[str]) -> float:
    """Microseconds to Porter-stem one new distinct word (the cost a real corpus pays per extra distinct word)."""
    from nltk.stem.porter import PorterStemmer

    words = sorted({w for line in lines for w in line.split("<sep>")[0].lower().split()})
    stemmer = PorterStemmer()
    start = time.perf_counter()
    for w in words:
        stemmer.stem(w)
    return 1e6 * (time.perf_counter() - start) / len(words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=360_000)
    parser.add_argument("--cmkp-dir", type=Path, default=DEFAULT_CMKP)
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to with taskset (default: 0)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds allowed for convert + stats")
    parser.add_argument("--work-dir", type=Path, help="keep the generated files here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)

    lines, used = source_lines(args.cmkp_dir)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_data_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = list(itertools.islice(itertools.cycle(lines), args.posts))
        n_train = round(args.posts * 0.944)
        (work / "train_src.txt").write_text("\n".join(corpus[:n_train]) + "\n", encoding="utf-8")
        (work / "test_src.txt").write_text("\n".join(corpus[n_train:]) + "\n", encoding="utf-8")
        images = work / "images"
        images.mkdir(exist_ok=True)
        for line in lines:
            (images / line.rsplit("/", 1)[-1]).touch()

        pin = ["taskset", "-c", str(args.cpu)] if shutil.which("taskset") and hasattr(os, "sched_setaffinity") else []
        cli = [sys.executable, "-m", "dyncot_plugin.cli.data"]
        train, test = work / "train_src.txt", work / "test_src.txt"
        results = {
            "convert-cmkp": timed(
                cli + ["convert-cmkp", f"train={train}", f"test={test}", "-o", str(work), "--name", "bench", "-q"],
                pin,
            ),
            "stats (converted JSON)": timed(
                cli + ["stats", f"train={work / 'bench_train.json'}", f"test={work / 'bench_test.json'}", "-q"], pin
            ),
            "stats (CMKP source)": timed(cli + ["stats", f"train={train}", f"test={test}", "-q"], pin),
        }
        json_mb = sum(f.stat().st_size for f in work.glob("bench_*.json")) / 2**20
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    total = results["convert-cmkp"]["wall_s"] + results["stats (converted JSON)"]["wall_s"]
    import nltk

    report = {
        "posts": args.posts,
        "source_lines": len(lines),
        "source": used,
        "converted_json_mb": round(json_mb, 1),
        "results": results,
        "convert_plus_stats_wall_s": round(total, 2),
        "budget_s": args.budget,
        "within_budget": total <= args.budget,
        "stem_us_per_new_word": round(stem_cost_per_word(lines), 1),
        "machine": {
            "cpu": cpu_model(),
            "cores_visible": os.cpu_count(),
            "pinned": " ".join(pin) or "no (taskset unavailable)",
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nltk": nltk.__version__,
        },
    }
    print(
        f"{args.posts:,} posts ({len(lines):,} real CMKP lines repeated), {report['machine']['cpu']}, "
        f"{report['machine']['pinned']}"
    )
    print(f"{'step':<24} {'wall s':>7} {'cpu s':>7} {'max RSS MB':>11}")
    for step, r in results.items():
        print(f"{step:<24} {r['wall_s']:>7.2f} {r['cpu_s']:>7.2f} {r['max_rss_mb']:>11}")
    print(
        f"convert + stats: {total:.2f} s (budget {args.budget:.0f} s) -> {'OK' if report['within_budget'] else 'OVER'}"
    )
    print(f"Porter stemming of a new distinct word: {report['stem_us_per_new_word']} us")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
