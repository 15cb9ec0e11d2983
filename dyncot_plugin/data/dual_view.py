"""Both targets of every sample, through LLaMA-Factory's own data pipeline.

A plugin dataset is an ordinary LLaMA-Factory sharegpt dataset whose ``dataset_info.json`` entry also names a CoT
column (``"columns": {..., "cot": "cot"}``; vanilla LLaMA-Factory ignores that key). Three steps of
``llamafactory.data.loader`` are wrapped while the plugin loads data (see :mod:`dyncot_plugin.patches`):

1. ``get_dataset_list``: remember each dataset's name and CoT column on its ``DatasetAttr``;
2. ``align_dataset``: check every row (image files exist, CoT text present and well-formed) with errors that name
   the dataset and row, then carry the CoT text through alignment as the ``_cot`` column;
3. ``_get_dataset_processor``: tokenise each sample twice with the model's template, same prompt (image tokens
   included): ``input_ids``/``labels`` (plain answer) and ``cot_input_ids``/``cot_labels`` (CoT answer).

A CoT view that does not fit in ``cutoff_len`` is never truncated (that would cut through ``<answer>``): the sample
keeps only its plain view and its ``cot_status`` says why, so the run can log how many samples fell back.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from llamafactory.data.processor import SupervisedDatasetProcessor
from llamafactory.extras import logging

from dyncot_plugin.config import DynCotArguments

logger = logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's handler and verbosity

COT_OK, COT_MISSING, COT_TOO_LONG = 0, 1, 2  # values of the ``cot_status`` column
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)


class DynCotDataError(ValueError):
    """A dataset row cannot be used: the message names the dataset, the row and what was expected."""


def attach_cot_columns(dataset_list: list[Any], dataset_names: list[str] | None, dataset_dir: str | dict) -> None:
    """Record ``dyncot_name`` and ``dyncot_cot_column`` on each ``DatasetAttr`` (LLaMA-Factory drops the key)."""
    if not dataset_names:
        return
    if isinstance(dataset_dir, dict):
        info = dataset_dir
    else:
        path = os.path.join(dataset_dir, "dataset_info.json")
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = {}
    for name, attr in zip(dataset_names, dataset_list):
        attr.dyncot_name = name
        attr.dyncot_cot_column = (info.get(name, {}).get("columns") or {}).get("cot")


def _row_label(dataset: Any, index: int) -> str:
    row_id = dataset[index].get("id") if "id" in dataset.column_names else None
    return f"row {index}" + (f" (id {row_id})" if row_id is not None else "")


def check_images(dataset: Any, dataset_attr: Any, media_dir: str) -> None:
    """Every image path must resolve the way LLaMA-Factory resolves it (``media_dir`` first, then as given)."""
    column = dataset_attr.images
    if not column or column not in dataset.column_names or dataset_attr.load_from not in ("file", "script"):
        return
    name = getattr(dataset_attr, "dyncot_name", dataset_attr.dataset_name)
    for index, images in enumerate(dataset[column]):
        if images is None:
            continue
        for image in images if isinstance(images, list) else [images]:
            if not isinstance(image, str):
                continue
            joined = os.path.join(media_dir, image)
            if not (os.path.isfile(joined) or os.path.isfile(image)):
                raise DynCotDataError(
                    f"Dataset `{name}`, {_row_label(dataset, index)}: image file not found: {joined} "
                    f"(media_dir={media_dir!r}, path in the row: {image!r})."
                )


def collect_cot(dataset: Any, dataset_attr: Any, dyncot_args: DynCotArguments) -> list[str | None]:
    """The CoT text of every row (``None`` where missing and allowed), or a clear error."""
    name = getattr(dataset_attr, "dyncot_name", dataset_attr.dataset_name)
    column = getattr(dataset_attr, "dyncot_cot_column", None)
    n = len(dataset)
    if not dyncot_args.needs_cot:
        return [None] * n
    if column is None or column not in dataset.column_names:
        where = "no `cot` key under `columns` in dataset_info.json" if column is None else f"no column `{column}`"
        if dyncot_args.dyncot_missing_cot == "error":
            raise DynCotDataError(
                f"Dataset `{name}`: dyncot_strategy={dyncot_args.dyncot_strategy} needs a CoT text per sample, but "
                f"the dataset has {where}. Add the CoT column (`dyncot-data gen-cot`) or set `dyncot_missing_cot: sft`."
            )
        return [None] * n

    cots: list[str | None] = []
    missing: list[int] = []
    for index, text in enumerate(dataset[column]):
        if text is None or (isinstance(text, str) and not text.strip()):
            missing.append(index)
            cots.append(None)
            continue
        if not isinstance(text, str) or not ANSWER_RE.search(text):
            raise DynCotDataError(
                f"Dataset `{name}`, {_row_label(dataset, index)}: the CoT text in column `{column}` has no "
                f"<answer>…</answer> block; expected `<think>rationale</think><answer>kp1; kp2</answer>`. "
                f"Got: {str(text)[:120]!r}"
            )
        cots.append(text)
    if missing and dyncot_args.dyncot_missing_cot == "error":
        rows = ", ".join(_row_label(dataset, i) for i in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise DynCotDataError(
            f"Dataset `{name}`: {len(missing)} sample(s) have no CoT text in column `{column}`: {rows}. "
            f"dyncot_strategy={dyncot_args.dyncot_strategy} needs one per sample; fill them or set "
            f"`dyncot_missing_cot: sft` to train those samples on their plain target."
        )
    if missing:
        logger.warning_rank0(
            f"[dyncot] dataset `{name}`: {len(missing)} sample(s) without CoT text train on their plain target "
            f"(dyncot_missing_cot=sft)."
        )
    return cots


@dataclass
class DualViewDatasetProcessor(SupervisedDatasetProcessor):
    """LLaMA-Factory's supervised processor, run once per target: same prompt, plain and CoT answers."""

    needs_cot: bool = True

    def preprocess_dataset(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        model_inputs = defaultdict(list)
        cots = examples.get("_cot") or [None] * len(examples["_prompt"])
        for i in range(len(examples["_prompt"])):
            if len(examples["_prompt"][i]) % 2 != 1 or len(examples["_response"][i]) != 1:
                logger.warning_rank0(
                    "Dropped invalid example: {}".format(examples["_prompt"][i] + examples["_response"][i])
                )
                continue
            common = dict(
                prompt=examples["_prompt"][i],
                system=examples["_system"][i],
                tools=examples["_tools"][i],
                images=examples["_images"][i] or [],
                videos=examples["_videos"][i] or [],
                audios=examples["_audios"][i] or [],
            )
            input_ids, labels = self._encode_data_example(response=examples["_response"][i], **common)
            cot_ids, cot_labels, status = [], [], COT_MISSING
            if self.needs_cot and cots[i] is not None:
                response = [{"role": "assistant", "content": cots[i]}]
                cot_ids, cot_labels = self._encode_data_example(response=response, **common)
                # LLaMA-Factory truncates to exactly cutoff_len when anything is cut: a CoT view that reaches it may
                # have lost its </answer>, so only strictly shorter views are kept.
                if len(cot_ids) < self.data_args.cutoff_len:
                    status = COT_OK
                else:
                    cot_ids, cot_labels, status = [], [], COT_TOO_LONG
            model_inputs["input_ids"].append(input_ids)
            model_inputs["attention_mask"].append([1] * len(input_ids))
            model_inputs["labels"].append(labels)
            model_inputs["cot_input_ids"].append(cot_ids)
            model_inputs["cot_labels"].append(cot_labels)
            model_inputs["cot_status"].append(status)
            model_inputs["images"].append(examples["_images"][i])
            model_inputs["videos"].append(examples["_videos"][i])
            model_inputs["audios"].append(examples["_audios"][i])
        return model_inputs


def cot_status_counts(dataset: Any) -> dict[str, int] | None:
    """How many samples have a usable CoT view, none, or one too long for ``cutoff_len``."""
    if dataset is None or not hasattr(dataset, "column_names") or "cot_status" not in dataset.column_names:
        return None
    statuses = dataset["cot_status"]
    return {
        "cot": sum(1 for s in statuses if s == COT_OK),
        "missing": sum(1 for s in statuses if s == COT_MISSING),
        "too_long": sum(1 for s in statuses if s == COT_TOO_LONG),
    }
