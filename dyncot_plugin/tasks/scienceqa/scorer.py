"""ScienceQA's scorer for the training-time evaluation: answer accuracy (in percent) by the letter of
``The answer is (X)``, read as ``dyncot-eval scienceqa`` reads it (an unparseable output counts wrong)."""

from __future__ import annotations

from typing import Sequence

from dyncot_plugin.tasks.scienceqa.evaluate import extract_answer


def recognises(label: str) -> bool:
    """A ScienceQA gold label (plain ``The answer is (A).`` or a CoT whose answer says so)."""
    return extract_answer(label)[1] == "ok"


def score(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    gold = [extract_answer(label)[0] for label in labels]
    correct = sum(1 for p, g in zip(predictions, gold) if g is not None and extract_answer(p)[0] == g)
    return {"accuracy": round(100 * correct / len(labels), 4) if labels else 0.0}


def answers_agree(answer: str, other: str) -> bool:
    """Whether two answers name the same option letter."""
    return extract_answer(answer)[0] == extract_answer(other)[0]
