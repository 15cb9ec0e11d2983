"""Collate both views of a batch, processing each image once.

``sft`` and ``cot`` collate one view with LLaMA-Factory's own collator, so their batches are exactly what vanilla
LLaMA-Factory builds from that target. ``dynamic`` and ``multitask`` need both views: the plain view goes through
the parent collator (which runs the image processor once), and the CoT view reuses its ``image_grid_thw`` for
padding and M-RoPE position ids; its keys come back prefixed with ``cot_``. The trainer chooses rows from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
from llamafactory.extras.constants import IGNORE_INDEX
from transformers import DataCollatorForSeq2Seq

from dyncot_plugin.data.dual_view import COT_OK

# Batch keys the plugin adds; the trainer removes them before the model sees the batch.
HAS_COT_KEY = "dyncot_has_cot"
COT_PREFIX = "cot_"
_SHARED_MM_KEYS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "video_second_per_grid")


@dataclass
class DualViewDataCollator(SFTDataCollatorWith4DAttentionMask):
    """``SFTDataCollatorWith4DAttentionMask`` that also knows the CoT view of each feature.

    Fields (beyond LLaMA-Factory's):
        strategy (`str`, default ``"sft"``): the ``dyncot_strategy`` of the run.
    """

    strategy: str = "sft"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        views = [(f.pop("cot_input_ids", None), f.pop("cot_labels", None), f.pop("cot_status", None)) for f in features]
        has_cot = [status == COT_OK for _, _, status in views]
        if self.strategy == "sft" or all(status is None for _, _, status in views):
            return super().__call__(features)

        if self.strategy == "cot":
            for feature, (ids, labels, _), ok in zip(features, views, has_cot):
                if ok:
                    feature.update(input_ids=ids, labels=labels, attention_mask=[1] * len(ids))
            batch = super().__call__(features)
            batch[HAS_COT_KEY] = torch.tensor(has_cot, dtype=torch.bool)
            return batch

        # dynamic / multitask: both views. Rows without a usable CoT view carry their plain view twice.
        cot_features = []
        for feature, (ids, labels, _), ok in zip(features, views, has_cot):
            ids, labels = (ids, labels) if ok else (feature["input_ids"], feature["labels"])
            cot_features.append({"input_ids": list(ids), "attention_mask": [1] * len(ids), "labels": list(labels)})
        first_len = len(features[0]["input_ids"])
        batch = super().__call__(features)  # plain view; the image processor runs here, once

        # The parent appends dummy image tokens to row 0 of an image-less batch (for ZeRO-3); mirror them.
        dummy = features[0]["input_ids"][first_len:]
        if dummy:
            if self.tokenizer.padding_side != "right":
                raise NotImplementedError("dyncot-plugin trains with right padding only.")
            cot_features[0]["input_ids"] += list(dummy)
            cot_features[0]["attention_mask"] += [0] * len(dummy)
            cot_features[0]["labels"] += [IGNORE_INDEX] * len(dummy)

        cot = DataCollatorForSeq2Seq.__call__(self, cot_features)  # padding only; no image work
        if self.get_rope_func is not None:
            self._compute_rope_position_ids(cot, {k: batch[k] for k in _SHARED_MM_KEYS if k in batch})
            if cot["position_ids"].dim() == 3:  # same layout as the parent (text positions first)
                cot["position_ids"] = torch.cat([cot["position_ids"][0].unsqueeze(0), cot["position_ids"]], dim=0)
        for key, value in cot.items():
            if torch.is_tensor(value) and torch.is_floating_point(value):
                value = value.to(self.compute_dtype)
            batch[COT_PREFIX + key] = value
        batch[HAS_COT_KEY] = torch.tensor(has_cot, dtype=torch.bool)
        return batch
