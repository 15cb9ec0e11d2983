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


# The think decision (issue 24) -----------------------------------------------------------------------------------
COT_STEPS = 12  # see cot_real_vocab_model


def cot_rationale_rows(rows: list[dict]) -> None:
    """``write_plugin_dataset`` mutator: a rationale per row that starts with "The" (one row in four after a new
    line, where Qwen's pre-tokenizer would glue the tag's ``>`` to the white space)."""
    for i, row in enumerate(rows):
        answer = row["messages"][1]["content"]
        lead = "\n" if i % 4 == 3 else ""
        row["cot"] = f"<think>{lead}The picture and the post are about {answer}.</think><answer>{answer}</answer>"


@pytest.fixture(scope="session")
def cot_real_vocab_model(tmp_path_factory, real_vocab_model):
    """``cot_real_vocab_model(family)`` -> folder (Path) holding ``cot/`` (``real_vocab_model(family)`` trained with
    ``dyncot_strategy: cot``, its ``dyncot_think.json`` included) and ``data/`` (the 16-row ``toy`` plugin dataset
    it was trained on, rationales from :func:`cot_rationale_rows`). Trained ``COT_STEPS`` steps at batch 4 so that,
    left alone (greedy), it opens replies with ``<think>``: the model on which ``never`` must hold back a think block
    it wants to write. Built once per family per run; read-only."""
    from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
    from dyncot_plugin.testing.plugin_data import write_plugin_dataset
    from dyncot_plugin.testing.tiny_families import FAMILIES

    def get(family: str = "qwen2_vl") -> Path:
        base = real_vocab_model(family)

        def build(root: Path) -> None:
            write_plugin_dataset(root / "data", "toy", n=16, mutate=cot_rationale_rows)
            config = tiny_sft_config(base, root / "data", "toy", root / "cot", learning_rate=3e-3,
                                     max_steps=COT_STEPS, dyncot_strategy="cot", per_device_train_batch_size=4,
                                     template=FAMILIES[family].template)
            run_llamafactory("train", config, root / "work")

        return build_once(tmp_path_factory, f"cot_real_vocab_{family}", build, steps=COT_STEPS)

    return get
