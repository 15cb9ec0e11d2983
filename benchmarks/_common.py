"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so this imports as ``_common``)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what the docs record next to each result)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def emit_json(report: dict, path: Path | None) -> None:
    """Print the machine-readable last line ``BENCH_JSON {...}``; also write it to ``path`` when given."""
    print("BENCH_JSON " + json.dumps(report))
    if path:
        path.write_text(json.dumps(report, indent=2) + "\n")


def best_child_run(code: str, args: list[str], runs: int, key: str) -> dict:
    """Run ``python -c code *args`` ``runs`` times, each in a fresh interpreter (cold imports and caches), and return
    the JSON of its last stdout line from the run with the smallest ``key`` (the least disturbed by other load)."""
    best = None
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if best is None or result[key] < best[key]:
            best = result
    return best
