"""The plugin's SFT run: LLaMA-Factory's own ``run_sft``, with the plugin's parts swapped in.

Reusing LLaMA-Factory's workflow (rather than a copy of it) keeps model loading, LoRA/freeze set-up, DeepSpeed,
saving, evaluation and prediction exactly as users know them.
"""

from __future__ import annotations

from typing import Any, Callable

from llamafactory.extras import logging

from dyncot_plugin.config import DynCotArguments, DynCotConfigError

logger = logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's handler and verbosity


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
    from dyncot_plugin.patches import sft_workflow_overrides

    check_compatibility(dyncot_args, data_args, training_args)
    logger.info_rank0(f"[dyncot] strategy={dyncot_args.dyncot_strategy} gamma={dyncot_args.dyncot_gamma}")
    if dyncot_args.dyncot_eval_samples > 0 and training_args.predict_with_generate:
        raise DynCotConfigError(
            "dyncot_eval_samples generates during training; with `predict_with_generate: true` LLaMA-Factory builds "
            "its collator without the model. Predict in a separate run (examples/qwen2vl_predict.yaml)."
        )
    with sft_workflow_overrides(dyncot_args):
        return original_run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)


def make_get_dataset(original_get_dataset: Callable, dyncot_args: DynCotArguments) -> Callable:
    from dyncot_plugin.data.dual_view import cot_status_counts
    from dyncot_plugin.patches import loader_overrides

    def get_dataset(template, model_args, data_args, training_args, stage, **tokenizer_module):
        with loader_overrides(dyncot_args, data_args):
            module = original_get_dataset(template, model_args, data_args, training_args, stage, **tokenizer_module)
        counts = cot_status_counts(module.get("train_dataset"))
        if counts is not None and dyncot_args.needs_cot:
            logger.info_rank0(
                f"[dyncot] training samples: {counts['cot']} with a CoT view, {counts['missing']} without CoT text "
                f"(plain target), {counts['too_long']} whose CoT view does not fit cutoff_len={data_args.cutoff_len} "
                "(plain target)"
            )
        return module

    return get_dataset


def make_plot_loss(original_plot_loss: Callable) -> Callable:
    def plot_loss(save_dictionary: str, keys: list[str] = ["loss"]) -> None:  # noqa: B006 (LLaMA-Factory's signature)
        original_plot_loss(save_dictionary, keys=list(keys) + ["cot_ratio"])

    return plot_loss
