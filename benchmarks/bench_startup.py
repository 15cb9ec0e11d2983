"""Benchmark: what ``dyncot_plugin.pth`` adds to the start-up of every Python process (target: under 20 ms).

The installed ``.pth`` line runs ``import dyncot_plugin._bootstrap`` at every interpreter start (``site``
processes it), so every ``python``, ``llamafactory-cli`` and torchrun worker pays for it. Three measurements, all in
fresh processes of the current interpreter, interleaved so that machine drift hits both arms alike:

1. **pth**: in ``python -S -c ...`` (no site, so nothing else is loaded yet: the worst case for the bootstrap's own
   imports), time ``site.addpackage(<site-packages>, "dyncot_plugin.pth")``: exactly what ``site`` does for our
   file, ``import dyncot_plugin`` and ``dyncot_plugin._bootstrap`` included.
2. **importtime**: ``python -X importtime -c pass`` with the plugin installed, the cumulative import time of
   ``dyncot_plugin._bootstrap`` as CPython reports it (the imports only, within a normal start-up).
3. **end-to-end**: wall time of ``python -c pass`` with the ``.pth`` processed (normal start-up) against the same
   start-up with the ``.pth`` skipped. The "without" arm runs ``python -S`` and then ``site.main()`` with
   ``site.addpackage`` told to skip ``dyncot_plugin.pth``; the "with" arm runs the same code without the skip, so
   the two differ by our file alone.

It also checks that a normal start-up imports none of torch, transformers or llamafactory.

    python benchmarks/bench_startup.py              # 200 starts per arm
    python benchmarks/bench_startup.py --runs 500 --json startup.json

The last line is ``BENCH_JSON {...}``. Exit status 0 whatever the numbers (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from _common import cpu_model, emit_json

TARGET_MS = 20.0
PTH = "dyncot_plugin.pth"

# Time site's processing of our .pth alone, in an interpreter started without site.
PTH_CODE = """
import sys, time
t0 = time.perf_counter()
import site
t1 = time.perf_counter()
site.addpackage({sitedir!r}, {pth!r}, set())
t2 = time.perf_counter()
assert 'dyncot_plugin._bootstrap' in sys.modules, 'the .pth did not import the bootstrap'
print((t2 - t1) * 1e3)
"""

# A normal start-up (site.main()) with or without our .pth; -S so that we control site ourselves.
E2E_CODE = """
import site
if {skip}:
    _add = site.addpackage
    def addpackage(sitedir, name, known_paths):
        return known_paths if name == {pth!r} else _add(sitedir, name, known_paths)
    site.addpackage = addpackage
site.main()
import sys
assert ('dyncot_plugin._bootstrap' in sys.modules) != {skip}
"""


def find_site_packages() -> Path:
    for entry in [sysconfig.get_paths()["purelib"], *sys.path]:
        if entry and (Path(entry) / PTH).is_file():
            return Path(entry)
    raise SystemExit(f"{PTH} is not installed in this interpreter's site-packages: pip install -e . first")


def run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{proc.stderr[-2000:]}")
    return proc


def stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": statistics.median(values), "mean": statistics.fmean(values), "min": values[0],
            "p90": values[int(0.9 * (len(values) - 1))], "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="fresh processes per arm (default 200)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    sitedir = find_site_packages()
    env = {k: v for k, v in os.environ.items() if k not in ("DYNCOT_DISABLE", "PYTHONSTARTUP")}
    py = sys.executable

    # Heavy modules must not load at start-up.
    probe = ("import sys; print(' '.join(m for m in ('torch', 'transformers', 'llamafactory', "
             "'dyncot_plugin._bootstrap') if m in sys.modules))")
    loaded = run([py, "-c", probe], env).stdout.split()

    pth_ms, import_ms, with_ms, without_ms = [], [], [], []
    pth_cmd = [py, "-S", "-c", PTH_CODE.format(sitedir=str(sitedir), pth=PTH)]
    e2e = {skip: [py, "-S", "-c", E2E_CODE.format(skip=skip, pth=PTH)] for skip in (False, True)}
    for i in range(args.runs):
        pth_ms.append(float(run(pth_cmd, env).stdout))
        stderr = run([py, "-X", "importtime", "-c", "pass"], env).stderr
        for line in stderr.splitlines():  # "import time: self [us] | cumulative | imported package"
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] == "dyncot_plugin._bootstrap":
                import_ms.append(int(parts[1]) / 1e3)
        for skip in ((False, True) if i % 2 == 0 else (True, False)):
            t0 = time.perf_counter()
            run(e2e[skip], env)
            (without_ms if skip else with_ms).append((time.perf_counter() - t0) * 1e3)

    with_s, without_s = stats(with_ms), stats(without_ms)
    report = {
        "site_packages": str(sitedir),
        "heavy_modules_at_startup": [m for m in loaded if m != "dyncot_plugin._bootstrap"],
        "bootstrap_loaded_at_startup": "dyncot_plugin._bootstrap" in loaded,
        "pth_ms": stats(pth_ms),
        "bootstrap_importtime_ms": stats(import_ms) if import_ms else None,
        "startup_with_pth_ms": with_s,
        "startup_without_pth_ms": without_s,
        "added_ms_median": with_s["median"] - without_s["median"],
        "target_ms": TARGET_MS,
        "machine": {"cpu": cpu_model(), "cores_visible": os.cpu_count(), "python": platform.python_version()},
    }
    print(f"{args.runs} fresh processes per arm; {report['machine']['cpu']}, {report['machine']['cores_visible']} "
          f"cores, Python {report['machine']['python']}")
    print(f"bootstrap loaded at start-up: {report['bootstrap_loaded_at_startup']}; heavy modules loaded at "
          f"start-up: {report['heavy_modules_at_startup'] or 'none'}")
    print(f"site.addpackage({PTH}) in a bare interpreter: median {report['pth_ms']['median']:.2f} ms "
          f"(p90 {report['pth_ms']['p90']:.2f}, min {report['pth_ms']['min']:.2f})")
    if import_ms:
        print(f"-X importtime, dyncot_plugin._bootstrap cumulative: median "
              f"{report['bootstrap_importtime_ms']['median']:.2f} ms")
    print(f"python start-up with the .pth {with_s['median']:.1f} ms, without {without_s['median']:.1f} ms (medians) "
          f"-> added {report['added_ms_median']:.2f} ms (target < {TARGET_MS:.0f} ms)")
    emit_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
