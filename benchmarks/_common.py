"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so this imports as ``_common``)."""

from __future__ import annotations

import json
import platform
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
