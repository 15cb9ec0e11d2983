"""``training_cot_ratio.png``: the share of samples trained on CoT per logging step and, for ``dynamic``, the γ each
step selected with (right axis), drawn from ``trainer_state.json`` next to LLaMA-Factory's ``training_loss.png``."""

from __future__ import annotations

import json
import os


def plot_cot_ratio(output_dir: str) -> str | None:
    """Write ``<output_dir>/training_cot_ratio.png``; returns its path (None when the run logged no cot_ratio)."""
    with open(os.path.join(output_dir, "trainer_state.json"), encoding="utf-8") as f:
        history = json.load(f)["log_history"]
    rows = [e for e in history if "cot_ratio" in e]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([e["step"] for e in rows], [e["cot_ratio"] for e in rows], color="#1f77b4", label="cot_ratio")
    ax.set_xlabel("step")
    ax.set_ylabel("share of samples trained on CoT")
    ax.set_ylim(-0.02, 1.02)
    handles = ax.get_lines()
    gammas = [e for e in rows if "gamma" in e]
    if gammas:
        right = ax.twinx()
        right.plot([e["step"] for e in gammas], [e["gamma"] for e in gammas], color="#d62728", label="gamma")
        right.set_ylabel("gamma (plain-answer NLL threshold)")
        handles = handles + right.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], loc="best")
    ax.set_title(f"training cot_ratio of {output_dir}")
    fig.tight_layout()
    path = os.path.join(output_dir, "training_cot_ratio.png")
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    print("Figure saved at:", path)
    return path


__all__ = ["plot_cot_ratio"]
