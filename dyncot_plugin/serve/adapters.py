"""LoRA adapters on vLLM: what ``dyncot-predict`` (``adapter_name_or_path``) and ``dyncot-serve`` (``--lora-modules``)
accept, checked before the engine starts, and the think settings each adapter is served with.

vLLM applies a LoRA adapter's low-rank updates to the language model's linear layers, unmerged. An adapter is
refused by name (:class:`AdapterError`, one ``[dyncot-plugin] error:`` line) where vLLM 0.32 would serve something
else than the adapter LLaMA-Factory trained, or would stop later with a traceback:

* **embeddings and head**: ``modules_to_save`` (LLaMA-Factory's ``additional_target``; ``resize_vocab`` and
  ``new_special_tokens`` put ``embed_tokens`` and ``lm_head`` there), LoRA on ``embed_tokens`` / ``lm_head``,
  ``trainable_token_indices``, or such weights in the adapter file: vLLM 0.32 loads none of them (its
  ``modules_to_save`` support is the classification heads' ``score`` / ``classifier``);
* **a resized vocabulary**: the adapter's tokenizer has other tokens than the model's;
* **the vision tower or the projector** (LLaMA-Factory's ``freeze_vision_tower: false`` /
  ``freeze_multi_modal_projector: false`` with LoRA targets there): vLLM applies LoRA to the language model only
  unless ``enable_tower_connector_lora`` is set (vLLM 0.32 offers it for Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA and
  InternVL); dyncot-predict does not set it, as tower LoRA on vLLM is untested here against LLaMA-Factory;
* PEFT features vLLM does not implement (DoRA, LoRA bias, PiSSA-style inits, ...), and non-LoRA PEFT methods;
* several adapters at once (vLLM applies one adapter per request; LLaMA-Factory merges all of them for inference):
  merge the first ones with ``llamafactory-cli export``.

The think tag is ordinary text (:mod:`dyncot_plugin.think`), so a Dynamic-CoT adapter needs none of these.

Imports neither vLLM nor torch at module level (the server's middleware reads :func:`adapter_xargs`).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from dyncot_plugin.serve.fields import ADAPTERS_ENV, THRESHOLD_KEY
from dyncot_plugin.think_settings import ThinkSettings, ThinkSettingsError, adapter_list, resolve_think_settings

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM 0.32 accepts as ``max_lora_rank`` (``vllm.config.lora.MaxLoRARanks``)."""

EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings")
"""Module names of the token embeddings and the head (Qwen / Llama / Gemma spellings first)."""

VISION_MODULES = ("visual", "vision_tower", "vision_model", "multi_modal_projector")
"""Module names of the vision tower and the projector in the plugin's families (Qwen-VL: ``visual``, its merger
inside; LLaVA, Gemma 3, InternVL ``-hf``: ``vision_tower`` + ``multi_modal_projector``)."""

UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "LoRA bias",
    "layer_replication": "layer_replication",
    "alora_invocation_tokens": "activated LoRA",
    "use_qalora": "QALoRA",
    "use_bdlora": "block-diagonal LoRA",
}
"""``adapter_config.json`` keys whose true value vLLM 0.32 cannot serve (vLLM refuses them too, later)."""

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterError(ValueError):
    """An adapter vLLM would not serve as trained: the message names the folder and the key or module."""


@dataclass(frozen=True)
class Adapter:
    """A checked LoRA adapter."""

    path: str
    rank: int
    """The largest rank in ``adapter_config.json`` (``r`` and ``rank_pattern``)."""

    @property
    def max_lora_rank(self) -> int:
        """vLLM's ``max_lora_rank`` for it: the smallest value vLLM accepts that holds ``rank``."""
        return max_lora_rank([self.rank])


def max_lora_rank(ranks: list[int]) -> int:
    need = max(ranks)
    for r in LORA_RANKS:
        if r >= need:
            return r
    raise AdapterError(f"LoRA rank {need} is above vLLM's largest max_lora_rank {LORA_RANKS[-1]}")


def _parts(name: str) -> set[str]:
    return set(name.split("."))


def _weight_names(path: str) -> list[str]:
    st = os.path.join(path, WEIGHT_FILES[0])
    if os.path.isfile(st):
        try:
            with open(st, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
        except (OSError, ValueError, struct.error) as e:
            raise AdapterError(f"{st}: not a readable safetensors file ({e})") from None
        return [k for k in header if k != "__metadata__"]
    binary = os.path.join(path, WEIGHT_FILES[1])
    if os.path.isfile(binary):
        import torch

        return list(torch.load(binary, map_location="meta", weights_only=True))
    raise AdapterError(f"{path}: no adapter weights ({' or '.join(WEIGHT_FILES)})")


def check_adapter(path: str) -> Adapter:
    """The adapter at ``path`` if vLLM serves it as trained (see the module docstring), else an
    :class:`AdapterError` naming what is refused."""
    config_path = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config_path):
        raise AdapterError(f"{path}: not a LoRA adapter folder (no adapter_config.json)")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise AdapterError(f"{config_path}: cannot read ({e})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path}: expected a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{config_path}: peft_type {peft_type}: vLLM serves LoRA adapters only (merge it first "
                           "with llamafactory-cli export)")
    saved = [m for m in config.get("modules_to_save") or [] if m not in ("score", "classifier")]
    if saved:
        raise AdapterError(
            f"{config_path}: modules_to_save {saved}: the adapter carries full copies of these modules (LLaMA-Factory "
            "puts embed_tokens and lm_head there for resize_vocab, new_special_tokens or additional_target), which "
            "vLLM does not load; dyncot-plugin needs no new tokens (<think> is ordinary text). Train without them, "
            "or merge the adapter first (llamafactory-cli export) and predict / serve the merged model")
    targets = config.get("target_modules")
    if isinstance(targets, list) and set(targets) & set(EMBEDDING_MODULES):
        raise AdapterError(f"{config_path}: target_modules {sorted(set(targets) & set(EMBEDDING_MODULES))}: LoRA on the "
                           "token embeddings or the head is not served by vLLM; merge the adapter first "
                           "(llamafactory-cli export)")
    if config.get("trainable_token_indices"):
        raise AdapterError(f"{config_path}: trainable_token_indices: trained embedding rows are not served by vLLM; "
                           "merge the adapter first (llamafactory-cli export)")
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            raise AdapterError(f"{config_path}: {key}: vLLM does not serve {what} adapters; merge it first "
                               "(llamafactory-cli export)")
    if str(config.get("bias", "none")) != "none":
        raise AdapterError(f"{config_path}: bias {config['bias']!r}: vLLM serves adapters without bias terms only")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in ("gaussian", "eva", "orthogonal", "mica", "lora_ga"):
        raise AdapterError(f"{config_path}: init_lora_weights {init!r} changes the base weights when PEFT loads the "
                           "adapter, which vLLM does not do; merge it first (llamafactory-cli export)")
    for name in _weight_names(path):
        parts = _parts(name)
        if parts & set(EMBEDDING_MODULES):
            raise AdapterError(f"{path}: weight {name}: the adapter carries embedding or head weights, which vLLM does "
                               "not load; merge the adapter first (llamafactory-cli export)")
        if parts & set(VISION_MODULES):
            raise AdapterError(
                f"{path}: weight {name}: LoRA on the vision tower or the projector (freeze_vision_tower / "
                "freeze_multi_modal_projector false) is not applied by vLLM 0.32 unless enable_tower_connector_lora, "
                "which dyncot-predict does not use; train with both frozen (LLaMA-Factory's default), or merge the "
                "adapter first (llamafactory-cli export)")
    try:
        ranks = [int(config["r"])] + [int(r) for r in (config.get("rank_pattern") or {}).values()]
    except (KeyError, TypeError, ValueError):
        raise AdapterError(f"{config_path}: expected an integer rank `r`") from None
    adapter = Adapter(path, max(ranks))
    adapter.max_lora_rank  # noqa: B018  (a rank vLLM cannot hold is refused here)
    return adapter


def check_vocabulary(path: str, tokenizer: Any) -> None:
    """Refuse an adapter saved with a tokenizer whose vocabulary differs from the model's (a resized vocabulary:
    LLaMA-Factory's ``resize_vocab`` / ``new_special_tokens``): vLLM generates with the model's embeddings."""
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json",
                                                               "vocab.json")):
        return
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(path)
    if len(own) != len(tokenizer) or own.get_vocab() != tokenizer.get_vocab():
        raise AdapterError(f"{path}: its tokenizer has {len(own)} tokens, the model's {len(tokenizer)} (a resized "
                           "vocabulary: resize_vocab or new_special_tokens); vLLM generates with the model's "
                           "embeddings; merge the adapter first (llamafactory-cli export)")


def one_adapter(adapters: Any) -> str | None:
    """The single adapter of ``adapter_name_or_path`` (list or comma-separated string), None without any."""
    found = adapter_list(adapters)
    if len(found) > 1:
        raise AdapterError(f"adapter_name_or_path: {len(found)} adapters; vLLM applies one LoRA adapter per request "
                           "(LLaMA-Factory merges them all): merge the first ones into the model with llamafactory-cli "
                           "export and keep the last")
    return found[0] if found else None


def adapter_settings(model: str, adapter: str | None) -> ThinkSettings:
    """The think settings of ``model`` with ``adapter`` (the adapter's ``dyncot_think.json``, else the model's, else
    the default), or an :class:`AdapterError` naming a malformed file."""
    try:
        return resolve_think_settings(model, [adapter] if adapter else None)
    except ThinkSettingsError as e:
        raise AdapterError(str(e)) from None


# ------------------------------------------------------------------------------------------------------ the server
def lora_modules(extra: list[str]) -> list[tuple[str, str]]:
    """(name, path) of every adapter vLLM's ``--lora-modules`` names in ``extra`` (vLLM's two spellings: ``name=path``
    and the JSON object ``{"name": ..., "path": ...}``; one flag may be followed by several)."""
    values: list[str] = []
    i = 0
    while i < len(extra):
        item = extra[i]
        if item.startswith("--lora-modules="):
            values.append(item.split("=", 1)[1])
        elif item == "--lora-modules":
            while i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                i += 1
                values.append(extra[i])
        i += 1
    out = []
    for value in values:
        if not value:
            continue
        if "=" in value and "," not in value:
            name, path = value.split("=", 1)
        else:
            try:
                spec = json.loads(value)
                name, path = spec["name"], spec["path"]
            except (ValueError, KeyError, TypeError):
                raise AdapterError(f"--lora-modules {value!r}: expected name=path or a JSON object with name and "
                                   "path") from None
        out.append((str(name), str(path)))
    return out


def adapter_xargs(model_name: Any) -> dict[str, float]:
    """The ``vllm_xargs`` a chat request naming a served adapter gets by default: that adapter's threshold (from
    ``dyncot-serve``'s :data:`~dyncot_plugin.serve.fields.ADAPTERS_ENV`); {} for the base model or an unknown name."""
    thresholds = json.loads(os.environ.get(ADAPTERS_ENV) or "{}")
    if isinstance(model_name, str) and model_name in thresholds:
        return {THRESHOLD_KEY: float(thresholds[model_name])}
    return {}


__all__ = ["EMBEDDING_MODULES", "LORA_RANKS", "UNSUPPORTED", "VISION_MODULES", "Adapter", "AdapterError",
           "adapter_settings", "adapter_xargs", "check_adapter", "check_vocabulary", "lora_modules", "max_lora_rank",
           "one_adapter"]
