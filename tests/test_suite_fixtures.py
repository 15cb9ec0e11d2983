"""The suite's own machinery (tests/fixtures/shared.py, tests/fixtures/suite.py): an artefact shared by several
processes is built exactly once, a killed build is built again, the key follows the parameters and the code, and
a serial test never overlaps another test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fixtures.shared import build_once, code_digest

TESTS = Path(__file__).resolve().parent

# A process that asks for one artefact whose build takes a while and counts each build in a file of its own.
CLIENT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from fixtures.shared import build_once

    class Factory:
        def getbasetemp(self):
            return Path({base!r})

    def build(folder):
        with open({count!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        time.sleep(float(sys.argv[1]))
        (folder / "model.bin").write_text("weights")

    print(build_once(Factory(), "toy", build, steps=int(sys.argv[2])), flush=True)
""")


def _client(tmp_path: Path, sleep: float, steps: int = 1) -> subprocess.Popen:
    script = tmp_path / "client.py"
    if not script.exists():
        # written once, atomically: rewriting it for every client let a client that had just started read a
        # truncated file, run nothing and exit 0 with no output (seen once in CI)
        partial = tmp_path / "client.py.tmp"
        partial.write_text(CLIENT.format(tests=str(TESTS), base=str(tmp_path / "base"), count=str(tmp_path / "count")))
        partial.replace(script)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "DYNCOT_TEST_CACHE")}
    return subprocess.Popen([sys.executable, str(script), str(sleep), str(steps)], stdout=subprocess.PIPE, text=True,
                            env=env)


def _builds(tmp_path: Path) -> list[str]:
    count = tmp_path / "count"
    return count.read_text().split() if count.exists() else []


def test_processes_asking_at_once_share_one_build(tmp_path):
    clients = [_client(tmp_path, sleep=1.0) for _ in range(4)]
    folders = {client.communicate(timeout=120)[0].strip() for client in clients}
    assert all(client.returncode == 0 for client in clients)
    assert len(folders) == 1 and len(_builds(tmp_path)) == 1
    (folder,) = folders
    assert (Path(folder) / "model.bin").read_text() == "weights" and (Path(folder) / ".complete").is_file()
    # other parameters are another artefact
    other = _client(tmp_path, sleep=0.0, steps=2).communicate(timeout=120)[0].strip()
    assert other != folder and len(_builds(tmp_path)) == 2


def test_a_build_killed_half_way_is_built_again(tmp_path):
    victim = _client(tmp_path, sleep=60.0)
    deadline = time.time() + 60
    while not _builds(tmp_path) and time.time() < deadline:
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    (half,) = [p for p in (tmp_path / "base" / "shared").iterdir() if p.is_dir()]
    assert not (half / ".complete").exists()
    folder = _client(tmp_path, sleep=0.0).communicate(timeout=120)[0].strip()
    assert Path(folder) == half and (half / ".complete").is_file() and (half / "model.bin").read_text() == "weights"
    assert len(_builds(tmp_path)) == 2


def test_the_key_follows_the_code(tmp_path, monkeypatch):
    class Factory:
        def getbasetemp(self):
            return tmp_path

    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("DYNCOT_TEST_CACHE", raising=False)
    first = build_once(Factory(), "toy", lambda folder: None)
    assert build_once(Factory(), "toy", lambda folder: pytest.fail("built twice")) == first
    code_digest.cache_clear()
    monkeypatch.setattr("fixtures.shared.code_digest", lambda: "another version of the code")
    assert build_once(Factory(), "toy", lambda folder: None) != first


SERIAL_SUITE = textwrap.dedent("""
    import os, time
    import pytest

    def _log(name):
        with open(os.environ["SUITE_LOG"], "a") as f:
            f.write(f"{{name}} start {{time.monotonic()}}\\n")
        time.sleep(1.0)
        with open(os.environ["SUITE_LOG"], "a") as f:
            f.write(f"{{name}} end {{time.monotonic()}}\\n")

    {tests}
""")


def test_a_serial_test_runs_alone(tmp_path):
    """Two workers, six one-second tests in six modules, two of them serial: no serial test overlaps any other
    test, and the others do overlap (two workers in use)."""
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "fixtures").symlink_to(TESTS / "fixtures")
    for k in range(6):
        mark = "@pytest.mark.serial\n" if k in (2, 4) else ""
        body = f"{mark}def test_{k}():\n    _log('t{k}{'s' if mark else ''}')\n"
        (tmp_path / f"test_m{k}.py").write_text(SERIAL_SUITE.format(tests=body))
    log = tmp_path / "log"
    env = {**os.environ, "SUITE_LOG": str(log)}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
                           "loadgroup", "-c", os.devnull, "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "basetemp"),
                           str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spans: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        name, _, at = line.split()
        spans.setdefault(name, []).append(float(at))
    assert len(spans) == 6

    def overlap(a: str, b: str) -> bool:
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    names = sorted(spans)
    for serial in (n for n in names if n.endswith("s")):
        assert not any(overlap(serial, other) for other in names if other != serial), spans
    assert any(overlap(a, b) for a in names for b in names if a < b), spans


# The tail of rank 1's log in the two-node run that died at shutdown (CI, stop 33), shortened; and variants of it.
_TRAINED = ("[INFO|trainer.py:1821] >> \n\nTraining completed. Do not forget to share your model on huggingface.co/models "
            "=)\n\n[INFO] llamafactory.dyncot_plugin.train.trainer:144 >> [dyncot] image features reused in 2 training "
            "forwards, recomputed in 0\n")
_ABORT = ("terminate called without an active exception\nE1207 torch/distributed/elastic/multiprocessing/api.py:986] "
          "failed (exitcode: -6) local_rank: 0 of binary: python3.11\nTraceback (most recent call last):\n"
          "  File \".venv/bin/torchrun\", line 8, in <module>\n")


def test_a_train_run_is_accepted_only_when_it_ended_or_died_in_torchs_teardown_after_training():
    from dyncot_plugin.testing.lf_runner import train_ended

    assert train_ended(0, "")
    assert train_ended(1, "loading\n" + _TRAINED + _ABORT)  # torchrun's own traceback after the abort is allowed
    assert not train_ended(1, "loading\n" + _TRAINED)  # failed without the abort
    assert not train_ended(1, "loading\n" + _ABORT + _TRAINED.replace("Training completed.", "x"))  # before training
    assert not train_ended(1, _ABORT + "step 1\n" + _TRAINED)  # the abort came before the training's end
    # a Python error after training (e.g. while saving) that then aborts is a failure
    assert not train_ended(1, _TRAINED + "Traceback (most recent call last):\n  File \"trainer.py\"\n" + _ABORT)
