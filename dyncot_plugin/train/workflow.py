"""The plugin's SFT run: LLaMA-Factory's own ``run_sft``, with the plugin's parts swapped in by declarative tables.

Reusing LLaMA-Factory's workflow (rather than a copy of it) keeps model loading, LoRA/freeze set-up, DeepSpeed,
saving, evaluation and prediction exactly as users know them. What a plugin run swaps, for its duration only:

=========================================================  =======================================================
``llamafactory.train.sft.workflow.get_dataset``             both targets per sample (the loader swaps below)
``...sft.workflow.SFTDataCollatorWith4DAttentionMask``      :class:`~dyncot_plugin.train.views.DualViewDataCollator`
``...sft.workflow.CustomSeq2SeqTrainer``                    :class:`~dyncot_plugin.train.trainer.DynCotTrainer`
``...sft.workflow.plot_loss``                               also plot ``cot_ratio``
``llamafactory.data.loader.get_dataset_list``               remember each dataset's name and CoT column
``llamafactory.data.loader.align_dataset``                  check images and CoT text, carry the CoT column
``llamafactory.data.loader._get_dataset_processor``         tokenise both targets behind the same prompt
=========================================================  =======================================================

Each row is ``(module, name, factory)``; ``factory(original, run)`` returns the replacement, and :func:`swapped`
sets them all for the duration of a block and restores the originals afterwards, whatever happens.
Import-light: the plugin's training modules are imported by the factories, when a plugin run starts.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from llamafactory.extras import logging

from dyncot_plugin.config import DynCotArguments, DynCotConfigError
from dyncot_plugin.train.metrics import LOGGED_KEYS

logger = logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's handler and verbosity


@dataclass
class Run:
    """What the swapped-in parts of one plugin run need to know."""

    dyncot_args: DynCotArguments
    data_args: Any = None


# ------------------------------------------------------------------------------------------- the swap tables
def _get_dataset(original: Callable, run: Run) -> Callable:
    from dyncot_plugin.train.views import cot_status_counts

    def get_dataset(template, model_args, data_args, training_args, stage, **tokenizer_module):
        with swapped(LOADER_SWAPS, Run(run.dyncot_args, data_args)):
            module = original(template, model_args, data_args, training_args, stage, **tokenizer_module)
        counts = cot_status_counts(module.get("train_dataset"))
        if counts is not None and run.dyncot_args.needs_cot:
            logger.info_rank0(
                f"[dyncot] training samples: {counts['cot']} with a CoT view, {counts['missing']} without CoT text "
                f"(plain target), {counts['too_long']} whose CoT view does not fit cutoff_len={data_args.cutoff_len} "
                "(plain target)"
            )
        return module

    return get_dataset


def _collator(original: Callable, run: Run) -> Callable:
    from dyncot_plugin.train.families import family_of
    from dyncot_plugin.train.views import DualViewDataCollator

    def collator(*args, **kwargs):
        model = kwargs.get("model")
        return DualViewDataCollator(
            *args, strategy=run.dyncot_args.strategy, family=family_of(model) if model is not None else None, **kwargs
        )

    return collator


def _trainer(original: Callable, run: Run) -> Callable:
    from dyncot_plugin.train.trainer import DynCotTrainer

    return functools.partial(DynCotTrainer, dyncot_args=run.dyncot_args)


def _plot_loss(original: Callable, run: Run) -> Callable:
    def plot_loss(save_dictionary: str, keys: list[str] = ["loss"]) -> None:  # noqa: B006 (LLaMA-Factory's signature)
        original(save_dictionary, keys=list(keys) + ["cot_ratio"])

    return plot_loss


def _get_dataset_list(original: Callable, run: Run) -> Callable:
    from dyncot_plugin.train.views import attach_cot_columns

    def get_dataset_list(dataset_names, dataset_dir):
        dataset_list = original(dataset_names, dataset_dir)
        is_eval = dataset_names is not None and dataset_names is getattr(run.data_args, "eval_dataset", None)
        attach_cot_columns(dataset_list, dataset_names, dataset_dir, is_eval=is_eval)
        return dataset_list

    return get_dataset_list


def _align_dataset(original: Callable, run: Run) -> Callable:
    from dyncot_plugin.train.views import COT_COLUMN, check_images, collect_cot

    def align_dataset(dataset, dataset_attr, data_args, training_args):
        check_images(dataset, dataset_attr, data_args.media_dir)
        cots = collect_cot(dataset, dataset_attr, run.dyncot_args)
        aligned = original(dataset, dataset_attr, data_args, training_args)
        return aligned.add_column(COT_COLUMN, cots) if run.dyncot_args.needs_cot else aligned

    return align_dataset


def _dataset_processor(original: Callable, run: Run) -> Callable:
    from dyncot_plugin.train.views import DualViewDatasetProcessor

    def _get_dataset_processor(data_args, stage, template, tokenizer, processor, do_generate=False):
        if stage != "sft" or do_generate:
            return original(data_args, stage, template, tokenizer, processor, do_generate)
        return DualViewDatasetProcessor(
            template=template, tokenizer=tokenizer, processor=processor, data_args=data_args,
            needs_cot=run.dyncot_args.needs_cot,
        )

    return _get_dataset_processor


_SFT = "llamafactory.train.sft.workflow"
_LOADER = "llamafactory.data.loader"
SFT_WORKFLOW_SWAPS: tuple[tuple[str, str, Callable], ...] = (
    (_SFT, "get_dataset", _get_dataset),
    (_SFT, "SFTDataCollatorWith4DAttentionMask", _collator),
    (_SFT, "CustomSeq2SeqTrainer", _trainer),
    (_SFT, "plot_loss", _plot_loss),
)
LOADER_SWAPS: tuple[tuple[str, str, Callable], ...] = (
    (_LOADER, "get_dataset_list", _get_dataset_list),
    (_LOADER, "align_dataset", _align_dataset),
    (_LOADER, "_get_dataset_processor", _dataset_processor),
)


@contextmanager
def swapped(table: tuple[tuple[str, str, Callable], ...], run: Run) -> Iterator[None]:
    """Set every ``module.name`` of ``table`` to ``factory(original, run)`` for the duration of the block."""
    with ExitStack() as stack:
        for module_name, name, factory in table:
            module = importlib.import_module(module_name)
            original = getattr(module, name)
            setattr(module, name, factory(original, run))
            stack.callback(setattr, module, name, original)
        yield


# ------------------------------------------------------------------------------------------------ the run
def check_compatibility(dyncot_args: DynCotArguments, data_args: Any, training_args: Any) -> None:
    """Settings the strategies cannot honour, refused before the model loads."""
    if not dyncot_args.needs_cot:
        return
    strategy = dyncot_args.dyncot_strategy
    if data_args.packing or data_args.neat_packing:
        raise DynCotConfigError(
            f"dyncot_strategy={strategy} chooses a target per sample, which packing (`packing`/`neat_packing`) "
            "hides by merging samples into one row. Set `packing: false`."
        )
    if data_args.streaming:
        raise DynCotConfigError(f"dyncot_strategy={strategy} does not support `streaming: true` yet.")
    if data_args.tokenized_path is not None:
        logger.warning_rank0(
            "[dyncot] `tokenized_path`: a dataset tokenised without the plugin has no CoT views; "
            "let the plugin tokenise it (remove the folder) if training fails."
        )


def run_dyncot_sft(
    original_run_sft: Callable,
    dyncot_args: DynCotArguments,
    model_args,
    data_args,
    training_args,
    finetuning_args,
    generating_args,
    callbacks=None,
):
    check_compatibility(dyncot_args, data_args, training_args)
    logger.info_rank0(f"[dyncot] strategy={dyncot_args.dyncot_strategy} gamma={dyncot_args.dyncot_gamma}")
    if dyncot_args.dyncot_eval_samples > 0 and training_args.predict_with_generate:
        raise DynCotConfigError(
            "dyncot_eval_samples generates during training; with `predict_with_generate: true` LLaMA-Factory builds "
            "its collator without the model. Predict in a separate run (examples/qwen2vl_predict.yaml)."
        )
    with swapped(SFT_WORKFLOW_SWAPS, Run(dyncot_args, data_args)):
        return original_run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)


__all__ = ["LOADER_SWAPS", "LOGGED_KEYS", "SFT_WORKFLOW_SWAPS", "Run", "check_compatibility", "run_dyncot_sft", "swapped"]
