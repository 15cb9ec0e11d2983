"""Generation as the model was trained, and the thinking control of ``dyncot_think``.

Positions: a collated training batch carries the model's position inputs (M-RoPE ``position_ids`` for the Qwen-VL
families), which ``generate`` cannot take as they are; it computes them itself from the prompt and the inputs the
model family needs for that (transformers 5: ``mm_token_type_ids`` for Qwen2-VL, Qwen2.5-VL and Qwen3-VL, without
which it silently falls back to 1-D text positions). :func:`generation_inputs` turns a collated batch into what
``generate`` needs, from the family table (:mod:`dyncot_plugin.train.families`), so that the first generated token
sees the logits the training forward computes for the same prompt.

Thinking (``dyncot_think``): ``auto`` leaves the choice to the model; ``always`` appends ``<think>`` to every prompt
(:func:`force_prefix`; the caller writes the prefix back into the prediction); ``never`` bans the ``<think>`` token
sequence from the whole generation (:func:`think_bad_words`, ``generate``'s ``bad_words_ids``). This works with any
plain template (LLaMA-Factory's ``qwen2_vl`` included); the plain targets are bare ``kp1; kp2``, so no prefix is
needed for ``never``.
"""

from __future__ import annotations

from typing import Any

import torch

from dyncot_plugin.cot_format import THINK_OPEN
from dyncot_plugin.train.families import DEFAULT_FAMILY, ModelFamily

TRAINING_ONLY_KEYS = ("labels", "position_ids", "rope_deltas")  # generate recomputes positions from the prompt


def _config(model: Any) -> Any:
    for candidate in (model, getattr(model, "module", None)):
        if getattr(candidate, "config", None) is not None:
            return candidate.config
    return None


def generation_inputs(model: Any, batch: dict[str, Any], family: ModelFamily = DEFAULT_FAMILY) -> dict[str, Any]:
    """``batch`` (a collated, left-padded prompt batch) without its training-only keys, plus the per-token type
    ids the family's ``generate`` computes positions from (derived from the ids, as LLaMA-Factory's collator does)."""
    inputs = {k: v for k, v in batch.items() if k not in TRAINING_ONLY_KEYS}
    if family.generation_type_ids and family.generation_type_key not in inputs:
        config = _config(model)
        types = torch.zeros_like(inputs["input_ids"])
        for attribute, value in family.generation_type_ids:
            token = getattr(config, attribute, None)
            if token is not None:
                types[inputs["input_ids"] == token] = value
        inputs[family.generation_type_key] = types
    return inputs


def think_prefix_ids(tokenizer: Any) -> list[int]:
    """The token ids of ``<think>`` as the model reads them at the start of a reply."""
    return list(tokenizer.encode(THINK_OPEN, add_special_tokens=False))


def think_bad_words(tokenizer: Any) -> list[list[int]]:
    """Token sequences that spell ``<think>`` (alone and after a space or a new line), for ``bad_words_ids``."""
    prefix = think_prefix_ids(tokenizer)
    found = {tuple(prefix)}
    for lead in (" ", "\n"):
        ids = tokenizer.encode(lead + THINK_OPEN, add_special_tokens=False)
        lead_ids = tokenizer.encode(lead, add_special_tokens=False)
        if ids[: len(lead_ids)] == lead_ids and len(ids) > len(lead_ids):
            ids = ids[len(lead_ids) :]  # the lead token itself is fine to generate
        found.add(tuple(ids))
    return [list(seq) for seq in sorted(found) if seq]


def force_prefix(inputs: dict[str, Any], prefix: list[int], family: ModelFamily = DEFAULT_FAMILY) -> dict[str, Any]:
    """Append ``prefix`` to every row of a left-padded prompt batch (ids, attention mask and per-token type ids)."""
    ids = inputs["input_ids"]
    extra = torch.tensor(prefix, dtype=ids.dtype, device=ids.device).expand(ids.size(0), -1)
    out = dict(inputs)
    out["input_ids"] = torch.cat([ids, extra], dim=1)
    if "attention_mask" in inputs and inputs["attention_mask"] is not None:
        mask = inputs["attention_mask"]
        out["attention_mask"] = torch.cat([mask, torch.ones_like(extra, dtype=mask.dtype)], dim=1)
    for key in (*family.token_type_keys, family.generation_type_key):
        if key in inputs and torch.is_tensor(inputs[key]) and inputs[key].dim() == 2:
            out[key] = torch.cat([inputs[key], torch.zeros_like(extra, dtype=inputs[key].dtype)], dim=1)
    return out


def think_controls(mode: str, tokenizer: Any) -> tuple[list[int], dict[str, Any]]:
    """(prompt prefix to force, extra ``generate`` kwargs) for a ``dyncot_think`` mode."""
    if mode == "always":
        return think_prefix_ids(tokenizer), {}
    if mode == "never":
        return [], {"bad_words_ids": think_bad_words(tokenizer)}
    return [], {}


__all__ = [
    "TRAINING_ONLY_KEYS",
    "force_prefix",
    "generation_inputs",
    "think_bad_words",
    "think_controls",
    "think_prefix_ids",
]
