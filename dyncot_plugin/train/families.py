"""What differs per model family, in one table keyed by ``config.model_type`` (Liger-Kernel's
``MODEL_TYPE_TO_APPLY_LIGER_FN`` pattern).

For each family the plugin needs to know how a collated batch is laid out, so that the CoT view carries the same
keys as the plain view and the two can be merged or stacked row by row:

* ``token_type_keys``: per-token [B, S] keys that are a function of the token id (``token_type_ids`` of Gemma3,
  ``mm_token_type_ids``): LLaMA-Factory's collator computes them for the plain view from the processor; the CoT
  view, which shares the prompt, gets them from its own ids (:func:`derive_token_types`);
* ``row_keys``: one value per row (``rope_deltas`` of M-RoPE models);
* ``media_keys``: the batch's image/video tensors, which both views share (duplicated when they are stacked);
* ``vision_modules``: the sub-modules of the multimodal module that turn pixels into features (the vision tower and
  its projector), all of which must be frozen before the selection pass's image features may be reused;
* ``generation_type_key`` / ``generation_type_ids``: the per-token type ids ``generate`` needs to compute the
  model's own positions (``mm_token_type_ids``: 1 at ``config.image_token_id``, 2 at ``config.video_token_id`` for
  the Qwen-VL families; see :mod:`dyncot_plugin.train.generation`);
* ``reuse_image_features``: whether the family's ``get_image_features`` has the signature the cache of
  :mod:`dyncot_plugin.train.image_features` wraps;
* a family the two-view strategies cannot run on is refused before the model loads, by model type
  (:data:`dyncot_plugin.validate.REFUSED_MODEL_TYPES`: mllama's ``cross_attention_mask``).

A ``model_type`` that is not in the table gets :data:`DEFAULT_FAMILY`, which is what the plugin detected before the
table existed (Qwen2-VL's layout); a batch key that no row of the family names stops the run with the key's name
(:func:`check_batch_keys`), never a silent drop. Adding a family: one :class:`ModelFamily` row in :data:`FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

IGNORE_INDEX = -100
# [B, S] keys of every family (position_ids may be [k, B, S] for M-RoPE) and their pad values (None: pad token id).
SEQ_PAD: dict[str, int | None] = {"input_ids": None, "attention_mask": 0, "labels": IGNORE_INDEX, "position_ids": 1}
# What LLaMA-Factory's M-RoPE position computation reads from the batch besides the ids.
ROPE_INPUT_KEYS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "video_second_per_grid")
_QWEN_MEDIA = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass(frozen=True)
class ModelFamily:
    """One row of :data:`FAMILIES` (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    templates: tuple[str, ...] = ()  # LLaMA-Factory templates the family is tested with (docs, tests)
    token_type_keys: tuple[str, ...] = ()
    row_keys: tuple[str, ...] = ("rope_deltas",)
    media_keys: tuple[str, ...] = _QWEN_MEDIA
    vision_modules: tuple[str, ...] = ("visual",)
    reuse_image_features: bool = True  # get_image_features(pixel_values, image_grid_thw) can be cached (Qwen)
    generation_type_key: str = "mm_token_type_ids"
    generation_type_ids: tuple[tuple[str, int], ...] = ()
    seq_pad: dict[str, int | None] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seq_pad", {**SEQ_PAD, **{key: 0 for key in self.token_type_keys}})

    @property
    def known_keys(self) -> frozenset[str]:
        return frozenset(self.seq_pad) | frozenset(self.row_keys) | frozenset(self.media_keys)


_QWEN_TYPES = (("image_token_id", 1), ("video_token_id", 2))
_TOWER = ("vision_tower", "multi_modal_projector")  # LLaVA-style: tower + projector under the multimodal module
FAMILIES: tuple[ModelFamily, ...] = (
    # M-RoPE: LLaMA-Factory computes position_ids [4, B, S] and rope_deltas; generate needs mm_token_type_ids.
    ModelFamily(
        "qwen2_vl", ("qwen2_vl",), templates=("qwen2_vl",), token_type_keys=("mm_token_type_ids",),
        generation_type_ids=_QWEN_TYPES,
    ),
    ModelFamily(
        "qwen2_5_vl", ("qwen2_5_vl",), templates=("qwen2_vl",), token_type_keys=("mm_token_type_ids",),
        generation_type_ids=_QWEN_TYPES,
    ),
    ModelFamily(
        "qwen3_vl", ("qwen3_vl", "qwen3_vl_moe"), templates=("qwen3_vl_nothink",),
        token_type_keys=("mm_token_type_ids",), generation_type_ids=_QWEN_TYPES,
    ),
    # One pixel_values entry per image; get_image_features(pixel_values, vision_feature_layer, ...): not cached.
    ModelFamily(
        "llava", ("llava",), templates=("llava",), row_keys=(), media_keys=("pixel_values",), vision_modules=_TOWER,
        reuse_image_features=False,
    ),
    ModelFamily(
        "gemma3", ("gemma3",), templates=("gemma3",), token_type_keys=("token_type_ids",), row_keys=(),
        media_keys=("pixel_values",), vision_modules=_TOWER, reuse_image_features=False,
    ),
    ModelFamily(
        "internvl", ("internvl",), templates=("intern_vl",), row_keys=(), media_keys=("pixel_values",),
        vision_modules=_TOWER, reuse_image_features=False,
    ),
    ModelFamily(
        "mllama", ("mllama",), templates=("mllama",), media_keys=("pixel_values", "aspect_ratio_ids",
                                                                   "aspect_ratio_mask"),
    ),
)
MODEL_TYPE_TO_FAMILY: dict[str, ModelFamily] = {t: family for family in FAMILIES for t in family.model_types}
DEFAULT_FAMILY = ModelFamily("default", (), token_type_keys=("token_type_ids", "mm_token_type_ids"))


def model_type_of(model: Any) -> str | None:
    """``config.model_type`` of a (possibly wrapped: PEFT, DeepSpeed) model."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "base_model", None)):
        config = getattr(candidate, "config", None)
        if config is not None and getattr(config, "model_type", None):
            return config.model_type
    return None


def family_of(model: Any) -> ModelFamily:
    """The family row of ``model`` (by ``config.model_type``; :data:`DEFAULT_FAMILY` when it has none)."""
    return MODEL_TYPE_TO_FAMILY.get(model_type_of(model) or "", DEFAULT_FAMILY)


def check_batch_keys(family: ModelFamily, batch: dict[str, Any], model_type: str | None) -> None:
    """Every key of a collated plain batch must be one the family knows how to carry into the CoT view."""
    unknown = sorted(k for k in batch if k not in family.known_keys)
    if unknown:
        raise NotImplementedError(
            f"dyncot-plugin: the batches of model_type={model_type!r} carry {', '.join(map(repr, unknown))}, which "
            f"the plugin cannot carry into the CoT view yet (family {family.name!r} in dyncot_plugin/train/families.py)."
        )


def derive_token_types(
    plain_ids: torch.Tensor, plain_types: torch.Tensor, cot_ids: torch.Tensor, key: str = "token types"
) -> torch.Tensor:
    """``plain_types`` (a function of the token id, 0 for text) applied to ``cot_ids``.

    The id -> type map is read off the plain view itself (where ``plain_types`` is not 0), so the CoT view gets
    exactly what the processor gave the same tokens; an id with two types is an error.
    """
    typed = plain_types != 0
    ids, types = plain_ids[typed], plain_types[typed]
    out = torch.zeros_like(cot_ids, dtype=plain_types.dtype)
    for token in ids.unique().tolist():
        values = types[ids == token].unique()
        if values.numel() != 1 or bool((plain_types[plain_ids == token] == 0).any()):
            raise ValueError(f"{key}: token id {token} has more than one type in the batch; cannot derive the CoT view")
        out[cot_ids == token] = values[0]
    return out


__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "IGNORE_INDEX",
    "MODEL_TYPE_TO_FAMILY",
    "ROPE_INPUT_KEYS",
    "SEQ_PAD",
    "ModelFamily",
    "check_batch_keys",
    "derive_token_types",
    "family_of",
    "model_type_of",
]
