"""Where transformers 4.57.x and 5.x differ, decided in one place by what the installed library or model accepts.

The plugin supports the two ends of the range it declares (``constraints-low.txt``: transformers 4.57, and
``constraints.txt``: 5.5). Every difference the code meets is one function here, and each function asks the
installed library or the loaded model what it accepts (a parameter in a signature), never a version number, so a
patch release that backports or drops a feature is handled by what it actually does:

============================  ================================================  =====================================
feature                       5.x                                               4.57
============================  ================================================  =====================================
logits at answer positions    ``forward(logits_to_keep=positions)`` on every    Qwen2-VL's ``forward`` has no
(selection pass)              family                                            ``logits_to_keep``: full-length logits
                                                                                (:func:`logits_to_keep_kwargs`)
position inputs of            Qwen-VL ``generate`` computes M-RoPE positions    ``generate`` rejects it ("model_kwargs
``generate``                  from ``mm_token_type_ids``                        are not used"); positions come from
                                                                                ``cache_position`` + ``rope_deltas``
                                                                                (:func:`generate_accepts`)
tokenizer from a trained BPE  ``Qwen2Tokenizer(vocab=, merges=)``               ``Qwen2TokenizerFast(tokenizer_object=)``
                                                                                (:func:`bpe_tokenizer`)
added special tokens          ``extra_special_tokens``,                         ``additional_special_tokens``,
                              ``replace_extra_special_tokens=``                 ``replace_additional_special_tokens=``
                                                                                (:func:`add_special_tokens`)
processor tokens on the       kept in the special-tokens map                    saved and reloaded only through the
tokenizer (``image_token``)                                                     ``extra_special_tokens`` dict
                                                                                (:func:`set_model_specific_tokens`)
RoPE settings of a config     ``rope_parameters={rope_type, rope_theta, ...}``  ``rope_theta=`` + ``rope_scaling=``
                                                                                (:func:`rope_kwargs`)
checkpoint keys of a legacy-  renamed by ``conversion_mapping``'s rules         renamed by the class's
named model (full-FT resume)                                                    ``_checkpoint_conversion_mapping``
                                                                                (:func:`checkpoint_key_renaming`)
============================  ================================================  =====================================

Import-light: transformers is imported inside the functions that need it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

__all__ = [
    "add_special_tokens",
    "bpe_tokenizer",
    "checkpoint_key_renaming",
    "forward_accepts",
    "generate_accepts",
    "logits_to_keep_kwargs",
    "rope_kwargs",
    "set_model_specific_tokens",
    "unwrap_model",
]


def unwrap_model(model: Any) -> Any:
    """The transformers model under DeepSpeed/DDP engines (``.module``) and PEFT wrappers (``get_base_model``)."""
    while hasattr(model, "module") and not hasattr(model, "generate"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


@lru_cache(maxsize=None)
def _named_parameters(function: Any) -> frozenset[str]:
    """Parameters a callable takes by name (``**kwargs`` does not count: what it swallows it may ignore)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def forward_accepts(model: Any, name: str) -> bool:
    """Whether the (unwrapped) model's ``forward`` takes ``name`` as a named parameter."""
    return name in _named_parameters(type(unwrap_model(model)).forward)


def generate_accepts(model: Any, name: str) -> bool:
    """Whether ``model.generate`` accepts the model kwarg ``name``: transformers' own rule
    (``GenerationMixin._validate_model_kwargs``): a named parameter of ``prepare_inputs_for_generation``, or of
    ``forward`` when the former takes ``**kwargs``."""
    cls = type(unwrap_model(model))
    prepare = getattr(cls, "prepare_inputs_for_generation", None)
    if prepare is not None and name in _named_parameters(prepare):
        return True
    return name in _named_parameters(cls.forward)


def logits_to_keep_kwargs(model: Any, positions: Any) -> dict[str, Any]:
    """``{"logits_to_keep": positions}`` where the model computes logits only there, else ``{}`` (the model then
    returns logits at every position; :func:`~dyncot_plugin.train.selection.answer_nll` takes either)."""
    return {"logits_to_keep": positions} if forward_accepts(model, "logits_to_keep") else {}


def bpe_tokenizer(backend: Any, vocab: dict[str, int], merges: list[tuple[str, str]], **kwargs: Any) -> Any:
    """A transformers ``Qwen2Tokenizer`` for a byte-level BPE trained with ``tokenizers`` (``backend``, whose model
    holds ``vocab`` and ``merges``).

    5.x: ``Qwen2Tokenizer`` is the tokenizers-backed class and builds Qwen2's pipeline from ``vocab`` / ``merges``.
    4.57: ``Qwen2Tokenizer`` is the Python tokenizer and needs vocab and merges *files*; the tokenizers-backed class
    is ``Qwen2TokenizerFast``, which wraps ``backend`` itself (same vocabulary, pre-tokenizer and decoder).
    """
    from transformers import Qwen2Tokenizer

    if "vocab" in _named_parameters(Qwen2Tokenizer.__init__):
        return Qwen2Tokenizer(vocab=vocab, merges=merges, **kwargs)
    from transformers import Qwen2TokenizerFast

    return Qwen2TokenizerFast(tokenizer_object=backend, **kwargs)


def add_special_tokens(tokenizer: Any, tokens: list[Any]) -> int:
    """Add ``tokens`` (``AddedToken``s) as special tokens beside those the tokenizer already lists, without
    replacing the list (5.x names it ``extra_special_tokens``, 4.57 ``additional_special_tokens``)."""
    if "replace_extra_special_tokens" in _named_parameters(type(tokenizer).add_special_tokens):
        return tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    return tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_additional_special_tokens=False)


def set_model_specific_tokens(tokenizer: Any, tokens: dict[str, str]) -> None:
    """Set the named tokens a multimodal processor reads from its tokenizer (``image_token``, ``boi_token``,
    ``context_image_token``, ...) as ``from_pretrained`` sets them from ``tokenizer_config.json``, so that they are
    saved and loaded back.

    5.x keeps them in the special-tokens map (its ``extra_special_tokens`` is the list of added special tokens);
    4.57 saves and reloads them only through its ``extra_special_tokens`` *dict*, which ``from_pretrained`` hands
    back to ``_set_model_specific_special_tokens``. Decided by the type the tokenizer gives that attribute.
    """
    tokenizer._set_model_specific_special_tokens(dict(tokens))
    if isinstance(getattr(tokenizer, "extra_special_tokens", None), dict):
        tokenizer.extra_special_tokens = {**tokenizer.extra_special_tokens, **tokens}


def checkpoint_key_renaming(model: Any) -> Callable[[str], str] | None:
    """How a key of a checkpoint ``save_pretrained`` wrote maps to the module's own key, for models saved under
    legacy names (Qwen2-VL: ``model.layers.*`` for the module's ``model.language_model.layers.*``); None where
    nothing is renamed. ``Trainer._load_from_checkpoint`` renames nothing, on either series.

    5.x: transformers' conversion mapping (``WeightRenaming`` rules of ``transformers.conversion_mapping``); 4.57:
    the class's ``_checkpoint_conversion_mapping`` (regex -> replacement, the first that matches, as its
    ``from_pretrained`` applies it). Decided by which of the two the installed library has.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:
        mapping = dict(getattr(model, "_checkpoint_conversion_mapping", None) or {})
        if not mapping:
            return None

        def rename(key: str) -> str:
            for pattern, replacement in mapping.items():
                new_key, count = re.subn(pattern, replacement, key)
                if count:
                    return new_key
            return key

        return rename
    try:
        renamings = [t for t in get_model_conversion_mapping(model, add_legacy=False) if isinstance(t, WeightRenaming)]
    except Exception:  # noqa: BLE001 - a model transformers does not know: nothing to rename
        return None
    if not renamings:
        return None
    return lambda key: rename_source_key(key, renamings, [])[0]


def rope_kwargs(config_class: Any, rope_theta: float, **extra: Any) -> dict[str, Any]:
    """The RoPE settings for ``config_class(**...)``: default RoPE of base ``rope_theta`` plus ``extra`` (M-RoPE's
    ``mrope_section``, ``mrope_interleaved``).

    5.x configs take one ``rope_parameters`` dict; 4.57 configs take ``rope_theta`` and put everything else in
    ``rope_scaling`` (the layout of the 4.x checkpoints on the Hub). Decided by the config class's ``__init__``.
    """
    if "rope_parameters" in _named_parameters(config_class.__init__):
        return {"rope_parameters": {"rope_type": "default", "rope_theta": rope_theta, **extra}}
    settings: dict[str, Any] = {"rope_theta": rope_theta}
    if extra:
        settings["rope_scaling"] = {"rope_type": "default", **extra}
    return settings
