"""γ, the selection threshold of ``dynamic``: fixed, or steered to a target CoT share.

With ``dyncot_target_cot_ratio`` unset, γ is ``dyncot_gamma`` for the whole run (the paper's rule). With a target
share ``q``, γ is re-estimated at every optimizer step, after that step's selection passes and before any of its
rows is chosen, from the selection losses (the plain-answer NLLs of the rows that have a usable CoT view, over all
ranks): γ = this step's mean loss + the quantile of the recent losses *relative to their own step's mean* at which a
share ``q`` is selected (the ``q``-quantile when CoT goes to losses *below* γ, the ``1 - q``-quantile when it goes
to those *at or above* γ, ``dyncot_cot_when: above``). Taking each loss relative to its step's mean removes the
drift of falling losses from the window, so a long window (``dyncot_target_window`` losses) steadies the estimate
of the spread without lagging behind the losses; a window of one step's rows makes every step's share exact.
``dyncot_gamma`` stands until the first losses are seen.

Every rank must use the same γ: the losses of a step are gathered from every rank in rank order, and the value
rank 0 computes is broadcast. The state (γ and the window) is saved in each checkpoint
(:data:`STATE_FILE`), so that a resumed run continues the same γ sequence as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from typing import Any

import torch
import torch.distributed as dist

STATE_FILE = "dyncot_gamma_state.json"


class GammaController:
    """The γ of each optimizer step (see the module docstring)."""

    def __init__(self, gamma: float, target: float | None = None, window: int = 256, when: str = "below") -> None:
        self.gamma = float(gamma)
        self.target = target
        self.when = when
        self.window: deque[float] = deque(maxlen=window)

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    def update(self, losses: torch.Tensor, device: torch.device | str = "cpu") -> float:
        """Add this step's eligible losses (this rank's; NaN entries are padding) and re-estimate γ; returns it.

        A no-op for a fixed γ. Must be called by every rank at every optimizer step (it gathers).
        """
        if not self.adaptive:
            return self.gamma
        losses = losses.detach().to(device=device, dtype=torch.float64).flatten()
        if dist.is_available() and dist.is_initialized():
            parts = [torch.empty_like(losses) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, losses)
            losses = torch.cat(parts)
        step = [v for v in losses.cpu().tolist() if math.isfinite(v)]
        if step:
            mean = math.fsum(step) / len(step)
            self.window.extend(v - mean for v in step)
            q = self.target if self.when == "below" else 1.0 - self.target
            gamma = mean + torch.quantile(torch.tensor(list(self.window), dtype=torch.float64), q).item()
            if self.when == "below":  # the rule is strict (loss < γ): nudge γ just above a loss at the quantile
                gamma = math.nextafter(gamma, math.inf)
            self.gamma = gamma
        if dist.is_available() and dist.is_initialized():
            value = torch.tensor([self.gamma], dtype=torch.float64, device=device)
            dist.broadcast(value, src=0)
            self.gamma = value.item()
        return self.gamma

    # -------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "target": self.target, "when": self.when, "window": list(self.window),
                "window_size": self.window.maxlen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gamma = float(state["gamma"])
        self.window = deque(state.get("window", []), maxlen=self.window.maxlen)

    def save(self, folder: str) -> None:
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(self.state_dict(), f)

    def load(self, folder: str) -> bool:
        """Restore the state saved in checkpoint ``folder``; False when it has none."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            return False
        with open(path, encoding="utf-8") as f:
            self.load_state_dict(json.load(f))
        return True


__all__ = ["STATE_FILE", "GammaController"]
