"""dyncot_plugin.serve.checkpoint: the renamed copy vLLM loads of a checkpoint transformers 5 saved under names
vLLM 0.32 cannot map (LLaVA, Gemma 3, InternVL) holds the same tensors, loads in transformers as the original does,
is made once, and leaves the model folder alone; other checkpoints are used in place. Fast (tiny models, no vLLM;
the vLLM side is tests/test_serve_vllm_llava.py)."""

from __future__ import annotations

import os

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
    assert sorted(os.listdir(copy)) == sorted(before)
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
