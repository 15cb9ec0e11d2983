"""The plugin's SFT run: LLaMA-Factory's own ``run_sft``, with the plugin's parts swapped in by declarative tables.

Reusing LLaMA-Factory's workflow (rather than a copy of it) keeps model loading, LoRA/freeze set-up, DeepSpeed,
saving, evaluation and prediction exactly as users know them. What a plugin run swaps, for its duration only:

=========================================================  =======================================================
``llamafactory.train.sft.workflow.get_dataset``             both targets per sample (the loader swaps below)
``...sft.workflow.SFTDataCollatorWith4DAttentionMask``      :class:`~dyncot_plugin.train.views.DualViewDataCollator`
``...sft.workflow.CustomSeq2SeqTrainer``                    :class:`~dyncot_plugin.train.trainer.DynCotTrainer`
``...sft.workflow.plot_loss``                               also plot ``cot_ratio`` and ``gamma``
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
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from llamafactory.extras import logging

from dyncot_plugin.config import DynCotArguments, DynCotConfigError
from dyncot_plugin.io.read import InputError
from dyncot_plugin.train.metrics import LOGGED_KEYS
from dyncot_plugin.validate import Options, check_options, error_line

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
    from dyncot_plugin.train.plots import plot_cot_ratio

    def plot_loss(save_dictionary: str, keys: list[str] = ["loss"]) -> None:  # noqa: B006 (LLaMA-Factory's signature)
        original(save_dictionary, keys=keys)
        plot_cot_ratio(save_dictionary)

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
    from dyncot_plugin.train.views import (
        COT_COLUMN,
        SAMPLE_ID_COLUMN,
        check_images,
        check_not_empty,
        collect_cot,
        sample_ids,
    )

    def align_dataset(dataset, dataset_attr, data_args, training_args):
        if data_args.streaming:  # only sft streams (check_compatibility): LLaMA-Factory's own path
            return original(dataset, dataset_attr, data_args, training_args)
        check_not_empty(dataset, dataset_attr)
        check_images(dataset, dataset_attr, data_args.media_dir)
        if not run.dyncot_args.needs_cot:
            return original(dataset, dataset_attr, data_args, training_args)
        cots = collect_cot(dataset, dataset_attr, run.dyncot_args)
        aligned = original(dataset, dataset_attr, data_args, training_args).add_column(COT_COLUMN, cots)
        return aligned.add_column(SAMPLE_ID_COLUMN, sample_ids(dataset, dataset_attr))  # named in selection records

    return align_dataset


def _dataset_processor(original: Callable, run: Run) -> Callable:
    from dyncot_plugin.train.views import DualViewDatasetProcessor

    def _get_dataset_processor(data_args, stage, template, tokenizer, processor, do_generate=False):
        if stage != "sft" or do_generate or not run.dyncot_args.needs_cot:  # sft: LLaMA-Factory's own (packing too)
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
USER_ERRORS = (DynCotConfigError, InputError)  # bad recipe keys, refused options, bad dataset rows


@contextmanager
def reported_errors() -> Iterator[None]:
    """A user error ends the run with one ``[dyncot-plugin] error:`` line and exit code 2, without a traceback (on
    every rank: each names the same problem)."""
    try:
        yield
    except USER_ERRORS as err:
        print(error_line(err), file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def check_compatibility(
    dyncot_args: DynCotArguments, model_args: Any, data_args: Any, training_args: Any, finetuning_args: Any
) -> None:
    """What a plugin run refuses before the model loads (:func:`dyncot_plugin.validate.check_options`: options the
    strategy cannot honour, by name; training datasets without a CoT column), on the arguments LLaMA-Factory parsed.
    LlamaBoard runs the same checks on the recipe it is about to start."""
    check_options(dyncot_args, Options.parsed(model_args, data_args, training_args, finetuning_args))


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
    check_compatibility(dyncot_args, model_args, data_args, training_args, finetuning_args)
    target = dyncot_args.dyncot_target_cot_ratio
    logger.info_rank0(
        f"[dyncot] strategy={dyncot_args.dyncot_strategy} gamma={dyncot_args.dyncot_gamma}"
        + (f" target_cot_ratio={target} window={dyncot_args.dyncot_target_window}" if target is not None else "")
        + (f" rescore={dyncot_args.dyncot_target_rescore}" if dyncot_args.dyncot_target_rescore else "")
        + (f" cot_when={dyncot_args.dyncot_cot_when}" if dyncot_args.dyncot_cot_when != "below" else "")
    )
    if dyncot_args.dyncot_eval_samples > 0 and training_args.predict_with_generate:
        raise DynCotConfigError(
            "dyncot_eval_samples generates during training; with `predict_with_generate: true` LLaMA-Factory builds "
            "its collator without the model. Predict in a separate run (examples/qwen2vl_predict.yaml)."
        )
    with swapped(SFT_WORKFLOW_SWAPS, Run(dyncot_args, data_args)):
        return original_run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)


__all__ = [
    "LOADER_SWAPS",
    "LOGGED_KEYS",
    "SFT_WORKFLOW_SWAPS",
    "USER_ERRORS",
    "Run",
    "check_compatibility",
    "reported_errors",
    "run_dyncot_sft",
    "swapped",
]
