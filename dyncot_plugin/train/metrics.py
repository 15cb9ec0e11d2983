"""The names of every metric the plugin logs, declared once: the trainer writes them, the ``LogCallback`` patch
copies them into ``trainer_log.jsonl``, the plot and the report read them.

Training logs (every ``logging_steps``, over ranks and accumulation steps):

* ``cot_ratio``: share of the rows trained on their CoT target;
* ``cot_share``: the same share among the rows that have a usable CoT view (``dynamic``), what
  ``dyncot_target_cot_ratio`` steers (equal to ``cot_ratio`` when every row has CoT text);
* ``selection_loss``: mean plain-answer loss of the selection pass (``dynamic``);
* ``gamma``: the γ the latest step selected with (``dynamic``; moves with ``dyncot_target_cot_ratio``).

Evaluation logs (``eval_<name>``): the names of the task scorers in :mod:`dyncot_plugin.tasks`, plus ``cot_rate``,
``think_prob`` (the mean probability of opening the reply with ``<think>``) and ``gen_len``.

Import-light: no torch.
"""

from __future__ import annotations

from dyncot_plugin.tasks import EVAL_METRIC_NAMES

# Running sums the trainer keeps between two training logs (all-reduced over ranks in this order).
SUM_KEYS = ("cot_rows", "rows", "selection_loss_sum", "scored", "eligible")
TRAIN_LOG_KEYS = ("cot_ratio", "cot_share", "selection_loss", "gamma")
EVAL_LOG_KEYS = tuple(f"eval_{name}" for name in EVAL_METRIC_NAMES)
LOGGED_KEYS = TRAIN_LOG_KEYS + EVAL_LOG_KEYS


def train_log_metrics(sums: dict[str, float]) -> dict[str, float]:
    """The training log entries from the sums of :data:`SUM_KEYS` (a metric without data is left out)."""
    out: dict[str, float] = {}
    if sums["rows"] > 0:
        out["cot_ratio"] = round(sums["cot_rows"] / sums["rows"], 4)
    if sums["eligible"] > 0:
        out["cot_share"] = round(sums["cot_rows"] / sums["eligible"], 4)
    if sums["scored"] > 0:
        out["selection_loss"] = round(sums["selection_loss_sum"] / sums["scored"], 4)
    return out


__all__ = ["EVAL_LOG_KEYS", "LOGGED_KEYS", "SUM_KEYS", "TRAIN_LOG_KEYS", "train_log_metrics"]
