"""dyncot_plugin.serve.checkpoint: the renamed copy vLLM loads of a checkpoint transformers 5 saved under names
vLLM 0.32 cannot map (LLaVA, Gemma 3, InternVL) holds the same tensors, loads in transformers as the original does,
is made once, and leaves the model folder alone; other checkpoints are used in place. Fast (tiny models, no vLLM;
the vLLM side is tests/test_serve_vllm_llava.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dyncot_plugin.serve import checkpoint as C


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _keys(folder):
    from safetensors import safe_open

    keys = set()
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "pt") as st:
                keys |= set(st.keys())
    return keys


def _files(folder):
    from pathlib import Path

    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


@pytest.mark.parametrize("family", ["llava", "gemma3", "internvl"])
def test_renamed_copy_holds_the_same_model(family, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForImageTextToText

    from dyncot_plugin.testing.tiny_families import build_tiny_model

    monkeypatch.setenv("DYNCOT_VLLM_CACHE", str(tmp_path / "cache"))
    model = str(build_tiny_model(tmp_path / "model", family, seed=0))
    before = _files(model)
    if transformers_major() < 5:  # 4.57 writes the legacy names throughout, which vLLM maps: used in place
        assert {k.split(".")[0] for k in _keys(model)} >= {"language_model"}
        assert not any(k.startswith("model.") for k in _keys(model))
        assert not C.needs_renaming(model) and C.vllm_checkpoint(model) == model
        assert not (tmp_path / "cache").exists()
        return
    assert any(k.startswith("model.language_model.model.") for k in _keys(model))  # what transformers 5 writes
    assert C.needs_renaming(model)
    logged = []
    copy = C.vllm_checkpoint(model, logged.append)
    assert copy.startswith(str(tmp_path / "cache" / "checkpoints")) and "written now" in logged[0]
    assert not any(k.startswith(old) for k in _keys(copy) for old, _ in C.RENAMES)
    assert len(_keys(copy)) == len(_keys(model)) and not C.needs_renaming(copy)
    assert _files(model) == before
    assert sorted(set(os.listdir(copy)) - {C.SOURCE_FILE}) == sorted(before)
    ours = AutoModelForImageTextToText.from_pretrained(copy).state_dict()
    theirs = AutoModelForImageTextToText.from_pretrained(model).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    stamp = os.stat(os.path.join(copy, "model.safetensors")).st_mtime_ns
    assert C.vllm_checkpoint(model, logged.append) == copy and "written now" not in logged[1]
    assert os.stat(os.path.join(copy, "model.safetensors")).st_mtime_ns == stamp
    assert [p for p in os.listdir(tmp_path / "cache" / "checkpoints") if p.startswith(".tmp-")] == []


def test_other_checkpoints_are_used_in_place(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DYNCOT_VLLM_CACHE", str(tmp_path / "cache"))
    assert not C.needs_renaming(tiny_model_dir)
    assert C.vllm_checkpoint(tiny_model_dir) == tiny_model_dir
    assert not (tmp_path / "cache").exists()


def test_dyncot_serve_loads_the_copy_under_the_name_the_user_gave(tiny_model_dir, tmp_path, monkeypatch):
    """dyncot-serve hands vLLM the renamed copy, and requests keep naming the model folder (--served-model-name)."""
    from dyncot_plugin.serve.server import served_model
    from dyncot_plugin.testing.tiny_families import build_tiny_model

    monkeypatch.setenv("DYNCOT_VLLM_CACHE", str(tmp_path / "cache"))
    model = str(build_tiny_model(tmp_path / "model", "llava", seed=0))
    loaded, naming = served_model(model, [])
    if transformers_major() < 5:  # legacy names: served in place, under vLLM's default name (the path)
        assert (loaded, naming) == (model, [])
    else:
        assert loaded == C.vllm_checkpoint(model) != model and naming == ["--served-model-name", model]
        assert served_model(model, ["--served-model-name", "mine"]) == (loaded, [])  # the user's own name wins
    assert served_model(tiny_model_dir, []) == (tiny_model_dir, [])  # Qwen2-VL: in place, vLLM's default name


# ------------------------------------------------------------------------------------------------------ the cache
# Each use of the cache runs in its own process, as dyncot-predict and dyncot-serve do: a process keeps the copies it
# uses locked until it exits.
needs_transformers_5 = pytest.mark.skipif(transformers_major() < 5, reason="transformers 4.57 saves the legacy names "
                                          "throughout: served in place, no copy (tested above)")

USE = "import sys; from dyncot_plugin.serve.checkpoint import vllm_checkpoint; print(vllm_checkpoint(sys.argv[1]))"
SLOW_COPY = """
import os, sys, time
from dyncot_plugin.serve import checkpoint as C
copy = C._copy_renamed
def slow(src, dst):  # a copy that takes long: hold it in progress until told to go on
    open(sys.argv[2], "w").close()
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.05)
    copy(src, dst)
C._copy_renamed = slow
print(C.vllm_checkpoint(sys.argv[1]))
"""


def _env(cache, **extra):
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "DYNCOT_VLLM_CACHE": str(cache), "PYTHONPATH": root, **extra}


def _use(model, cache, **extra) -> str:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", USE, str(model)], env=_env(cache, **extra), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def _published(cache):
    root = cache / "checkpoints"
    return sorted(p for p in os.listdir(root) if not p.startswith("."))


def _temps(cache):
    return sorted(p for p in os.listdir(cache / "checkpoints") if p.startswith(".tmp-"))


def _wait_for(path, proc, seconds=60):
    import time

    deadline = time.time() + seconds
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.fixture
def llava(tmp_path):
    from dyncot_plugin.testing.tiny_families import build_tiny_model

    return build_tiny_model(tmp_path / "model", "llava", seed=0)


@needs_transformers_5
def test_a_file_added_to_the_model_appears_in_its_copy(llava, tmp_path):
    cache = tmp_path / "cache"
    first = _use(llava, cache)
    assert not os.path.exists(os.path.join(first, "dyncot_think.json"))
    (llava / "dyncot_think.json").write_text('{"think": "auto", "threshold": 0.25}')
    second = _use(llava, cache)
    assert second != first and json.loads(Path(second, "dyncot_think.json").read_text())["threshold"] == 0.25
    # the weights did not change: the new copy links the renamed weights of the first, no second copy of them
    assert os.stat(os.path.join(second, "model.safetensors")).st_ino == os.stat(
        os.path.join(first, "model.safetensors")).st_ino
    assert _published(cache) == sorted(os.path.basename(p) for p in (first, second))
    assert _use(llava, cache) == second  # reused while the folder stays as it is


@needs_transformers_5
def test_keep_two_evicts_the_oldest_but_never_a_copy_in_use(llava, tmp_path):
    """A 'server' (a process that took the copy as dyncot-serve does, then exec'd: the lock is inherited) keeps its
    copy; the least recently used unused copies go beyond DYNCOT_VLLM_CACHE_KEEP."""
    import signal
    import subprocess
    import sys

    cache = tmp_path / "cache"
    weights = llava / "model.safetensors"

    def new_version(k):
        os.utime(weights, ns=(k * 10**9, k * 10**9))  # an in-place weight update
        return os.path.basename(_use(llava, cache))

    v1, v2 = new_version(1), new_version(2)
    assert _published(cache) == sorted([v1, v2])
    v3 = new_version(3)
    assert _published(cache) == sorted([v2, v3])  # keep 2: the oldest went
    os.utime(weights, ns=(4 * 10**9,) * 2)
    serve = ("import os, sys; from dyncot_plugin.serve.server import served_model; "
             "print(served_model(sys.argv[1], [])[0], flush=True); os.execv('/bin/sleep', ['sleep', '300'])")
    server = subprocess.Popen([sys.executable, "-c", serve, str(llava)], env=_env(cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        v4 = os.path.basename(server.stdout.readline().strip())
        assert _published(cache) == sorted([v3, v4])
        v5, v6 = new_version(5), new_version(6)
        assert v4 in _published(cache)  # in use by the running 'server': kept although it is the oldest
        assert _published(cache) == sorted([v4, v6]) and v5 not in _published(cache)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    new_version(7)
    assert v4 not in _published(cache) and len(_published(cache)) == 2  # no longer in use: evicted
    assert _temps(cache) == []
    assert _use(llava, cache, DYNCOT_VLLM_CACHE_KEEP="1") and len(_published(cache)) == 1


@needs_transformers_5
def test_a_killed_copy_is_cleaned_by_the_next_run_but_not_one_in_progress(llava, tmp_path):
    import signal
    import subprocess
    import sys

    cache = tmp_path / "cache"
    other = tmp_path / "other"
    shutil.copytree(llava, other)

    def slow(model, name):
        started, go = tmp_path / f"{name}.started", tmp_path / f"{name}.go"
        proc = subprocess.Popen([sys.executable, "-c", SLOW_COPY, str(model), str(started), str(go)],
                                env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        _wait_for(started, proc)
        return proc, go

    killed, _ = slow(llava, "killed")
    os.killpg(killed.pid, signal.SIGKILL)  # kill -9 in the middle of its copy
    killed.wait()
    dead = _temps(cache)
    assert len(dead) == 1
    in_progress, go = slow(other, "progress")  # the next run: it cleans the dead copy's folder first
    mine = _temps(cache)
    assert len(mine) == 1 and mine != dead
    (llava / "added.txt").write_text("a new version")
    _use(llava, cache)  # one more run, while the other copy is in progress: it leaves that one alone
    assert _temps(cache) == mine
    go.write_text("")
    out, err = in_progress.communicate(timeout=120)
    assert in_progress.returncode == 0, err[-2000:]
    assert os.path.isdir(out.strip()) and os.path.basename(out.strip()) in _published(cache)
    assert _temps(cache) == []


FULL_DISK = """
import errno, shutil, sys
copy = shutil.copyfileobj
def full(fsrc, fdst, length=0):  # the disk fills up after the first bytes of the weights
    fdst.write(fsrc.read(1024))
    raise OSError(errno.ENOSPC, "No space left on device")
shutil.copyfileobj = full
from dyncot_plugin.serve.server import main
sys.exit(main(sys.argv[1:]))
"""


@needs_transformers_5
def test_a_full_disk_is_one_error_line_and_no_partial_copy(llava, tmp_path):
    """On a tmpfs smaller than the weights where this machine lets a test mount one (a private mount namespace),
    else with ENOSPC injected into the copy: dyncot-serve stops with one error line, and the cache holds no copy and
    no .tmp-* folder."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    size = os.path.getsize(llava / "model.safetensors")
    serve = [sys.executable, "-m", "dyncot_plugin.serve.server", str(llava), "--port", "1"]
    mount = (f'mount -t tmpfs -o size={max(size // 2 // 1024, 64)}k tmpfs "{cache}" && {" ".join(serve)}; rc=$?; '
             f'ls -A "{cache}/checkpoints"; exit $rc')
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", f'mount -t tmpfs tmpfs "{cache}"'],
                           capture_output=True, check=False) if shutil.which("unshare") else None
    if probe is not None and probe.returncode == 0:
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", mount], env=_env(cache),
                              capture_output=True, text=True, timeout=300, check=False)
        listing = proc.stdout.split()
        how = "tmpfs"
    else:
        proc = subprocess.run([sys.executable, "-c", FULL_DISK, *serve[3:]], env=_env(cache), capture_output=True,
                              text=True, timeout=300, check=False)
        listing = os.listdir(cache / "checkpoints")
        how = "injected"
    assert proc.returncode == 2, (how, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[dyncot-plugin] error:")]
    assert len(errors) == 1 and "the disk is full" in errors[0] and str(llava) in errors[0], (how, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert [p for p in listing if p != ".lock"] == [], (how, listing)


def test_keep_must_be_a_whole_number(monkeypatch):
    monkeypatch.setenv("DYNCOT_VLLM_CACHE_KEEP", "0")
    with pytest.raises(C.CheckpointError, match="DYNCOT_VLLM_CACHE_KEEP='0': expected a whole number >= 1"):
        C.keep_count()
    monkeypatch.setenv("DYNCOT_VLLM_CACHE_KEEP", "3")
    assert C.keep_count() == 3
