"""The tasks the plugin trains and scores, one package each, around the shared core (:mod:`dyncot_plugin.io`,
:mod:`dyncot_plugin.cot_format`):

* :mod:`dyncot_plugin.tasks.mmkp`: multi-modal keyphrase prediction (CMKP conversion, re-split, statistics, demo
  data, CMKP-exact evaluation);
* :mod:`dyncot_plugin.tasks.scienceqa`: ScienceQA with MM-CoT's two stages (conversion, stage 2, evaluation).

:data:`TASKS` is what the training run needs of a task: the module of its scorer (``score``: predictions and gold
labels -> named metrics, ``answers_agree``: do two answers say the same) and the metric names it logs. The
training-time evaluation picks the task by ``dyncot_eval_task`` (``auto``: :func:`detect_task` on the gold
labels). Adding a task: a package with its tools and a ``scorer`` module, and a row here.

Import-light: no torch, nothing of a task is imported until it is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Sequence

# Thinking statistics every task's training-time evaluation reports next to its own metrics.
THINKING_METRICS = ("cot_rate", "think_prob", "gen_len")


@dataclass(frozen=True)
class Task:
    name: str
    scorer: str  # module with ``score(predictions, labels) -> {metric: value}`` and ``answers_agree(a, b)``
    metrics: tuple[str, ...]  # what ``score`` returns, in log order

    def load_scorer(self) -> ModuleType:
        return importlib.import_module(self.scorer)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("mmkp", "dyncot_plugin.tasks.mmkp.scorer", metrics=("f1@1", "f1@M")),
        Task("scienceqa", "dyncot_plugin.tasks.scienceqa.scorer", metrics=("accuracy",)),
    )
}
EVAL_METRIC_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(m for t in TASKS.values() for m in t.metrics + THINKING_METRICS)
)


def detect_task(labels: Sequence[str]) -> Task:
    """The task whose scorer recognises every gold label (``scienceqa``: ``The answer is (X).``), else ``mmkp``."""
    for task in TASKS.values():
        scorer = task.load_scorer()
        if hasattr(scorer, "recognises") and labels and all(scorer.recognises(label) for label in labels):
            return task
    return TASKS["mmkp"]


__all__ = ["EVAL_METRIC_NAMES", "TASKS", "THINKING_METRICS", "Task", "detect_task"]
