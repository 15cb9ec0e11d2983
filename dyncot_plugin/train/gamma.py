"""γ, the selection threshold of ``dynamic``: fixed, or steered to a target CoT share.

With ``dyncot_target_cot_ratio`` unset, γ is ``dyncot_gamma`` for the whole run (the paper's rule). With a target
share ``q``, γ is still an absolute threshold on the plain-answer loss (mean token NLL), comparable with
``dyncot_gamma`` and the paper's 0.4, chosen at every optimizer step so that a share ``q`` of the rows falls on the
CoT side: the ``q``-quantile of the losses when CoT goes to losses *below* γ, the ``1 - q``-quantile when it goes to
losses *at or above* γ (``dyncot_cot_when: above``). Call ``p`` the quantile tracked (``q`` or ``1 - q``).

Why not a quantile tracker with a fixed horizon: a step's rows are judged by a γ computed from *earlier* steps'
losses (a row's own loss never moves the threshold it is judged by), and fine-tuning losses fall fastest exactly
when a run starts, often by more per step than their spread. Any fixed horizon is then either too long (γ lags
behind falling losses: ``below`` trains far more than ``q`` on CoT, ``above`` far less) or too short (noisy) for
some run, and the earlier tracker needed a hand-set window. This controller has three parts:

1. **A bank of candidate estimates, each a quantile of a buffer of recent losses.** The buffer holds the eligible
   losses (a usable CoT view and a finite loss, all ranks) of the latest optimizer steps, at most
   ``dyncot_target_window`` rows (default 4,096) and 512 steps. Candidates look back over the last
   k = 1, 2, 4, … steps; each comes *raw* (the losses as measured) and, for k ≥ 2, *drift-compensated*: the
   losses shifted by the least-squares slope of loss against step over the same k steps times their age, i.e. the
   losses the same rows would likely have now. Losses measured a few steps ago with weights that have barely
   moved since then are what the current weights would give; the slope corrects the rest.
2. **The candidate is chosen by its out-of-sample score.** Every candidate's ``p``-quantile predicted for a step is
   scored, once that step's losses arrive, by the quantile (pinball) loss ``mean((x − γ)(p − [x < γ]))`` — the
   loss a ``p``-quantile minimises — averaged over recent steps (weight n/(n + 64) for a step of n rows). Each step
   uses the candidate with the lowest score: short, compensated look-backs while losses fall fast next to their
   spread, long ones once they settle. No window to set.
3. **An integral correction on the realised share.** The controller counts, over the whole run, the eligible rows
   and those that fell below the γ they were judged by; the quantile level used is
   ``p + (p · rows − below) / max(10 · rows per step, 40)``, clipped to [0.005, 0.995]: a share that ran over the
   target is paid back over about ten steps (40 rows at least, so that at one row per step a single row moves the
   level by 0.025 at most), and the share over the run converges to the target even where every estimate is
   biased (one row per step under fast falls). The candidates are scored at ``p`` itself, so the correction
   does not feed back into which look-back is chosen.
4. **Optional fresh losses** (``dyncot_target_rescore``, off by default): the trainer also scores the rows of the
   epoch's next micro-batches at the current weights (no-grad, the selection's own loss) and passes them as
   ``fresh``. They are the newest entry of the look-back (age 0: no lag at all) and are not kept in the buffer
   (those rows are scored again when their own step comes). When they are at least twice a step's rows they alone
   give the quantile (measured: scored on a step's few rows, the bank picks among its candidates too noisily to
   prefer them reliably at one row per step); with fewer they join the bank as its shortest look-back and compete
   as the others do.

The very first step has no history: it selects with the empirical ``p``-quantile of its own losses (one loss: that
loss; with fresh losses, theirs); ``dyncot_gamma`` is γ only until then (a step without eligible rows keeps the previous γ and feeds
nothing). Measured on the closed-loop simulation of ``docs/benchmarks.md`` (losses that fall fast, drop in stairs
each epoch for plain-trained samples and drift up for CoT-trained ones) and in ``tests/test_target_share.py``, whose
own simulation drifts per optimizer step; at one row per step γ's agreement with the exact quantile is lower than
at 8 or more (a single loss per step carries little information), the share over the run still holds. Without
fresh losses, not held: epoch 1 at one row per step when losses fall by their whole spread per step (the
simulation's ``demo`` scenario: 0.41–0.61 for targets 0.25 / 0.5, agreement with the exact quantile 0.79–0.83);
re-scoring 16 rows per step lifts that agreement to 0.91–0.94 at 16 extra no-grad row forwards per step.

Losses are float32 (the selection pass) and γ is float64: the controller works on the exact float64 values of the
float32 losses and :func:`~dyncot_plugin.train.selection.choose_views` compares in float64, so the rule the
controller counts (loss < γ) is the rule that selects. Every rank must use the same γ: the losses of a step are
gathered from every rank in rank order, every rank runs the same float64 arithmetic on them, and rank 0's γ is
broadcast anyway. The state (:data:`STATE_FILE`, version :data:`STATE_VERSION`: the buffer, the scores, the
counts) is saved in each checkpoint so that a resumed run continues the same γ sequence as an uninterrupted one.
A saved state of another target, rule or window is not continued: the log names the change and the controller
restarts from the next step's losses (so does a state of the version-2 tracker or the unversioned rule before it,
whose γ is kept until then); any other version is refused by name.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dyncot_plugin.config import DynCotConfigError

STATE_FILE = "dyncot_gamma_state.json"
STATE_VERSION = 3
DEFAULT_WINDOW = 4096  # rows: the most the controller looks back over (``dyncot_target_window``)
MAX_STEPS = 512  # optimizer steps: the longest look-back
SCORE_ROWS = 64.0  # a step of n rows weighs n / (n + SCORE_ROWS) in a candidate's running score
PAYBACK_STEPS = 10.0  # the integral correction repays the share error over about this many steps
PAYBACK_ROWS = 40.0  # and over at least this many rows
LEVEL_BOUNDS = (0.005, 0.995)


class GammaController:
    """The γ of each optimizer step (see the module docstring).

    Args:
        gamma: ``dyncot_gamma``; with a target, the value before the first eligible loss.
        target: ``dyncot_target_cot_ratio`` (None: γ stays fixed).
        window: ``dyncot_target_window``, the most rows the controller looks back over.
        when: ``dyncot_cot_when``.
    """

    def __init__(self, gamma: float, target: float | None = None, window: int = DEFAULT_WINDOW,
                 when: str = "below") -> None:
        self.gamma = float(gamma)
        self.target = target
        self.when = when
        self.window = int(window)
        self._reset()

    def _reset(self) -> None:
        self.steps: list[np.ndarray] = []  # the buffer: each step's eligible losses (float64), oldest first
        self.seen_steps = 0  # steps with eligible rows fed so far
        self.rows = 0  # eligible rows fed so far
        self.below = 0  # of them, those below the γ they were judged by
        self.scores: dict[tuple[str, int], float] = {}  # candidate (kind, look-back steps) -> running pinball loss

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    @property
    def quantile(self) -> float:
        """The quantile of the losses γ tracks: ``q`` below, ``1 - q`` above."""
        return self.target if self.when == "below" else 1.0 - self.target

    @property
    def seen(self) -> int:
        return self.rows

    # ------------------------------------------------------------------------------------------- the controller
    def candidates(self, fresh: np.ndarray | None = None) -> dict[tuple[str, int], np.ndarray]:
        """Each candidate's loss sample, sorted: the last k steps' losses, raw and (k ≥ 2) drift-compensated.

        ``fresh``: losses measured at the current weights (re-scored rows, ``dyncot_target_rescore``), the newest
        "step" of the look-back (age 0; the buffer's newest step is then age 1)."""
        steps = self.steps + [fresh] if fresh is not None and fresh.size else self.steps
        offset = 1.0 if steps is self.steps else 0.0  # the age of the newest entry
        n, k, sizes = len(steps), 1, [s.size for s in steps]
        looks, rows = [], 0
        while k <= n:  # k = 1, 2, 4, ..., n, as long as the rows stay within the window (one step at least)
            rows = sum(sizes[n - k:])
            if k > 1 and rows > self.window:
                break
            looks.append((k, rows))
            if k == n:
                break
            k = min(2 * k, n)
        longest = looks[-1][0]
        values = np.concatenate(steps[n - longest:])
        ages = np.concatenate([np.full(size, float(longest - 1 - i) + offset)
                               for i, size in enumerate(sizes[n - longest:])])
        # running sums from the newest row backwards: each look-back's least-squares slope in O(1)
        s_a, s_v = np.cumsum(ages[::-1]), np.cumsum(values[::-1])
        s_aa, s_av = np.cumsum((ages * ages)[::-1]), np.cumsum((ages * values)[::-1])
        out: dict[tuple[str, int], np.ndarray] = {}
        for k, rows in looks:
            tail, ages_k = values[values.size - rows:], ages[ages.size - rows:]
            out[("raw", k)] = np.sort(tail)
            if k >= 2:
                i = rows - 1
                var = s_aa[i] - s_a[i] * s_a[i] / rows
                cov = s_av[i] - s_a[i] * s_v[i] / rows
                slope = -cov / var  # loss change per step; ages count into the past, hence the sign
                out[("comp", k)] = np.sort(tail + slope * ages_k)
        return out

    def level(self) -> float:
        """The quantile level this step uses: ``p`` plus the integral correction of the realised share."""
        p = self.quantile
        if self.rows:
            p += (p * self.rows - self.below) / max(PAYBACK_STEPS * self.rows / self.seen_steps, PAYBACK_ROWS)
        return min(max(p, LEVEL_BOUNDS[0]), LEVEL_BOUNDS[1])

    def best(self, candidates: dict[tuple[str, int], np.ndarray]) -> tuple[str, int]:
        """The candidate with the lowest running score (unscored ones last; ties: the longer look-back)."""
        return min(candidates, key=lambda c: (self.scores.get(c, math.inf), -c[1], c[0]))

    def feed(self, losses: list[float], fresh: list[float] | None = None) -> float:
        """One step: returns the γ this step selects with (from the earlier steps only), then feeds the step's
        eligible losses (finite float64 values, rank order). ``fresh``: the losses of rows not trained in this
        step, measured at the same weights (``dyncot_target_rescore``), used as the newest history for this step's
        γ only (not kept: those rows are scored again at their own step). Pure arithmetic, no communication."""
        extra = np.asarray(fresh if fresh else [], dtype=np.float64)
        if not losses:  # nothing to judge: γ and the buffer stay as they are
            return self.gamma
        x = np.asarray(losses, dtype=np.float64)
        p = self.quantile
        if not self.steps and not extra.size:  # no history: the step's own quantile (as torch.quantile)
            gamma, predictions = float(np.quantile(x, p)), {}
        else:
            candidates = self.candidates(extra)
            # re-scored rows at least twice a step's: they alone (no lag); fewer: the bank's newest entry
            chosen = ("raw", 1) if extra.size and extra.size >= 2 * (self.steps[-1].size if self.steps else 0) \
                else self.best(candidates)
            gamma = _quantile(candidates[chosen], self.level())
            predictions = {c: _quantile(v, p) for c, v in candidates.items()}
        weight = x.size / (x.size + SCORE_ROWS)
        for c, predicted in predictions.items():
            error = x - predicted
            pinball = float(np.mean(error * (p - (error < 0))))
            self.scores[c] = pinball if c not in self.scores else self.scores[c] + weight * (pinball - self.scores[c])
        self.below += int((x < gamma).sum())
        self.rows += x.size
        self.seen_steps += 1
        self._append(x)
        self.gamma = gamma
        return gamma

    def _append(self, values: np.ndarray) -> None:
        """One step's losses into the buffer; the oldest steps out beyond the window or 512 steps."""
        self.steps.append(values)
        total = sum(s.size for s in self.steps)
        while len(self.steps) > MAX_STEPS or (len(self.steps) > 1 and total - self.steps[0].size >= self.window):
            total -= self.steps.pop(0).size

    def update(self, losses: torch.Tensor, device: torch.device | str = "cpu",
               fresh: torch.Tensor | None = None) -> float:
        """Feed this step's eligible losses (this rank's; NaN entries are padding) from every rank; returns the γ
        this step selects with (also ``self.gamma``). ``fresh``: this rank's re-scored losses of rows that this
        step does not train, at the same weights (NaN: padding); every rank passes one or none alike.

        A no-op for a fixed γ. Must be called by every rank at every optimizer step (it gathers).
        """
        if not self.adaptive:
            return self.gamma
        losses = losses.detach().to(device=device, dtype=torch.float64).flatten()
        if fresh is not None:  # one gather for both: [this step's rows | re-scored rows]
            fresh = fresh.detach().to(device=device, dtype=torch.float64).flatten()
            losses = torch.cat([losses, fresh])
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            parts = [torch.empty_like(losses) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, losses)
            losses = torch.stack(parts)
        else:
            losses = losses.unsqueeze(0)
        cut = losses.size(1) - (fresh.numel() if fresh is not None else 0)
        own = [v for v in losses[:, :cut].flatten().cpu().tolist() if math.isfinite(v)]
        extra = [v for v in losses[:, cut:].flatten().cpu().tolist() if math.isfinite(v)]
        selected = self.feed(own, extra)
        if distributed:  # the same arithmetic ran on every rank; rank 0's γ is the reference all the same
            value = torch.tensor([selected], dtype=torch.float64, device=device)
            dist.broadcast(value, src=0)
            selected = self.gamma = value.item()
        return selected

    # -------------------------------------------------------------------------------------------- checkpoints
    def settings(self) -> dict[str, Any]:
        return {"target": self.target, "when": self.when, "window": self.window}

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "gamma": self.gamma, **self.settings(), "seen_steps": self.seen_steps,
                "rows": self.rows, "below": self.below, "steps": [s.tolist() for s in self.steps],
                "scores": [[kind, k, score] for (kind, k), score in sorted(self.scores.items())]}

    def load_state_dict(self, state: dict[str, Any], source: str = "the γ state") -> str:
        """Restore ``state``; returns the line to log: continued, or restarted and why."""
        version = state.get("version")
        if version is None and isinstance(state.get("window"), list) or version == 2:
            self._reset()
            self.gamma = float(state["gamma"])
            name = "the unversioned relative-deviation state" if version is None else "a version-2 tracker state"
            return (f"{source}: {name} of an earlier dyncot-plugin; gamma={self.gamma:.6g} is kept and the target-"
                    "share controller restarts from the next step's losses")
        if version != STATE_VERSION:
            raise DynCotConfigError(
                f"{source}: γ state version {version!r}; this dyncot-plugin reads version {STATE_VERSION} (and "
                "converts versions 2 and the unversioned state of earlier versions). Delete the file to restart the "
                "target-share controller from the next step's losses."
            )
        changed = [f"{key} {state.get(key)!r} -> {value!r}" for key, value in self.settings().items()
                   if state.get(key) != value]
        if changed:
            self._reset()
            self.gamma = float(state["gamma"])
            return (f"{source}: saved with another {', '.join(changed)}; the target-share controller restarts from "
                    "the next step's losses (it does not continue the saved one)")
        self._reset()
        self.gamma, self.seen_steps = float(state["gamma"]), int(state["seen_steps"])
        self.rows, self.below = int(state["rows"]), int(state["below"])
        self.steps = [np.asarray(s, dtype=np.float64) for s in state["steps"]]
        self.scores = {(kind, int(k)): float(score) for kind, k, score in state["scores"]}
        return f"gamma state restored from {source}: gamma={self.gamma:.6g}"

    def save(self, folder: str) -> None:
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(self.state_dict(), f)

    def load(self, folder: str) -> str | None:
        """Restore the state saved in checkpoint ``folder``; returns the line to log, None when it has none."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return self.load_state_dict(json.load(f), source=path)


def _quantile(ordered: np.ndarray, p: float) -> float:
    """The ``p``-quantile of sorted values, linear interpolation (numpy's and torch's default)."""
    position = p * (ordered.size - 1)
    low = math.floor(position)
    high = min(low + 1, ordered.size - 1)
    return float(ordered[low] + (position - low) * (ordered[high] - ordered[low]))


__all__ = ["DEFAULT_WINDOW", "STATE_FILE", "STATE_VERSION", "GammaController"]
