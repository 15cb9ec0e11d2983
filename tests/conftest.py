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


# LoRA adapters (issue 30) ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def qwen2vl_lora_adapter(tmp_path_factory) -> dict[str, str]:
    """A LoRA adapter of a tiny Qwen2-VL (hidden 128, so vLLM's CPU attention can run it), trained by
    ``llamafactory-cli train`` with ``finetuning_type: lora`` (``lora_target: all``, rank 8, vision tower frozen),
    ``dyncot_strategy: dynamic`` and a target share of 0.5, saved with ``dyncot_think_threshold: 0.0`` (its
    ``dyncot_think.json`` says 0.0: served with it, ``auto`` thinks on every post). Returns ``{"base", "adapter",
    "data"}``: the base model, the adapter folder and the dataset folder (``toy``: 16 training posts, ``toy_eval``:
    8 held-out posts with 72x60 images). Read-only: write outputs elsewhere."""
    from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
    from dyncot_plugin.testing.plugin_data import write_plugin_dataset
    from dyncot_plugin.testing.tiny_model import build_tiny_qwen2vl

    def build(root):
        base = build_tiny_qwen2vl(root / "base", seed=0, hidden_size=128)
        write_plugin_dataset(root / "data", "toy", n=16)
        write_plugin_dataset(root / "data", "toy_eval", n=8, image_size=(72, 60))
        config = tiny_sft_config(base, root / "data", "toy", root / "adapter", finetuning_type="lora",
                                 lora_target="all", lora_rank=8, freeze_vision_tower=True, dyncot_strategy="dynamic",
                                 dyncot_target_cot_ratio=0.5, dyncot_think_threshold=0.0, max_steps=24,
                                 num_train_epochs=3, learning_rate=1e-2)
        run_llamafactory("train", config, root / "work")

    root = build_once(tmp_path_factory, "qwen2vl_lora_adapter", build)
    return {"base": str(root / "base"), "adapter": str(root / "adapter"), "data": str(root / "data")}


LORA_NAME = "dyn"  # the LoRA adapter the shared 3-token server serves
COT_LORA_NAME = "cot"  # and the cot-trained one (cot_lora_adapter)


# dyncot-serve on vLLM (issue 26) ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def vllm_python_path() -> str:
    """The vLLM venv's python (``fixtures.serve_vllm.vllm_python``; skips where it cannot be built)."""
    from fixtures.serve_vllm import vllm_python

    return vllm_python()


@pytest.fixture(scope="session")
def served_model(tmp_path_factory):
    """``served_model(tag_tokens)`` -> path (str) of the tiny Qwen2-VL (hidden 128) that the shared servers serve:
    3 = Qwen's real vocabulary (``<think>`` is ``<th`` ``ink`` ``>``), 1 = the tiny tokenizer (one token)."""
    from fixtures.serve_vllm import build_served_model

    def get(tag_tokens: int) -> str:
        tokenizer = {3: "qwen", 1: "tiny"}[tag_tokens]
        folder = build_once(tmp_path_factory, f"served_qwen2vl_{tokenizer}",
                            lambda out: build_served_model(out / "model", tokenizer))
        return str(folder / "model")

    return get


@pytest.fixture(scope="session")
def dyncot_server(vllm_python_path, served_model, cot_lora_adapter, tmp_path_factory):
    """``dyncot_server(tag_tokens)`` -> a running ``fixtures.serve_vllm.Server``: ``dyncot-serve --template qwen2_vl
    --max-body-mb 2 -- --api-key K --root-path /p`` of ``served_model(tag_tokens)`` (the 3-token one also with
    ``--lora-modules dyn=ADAPTER cot=COT``: a PEFT adapter with random B saved with threshold 0.0, and
    ``cot_lora_adapter``'s adapter), started on first use and kept
    for the session (one per think-tag size). Modules using it mark themselves ``xdist_group("vllm_serve")`` so that
    they run on the worker that holds the servers. Tests must leave the server as they found it (it is shared)."""
    from pathlib import Path

    from fixtures.serve_vllm import start_server

    servers: dict[int, object] = {}

    def get(tag_tokens: int):
        if tag_tokens not in servers:
            log = Path(tmp_path_factory.mktemp(f"dyncot_serve_tag{tag_tokens}")) / "server.log"
            model = Path(served_model(tag_tokens))
            lora: tuple[str, ...] = ()
            if tag_tokens == 3:  # issue 30: the same server serves LoRA adapters (no second server start)
                from dyncot_plugin.testing.adapters import write_lora_adapter

                adapter = write_lora_adapter(model, tmp_path_factory.mktemp("served_adapter") / LORA_NAME,
                                             think_threshold=0.0,
                                             target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"])
                # issue 24: and the cot-trained adapter that opens its replies with the tag (never's hard case)
                cot = cot_lora_adapter()["adapter"]
                lora = ("--lora-modules", f"{LORA_NAME}={adapter}", f"{COT_LORA_NAME}={cot}")
            servers[tag_tokens] = start_server(vllm_python_path, model, log, "--max-body-mb", "2", vllm_args=lora)
        return servers[tag_tokens]

    yield get
    for server in servers.values():
        server.stop()


# The think decision (issue 24) -----------------------------------------------------------------------------------
COT_STEPS = 24  # see cot_real_vocab_model
COT_LORA_STEPS = 40  # see cot_lora_adapter


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
    left alone (greedy), it opens replies with ``<think>`` on every one of those posts (16 of 16 on both families,
    measured; 12 steps gave 12 of 16): the model on which ``never`` must hold back a think block it wants to write.
    Built once per family per run; read-only."""
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



@pytest.fixture(scope="session")
def cot_chat_model(tmp_path_factory) -> Path:
    """Path of a tiny Qwen2-VL with Qwen's real vocabulary (``<think>`` is three tokens), trained 12 steps with
    ``dyncot_strategy: cot`` on the 16-row ``toy`` dataset (in ``<path>/../data``) so that, left alone, it opens its
    replies with the tag on some posts (3 of test_chat_frontends' 6; trained 24 steps, still 3, and an image no
    longer changes its reply); its ``dyncot_think.json`` holds threshold 0.5. ``template: qwen2_vl``. Built once per run
    (test_chat_frontends, the LlamaBoard browser tests). Read-only: copy it before modifying. Not
    ``cot_real_vocab_model`` (the same recipe, 24 steps since issue 24): at 12 steps its greedy replies were near
    ties (``.</think;;;;``) that
    flip between two processes (the chat CLI, the api server, in-process), so exact reply comparisons failed in CI."""
    import json

    from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
    from dyncot_plugin.testing.plugin_data import write_plugin_dataset
    from dyncot_plugin.testing.tiny_families import build_tiny_model

    def build(root):
        base = build_tiny_model(root / "base", "qwen2_vl", tokenizer="qwen")
        write_plugin_dataset(root / "data", "toy", n=16, mutate=cot_rationale_rows)
        run_llamafactory("train", tiny_sft_config(base, root / "data", "toy", root / "cot", learning_rate=3e-3,
                                                  max_steps=12, dyncot_strategy="cot",
                                                  per_device_train_batch_size=4),
                         root)
        assert json.loads((root / "cot" / "dyncot_think.json").read_text())["threshold"] == 0.5

    return Path(build_once(tmp_path_factory, "cot_chat", build)) / "cot"


@pytest.fixture(scope="session")
def cot_lora_adapter(tmp_path_factory, served_model):
    """``cot_lora_adapter()`` -> ``{"base", "adapter", "data"}``: a LoRA adapter (rank 8, ``lora_target: all``) of the
    served 3-token model (``served_model(3)``: hidden 128, which vLLM's CPU attention runs; Qwen's real vocabulary,
    ``<think>`` is ``<th`` ``ink`` ``>``), trained by ``llamafactory-cli train`` with ``dyncot_strategy: cot``,
    ``COT_LORA_STEPS`` steps at batch 4 and learning rate 1e-2 on the 16-row ``toy`` dataset in ``data`` (rationales
    from :func:`cot_rationale_rows`); its ``dyncot_think.json`` holds threshold 0.5. Left alone (greedy) it opens its
    replies with the tag on all 16 posts, in transformers + PEFT and in vLLM, with ``think_prob`` about 1e-13
    (measured: each tag token is the argmax of a flat distribution; LoRA cannot sharpen the random 151k-token head).
    The model for ``never`` in prediction runs, ChatModel, the api, ``dyncot-predict`` and ``dyncot-serve`` (the
    shared server serves it as ``cot``). At 24 steps its replies were ``<think>`` and nothing after it; a learning
    rate of 2e-2 diverged. Read-only."""
    from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
    from dyncot_plugin.testing.plugin_data import write_plugin_dataset

    def get() -> dict[str, str]:
        base = served_model(3)

        def build(root: Path) -> None:
            write_plugin_dataset(root / "data", "toy", n=16, mutate=cot_rationale_rows)
            config = tiny_sft_config(base, root / "data", "toy", root / "adapter", finetuning_type="lora",
                                     lora_target="all", lora_rank=8, dyncot_strategy="cot",
                                     per_device_train_batch_size=4, learning_rate=1e-2, max_steps=COT_LORA_STEPS)
            run_llamafactory("train", config, root / "work")

        root = build_once(tmp_path_factory, "cot_lora_adapter", build, steps=COT_LORA_STEPS)
        return {"base": base, "adapter": str(root / "adapter"), "data": str(root / "data")}

    return get
