"""γ, the selection threshold of ``dynamic``: fixed, or steered to a target CoT share.

With ``dyncot_target_cot_ratio`` unset, γ is ``dyncot_gamma`` for the whole run (the paper's rule). With a target
share ``q``, γ is still an absolute threshold on the plain-answer loss (mean token NLL), comparable with
``dyncot_gamma`` and the paper's 0.4, but it *tracks* the loss at which a share ``q`` of the rows falls on the CoT
side: the ``q``-quantile of the current selection losses when CoT goes to losses *below* γ, the ``1 - q``-quantile
when it goes to losses *at or above* γ (``dyncot_cot_when: above``).

The tracker is a Robbins–Monro stochastic-approximation quantile estimator, fed one eligible row at a time (a row
with a usable CoT view and a finite loss, from every rank)::

    γ ← γ + (4 / window) · spread · (p − [loss < γ])          p: the quantile tracked

``spread`` is the running mean of ``|loss − γ|`` over about the last ``window`` rows, so the step is in the units of
the losses: γ moves quickly while it is far from the losses (or they fall quickly) and settles where they are dense.
Each row moves γ by a bounded amount whatever the per-step batch, so the tracker behaves the same at 1 eligible row
per optimizer step as at 128: ``window`` counts **rows**, not steps (the default 256 rows span 256 optimizer steps at
one row per step, 2 steps at 128). At the equilibrium a share ``p`` of the rows lies below γ; over any stretch of
``n`` rows the share selected differs from ``q`` by about (change of γ) / (step · n) only, so losses that fall fast
next to their spread need a smaller window. Per optimizer step, the step's rows are chosen with γ as the earlier
steps left it, *then* every eligible loss of the step is fed (rank order): a row's own loss never moves the
threshold it is judged by (at one row per step that would push every row near γ to the other side, a share bias
that grows with the step size); at 128 rows per step, γ is one step behind. The very first step selects with the
empirical quantile of its own losses, where the tracker starts (one loss: that loss); ``dyncot_gamma`` is γ only
until then (a step without eligible rows keeps the previous γ).

In a simulation of 20,000 rows from two drifting loss populations (``tests/test_target_share.py::simulate``), the
choices agree with those of the exact per-step quantile on 96–98 % of the rows of the second half, at 1, 2, 4, 8
and 128 rows per step, with the share within 0.01 of the target (``docs/benchmarks.md``).

Losses are float32 (the selection pass) and γ is float64: the tracker works on the exact float64 values of the
float32 losses and :func:`~dyncot_plugin.train.selection.choose_views` compares in float64, so the rule the tracker
assumes is the rule that selects. Every rank must use the same γ: the losses of a step are gathered from every rank
in rank order, every rank runs the same float64 arithmetic, and rank 0's state is broadcast anyway. The state
(:data:`STATE_FILE`, version :data:`STATE_VERSION`) is saved in each checkpoint so that a resumed run continues the
same γ sequence as an uninterrupted one; a state of the earlier relative-deviation rule (unversioned) is converted
(its γ kept, its spread estimated from the stored deviations), any other version refused by name.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
import torch.distributed as dist

from dyncot_plugin.config import DynCotConfigError

STATE_FILE = "dyncot_gamma_state.json"
STATE_VERSION = 2
STEP_PER_WINDOW = 4.0  # γ's step is STEP_PER_WINDOW / window of the spread per row: its memory is about `window` rows


class GammaController:
    """The γ of each optimizer step (see the module docstring).

    Args:
        gamma: ``dyncot_gamma``; with a target, the value before the first eligible loss.
        target: ``dyncot_target_cot_ratio`` (None: γ stays fixed).
        window: ``dyncot_target_window``, the tracker's horizon in rows.
        when: ``dyncot_cot_when``.
    """

    def __init__(self, gamma: float, target: float | None = None, window: int = 256, when: str = "below") -> None:
        self.gamma = float(gamma)
        self.target = target
        self.when = when
        self.window = int(window)
        self.spread = 0.0  # running mean of |loss - γ|
        self.seen = 0  # eligible rows fed so far

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    @property
    def quantile(self) -> float:
        """The quantile of the losses γ tracks: ``q`` below, ``1 - q`` above."""
        return self.target if self.when == "below" else 1.0 - self.target

    def feed(self, losses: list[float]) -> float:
        """Feed one step's eligible losses (finite, float64 values), in order; returns the γ that step selects with
        (the one before they were fed). Pure arithmetic, no communication."""
        if not losses:
            return self.gamma
        p, gain = self.quantile, STEP_PER_WINDOW / self.window
        gamma, spread, seen = self.gamma, self.spread, self.seen
        if seen == 0:  # start at the first losses' own quantile (linear interpolation, as torch.quantile)
            gamma = torch.quantile(torch.tensor(losses, dtype=torch.float64), p).item()
        selected = gamma
        for loss in losses:
            seen += 1
            spread += (abs(loss - gamma) - spread) / min(seen, self.window)
            gamma += gain * spread * (p - (1.0 if loss < gamma else 0.0))
        self.gamma, self.spread, self.seen = gamma, spread, seen
        return selected

    def update(self, losses: torch.Tensor, device: torch.device | str = "cpu") -> float:
        """Feed this step's eligible losses (this rank's; NaN entries are padding) from every rank; returns the γ
        this step selects with (``self.gamma`` is then the next step's).

        A no-op for a fixed γ. Must be called by every rank at every optimizer step (it gathers).
        """
        if not self.adaptive:
            return self.gamma
        losses = losses.detach().to(device=device, dtype=torch.float64).flatten()
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            parts = [torch.empty_like(losses) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, losses)
            losses = torch.cat(parts)
        selected = self.feed([v for v in losses.cpu().tolist() if math.isfinite(v)])
        if distributed:  # the same arithmetic ran on every rank; rank 0's state is the reference all the same
            state = torch.tensor([selected, self.gamma, self.spread, float(self.seen)], dtype=torch.float64,
                                 device=device)
            dist.broadcast(state, src=0)
            selected, self.gamma, self.spread, self.seen = (*state[:3].tolist(), int(state[3].item()))
        return selected

    # -------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "gamma": self.gamma, "spread": self.spread, "seen": self.seen,
                "target": self.target, "when": self.when, "window": self.window}

    def load_state_dict(self, state: dict[str, Any], source: str = "the γ state") -> None:
        version = state.get("version")
        if version is None and isinstance(state.get("window"), list):
            self._load_relative_state(state)
            return
        if version != STATE_VERSION:
            raise DynCotConfigError(
                f"{source}: γ state version {version!r}; this dyncot-plugin reads version {STATE_VERSION} (and converts "
                f"the unversioned state of earlier versions). Delete the file to restart the target-share tracker "
                "from the next step's losses."
            )
        self.gamma, self.spread, self.seen = float(state["gamma"]), float(state["spread"]), int(state["seen"])

    def _load_relative_state(self, state: dict[str, Any]) -> None:
        """The unversioned state of the relative-deviation rule: its γ (an absolute value, the last step's) is kept;
        the spread is estimated as the mean |deviation − quantile| of its window of deviations from step means."""
        self.gamma = float(state["gamma"])
        deviations = [float(v) for v in state["window"] if math.isfinite(float(v))]
        if deviations:
            center = torch.quantile(torch.tensor(deviations, dtype=torch.float64), self.quantile).item()
            self.spread = math.fsum(abs(v - center) for v in deviations) / len(deviations)
        self.seen = len(deviations)

    def save(self, folder: str) -> None:
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(self.state_dict(), f)

    def load(self, folder: str) -> bool:
        """Restore the state saved in checkpoint ``folder``; False when it has none."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            return False
        with open(path, encoding="utf-8") as f:
            self.load_state_dict(json.load(f), source=path)
        return True


__all__ = ["STATE_FILE", "STATE_VERSION", "STEP_PER_WINDOW", "GammaController"]
