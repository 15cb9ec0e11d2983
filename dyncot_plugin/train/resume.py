"""Resuming a plugin run keeps its logs whole: every step in ``trainer_log.jsonl`` and in the selection records
exactly once, wherever the previous run was stopped.

Two things go wrong without this. LLaMA-Factory's ``LogCallback`` deletes ``trainer_log.jsonl`` while the Trainer
is built when ``overwrite_output_dir`` is set, resume or not (earlier steps lost); and without it, the steps logged
after the last checkpoint and before the stop are appended a second time by the resumed run (steps repeated). So
the trainer reads the log before it is built (:func:`read_log_lines`) and, when training resumes from checkpoint
step N, rewrites it with the entries of steps <= N (:func:`keep_logs_until`); each rank's selection record drops the
records of the steps after N. The ``cot_ratio`` plot is drawn from ``trainer_state.json``, whose history the
Trainer restores from the checkpoint.
"""

from __future__ import annotations

import json
import os
from typing import Any

from dyncot_plugin.io.files import atomic_write_text

TRAINER_LOG = "trainer_log.jsonl"  # LLaMA-Factory's
SELECTION_DIR = "dyncot_selection"


def resuming(training_args: Any) -> bool:
    return bool(getattr(training_args, "resume_from_checkpoint", None))


def read_log_lines(training_args: Any) -> list[str] | None:
    path = os.path.join(training_args.output_dir, TRAINER_LOG)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def is_complete(folder: str) -> bool:
    """The Trainer writes ``trainer_state.json`` last: a checkpoint without it was cut off while being saved."""
    return os.path.isfile(os.path.join(folder, "trainer_state.json"))


def checkpoint_folder(training_args: Any, resume_from_checkpoint: Any) -> str | None:
    """The checkpoint a ``train(resume_from_checkpoint=...)`` call resumes from (``True``: the last one); when that
    one was cut off mid-save (a kill during ``save_steps``), the latest complete checkpoint before it."""
    if isinstance(resume_from_checkpoint, bool):
        if not resume_from_checkpoint:
            return None
        from transformers.trainer_utils import get_last_checkpoint

        folder = get_last_checkpoint(training_args.output_dir)
    else:
        folder = str(resume_from_checkpoint) if resume_from_checkpoint else None
    if folder is None or is_complete(folder) or not os.path.isdir(folder):
        return folder
    parent, name = os.path.split(os.path.normpath(folder))
    prefix, _, step = name.rpartition("-")
    earlier = [
        (int(s), os.path.join(parent, n))
        for n in os.listdir(parent)
        if (s := n.rpartition("-")[2]).isdigit() and n.rpartition("-")[0] == prefix and int(s) < int(step or 0)
        and is_complete(os.path.join(parent, n))
    ]
    if not earlier:
        raise FileNotFoundError(f"{folder} was cut off while being saved (no trainer_state.json) and no earlier "
                                f"checkpoint is complete; remove it to start over.")
    chosen = max(earlier)[1]
    from llamafactory.extras import logging

    logging.get_logger(f"llamafactory.{__name__}").warning_rank0(
        f"[dyncot] {folder} was cut off while being saved; resuming from {chosen}."
    )
    return chosen


def checkpoint_step(folder: str) -> int:
    with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
        return int(json.load(f)["global_step"])


def _kept(lines: list[str], keep) -> str:
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line torn by the stop
        if keep(entry):
            out.append(line)
    return "".join(line + "\n" for line in out)


def keep_logs_until(training_args: Any, step: int, saved_lines: list[str] | None) -> None:
    """Rewrite the logs of ``output_dir`` to hold the steps up to checkpoint ``step`` only (see the module
    docstring). ``saved_lines``: ``trainer_log.jsonl`` as it was before the Trainer was built."""
    if training_args.should_save:
        lines = saved_lines if saved_lines is not None else read_log_lines(training_args)
        if lines is not None:
            text = _kept(lines, lambda e: int(e.get("current_steps", 0)) <= step)
            atomic_write_text(os.path.join(training_args.output_dir, TRAINER_LOG), text)
    # a selection record's "step" is the global step before the optimizer step it selected for
    path = os.path.join(training_args.output_dir, SELECTION_DIR, f"rank{training_args.process_index}.jsonl")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        atomic_write_text(path, _kept(lines, lambda r: int(r.get("step", 0)) < step))


__all__ = [
    "SELECTION_DIR",
    "TRAINER_LOG",
    "checkpoint_folder",
    "checkpoint_step",
    "is_complete",
    "keep_logs_until",
    "read_log_lines",
    "resuming",
]
