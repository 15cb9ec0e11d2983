"""The two views of every sample, from LLaMA-Factory's data pipeline to the collated batch; their keys are declared
here once.

A plugin dataset is an ordinary LLaMA-Factory sharegpt dataset whose ``dataset_info.json`` entry also names a CoT
column (``"columns": {..., "cot": "cot"}``; vanilla LLaMA-Factory ignores that key). While the plugin loads data,
three steps of ``llamafactory.data.loader`` are swapped (see :mod:`dyncot_plugin.train.workflow`):

1. ``get_dataset_list``: remember each dataset's name and CoT column on its ``DatasetAttr``;
2. ``align_dataset``: check every row (image files exist, CoT text present and well-formed) with errors that name
   the dataset and row, then carry the CoT text through alignment as the :data:`COT_COLUMN` column;
3. ``_get_dataset_processor``: tokenise each sample twice with the model's template, same prompt (image tokens
   included): ``input_ids``/``labels`` (plain answer) and :data:`COT_INPUT_IDS`/:data:`COT_LABELS` (CoT answer).

A CoT view that does not fit in ``cutoff_len`` is never truncated (that would cut through ``<answer>``): the sample
keeps only its plain view and its :data:`COT_STATUS` says why, so the run can log how many samples fell back.

:class:`DualViewDataCollator` then collates what the strategy's ``views`` asks for
(:mod:`dyncot_plugin.strategies`): ``plain`` and ``cot`` collate one view with LLaMA-Factory's own collator, so
their batches are exactly what vanilla LLaMA-Factory builds from that target; ``both`` collates the plain view
through the parent collator (which runs the image processor once) and adds the CoT view under :data:`COT_PREFIX`
keys, reusing the plain view's media for padding and M-RoPE positions. The per-token keys a model family adds
(``token_type_ids``, ``mm_token_type_ids``) come from :mod:`dyncot_plugin.train.families`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
from llamafactory.data.processor import SupervisedDatasetProcessor
from llamafactory.extras import logging
from llamafactory.extras.constants import IGNORE_INDEX
from transformers import DataCollatorForSeq2Seq

from dyncot_plugin.config import DynCotArguments
from dyncot_plugin.cot_format import THINK_OPEN, has_answer_block
from dyncot_plugin.io.datasets import read_dataset_info, row_label
from dyncot_plugin.io.read import InputError
from dyncot_plugin.strategies import Strategy
from dyncot_plugin.think import encode_segments
from dyncot_plugin.train.families import ROPE_INPUT_KEYS, ModelFamily, derive_token_types
from dyncot_plugin.validate import COT_MISSING, COT_OK, COT_STATUS, COT_TOO_LONG, NO_COT_KEY, cot_column_message

logger = logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's handler and verbosity

# ------------------------------------------------------------------------------------- the view contract (once)
COT_COLUMN = "_cot"  # aligned dataset: the CoT text of each row (None where there is none)
COT_INPUT_IDS, COT_LABELS = "cot_input_ids", "cot_labels"  # tokenised dataset columns, with COT_STATUS:
# COT_STATUS ("cot_status") and its values COT_OK, COT_MISSING, COT_TOO_LONG live in dyncot_plugin.validate, whose
# tokenized_path check reads them before the training code loads.
COT_PREFIX = "cot_"  # collated batch: the CoT view's tensors, e.g. ``cot_input_ids``, ``cot_position_ids``
HAS_COT = "dyncot_has_cot"  # collated batch: [B] bool, the row has a usable CoT view
IS_COT_ROW = "dyncot_is_cot_row"  # stacked (multitask) batch: [2B] bool, the row is a CoT row
SAMPLE_ID_COLUMN = "_dyncot_id"  # aligned dataset: each row's sample id (see ``sample_ids``)
SAMPLE_ID = "dyncot_sample_id"  # tokenised dataset column and collated batch key (a list of str): the sample ids


class DynCotDataError(InputError):
    """A dataset row cannot be used: the message names the dataset, the row and what was expected."""


def split_views(batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, torch.Tensor | None]:
    """(plain batch, CoT view or None, has_cot or None): the plugin's keys taken out of a collated batch."""
    plain = dict(batch)
    has_cot = plain.pop(HAS_COT, None)
    plain.pop(SAMPLE_ID, None)  # read by the trainer before it splits (selection records); never a model input
    cot = {k[len(COT_PREFIX) :]: plain.pop(k) for k in list(plain) if k.startswith(COT_PREFIX)}
    return plain, (cot or None), has_cot


# ------------------------------------------------------------------------------------------- dataset loading
def attach_cot_columns(
    dataset_list: list[Any], dataset_names: list[str] | None, dataset_dir: str | dict, is_eval: bool = False
) -> None:
    """Record ``dyncot_name``, ``dyncot_cot_column`` and ``dyncot_is_eval`` on each ``DatasetAttr`` (LLaMA-Factory
    drops the ``cot`` key), and refuse an empty dataset file by name."""
    if not dataset_names:
        return
    if isinstance(dataset_dir, dict):
        info = dataset_dir
    else:
        try:
            info = read_dataset_info(dataset_dir)
        except InputError:
            info = {}  # LLaMA-Factory itself reports a broken dataset_info.json
    for name, attr in zip(dataset_names, dataset_list):
        attr.dyncot_name = name
        check_dataset_file(attr, dataset_dir)
        entry = info.get(name) if isinstance(info.get(name), dict) else {}
        attr.dyncot_cot_column = (entry.get("columns") or {}).get("cot")
        attr.dyncot_is_eval = is_eval


def _name(dataset_attr: Any) -> str:
    return getattr(dataset_attr, "dyncot_name", dataset_attr.dataset_name)


def _row_label(dataset: Any, index: int) -> str:
    return row_label(dataset[index] if "id" in dataset.column_names else None, index)


def _no_rows(dataset_attr: Any, path: str) -> DynCotDataError:
    return DynCotDataError(f"Dataset `{_name(dataset_attr)}` ({path}) has no rows; nothing to train or evaluate on.")


def sample_ids(dataset: Any, dataset_attr: Any) -> list[str]:
    """Each row's name in selection records: its ``id`` where it has one, else ``<dataset>#<row index>``."""
    name = _name(dataset_attr)
    ids = dataset["id"] if "id" in dataset.column_names else [None] * len(dataset)
    return [str(v) if v is not None and str(v) != "" else f"{name}#{i}" for i, v in enumerate(ids)]


def check_dataset_file(dataset_attr: Any, dataset_dir: str) -> None:
    """A dataset file with no rows is an error naming the dataset, before LLaMA-Factory's loader fails on it
    without the name. Only small files are read (a file of rows cannot be empty past a few bytes)."""
    if getattr(dataset_attr, "load_from", None) != "file" or not isinstance(dataset_dir, str):
        return
    path = os.path.join(dataset_dir, dataset_attr.dataset_name)
    if not os.path.isfile(path) or os.path.getsize(path) > 4096:
        return
    with open(path, "rb") as f:
        head = f.read().strip()
    if head in (b"", b"[]", b"{}"):
        raise _no_rows(dataset_attr, path)


def check_not_empty(dataset: Any, dataset_attr: Any) -> None:
    if len(dataset) == 0:
        path = getattr(dataset_attr, "dataset_name", "")
        raise _no_rows(dataset_attr, path)


def check_images(dataset: Any, dataset_attr: Any, media_dir: str) -> None:
    """Every image path must resolve the way LLaMA-Factory resolves it (``media_dir`` first, then as given)."""
    column = dataset_attr.images
    if not column or column not in dataset.column_names or dataset_attr.load_from not in ("file", "script"):
        return
    for index, images in enumerate(dataset[column]):
        if images is None:
            continue
        for image in images if isinstance(images, list) else [images]:
            if not isinstance(image, str):
                continue
            joined = os.path.join(media_dir, image)
            if not (os.path.isfile(joined) or os.path.isfile(image)):
                raise DynCotDataError(
                    f"Dataset `{_name(dataset_attr)}`, {_row_label(dataset, index)}: image file not found: {joined} "
                    f"(media_dir={media_dir!r}, path in the row: {image!r})."
                )


def collect_cot(dataset: Any, dataset_attr: Any, dyncot_args: DynCotArguments) -> list[str | None]:
    """The CoT text of every row (``None`` where missing and allowed), or a clear error.

    An eval dataset may lack CoT text (rows or the whole column) under every strategy: its rows then have only the
    plain view, on which ``eval_loss`` is computed.
    """
    name = _name(dataset_attr)
    column = getattr(dataset_attr, "dyncot_cot_column", None)
    is_eval = getattr(dataset_attr, "dyncot_is_eval", False)
    strict = dyncot_args.dyncot_missing_cot == "error" and not is_eval
    n = len(dataset)
    if not dyncot_args.needs_cot:
        return [None] * n
    if column is None or column not in dataset.column_names:
        where = NO_COT_KEY if column is None else f"no column `{column}`"
        if strict:  # the first case is refused earlier too, from dataset_info.json (validate.check_cot_columns)
            raise DynCotDataError(cot_column_message(name, dyncot_args.dyncot_strategy, where))
        return [None] * n

    cots: list[str | None] = []
    missing: list[int] = []
    for index, text in enumerate(dataset[column]):
        if text is None or (isinstance(text, str) and not text.strip()):
            missing.append(index)
            cots.append(None)
            continue
        if not isinstance(text, str) or not has_answer_block(text):
            raise DynCotDataError(
                f"Dataset `{name}`, {_row_label(dataset, index)}: the CoT text in column `{column}` has no "
                f"<answer>…</answer> block; expected `<think>rationale</think><answer>kp1; kp2</answer>`. "
                f"Got: {str(text)[:120]!r}"
            )
        cots.append(text)
    if missing and strict:
        rows = ", ".join(_row_label(dataset, i) for i in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise DynCotDataError(
            f"Dataset `{name}`: {len(missing)} sample(s) have no CoT text in column `{column}`: {rows}. "
            f"dyncot_strategy={dyncot_args.dyncot_strategy} needs one per sample; fill them or set "
            f"`dyncot_missing_cot: sft` to train those samples on their plain target."
        )
    if missing and not is_eval:
        logger.warning_rank0(
            f"[dyncot] dataset `{name}`: {len(missing)} sample(s) without CoT text train on their plain target "
            f"(dyncot_missing_cot=sft)."
        )
    check_cot_answers(dataset, dataset_attr, cots, dyncot_args.dyncot_cot_mismatch)
    return cots


def plain_answers(dataset: Any, dataset_attr: Any) -> list[str | None]:
    """The last assistant turn of every raw row (the plain target), read with the dataset's own column and tags."""
    if dataset_attr.formatting == "alpaca":
        column = dataset_attr.response
        return list(dataset[column]) if column in dataset.column_names else [None] * len(dataset)
    column = dataset_attr.messages
    if column not in dataset.column_names:
        return [None] * len(dataset)
    role, content = dataset_attr.role_tag or "role", dataset_attr.content_tag or "content"
    answers: list[str | None] = []
    for turns in dataset[column]:
        found = [t.get(content) for t in turns or [] if isinstance(t, dict) and t.get(role) == dataset_attr.assistant_tag]
        answers.append(found[-1] if found and isinstance(found[-1], str) else None)
    return answers


def check_cot_answers(dataset: Any, dataset_attr: Any, cots: list[str | None], policy: str) -> int:
    """Count the CoT texts whose ``<answer>`` says something else than the row's plain answer (the task's
    ``answers_agree``: stemmed keyphrase sets for MMKP, the option letter for ScienceQA); ``policy`` ``error``
    stops with the dataset and rows, ``warn`` logs them. Returns how many disagree."""
    from dyncot_plugin.tasks import detect_task

    answers = plain_answers(dataset, dataset_attr)
    known = [a for a in answers if a is not None]
    if not known:
        return 0
    agree = detect_task(known).load_scorer().answers_agree
    bad = [i for i, (cot, plain) in enumerate(zip(cots, answers)) if cot and plain is not None and not agree(cot, plain)]
    if bad:
        rows = ", ".join(_row_label(dataset, i) for i in bad[:5]) + (" …" if len(bad) > 5 else "")
        message = (
            f"Dataset `{_name(dataset_attr)}`: {len(bad)} CoT text(s) whose <answer> differs from the row's plain "
            f"answer: {rows}."
        )
        if policy == "error":
            raise DynCotDataError(f"{message} Fix them (dyncot-data gen-cot --overwrite) or set dyncot_cot_mismatch: warn.")
        logger.warning_rank0(f"[dyncot] {message} They train as they are (dyncot_cot_mismatch=warn).")
    return len(bad)


@dataclass
class DualViewDatasetProcessor(SupervisedDatasetProcessor):
    """LLaMA-Factory's supervised processor, run once per target: same prompt, plain and CoT answers."""

    needs_cot: bool = True

    def preprocess_dataset(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        model_inputs = defaultdict(list)
        cots = examples.get(COT_COLUMN) or [None] * len(examples["_prompt"])
        ids = examples.get(SAMPLE_ID_COLUMN)
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
                cot_ids, cot_labels = self._encode_tagged(response, common)
                # LLaMA-Factory truncates to exactly cutoff_len when anything is cut: a CoT view that reaches it may
                # have lost its </answer>, so only strictly shorter views are kept.
                if len(cot_ids) < self.data_args.cutoff_len:
                    status = COT_OK
                else:
                    cot_ids, cot_labels, status = [], [], COT_TOO_LONG
            model_inputs["input_ids"].append(input_ids)
            model_inputs["attention_mask"].append([1] * len(input_ids))
            model_inputs["labels"].append(labels)
            model_inputs[COT_INPUT_IDS].append(cot_ids)
            model_inputs[COT_LABELS].append(cot_labels)
            model_inputs[COT_STATUS].append(status)
            model_inputs["images"].append(examples["_images"][i])
            model_inputs["videos"].append(examples["_videos"][i])
            model_inputs["audios"].append(examples["_audios"][i])
            if ids is not None:
                model_inputs[SAMPLE_ID].append(ids[i])
        return model_inputs


    def _encode_tagged(self, response: list[dict[str, str]], common: dict[str, Any]) -> tuple[list[int], list[int]]:
        """The CoT view, tokenised with ``<think>`` as a segment of its own (:func:`dyncot_plugin.think.
        encode_segments`): its tokens are the tag that ``dyncot_think: always`` forces and the decision scores,
        whatever the text after it (Qwen's pre-tokenizer would otherwise glue the tag's ``>`` to the next word)."""
        plain_tokenizer = self.tokenizer
        self.tokenizer = _TagSegmentTokenizer(plain_tokenizer)
        try:
            return self._encode_data_example(response=response, **common)
        finally:
            self.tokenizer = plain_tokenizer


class _TagSegmentTokenizer:
    """The tokenizer with ``encode`` tokenising ``<think>`` as a segment of its own; everything else delegated."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str, add_special_tokens: bool = True, **kwargs: Any) -> list[int]:
        if THINK_OPEN not in text or add_special_tokens or kwargs:
            return self._tokenizer.encode(text, add_special_tokens=add_special_tokens, **kwargs)
        return encode_segments(self._tokenizer, text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def cot_status_counts(dataset: Any) -> dict[str, int] | None:
    """How many samples have a usable CoT view, none, or one too long for ``cutoff_len``."""
    if COT_STATUS not in (getattr(dataset, "column_names", None) or ()):  # None, or streamed (names unknown)
        return None
    statuses = dataset[COT_STATUS]
    return {
        "cot": sum(1 for s in statuses if s == COT_OK),
        "missing": sum(1 for s in statuses if s == COT_MISSING),
        "too_long": sum(1 for s in statuses if s == COT_TOO_LONG),
    }


# ---------------------------------------------------------------------------------------------------- collation
@dataclass
class DualViewDataCollator(SFTDataCollatorWith4DAttentionMask):
    """``SFTDataCollatorWith4DAttentionMask`` that also knows the CoT view of each feature.

    Fields (beyond LLaMA-Factory's):
        strategy (`Strategy`): the run's row of :data:`dyncot_plugin.strategies.STRATEGIES`.
        family (`ModelFamily`): the model's row of :data:`dyncot_plugin.train.families.FAMILIES`.
    """

    strategy: Strategy | None = None
    family: ModelFamily | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [f.pop(SAMPLE_ID, None) for f in features]
        batch = self._collate(features)
        if any(i is not None for i in ids):
            batch[SAMPLE_ID] = ids
        return batch

    def _collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        views = [(f.pop(COT_INPUT_IDS, None), f.pop(COT_LABELS, None), f.pop(COT_STATUS, None)) for f in features]
        has_cot = [status == COT_OK for _, _, status in views]
        kind = self.strategy.views if self.strategy is not None else "plain"
        if kind == "plain" or all(status is None for _, _, status in views):
            return super().__call__(features)

        if kind == "cot":
            for feature, (ids, labels, _), ok in zip(features, views, has_cot):
                if ok:
                    feature.update(input_ids=ids, labels=labels, attention_mask=[1] * len(ids))
            batch = super().__call__(features)
            batch[HAS_COT] = torch.tensor(has_cot, dtype=torch.bool)
            return batch

        # both views. Rows without a usable CoT view carry their plain view twice.
        cot_features = []
        for feature, (ids, labels, _), ok in zip(features, views, has_cot):
            ids, labels = (ids, labels) if ok else (feature["input_ids"], feature["labels"])
            cot_features.append({"input_ids": list(ids), "attention_mask": [1] * len(ids), "labels": list(labels)})
        first_len = len(features[0]["input_ids"])
        batch = super().__call__(features)  # plain view; the image processor runs here, once
        for key, value in self._cot_view(batch, features[0]["input_ids"][first_len:], cot_features).items():
            batch[COT_PREFIX + key] = value
        batch[HAS_COT] = torch.tensor(has_cot, dtype=torch.bool)
        return batch

    def _cot_view(self, batch: dict[str, Any], dummy: list[int], cot_features: list[dict]) -> dict[str, Any]:
        """The CoT view of a batch whose plain view is ``batch``: padded, with the family's per-token keys and the
        M-RoPE positions computed from the plain view's media (no image work)."""
        if dummy:  # the parent appended dummy image tokens to row 0 of an image-less batch (for ZeRO-3): mirror them
            if self.tokenizer.padding_side != "right":
                raise NotImplementedError("dyncot-plugin trains with right padding only.")
            cot_features[0]["input_ids"] += list(dummy)
            cot_features[0]["attention_mask"] += [0] * len(dummy)
            cot_features[0]["labels"] += [IGNORE_INDEX] * len(dummy)
        cot = DataCollatorForSeq2Seq.__call__(self, cot_features)  # padding only
        for key in self.family.token_type_keys if self.family is not None else ():
            if key in batch:
                cot[key] = derive_token_types(batch["input_ids"], batch[key], cot["input_ids"], key)
        if self.get_rope_func is not None:
            self._compute_rope_position_ids(cot, {k: batch[k] for k in ROPE_INPUT_KEYS if k in batch})
            if cot["position_ids"].dim() == 3:  # same layout as the parent (text positions first)
                cot["position_ids"] = torch.cat([cot["position_ids"][0].unsqueeze(0), cot["position_ids"]], dim=0)
        for key, value in cot.items():
            if torch.is_tensor(value) and torch.is_floating_point(value):
                cot[key] = value.to(self.compute_dtype)
        return cot
