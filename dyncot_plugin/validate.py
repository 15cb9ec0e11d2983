"""Everything about a recipe that can be checked before the model loads, in one place, for every front end.

``llamafactory-cli train`` (through :func:`dyncot_plugin.train.workflow.check_compatibility`, on the arguments
LLaMA-Factory parsed), ``chat`` / ``api`` / ``webchat`` (:func:`check_backend`) and LlamaBoard
(:mod:`dyncot_plugin.webui`, on the recipe it is about to preview, save or start) all call the functions below, so a
value the command line refuses is refused in the web UI with the same message, before any process starts:

* the ``dyncot_*`` keys themselves: an unknown key (with the closest valid one), a value outside what the key
  allows (:func:`dyncot_plugin.config.split_args`, :class:`~dyncot_plugin.config.DynCotArguments`);
* LLaMA-Factory options the strategy cannot honour, refused by name (:func:`check_options`; the README's table
  "LLaMA-Factory options" lists them);
* a training dataset whose ``dataset_info.json`` entry declares no CoT column while the strategy needs one
  (:func:`cot_column_message`; the same message the data loader gives when the column is missing from the rows);
* a ``tokenized_path`` cache without the CoT views (:func:`check_tokenized_cache`).

The options are read through :class:`Options`: a plain recipe (the dict LlamaBoard builds, or a YAML file's) or the
dataclasses LLaMA-Factory parsed (:meth:`Options.parsed`). Import-light: the core only (no torch, no LLaMA-Factory,
no training code); what needs LLaMA-Factory (its template table, a model's config) is imported when checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from dyncot_plugin.config import DynCotArguments, DynCotConfigError, parse_dyncot_args, split_args
from dyncot_plugin.io.datasets import read_dataset_info
from dyncot_plugin.io.read import InputError

# The status column of a tokenised dataset (part of the view contract of dyncot_plugin.train.views, declared here
# because the tokenized_path check reads it before anything of the training code loads).
COT_STATUS = "cot_status"
COT_OK, COT_MISSING, COT_TOO_LONG = 0, 1, 2

REFUSED_MODEL_TYPES: dict[str, str] = {
    "mllama": "its cross_attention_mask [batch, seq, images, tiles] would have to be rebuilt for the CoT view",
}
"""``config.model_type`` -> why ``multitask`` and ``dynamic`` (the strategies that build both views of a batch) cannot
run on it; ``sft`` and ``cot`` build one view and run as LLaMA-Factory does."""


class Options:
    """Read-only access to a recipe's LLaMA-Factory options, with LLaMA-Factory's defaults for those it omits."""

    def __init__(self, get: Callable[[str, Any], Any], model_type: Callable[[], str | None]):
        self._get, self._model_type = get, model_type

    def get(self, key: str, default: Any = None) -> Any:
        return self._get(key, default)

    def model_type(self) -> str | None:
        """``config.model_type`` of the model to load, or None where it cannot be read without loading it."""
        return self._model_type()

    @classmethod
    def recipe(cls, recipe: Mapping[str, Any]) -> Options:
        """A recipe as a dict (LlamaBoard's arguments, a YAML file). The model type comes from the model folder's
        ``config.json`` where ``model_name_or_path`` is a local folder; a hub id is not fetched (the run checks it)."""

        def model_type() -> str | None:
            path = os.path.join(str(recipe.get("model_name_or_path") or ""), "config.json")
            try:
                with open(path, encoding="utf-8") as f:
                    return json.load(f).get("model_type")
            except (OSError, ValueError, AttributeError):
                return None

        return cls(lambda key, default: recipe.get(key, default), model_type)

    @classmethod
    def parsed(cls, model_args: Any, data_args: Any, training_args: Any, finetuning_args: Any) -> Options:
        """The dataclasses LLaMA-Factory's parser returns (defaults filled in, ``neat_packing`` implying
        ``packing``, ...); the model type from LLaMA-Factory's own ``load_config`` (``config.json`` only)."""
        parts = (model_args, data_args, training_args, finetuning_args)

        def get(key: str, default: Any) -> Any:
            for part in parts:
                if hasattr(part, key):
                    return getattr(part, key)
            return default

        def model_type() -> str | None:
            from llamafactory.model.loader import load_config

            return getattr(load_config(model_args), "model_type", None)

        return cls(get, model_type)


def check_recipe(recipe: Mapping[str, Any]) -> DynCotArguments | None:
    """Check a whole recipe (a dict with LLaMA-Factory's keys and the ``dyncot_*`` keys) as ``llamafactory-cli
    train`` would before the model loads; returns its :class:`DynCotArguments` (None without ``dyncot_*`` keys, a
    recipe the plugin leaves alone). Raises :class:`DynCotConfigError` (or :class:`InputError` for an unreadable
    ``dataset_info.json``) with the message the command line prints after ``[dyncot-plugin] error:``."""
    rest, found = split_args(dict(recipe))
    if not found:
        return None
    dyncot_args = parse_dyncot_args(found)
    check_options(dyncot_args, Options.recipe(rest))
    return dyncot_args


def _refuse(option: str, why: str, fix: str) -> None:
    raise DynCotConfigError(f"dyncot-plugin cannot honour `{option}`: {why}. {fix}")


def check_options(dyncot_args: DynCotArguments, options: Options) -> None:
    """LLaMA-Factory options the plugin cannot honour, refused by name, and the training datasets' CoT columns
    (README "LLaMA-Factory options"). ``sft`` runs LLaMA-Factory's own data path, so packing and streaming work there
    as in vanilla."""
    strategy = dyncot_args.strategy
    name = dyncot_args.dyncot_strategy
    if strategy.views == "both":
        model_type = options.model_type()
        if model_type in REFUSED_MODEL_TYPES:
            _refuse(f"model_type: {model_type}", REFUSED_MODEL_TYPES[model_type],
                    "Use dyncot_strategy sft or cot with this model.")

    template = options.get("template")
    if template is not None:
        from llamafactory.data.template import TEMPLATES, ReasoningTemplate

        if isinstance(TEMPLATES.get(template), ReasoningTemplate):
            sibling = f"{template}_nothink"
            fix = f"use `template: {sibling}`" if sibling in TEMPLATES else "use a template without built-in thinking"
            _refuse(
                f"template: {template}",
                "it is a reasoning template, which writes its own (empty) <think> block into every plain answer, so "
                "the plain and CoT views no longer differ only by the reasoning and every plain output reads as "
                "thinking",
                f"The plugin supplies the <think>…</think> targets itself: {fix}.",
            )
    if strategy.needs_cot:
        if options.get("packing") or options.get("neat_packing"):
            _refuse(
                "packing" if options.get("packing") else "neat_packing",
                f"dyncot_strategy={name} chooses a target per sample, which packing hides by merging samples into one "
                "row",
                "Set `packing: false` (dyncot_strategy: sft packs as LLaMA-Factory does).",
            )
        if options.get("streaming"):
            _refuse(
                "streaming", f"dyncot_strategy={name} reads both views of every sample from a map-style dataset",
                "Set `streaming: false` (dyncot_strategy: sft streams as LLaMA-Factory does).",
            )
    if strategy.batch == "stack":
        for option in ("use_dft_loss", "use_eaft_loss", "use_asft_loss"):
            if options.get(option):
                _refuse(
                    option, "multitask computes its own loss (the mean of the plain and CoT token means)",
                    "Use it with dyncot_strategy sft, cot or dynamic, whose batches go through LLaMA-Factory's loss.",
                )
    if strategy.batch in ("select", "stack"):
        for option in ("enable_liger_kernel", "use_unsloth"):
            if options.get(option):
                _refuse(
                    option,
                    f"dyncot_strategy={name} needs the model's logits (the selection pass scores answer tokens; "
                    "multitask averages two losses), which these patched forwards fuse away",
                    "Use it with dyncot_strategy sft or cot.",
                )
    if options.get("train_on_prompt"):
        why = {
            "select": "the selection pass would score every prompt token (image tokens included) instead of the "
            "answer, so γ would no longer threshold the plain answer's loss",
            "stack": "both views would train the same prompt, counting it twice in the mean of the two answer losses",
        }.get(strategy.batch)
        if why is None and dyncot_args.dyncot_eval_samples > 0:
            why = "the training-time evaluation generates from the prompt before the first target token, which " \
                  "train_on_prompt makes empty"
        if why is not None:
            _refuse("train_on_prompt", why,
                    "Set `train_on_prompt: false` (sft and cot train on prompts as LLaMA-Factory does).")
    if options.get("do_train") and options.get("predict_with_generate"):
        _refuse(
            "predict_with_generate",
            "with `do_train: true` LLaMA-Factory then builds the training collator without the model, so Qwen-VL "
            "models train on 1-D positions and the plugin cannot tell the model family",
            "Train with `predict_with_generate: false`, then predict in a run of its own (examples/qwen2vl_predict.yaml).",
        )
    cache = options.get("tokenized_path")
    if cache is not None and strategy.needs_cot:
        check_tokenized_cache(cache, dyncot_args)
    if cache is not None and _holds_data(cache):
        return  # LLaMA-Factory trains on the cache and reads no dataset
    if options.get("do_train") and strategy.needs_cot and dyncot_args.dyncot_missing_cot == "error":
        check_cot_columns(dyncot_args, options.get("dataset"), options.get("dataset_dir", "data"))


def cot_column_message(dataset: str, strategy: str, where: str) -> str:
    """The error of a training dataset without CoT text under ``dyncot_missing_cot: error``; ``where`` says what is
    missing (no ``cot`` key in its ``dataset_info.json`` entry, or no such column in its rows)."""
    return (
        f"Dataset `{dataset}`: dyncot_strategy={strategy} needs a CoT text per sample, but the dataset has {where}. "
        f"Add the CoT column (`dyncot-data gen-cot`) or set `dyncot_missing_cot: sft`."
    )


NO_COT_KEY = "no `cot` key under `columns` in dataset_info.json"


def dataset_names(value: Any) -> list[str]:
    """LLaMA-Factory's ``dataset`` (a comma-separated string or the parsed list) as names."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


def check_cot_columns(dyncot_args: DynCotArguments, datasets: Any, dataset_dir: Any) -> None:
    """Every training dataset must declare its CoT column in ``dataset_info.json`` (``"columns": {"cot": ...}``)
    when the strategy needs one and ``dyncot_missing_cot`` is ``error``. Datasets the folder does not describe
    (``ONLINE``, ``REMOTE:``, unknown names) are left to LLaMA-Factory's loader, which names them."""
    if not isinstance(dataset_dir, str) or dataset_dir == "ONLINE" or dataset_dir.startswith("REMOTE:"):
        return
    try:
        info = read_dataset_info(dataset_dir)
    except InputError:
        return  # LLaMA-Factory reports a broken dataset_info.json itself
    for name in dataset_names(datasets):
        entry = info.get(name)
        if isinstance(entry, dict) and not (entry.get("columns") or {}).get("cot"):
            raise DynCotConfigError(cot_column_message(name, dyncot_args.dyncot_strategy, NO_COT_KEY))


def _holds_data(path: str) -> bool:
    """LLaMA-Factory's ``has_tokenized_data``: a non-empty folder is a saved dataset it loads instead."""
    return os.path.isdir(path) and bool(os.listdir(path))


def check_tokenized_cache(path: str, dyncot_args: DynCotArguments) -> None:
    """A ``tokenized_path`` that LLaMA-Factory will load instead of the datasets must carry the CoT views (it skips
    alignment, so nothing else would notice): refuse a cache without them, and one with samples lacking CoT text
    when ``dyncot_missing_cot: error``. A path that does not hold a dataset yet is where this run saves its own."""
    if not _holds_data(path):
        return
    from datasets import DatasetDict, load_from_disk

    try:
        cached = load_from_disk(path)  # memory-mapped: columns are read, not the rows
    except Exception as err:  # noqa: BLE001 (any unreadable cache is the same user error)
        raise DynCotConfigError(f"`tokenized_path: {path}`: not a dataset saved by LLaMA-Factory ({err}).") from None
    train = cached.get("train") if isinstance(cached, DatasetDict) else cached
    if train is None:
        return
    name = dyncot_args.dyncot_strategy
    if COT_STATUS not in train.column_names:
        _refuse(
            f"tokenized_path: {path}",
            f"that cache was tokenised without CoT views (by an sft or vanilla run), so dyncot_strategy={name} would "
            "train every sample on its plain target",
            "Point `tokenized_path` to a new folder (the plugin then tokenises both views and saves them there) or "
            "remove the folder.",
        )
    missing = sum(1 for status in train[COT_STATUS] if status == COT_MISSING)
    if missing and dyncot_args.dyncot_missing_cot == "error":
        _refuse(
            f"tokenized_path: {path}",
            f"{missing} of its {len(train)} training samples have no CoT text (the cache was written with "
            "dyncot_missing_cot: sft) and dyncot_missing_cot is error",
            "Set `dyncot_missing_cot: sft`, or tokenise again into a new folder.",
        )


def check_backend(args: Mapping[str, Any] | list[str]) -> None:
    """Chat front ends: only the Hugging Face engine generates through ``generate`` (where the decision runs), so a
    recipe with ``dyncot_*`` keys that picks another ``infer_backend`` is refused. ``args`` is the recipe as
    LLaMA-Factory's ``read_args`` returns it (a dict, or a ``--key value`` list); checked before LLaMA-Factory's own
    parser, which would first ask for the backend's package."""
    if isinstance(args, Mapping):
        backend = args.get("infer_backend", "huggingface")
    else:  # as HfArgumentParser reads it: --infer_backend, --infer-backend, an unambiguous prefix, "=value" or not
        backend = "huggingface"
        for i, item in enumerate(map(str, args)):
            key, sep, value = item.partition("=")
            key = key[2:].replace("-", "_") if key.startswith("--") else ""
            if len(key) >= len("infer_b") and "infer_backend".startswith(key):
                backend = value if sep else (args[i + 1] if i + 1 < len(args) else backend)
    if str(backend) != "huggingface":
        raise DynCotConfigError(
            f"dyncot-plugin cannot honour `infer_backend: {backend}` with dyncot_think: LLaMA-Factory's {backend} "
            "engine generates outside Hugging Face generate. Use infer_backend: huggingface, or serve the model "
            "with dyncot-serve (vLLM, per-request control; README 'Predicting and serving on vLLM')."
        )


def error_line(err: BaseException) -> str:
    """The one line a user error prints on the command line (``reported_errors``); the web UI shows the same."""
    return f"[dyncot-plugin] error: {err}"


__all__ = [
    "COT_MISSING",
    "COT_OK",
    "COT_STATUS",
    "COT_TOO_LONG",
    "NO_COT_KEY",
    "REFUSED_MODEL_TYPES",
    "Options",
    "check_backend",
    "check_cot_columns",
    "check_options",
    "check_recipe",
    "check_tokenized_cache",
    "cot_column_message",
    "dataset_names",
    "error_line",
]
