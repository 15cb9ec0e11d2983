"""The plugin's seam into LLaMA-Factory 0.9.5: every name it replaces, each by one named, idempotent function.

Permanent patches, applied when ``llamafactory.train.tuner`` is first imported (see :mod:`dyncot_plugin._bootstrap`):

=================================================  =================================================================
LLaMA-Factory name                                 why
=================================================  =================================================================
``llamafactory.hparams.parser.read_args``          take the recipe's ``dyncot_*`` keys out (YAML and ``key=value``
                                                   overrides), validate them before anything loads, and remember them;
                                                   LLaMA-Factory's parser then sees exactly the keys it knows.
``llamafactory.train.tuner.run_sft``               route ``stage: sft`` through the plugin when the recipe has
                                                   ``dyncot_*`` keys; otherwise call the original untouched.
``llamafactory.train.callbacks.LogCallback.on_log`` copy ``cot_ratio``, ``selection_loss`` and ``eval_f1@1`` & co. into
                                                   ``trainer_log.jsonl`` (it writes a fixed set of keys).
=================================================  =================================================================

Scoped overrides, only for the duration of a plugin run (:func:`sft_workflow_overrides`), in
``llamafactory.train.sft.workflow``: ``get_dataset`` (both targets per sample), ``SFTDataCollatorWith4DAttentionMask``
(collate both views), ``CustomSeq2SeqTrainer`` (per-sample selection) and ``plot_loss`` (also plot ``cot_ratio``);
and, inside the plugin's ``get_dataset``, in ``llamafactory.data.loader``: ``get_dataset_list``, ``align_dataset``
and ``_get_dataset_processor`` (see :mod:`dyncot_plugin.data.dual_view`).

A recipe without any ``dyncot_*`` key therefore runs LLaMA-Factory's own code path, value for value.
"""

from __future__ import annotations

import functools
import os
import sys
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

from dyncot_plugin import config as dyncot_config

_ORIGINAL = "__dyncot_original__"
_APPLIED = False


def _wrap(original: Callable, replacement: Callable) -> Callable:
    functools.update_wrapper(replacement, original)
    setattr(replacement, _ORIGINAL, original)
    return replacement


def is_patched(obj: Any) -> bool:
    return hasattr(obj, _ORIGINAL)


def original_of(obj: Any) -> Any:
    return getattr(obj, _ORIGINAL, obj)


# ---------------------------------------------------------------------------------------------- permanent patches
def patch_argument_reader() -> None:
    """Replace ``llamafactory.hparams.parser.read_args`` so ``dyncot_*`` keys are split off and validated."""
    from llamafactory.hparams import parser

    if is_patched(parser.read_args):
        return
    original = parser.read_args

    def read_args(args=None):
        rest, found = dyncot_config.split_args(original(args))
        dyncot_config.set_current(dyncot_config.parse_dyncot_args(found) if found else None)
        return rest

    parser.read_args = _wrap(original, read_args)


def patch_sft_entry() -> None:
    """Replace ``llamafactory.train.tuner.run_sft`` by :func:`dyncot_plugin.train.workflow.run_sft`."""
    from llamafactory.train import tuner

    if is_patched(tuner.run_sft):
        return
    original = tuner.run_sft

    def run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks=None):
        dyncot_args = dyncot_config.get_current()
        if dyncot_args is None:  # vanilla recipe
            return original(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
        from dyncot_plugin.train.workflow import run_dyncot_sft

        return run_dyncot_sft(
            original, dyncot_args, model_args, data_args, training_args, finetuning_args, generating_args, callbacks
        )

    tuner.run_sft = _wrap(original, run_sft)


def patch_log_callback() -> None:
    """Wrap ``LogCallback.on_log`` so the plugin's metrics also reach ``trainer_log.jsonl``."""
    from llamafactory.train.callbacks import LogCallback

    if is_patched(LogCallback.on_log):
        return
    original = LogCallback.on_log
    from dyncot_plugin.train.trainer import EVAL_KEYS, LOG_KEYS

    keys = LOG_KEYS + tuple(f"eval_{key}" for key in EVAL_KEYS)

    def on_log(self, args, state, control, **kwargs):
        last = state.log_history[-1] if state.log_history else {}
        extra = {key: last[key] for key in keys if key in last}
        if not extra:
            return original(self, args, state, control, **kwargs)
        write = type(self)._write_log
        # ``_write_log`` runs on LogCallback's thread pool: bind this entry's values now.
        self._write_log = lambda output_dir, logs: write(self, output_dir, {**logs, **extra})
        try:
            return original(self, args, state, control, **kwargs)
        finally:
            del self._write_log

    LogCallback.on_log = _wrap(original, on_log)


def _targets() -> list[tuple[Any, str]]:
    from llamafactory.hparams import parser
    from llamafactory.train import callbacks, tuner

    return [(parser, "read_args"), (tuner, "run_sft"), (callbacks.LogCallback, "on_log")]


def apply_patches(force: bool = False) -> None:
    """Apply all permanent patches (idempotent). Skipped under ``DYNCOT_DISABLE=1`` unless ``force``."""
    global _APPLIED
    from dyncot_plugin._bootstrap import is_disabled

    if is_disabled() and not force:
        return
    patch_argument_reader()
    patch_sft_entry()
    patch_log_callback()
    if not _APPLIED:
        _APPLIED = True
        rank = os.environ.get("RANK", "0")
        print(f"[dyncot-plugin] active in pid {os.getpid()} (rank {rank}): patched llamafactory", file=sys.stderr)


def remove_patches() -> None:
    """Restore LLaMA-Factory's originals (for tests and for people who want the vanilla path back in-process)."""
    global _APPLIED
    for owner, name in _targets():
        current = getattr(owner, name)
        if is_patched(current):
            setattr(owner, name, original_of(current))
    dyncot_config.set_current(None)
    _APPLIED = False


# ------------------------------------------------------------------------------------------------ scoped overrides
@contextmanager
def override(owner: Any, name: str, replacement: Any) -> Iterator[Any]:
    """Set ``owner.name = replacement`` for the duration of the block; yields the original."""
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield original
    finally:
        setattr(owner, name, original)


@contextmanager
def sft_workflow_overrides(dyncot_args: dyncot_config.DynCotArguments) -> Iterator[None]:
    """Swap the plugin's data, collator, trainer and plot functions into LLaMA-Factory's SFT workflow."""
    from llamafactory.train.sft import workflow

    from dyncot_plugin.data.collator import DualViewDataCollator
    from dyncot_plugin.train.trainer import DynCotTrainer
    from dyncot_plugin.train.workflow import make_get_dataset, make_plot_loss

    with ExitStack() as stack:
        stack.enter_context(override(workflow, "get_dataset", make_get_dataset(workflow.get_dataset, dyncot_args)))
        stack.enter_context(
            override(
                workflow,
                "SFTDataCollatorWith4DAttentionMask",
                functools.partial(DualViewDataCollator, strategy=dyncot_args.dyncot_strategy),
            )
        )
        stack.enter_context(
            override(workflow, "CustomSeq2SeqTrainer", functools.partial(DynCotTrainer, dyncot_args=dyncot_args))
        )
        stack.enter_context(override(workflow, "plot_loss", make_plot_loss(workflow.plot_loss)))
        yield


@contextmanager
def loader_overrides(dyncot_args: dyncot_config.DynCotArguments, data_args: Any) -> Iterator[None]:
    """Inside the plugin's ``get_dataset``: carry and check the CoT column, tokenise both targets."""
    from llamafactory.data import loader

    from dyncot_plugin.data import dual_view

    original_list = loader.get_dataset_list
    original_align = loader.align_dataset
    original_processor = loader._get_dataset_processor

    def get_dataset_list(dataset_names, dataset_dir):
        dataset_list = original_list(dataset_names, dataset_dir)
        dual_view.attach_cot_columns(dataset_list, dataset_names, dataset_dir)
        return dataset_list

    def align_dataset(dataset, dataset_attr, data_args, training_args):
        dual_view.check_images(dataset, dataset_attr, data_args.media_dir)
        cots = dual_view.collect_cot(dataset, dataset_attr, dyncot_args)
        aligned = original_align(dataset, dataset_attr, data_args, training_args)
        return aligned.add_column("_cot", cots) if dyncot_args.needs_cot else aligned

    def _get_dataset_processor(data_args, stage, template, tokenizer, processor, do_generate=False):
        if stage != "sft" or do_generate:
            return original_processor(data_args, stage, template, tokenizer, processor, do_generate)
        return dual_view.DualViewDatasetProcessor(
            template=template, tokenizer=tokenizer, processor=processor, data_args=data_args,
            needs_cot=dyncot_args.needs_cot,
        )

    with ExitStack() as stack:
        stack.enter_context(override(loader, "get_dataset_list", get_dataset_list))
        stack.enter_context(override(loader, "align_dataset", align_dataset))
        stack.enter_context(override(loader, "_get_dataset_processor", _get_dataset_processor))
        yield
