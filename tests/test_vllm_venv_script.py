"""scripts/make_vllm_venv.sh publishes a venv atomically and its check notices a half-made one (fast: a small venv
built here stands for the 2.5 GB vLLM one; the script's functions are sourced, its build is not run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_vllm_venv.sh"


def _bash(code: str, cache: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'set -euo pipefail; source "{SCRIPT}"; {code}'], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "DYNCOT_VLLM_CACHE": str(cache), **env})


def _venv(path: Path) -> Path:
    """A venv built in place under a build name, with a console script naming that path (as pip writes them)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--prompt", "venv", str(path)], check=True, timeout=120)
    tool = path / "bin" / "tool"
    tool.write_text(f"#!{path}/bin/python\nimport sys\nprint(sys.prefix)\n")
    tool.chmod(0o755)
    return path


@pytest.fixture
def build(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    return cache, _venv(cache / "venv.tmp.123"), cache / "venv"


def test_publish_names_the_final_path_before_the_rename(build):
    cache, tmp, dest = build
    assert _bash(f'complete "{tmp}"', cache).returncode != 0  # not published yet: no marker
    proc = _bash(f'publish "{tmp}" "{dest}" && complete "{dest}"', cache)
    assert proc.returncode == 0, proc.stderr
    assert not tmp.exists()
    assert (dest / "bin" / "tool").read_text().splitlines()[0] == f"#!{dest}/bin/python"
    assert str(tmp) not in (dest / "bin" / "activate").read_text()
    ran = subprocess.run([str(dest / "bin" / "tool")], capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0 and ran.stdout.strip() == str(dest)  # the script runs from its published place


def test_a_kill_before_the_rename_publishes_nothing(build):
    cache, tmp, dest = build
    proc = _bash(f'mv() {{ kill -9 $$; }}; publish "{tmp}" "{dest}"', cache)  # killed at the rename
    assert proc.returncode == -9
    assert not dest.exists() and tmp.exists()  # the next build removes venv.tmp.* (under its lock)


def test_the_check_notices_a_half_made_venv(build):
    """What the old script could publish (killed between its rename and its rewrite of the scripts): a venv whose
    bin/python runs, whose scripts name the deleted build folder."""
    cache, tmp, dest = build
    os.rename(tmp, dest)
    assert subprocess.run([str(dest / "bin" / "python"), "-c", "pass"], check=False).returncode == 0  # the old check's test
    assert _bash(f'complete "{dest}"', cache).returncode != 0
    (dest / ".dyncot-complete").write_text("marker, but scripts still name the build folder\n")
    assert _bash(f'complete "{dest}"', cache).returncode != 0
    (dest / "bin" / "tool").write_text(f"#!{dest}/bin/python\n")
    for script in (dest / "bin").glob("activate*"):
        script.write_text(script.read_text().replace(str(tmp), str(dest)))
    assert _bash(f'complete "{dest}"', cache).returncode == 0


# The whole script (main) with a tiny build standing in for pip's 2.5 GB: what a build does is build_venv's business
FAKE_BUILD = ('build_venv() { "$PY" -m venv --without-pip --prompt venv "$1"; '
              'printf "#!%%s/bin/python\\nimport sys\\nprint(sys.prefix)\\n" "$1" >"$1/bin/tool"; chmod +x "$1/bin/tool"; '
              '%s }; check() { "$1/bin/python" -c pass; }; ')


def test_the_script_publishes_whole_venvs_only_and_rebuilds_a_half_made_one(tmp_path):
    cache = tmp_path / "cache"
    env = {"PYTHON311": sys.executable}
    killed = _bash(FAKE_BUILD % "kill -9 $$;" + "main", cache, **env)  # killed in the middle of its build
    assert killed.returncode == -9
    (key,) = cache.iterdir()
    dest = key / "venv"
    assert not dest.exists() and len(list(key.glob("venv.tmp.*"))) == 1
    built = _bash(FAKE_BUILD % "" + "main", cache, **env)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == str(dest) and "building" in built.stderr
    assert not list(key.glob("venv.tmp.*"))  # the killed build's folder is removed (under the lock)
    ran = subprocess.run([str(dest / "bin" / "tool")], capture_output=True, text=True, timeout=60, check=False)
    assert ran.stdout.strip() == str(dest)
    again = _bash(FAKE_BUILD % "" + "main", cache, **env)  # a whole venv is used as it is
    assert again.returncode == 0 and again.stdout.strip() == str(dest) and "building" not in again.stderr
    # what the old script published when killed between its rename and its sed: the scripts name the build folder
    tool = dest / "bin" / "tool"
    tool.write_text(tool.read_text().replace(str(dest), str(key / "venv.tmp.4242")))
    rebuilt = _bash(FAKE_BUILD % "" + "main", cache, **env)
    assert rebuilt.returncode == 0 and "building" in rebuilt.stderr, rebuilt.stderr
    assert tool.read_text().splitlines()[0] == f"#!{dest}/bin/python"


def test_dyncot_vllm_venv_points_the_script_at_another_venv_and_builds_nothing(build, tmp_path):
    cache, tmp, _ = build
    proc = _bash(f'check() {{ "$1/bin/python" -c pass; }}; DYNCOT_VLLM_VENV="{tmp}" main', cache)
    assert proc.returncode == 0 and proc.stdout.strip() == str(tmp) and sorted(p.name for p in cache.iterdir()) == [tmp.name]
    broken = _bash(f'check() {{ false; }}; DYNCOT_VLLM_VENV="{tmp}" main', cache)
    assert broken.returncode == 2 and f"error: DYNCOT_VLLM_VENV={tmp}" in broken.stderr
