"""A prediction recipe as ``llamafactory-cli train`` reads it, without LLaMA-Factory: keys, dataset rows, prompts.

Every key is honoured, ignored (does not change the written predictions) or refused by name, so a recipe that
``dyncot-predict`` cannot reproduce stops before the engine loads (one ``[dyncot-plugin] error:`` line, exit 2).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from dyncot_plugin.serve.adapters import AdapterError, check_adapter, one_adapter
from dyncot_plugin.serve.templates import get_template

HONOURED = {
    "model_name_or_path": None, "template": None, "dataset_dir": "data", "eval_dataset": None, "media_dir": None,
    "cutoff_len": 2048, "max_samples": None, "default_system": None, "image_max_pixels": 768 * 768,
    "image_min_pixels": 32 * 32, "output_dir": None, "overwrite_output_dir": False, "trust_remote_code": False,
    "do_sample": True, "temperature": 0.95, "top_p": 0.7, "top_k": 50, "max_new_tokens": 1024, "max_length": 1024,
    "repetition_penalty": 1.0, "skip_special_tokens": True, "seed": 42, "bf16": False, "fp16": False,
    "pure_bf16": False, "dyncot_think": "auto", "dyncot_think_threshold": 0.5, "adapter_name_or_path": None,
    "image_do_pan_and_scan": False, "crop_to_patches": False,  # only their default (checked: NOT_REPRODUCED)
}
"""Keys that change what is written, with LLaMA-Factory's defaults (``do_sample`` is true unless the recipe says
otherwise, as in LLaMA-Factory's GeneratingArguments)."""

REQUIRED = {"stage": "sft", "do_predict": True, "predict_with_generate": True}
"""Keys whose value must be this one (a recipe that trains is not a prediction recipe)."""

IGNORED = {
    "do_train": "must be false (checked)", "do_eval": "no evaluation loss here",
    "finetuning_type": "lora with adapter_name_or_path (checked), else the model as it is",
    "per_device_eval_batch_size": "vLLM batches by itself", "preprocessing_num_workers": "", "overwrite_cache": "",
    "report_to": "", "logging_steps": "", "length_penalty": "beam search only", "num_beams": "1 only (checked)",
    "dataloader_num_workers": "", "ddp_timeout": "", "flash_attn": "", "use_fast_tokenizer": "",
    "plot_loss": "", "save_steps": "", "run_name": "", "tokenized_path": "", "use_cpu": "vLLM's device",
    "vllm_maxlen": "", "vllm_gpu_util": "", "vllm_enforce_eager": "", "infer_dtype": "bf16/fp16 decide",
}
"""Known keys that do not change the predictions (or are checked to their only honoured value)."""

TRAINING_ONLY_PREFIX = "dyncot_"
"""Other ``dyncot_*`` keys are training-only and ignored (the plugin's own parser validates them when training)."""

REFUSED = {
    "quantization_bit": "quantized loading is not reproduced", "enable_thinking": "reasoning templates are refused",
    "packing": "", "streaming": "", "mix_strategy": "", "tool_format": "", "eval_on_each_dataset": "",
}


NOT_REPRODUCED = {
    "image_do_pan_and_scan": "Gemma 3's pan-and-scan crops: LLaMA-Factory's crop prompt is not reproduced",
    "crop_to_patches": ("InternVL's forced 1-12 patches: vLLM's processor would crop by the checkpoint's own "
                        "setting; leave it false, which uses that setting on both sides"),
}
"""LLaMA-Factory model arguments honoured at their default only (``true`` is refused, with this reason)."""


class RecipeError(ValueError):
    """A recipe, dataset or image problem: one line naming the file, row or key."""


def _value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def read_recipe(path: str, overrides: list[str]) -> dict[str, Any]:
    """The YAML recipe plus ``key=value`` overrides (values parsed as YAML, as LLaMA-Factory does)."""
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
    except OSError as e:
        raise RecipeError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: expected a mapping of keys to values")
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        recipe[key.strip()] = _value(text)
    return recipe


@dataclass
class PredictConfig:
    values: dict[str, Any]
    ignored: list[str] = field(default_factory=list)
    given: frozenset[str] = frozenset()
    """The keys the recipe sets (a threshold it does not set comes from the adapter's or model's saved one)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None


def check_recipe(recipe: dict[str, Any], source: str = "recipe") -> PredictConfig:
    """Classify every key; refuse what cannot be reproduced, by name."""
    from dyncot_plugin import config as dyncot_config

    values = dict(HONOURED)
    ignored = []
    try:  # every dyncot_* key validated as llamafactory-cli train validates it (names, values, "Did you mean")
        dyncot_config.parse_dyncot_args({k: dyncot_config._coerce(k, v) for k, v in recipe.items()
                                         if k.startswith(TRAINING_ONLY_PREFIX)})
    except (dyncot_config.DynCotConfigError, TypeError, ValueError) as e:
        raise RecipeError(f"{source}: {e}") from None
    for key, value in recipe.items():
        if key in REFUSED:
            why = REFUSED[key]
            raise RecipeError(f"{source}: `{key}` is not supported by dyncot-predict" + (f" ({why})" if why else ""))
        if key in REQUIRED:
            if value != REQUIRED[key]:
                raise RecipeError(f"{source}: `{key}: {value}` is not a prediction recipe (dyncot-predict needs "
                                  f"`{key}: {REQUIRED[key]}`)")
        elif key in HONOURED:
            values[key] = value
        elif key in IGNORED or key.startswith(TRAINING_ONLY_PREFIX):
            ignored.append(key)
        else:
            raise RecipeError(f"{source}: unknown or unsupported key `{key}` (dyncot-predict honours "
                              f"{', '.join(sorted(HONOURED))}; see docs/serving.md)")
    if recipe.get("do_train"):
        raise RecipeError(f"{source}: `do_train: true`: dyncot-predict only predicts")
    if int(recipe.get("num_beams", 1) or 1) != 1:
        raise RecipeError(f"{source}: `num_beams: {recipe['num_beams']}`: beam search is not supported")
    for key in ("model_name_or_path", "template", "eval_dataset", "output_dir"):
        if not values.get(key):
            raise RecipeError(f"{source}: `{key}` is required")
    try:  # a template dyncot-predict cannot reproduce (or vLLM cannot run) is refused here, by name, with why
        get_template(str(values["template"]))
    except KeyError as e:
        raise RecipeError(f"{source}: {e.args[0]}") from None
    for key in ("image_do_pan_and_scan", "crop_to_patches"):
        if values[key]:
            raise RecipeError(f"{source}: `{key}: true` is not supported by dyncot-predict ({NOT_REPRODUCED[key]})")
    if values["media_dir"] is None:
        values["media_dir"] = values["dataset_dir"]
    if values["image_max_pixels"] < values["image_min_pixels"]:
        raise RecipeError(f"{source}: `image_max_pixels` cannot be smaller than `image_min_pixels`")
    if values["adapter_name_or_path"]:
        finetuning_type = recipe.get("finetuning_type", "lora")  # LLaMA-Factory's default
        if finetuning_type != "lora":  # as LLaMA-Factory's own check: "Adapter is only valid for the LoRA method."
            raise RecipeError(f"{source}: `adapter_name_or_path` needs `finetuning_type: lora` (got {finetuning_type})")
        try:  # refused by name before anything loads (serve/adapters.py says what and why)
            values["adapter_name_or_path"] = one_adapter(values["adapter_name_or_path"])
            check_adapter(values["adapter_name_or_path"])
        except AdapterError as e:
            raise RecipeError(f"{source}: {e}") from None
    return PredictConfig(values, ignored, frozenset(recipe))


# ------------------------------------------------------------------------------------------------------ datasets
@dataclass
class Row:
    """One post: the prompt turns, the response turn, the system text and image paths."""

    index: int
    messages: list[dict[str, str]]
    system: str
    images: list[str]


def _dataset_attrs(dataset_dir: str, name: str) -> dict[str, Any]:
    info_path = os.path.join(dataset_dir, "dataset_info.json")
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except OSError:
        raise RecipeError(f"{info_path}: cannot read dataset_info.json (dataset_dir: {dataset_dir})") from None
    if name not in info:
        raise RecipeError(f"{info_path}: no dataset named {name!r}")
    return info[name]


def load_rows(config: PredictConfig) -> list[Row]:
    """The rows of ``eval_dataset`` (comma-separated names concatenated, ``max_samples`` each), as LLaMA-Factory's
    sharegpt / alpaca converters read them."""
    rows: list[Row] = []
    for name in [n.strip() for n in str(config.eval_dataset).split(",") if n.strip()]:
        attrs = _dataset_attrs(config.dataset_dir, name)
        path = os.path.join(config.dataset_dir, attrs.get("file_name", ""))
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f) if path.endswith(".json") else [json.loads(line) for line in f if line.strip()]
        except (OSError, json.JSONDecodeError) as e:
            raise RecipeError(f"{path}: cannot read dataset {name!r} ({e})") from None
        if config.max_samples is not None:
            data = data[: int(config.max_samples)]
        fmt = attrs.get("formatting", "alpaca")
        for i, example in enumerate(data):
            where = f"{path}: row {i}"
            row = _sharegpt(example, attrs, where) if fmt == "sharegpt" else _alpaca(example, attrs, where)
            row.images = [_media(p, config.media_dir, where) for p in row.images]
            row.index = len(rows)
            rows.append(row)
    return rows


def _media(path: str, media_dir: str, where: str) -> str:
    joined = os.path.join(media_dir, path)
    if os.path.isfile(joined):
        return joined
    if os.path.isfile(path):
        return path
    raise RecipeError(f"{where}: image {path!r} not found (in media_dir {media_dir} nor as given)")


def _sharegpt(example: dict, attrs: dict, where: str) -> Row:
    columns, tags = attrs.get("columns", {}), attrs.get("tags", {})
    role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    user, assistant = tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")
    system_tag = tags.get("system_tag")
    messages = example.get(columns.get("messages", "conversations"))
    if not isinstance(messages, list) or not messages:
        raise RecipeError(f"{where}: no messages (column {columns.get('messages', 'conversations')!r})")
    system = ""
    if system_tag and messages[0].get(role) == system_tag:
        system, messages = messages[0].get(content, ""), messages[1:]
    elif columns.get("system"):
        system = example.get(columns["system"]) or ""
    turns = []
    for k, message in enumerate(messages):
        expected = user if k % 2 == 0 else assistant
        if message.get(role) != expected:
            raise RecipeError(f"{where}: turn {k} has role {message.get(role)!r}, expected {expected!r}")
        turns.append({"role": "user" if k % 2 == 0 else "assistant", "content": message.get(content, "")})
    if len(turns) % 2 == 1:  # a prompt without its answer: an empty response, as LLaMA-Factory does
        turns.append({"role": "assistant", "content": ""})
    if not turns[0]["content"] and len(turns) == 2:
        raise RecipeError(f"{where}: the prompt is empty")
    images = example.get(columns["images"]) if columns.get("images") else None
    return Row(0, turns, system, list(images or []))


def _alpaca(example: dict, attrs: dict, where: str) -> Row:
    columns = attrs.get("columns", {})
    prompt = example.get(columns.get("prompt", "instruction")) or ""
    query = example.get(columns.get("query", "input")) or ""
    if query:
        prompt = prompt + "\n" + query
    if not prompt:
        raise RecipeError(f"{where}: no prompt (column {columns.get('prompt', 'instruction')!r})")
    response = example.get(columns.get("response", "output")) or ""
    system = example.get(columns["system"]) or "" if columns.get("system") else ""
    images = example.get(columns["images"]) if columns.get("images") else None
    return Row(0, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], system,
               list(images or []))


__all__ = ["HONOURED", "IGNORED", "REFUSED", "PredictConfig", "RecipeError", "Row", "check_recipe", "load_rows",
           "read_recipe"]
