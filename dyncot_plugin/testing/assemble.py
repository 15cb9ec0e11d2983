"""What a plugin run builds, without training it: for benchmarks and tests that time or inspect the real parts.

:func:`assemble_sft` runs LLaMA-Factory's own ``run_sft`` (``llamafactory.train.sft.workflow``) under the plugin's
swap tables (:data:`~dyncot_plugin.train.workflow.SFT_WORKFLOW_SWAPS`), exactly as ``llamafactory-cli train``
does for a recipe with ``dyncot_*`` keys, after the same compatibility checks; it stops when ``run_sft`` calls
``trainer.train()`` and hands back what was built: the :class:`~dyncot_plugin.train.trainer.DynCotTrainer` (with
its model, collator and datasets), the tokenizer and the parsed arguments. Nothing is trained or saved::

    from dyncot_plugin.testing.assemble import assemble_sft
    from dyncot_plugin.testing.lf_runner import tiny_sft_config

    built = assemble_sft(tiny_sft_config(model_dir, data_dir, "toy", out_dir, dyncot_strategy="dynamic"))
    batch = built.collator([built.train_dataset[i] for i in range(2)])
    batches, num_items = built.trainer.get_batch_samples(iter([batch]), 1, built.trainer.args.device)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Assembled", "assemble_sft"]


class _Built(Exception):
    """Raised by the captured trainer's ``train()``: ``run_sft`` has built everything it trains with."""


@dataclass
class Assembled:
    """The parts one plugin SFT run trains with."""

    trainer: Any  # DynCotTrainer (or the ``trainer_class`` given)
    model: Any
    collator: Any  # DualViewDataCollator
    train_dataset: Any
    eval_dataset: Any
    tokenizer: Any
    processor: Any
    dyncot_args: Any
    model_args: Any
    data_args: Any
    training_args: Any
    finetuning_args: Any
    generating_args: Any


def assemble_sft(config: dict[str, Any], trainer_class: type | None = None, callbacks: list | None = None) -> Assembled:
    """Build the run of recipe ``config`` (a dict as the YAML reads, ``dyncot_*`` keys included, ``do_train`` true).

    ``trainer_class`` replaces :class:`~dyncot_plugin.train.trainer.DynCotTrainer` (a subclass trying a candidate
    change); it is constructed with the same arguments, ``dyncot_args`` included.
    """
    from llamafactory.hparams import get_train_args
    from llamafactory.train.sft import workflow as lf_sft

    from dyncot_plugin.config import parse_dyncot_args, split_args
    from dyncot_plugin.train import workflow

    rest, found = split_args(config)
    dyncot_args = parse_dyncot_args(found)
    model_args, data_args, training_args, finetuning_args, generating_args = get_train_args(rest)
    if not training_args.do_train:
        raise ValueError("assemble_sft builds a training run: the recipe needs do_train: true")
    workflow.check_compatibility(dyncot_args, model_args, data_args, training_args, finetuning_args)

    built: list[Any] = []

    def capture(original: Callable, run: workflow.Run) -> Callable:
        # ``original`` is the plugin's trainer factory, set by the SFT_WORKFLOW_SWAPS row before this one
        make = original if trainer_class is None else functools.partial(trainer_class, dyncot_args=run.dyncot_args)

        def trainer(*args, **kwargs):
            instance = make(*args, **kwargs)
            built.append(instance)
            instance.train = _stop  # instance attribute: run_sft's call ends the assembly
            return instance

        return trainer

    table = workflow.SFT_WORKFLOW_SWAPS + (("llamafactory.train.sft.workflow", "CustomSeq2SeqTrainer", capture),)
    try:
        with workflow.swapped(table, workflow.Run(dyncot_args, data_args)):
            lf_sft.run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
    except _Built:
        pass
    if not built:
        raise RuntimeError("run_sft returned without building a trainer")
    trainer = built[0]
    del trainer.train  # the class's train() again, for callers that do want to train
    return Assembled(
        trainer=trainer, model=trainer.model, collator=trainer.data_collator, train_dataset=trainer.train_dataset,
        eval_dataset=trainer.eval_dataset, tokenizer=trainer.processing_class,
        processor=getattr(trainer.data_collator, "processor", None), dyncot_args=dyncot_args, model_args=model_args,
        data_args=data_args, training_args=training_args, finetuning_args=finetuning_args,
        generating_args=generating_args,
    )


def _stop(*args: Any, **kwargs: Any) -> None:
    raise _Built
