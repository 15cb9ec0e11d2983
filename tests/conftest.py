"""Shared pytest set-up for dyncot-plugin.

Everything here runs offline: the environment variables below are set (unless already set) at import time,
before any test imports transformers / datasets / llamafactory.
"""

from __future__ import annotations

import os

import pytest

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

    return str(build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"), seed=0))


# ---------------------------------------------------------------------------------------------------------------
# Other shared fixtures: add below (one section per topic, documented; keep them offline and session-cheap).
# ---------------------------------------------------------------------------------------------------------------
