"""Shared pytest set-up for dyncot-plugin.

Everything here runs offline: the environment variables below are set (unless already set) at import time,
before any test imports transformers / datasets / llamafactory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixtures.shared import build_once
from fixtures.suite import (  # noqa: F401  (the suite's hooks: workers, order, serial tests; fixtures/suite.py)
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_protocol,
    pytest_xdist_auto_num_workers,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


# ---------------------------------------------------------------------------------------------------------------
# Tiny model
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """Path (str) of a tiny random Qwen2-VL checkpoint built once per session by ``build_tiny_qwen2vl``.

    Loadable with ``AutoModelForImageTextToText`` / ``AutoProcessor`` and usable as LLaMA-Factory
    ``model_name_or_path`` with ``template: qwen2_vl``. Treat it as read-only (copy it before modifying).
    """
    from dyncot_plugin.testing.tiny_model import build_tiny_qwen2vl

    return str(build_once(tmp_path_factory, "tiny_qwen2vl", lambda out: build_tiny_qwen2vl(out, seed=0)))


# ---------------------------------------------------------------------------------------------------------------
# Other shared fixtures: add below (one section per topic, documented; keep them offline and session-cheap).
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Tiny models with Qwen's real vocabulary (151,643 BPE ranks + the family's added tokens at their published ids)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_vocab_model(tmp_path_factory):
    """``real_vocab_model(family)`` -> path (str) of a tiny random ``family`` checkpoint (qwen2_vl, qwen2_5_vl or
    qwen3_vl) with Qwen's real tokenizer (``build_tiny_model(..., tokenizer="qwen")``: hidden 64, 2 layers, model
    vocab 151,936, ~80 MB), built once per family per session. On qwen2_vl / qwen2_5_vl ``<think>`` is the three
    tokens ``<th`` ``ink`` ``>``; on qwen3_vl it is the single token 151667. Train with
    ``FAMILIES[family].template``. Treat it as read-only (copy it before modifying).
    """
    from dyncot_plugin.testing.tiny_families import build_tiny_model

    def get(family: str = "qwen2_vl") -> str:
        folder = build_once(tmp_path_factory, f"real_vocab_{family}",
                            lambda out: build_tiny_model(out / "model", family, seed=0, tokenizer="qwen"))
        return str(folder / "model")

    return get


@pytest.fixture(scope="session")
def qwen2vl_real_vocab_dir(real_vocab_model) -> str:
    """Tiny random Qwen2-VL with Qwen's real vocabulary (``<think>`` is 3 tokens); ``template: qwen2_vl``."""
    return real_vocab_model("qwen2_vl")


@pytest.fixture(scope="session")
def qwen3vl_real_vocab_dir(real_vocab_model) -> str:
    """Tiny random Qwen3-VL with Qwen's real vocabulary (``<think>`` = 151667); ``template: qwen3_vl_nothink``."""
    return real_vocab_model("qwen3_vl")


# Selection at scale (issue 18) -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def warm_model(tiny_model_dir, tmp_path_factory) -> tuple[str, str]:
    """(model dir, dataset dir): the tiny Qwen2-VL after 64 SFT steps on the 32-row ``spread`` plugin dataset (in the
    dataset dir), so that its plain-answer losses (about 2.0) move slowly under a small learning rate, as a
    fine-tuned model's do, instead of falling from log(vocab) within a few steps as the random model's do."""
    from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
    from dyncot_plugin.testing.plugin_data import write_plugin_dataset

    def build(root):
        write_plugin_dataset(root / "data", "spread", n=32, image_size=(32, 32))
        config = tiny_sft_config(tiny_model_dir, root / "data", "spread", root / "model", max_steps=64,
                                 per_device_train_batch_size=4, num_train_epochs=100, logging_steps=16)
        run_llamafactory("train", config, root / "work")

    root = build_once(tmp_path_factory, "warm", build)
    return str(root / "model"), str(root / "data")


# Chat front ends (test_chat_frontends, the LlamaBoard browser tests) -------------------------------------------------
def _chat_cot_rows(rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        answer = row["messages"][1]["content"]
        lead = "\n" if i % 4 == 3 else ""
        row["cot"] = f"<think>{lead}The picture and the post are about {answer}.</think><answer>{answer}</answer>"


@pytest.fixture(scope="session")
def cot_chat_model(tmp_path_factory) -> Path:
    """Path of a tiny Qwen2-VL with Qwen's real vocabulary (``<think>`` is three tokens), trained 12 steps with
    ``dyncot_strategy: cot`` on the 16-row ``toy`` dataset (in ``<path>/../data``) so that, left alone, it opens its
    replies with the tag; its ``dyncot_think.json`` holds threshold 0.5. ``template: qwen2_vl``. Built once per run
    (test_chat_frontends, the LlamaBoard browser tests). Read-only: copy it before modifying."""
    import json

    from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
    from dyncot_plugin.testing.plugin_data import write_plugin_dataset
    from dyncot_plugin.testing.tiny_families import build_tiny_model

    def build(root):
        base = build_tiny_model(root / "base", "qwen2_vl", tokenizer="qwen")
        write_plugin_dataset(root / "data", "toy", n=16, mutate=_chat_cot_rows)
        run_llamafactory("train", tiny_sft_config(base, root / "data", "toy", root / "cot", learning_rate=3e-3,
                                                  max_steps=12, dyncot_strategy="cot", per_device_train_batch_size=4),
                         root)
        assert json.loads((root / "cot" / "dyncot_think.json").read_text())["threshold"] == 0.5

    return Path(build_once(tmp_path_factory, "cot_chat", build)) / "cot"
