"""Per-sample selection of Dynamic CoT, as pure tensor functions (unit-testable without a model).

``answer_nll``: the mean token NLL of each row's answer, the quantity the paper thresholds with γ.
``choose_views``: which rows train on CoT. ``merge_views`` / ``stack_views``: build the batch that is trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dyncot_plugin.train.families import DEFAULT_FAMILY, IGNORE_INDEX, ModelFamily

# Batch layout per model family (dyncot_plugin.train.families): ``seq_pad`` keys are [batch, seq] (batch dim 0) or
# [k, batch, seq] (position_ids of M-RoPE models, batch dim 1); ``row_keys`` have one value per row; ``media_keys``
# belong to the batch's samples and are duplicated when both views are stacked.


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose logits predict a target token in at least one row (1-D, for ``logits_to_keep``)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


def answer_nll(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Mean token NLL of each row's targets. ``logits`` are [B, K, V] at ``positions`` (all positions if None).

    Logits at every position ([B, S, V], as labels) are taken whatever ``positions`` says: a model whose ``forward``
    has no ``logits_to_keep`` (Qwen2-VL on transformers 4.57, :mod:`dyncot_plugin.compat`) returns them, and
    ``positions`` (at most S - 1 of them) can never be mistaken for them. Rows without any target get ``inf``, so no
    threshold ever selects them.
    """
    targets = labels[:, 1:]
    if positions is None or logits.size(1) == labels.size(1):
        logits = logits[:, :-1]
    else:
        targets = targets[:, positions]
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    counts = (targets != IGNORE_INDEX).sum(dim=1)
    per_row = nll.sum(dim=1) / counts.clamp(min=1)
    return torch.where(counts > 0, per_row, torch.full_like(per_row, float("inf")))


def choose_views(
    losses: torch.Tensor, has_cot: torch.Tensor, gamma: float | torch.Tensor, when: str = "below"
) -> torch.Tensor:
    """Rows trained on CoT: a usable CoT view, and a plain-answer loss strictly below γ (``when="below"``, the
    paper's rule) or at or above it (``when="above"``, the reverse ablation).

    Compared in float64: a float32 tensor against a Python float would round γ to float32 first, so a γ between two
    float32 values (the target-share tracker's, ``gamma.py``) would select differently from the rule it assumes.
    ``gamma`` may also be a float64 tensor that broadcasts against ``losses`` (one γ per row of a [steps, rows] grid).
    """
    wide = losses.to(torch.float64)
    chosen = wide < gamma if when == "below" else wide >= gamma
    return chosen & torch.isfinite(losses) & has_cot.to(losses.device)


def _fit(tensor: torch.Tensor, length: int, pad_value: int | float) -> torch.Tensor:
    """Pad (or cut trailing padding from) the last dim to ``length``."""
    current = tensor.size(-1)
    if current >= length:
        return tensor[..., :length]
    return F.pad(tensor, (0, length - current), value=pad_value)


def _batch_dim(key: str, tensor: torch.Tensor) -> int:
    return 1 if key == "position_ids" and tensor.dim() == 3 else 0


def merge_views(
    plain: dict, cot: dict, select: torch.Tensor, pad_token_id: int, family: ModelFamily = DEFAULT_FAMILY
) -> dict:
    """Row i from ``cot`` where ``select[i]``, else from ``plain``; media tensors stay those of ``plain``.

    Right padding: a row's tokens sit at the start, so trimming to the longest *selected* view only drops padding.
    With no row selected the result is ``plain`` itself, value for value.
    """
    if not bool(select.any()):
        return dict(plain)
    any_plain = bool((~select).any())
    length = max(plain["input_ids"].size(-1) if any_plain else 0, cot["input_ids"].size(-1))
    merged = dict(plain)
    for key, pad in family.seq_pad.items():
        if key not in plain:
            continue
        pad = pad_token_id if pad is None else pad
        p, c = _fit(plain[key], length, pad), _fit(cot[key].to(plain[key].dtype), length, pad)
        shape = [1] * p.dim()
        shape[_batch_dim(key, p)] = -1
        merged[key] = torch.where(select.view(shape).to(p.device), c, p)
    for key in family.row_keys:
        if key in plain and key in cot:
            shape = [-1] + [1] * (plain[key].dim() - 1)
            merged[key] = torch.where(select.view(shape).to(plain[key].device), cot[key], plain[key])
    return merged


def stack_views(
    plain: dict, cot: dict, has_cot: torch.Tensor, pad_token_id: int, family: ModelFamily = DEFAULT_FAMILY
) -> tuple[dict, torch.Tensor]:
    """Both views in one batch of 2B rows (plain rows first); media duplicated to match. Returns (batch, is_cot_row).

    A CoT row of a sample without a usable CoT view gets no targets, so multitask never trains its plain answer
    twice.
    """
    length = max(plain["input_ids"].size(-1), cot["input_ids"].size(-1))
    stacked = {}
    for key, pad in family.seq_pad.items():
        if key not in plain:
            continue
        pad = pad_token_id if pad is None else pad
        c = cot[key].to(plain[key].dtype)
        if key == "labels":
            c = torch.where(has_cot.view(-1, 1).to(c.device), c, torch.full_like(c, IGNORE_INDEX))
        dim = _batch_dim(key, plain[key])
        stacked[key] = torch.cat([_fit(plain[key], length, pad), _fit(c, length, pad)], dim=dim)
    for key in family.row_keys:
        if key in plain and key in cot:
            stacked[key] = torch.cat([plain[key], cot[key]], dim=0)
    for key in family.media_keys:
        if key in plain and plain[key] is not None:
            stacked[key] = torch.cat([plain[key], plain[key]], dim=0)
    for key, value in plain.items():
        if key not in stacked:
            stacked[key] = value
    batch_size = plain["input_ids"].size(0)
    is_cot_row = torch.arange(2 * batch_size, device=plain["input_ids"].device) >= batch_size
    return stacked, is_cot_row
