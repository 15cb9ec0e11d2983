"""Resuming full fine-tuning of models whose checkpoints are saved under legacy key names (Qwen2-VL).

transformers 5.x saves Qwen2-VL as ``model.layers.*`` (the Hub layout) but the module is
``model.language_model.layers.*``; ``Trainer._load_from_checkpoint`` loads the file with ``strict=False`` and no
renaming, so on resume every language-model weight is silently left at its *initial* value (vanilla LLaMA-Factory
0.9.5 + transformers 5.5.4 show this too). Here the file is renamed with transformers' own conversion rules first.
"""

from __future__ import annotations

import json
import os

import torch


def weight_renamings(model: torch.nn.Module) -> list:
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # transformers 4.x: loading handles the mapping itself
        return []
    try:
        return [t for t in get_model_conversion_mapping(model, add_legacy=False) if isinstance(t, WeightRenaming)]
    except Exception:  # noqa: BLE001 - a model transformers does not know: nothing to rename
        return []


def to_model_keys(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys to the module's names; keys already in the module's layout stay as they are."""
    from transformers.core_model_loading import rename_source_key

    renamings = weight_renamings(model)
    if not renamings:
        return state_dict
    own = set(model.state_dict().keys())
    renamed = {}
    for key, tensor in state_dict.items():
        new_key = key if key in own else rename_source_key(key, renamings, [])[0]
        renamed[new_key] = tensor
    return renamed


def read_full_checkpoint(folder: str) -> dict[str, torch.Tensor] | None:
    """The safetensors weights of a full-model checkpoint (single file or sharded), or None."""
    import safetensors.torch

    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return safetensors.torch.load_file(single, device="cpu")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        state_dict = {}
        for name in files:
            state_dict.update(safetensors.torch.load_file(os.path.join(folder, name), device="cpu"))
        return state_dict
    return None
