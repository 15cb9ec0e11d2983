"""The training strategies, as one table that the config, the collator and the trainer all read.

A strategy says two things:

* ``views``: what the collator builds for each batch: ``plain`` (only the plain answer: LLaMA-Factory's own batch),
  ``cot`` (the CoT target where a sample has a usable one, else the plain one; still one LLaMA-Factory batch), or
  ``both`` (the plain batch plus the CoT view under ``cot_*`` keys);
* ``batch``: how the trainer turns that into the batch it trains: ``as_collated``, ``select`` (a no-grad selection
  pass chooses a view per row, :func:`dyncot_plugin.train.selection.merge_views`) or ``stack`` (both views in one
  batch of 2B rows, :func:`dyncot_plugin.train.selection.stack_views`, loss = mean of the two token-mean losses).

Adding a strategy: add a row here, and, for a new ``batch`` kind, a ``DynCotTrainer._batch_<kind>`` method.
Import-light (no torch): :mod:`dyncot_plugin.config` validates ``dyncot_strategy`` against it before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    """One row of :data:`STRATEGIES`."""

    name: str
    views: str  # "plain" | "cot" | "both"
    batch: str  # "as_collated" | "select" | "stack"
    paper_name: str

    @property
    def needs_cot(self) -> bool:
        """Whether the strategy reads the CoT column at all."""
        return self.views != "plain"


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("sft", views="plain", batch="as_collated", paper_name="SFT"),
        Strategy("cot", views="cot", batch="as_collated", paper_name="Fine-tune-CoT"),
        Strategy("multitask", views="both", batch="stack", paper_name="multi-task"),
        Strategy("dynamic", views="both", batch="select", paper_name="Dynamic CoT"),
    )
}


def get_strategy(name: str) -> Strategy:
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
