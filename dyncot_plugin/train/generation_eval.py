"""Task metrics during training: generate on a capped eval subset at every evaluation and score it with the task's
scorer (:data:`dyncot_plugin.tasks.TASKS`: keyphrase F1 for MMKP, accuracy for ScienceQA), plus the CoT rate and
the generated length.

Enabled by ``dyncot_eval_samples: N`` (with LLaMA-Factory's ``eval_strategy: steps`` / ``eval_steps`` and an
eval set); with the default ``0`` nothing here runs. ``dyncot_eval_task`` names the task (``auto``: read from the
gold labels, :func:`dyncot_plugin.tasks.detect_task`). Each rank generates for its own slice of the first N eval
samples, the same number of ``generate`` calls on every rank (``synced_gpus`` under ZeRO-3, where every forward
gathers parameters from all ranks), and the texts are gathered before scoring with the CMKP protocol. Rank 0 also saves the generations to
``<output_dir>/dyncot_eval/step<N>.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
import torch.distributed as dist

from dyncot_plugin.cot_format import summarize_outputs
from dyncot_plugin.tasks import TASKS, Task, detect_task
from dyncot_plugin.think import prob_for_file
from dyncot_plugin.train.families import IGNORE_INDEX
from dyncot_plugin.train.generation import generate_with_think, generation_inputs


def _prompt_feature(row: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """The prompt of a tokenised training row (everything before its first target token) and its target ids."""
    labels = row["labels"]
    start = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
    prompt = list(row["input_ids"][:start])
    feature = {"input_ids": prompt, "attention_mask": [1] * len(prompt), "labels": [IGNORE_INDEX] * len(prompt)}
    for key in ("images", "videos", "audios"):
        if key in row:
            feature[key] = row[key]
    return feature, [t for t in labels[start:] if t != IGNORE_INDEX]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save_generations(trainer: Any, rows: list[tuple[int, str, int, str, float]]) -> None:
    """``<output_dir>/dyncot_eval/step<N>.jsonl``: what the model generated at this evaluation, for inspection."""
    folder = os.path.join(trainer.args.output_dir, "dyncot_eval")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"step{trainer.state.global_step}.jsonl"), "w", encoding="utf-8") as f:
        for index, text, length, gold, prob in rows:
            f.write(json.dumps({"index": index, "predict": text, "label": gold, "gen_tokens": length,
                                "think_prob": prob_for_file(prob)}) + "\n")


@torch.no_grad()
def generate_and_score(
    trainer: Any, eval_dataset: Any, max_samples: int, max_new_tokens: int, task: str = "auto"
) -> dict[str, float]:
    """Generate for the first ``max_samples`` eval rows with the run's ``dyncot_think`` decision (the trainer's
    :meth:`~dyncot_plugin.train.trainer.DynCotTrainer.think_control`, the same rule as prediction runs) and return
    the task's metrics plus ``cot_rate`` (percent), ``think_prob`` (mean) and ``gen_len`` (mean generated tokens),
    identical on every rank."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    tokenizer = trainer.processing_class
    n = min(max_samples, len(eval_dataset))
    rank, world = _world()
    batch_size = trainer.args.per_device_eval_batch_size
    mine = list(range(rank, n, world))
    rounds = math.ceil(math.ceil(n / world) / batch_size)  # same number of generate calls on every rank
    model = trainer.model
    was_training = model.training
    model.eval()
    control = trainer.think_control()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues every row from its last prompt token
    results: list[tuple[int, str, int, float]] = []
    try:
        for r in range(rounds):
            indices = mine[r * batch_size : (r + 1) * batch_size]
            real = len(indices)
            indices = indices or [0]  # a rank with nothing left still joins the synced generate call
            features, targets = zip(*(_prompt_feature(eval_dataset[i]) for i in indices))
            # generate computes the model's own positions from the family's inputs (``generation.py``)
            batch = generation_inputs(model, trainer.data_collator(list(features)), trainer.family)
            batch = trainer._prepare_inputs(batch)
            output = generate_with_think(
                model,
                batch,
                control,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                synced_gpus=is_deepspeed_zero3_enabled(),
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=trainer._gen_kwargs.get("eos_token_id") if hasattr(trainer, "_gen_kwargs") else None,
            )
            new_tokens = output[:, batch["input_ids"].size(1) :]  # the forced tag is generated, so it is output
            for i, row_tokens, prob in zip(indices[:real], new_tokens[:real], control.think_prob[:real].tolist()):
                ids = [t for t in row_tokens.tolist() if t != tokenizer.pad_token_id]
                results.append((i, tokenizer.decode(ids, skip_special_tokens=True), len(ids), prob))
        gold = {i: tokenizer.decode(_prompt_feature(eval_dataset[i])[1], skip_special_tokens=True) for i in mine}
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)

    local = [(i, text, length, gold[i], prob) for i, text, length, prob in results]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, local)
        local = [item for part in gathered for item in part]
    local.sort()
    if trainer.is_world_process_zero():
        _save_generations(trainer, local)
    texts = [text for _, text, _, _, _ in local]
    golds = [g for _, _, _, g, _ in local]
    chosen: Task = detect_task(golds) if task == "auto" else TASKS[task]
    summary = summarize_outputs(texts)
    lengths = [length for _, _, length, _, _ in local]
    probs = [prob for *_, prob in local]
    return {
        **chosen.load_scorer().score(texts, golds),
        "cot_rate": round(100 * summary["cot_rate"], 4),
        "think_prob": round(sum(probs) / max(len(probs), 1), 6),
        "gen_len": round(sum(lengths) / max(len(lengths), 1), 4),
    }
