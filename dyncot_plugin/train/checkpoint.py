"""Resuming full fine-tuning of models whose checkpoints are saved under legacy key names (Qwen2-VL).

transformers saves Qwen2-VL as ``model.layers.*`` (the Hub layout) but the module is
``model.language_model.layers.*``; ``Trainer._load_from_checkpoint`` loads the file with ``strict=False`` and no
renaming, so on resume every language-model weight is silently left at its *initial* value (vanilla LLaMA-Factory
0.9.5 shows this with transformers 5.5.4 and with 4.57.6). Here the file is renamed with transformers' own rules
first (:func:`dyncot_plugin.compat.checkpoint_key_renaming`: they differ between the two series).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch

from dyncot_plugin.compat import checkpoint_key_renaming


def weight_renamings(model: torch.nn.Module) -> Callable[[str], str] | None:
    """The checkpoint-key -> module-key renaming of ``model``, or None where its checkpoints need none."""
    return checkpoint_key_renaming(model)


def to_model_keys(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys to the module's names; keys already in the module's layout stay as they are."""
    rename = weight_renamings(model)
    if rename is None:
        return state_dict
    own = set(model.state_dict().keys())
    return {key if key in own else rename(key): tensor for key, tensor in state_dict.items()}


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
