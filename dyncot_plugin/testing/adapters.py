"""Real PEFT LoRA adapters of the tiny models, written by PEFT's own ``save_pretrained`` (the files LLaMA-Factory's
LoRA runs write), for tests of what vLLM serves and refuses without a training run.

``init_lora_weights=False`` makes PEFT draw both LoRA matrices at random (its default leaves B at zero, an adapter
that changes nothing), so an adapter written here changes the model's outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_lora_adapter"]


def write_lora_adapter(model_dir: str | Path, out_dir: str | Path, *, target_modules: Any = ("q_proj", "v_proj"),
                       r: int = 8, lora_alpha: int = 16, seed: int = 0, scale: float = 1.0,
                       think_threshold: float | None = None, **config: Any) -> Path:
    """Write a LoRA adapter of ``model_dir`` to ``out_dir`` and return its path. ``config`` goes to PEFT's
    ``LoraConfig`` (``modules_to_save``, ``use_dora``, ...). ``scale`` multiplies the random B matrices (how far the
    adapter moves the model). ``think_threshold`` writes ``dyncot_think.json`` beside it, as a Dynamic-CoT training
    run does (with the model's tag ids)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from dyncot_plugin.cot_format import THINK_OPEN
    from dyncot_plugin.think import think_tag_ids

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules),
                                            init_lora_weights=False, **config))
    if scale != 1.0:
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_B" in name:
                    param.mul_(scale)
    out = Path(out_dir)
    peft.save_pretrained(str(out))
    if think_threshold is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        settings = {"think": "auto", "threshold": think_threshold, "tag": THINK_OPEN,
                    "tag_ids": think_tag_ids(tokenizer)}
        (out / "dyncot_think.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return out
