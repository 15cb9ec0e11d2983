"""Dynamic CoT's selection on constructed batches: losses, thresholds, the rows each sample trains on."""

import math

import torch

from dyncot_plugin.train.selection import (
    IGNORE_INDEX,
    answer_nll,
    answer_positions,
    choose_views,
    merge_views,
    stack_views,
)


def _logits_for(targets: list[list[int]], probs: list[float], vocab: int = 5) -> torch.Tensor:
    """Logits whose softmax gives probability p to each row's target token (row-wise constant)."""
    batch, length = len(targets), len(targets[0])
    logits = torch.zeros(batch, length, vocab)
    for b, p in enumerate(probs):
        for t, tok in enumerate(targets[b]):
            if tok == IGNORE_INDEX:
                continue
            # p = e^x / (e^x + (V-1)) -> x = log(p (V-1) / (1 - p))
            logits[b, t - 1, tok] = math.log(p * (vocab - 1) / (1 - p))
    return logits


def test_answer_nll_is_the_mean_token_nll_of_each_row():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 3], [IGNORE_INDEX, 1, 1, IGNORE_INDEX]])
    probs = [0.9, 0.5]
    logits = _logits_for(labels.tolist(), probs)
    nll = answer_nll(logits, labels)
    assert torch.allclose(nll, torch.tensor([-math.log(0.9), -math.log(0.5)]), atol=1e-5)

    # Same numbers when only the answer positions' logits are computed (logits_to_keep).
    positions = answer_positions(labels)
    assert positions.tolist() == [0, 1, 2]
    assert torch.allclose(answer_nll(logits[:, positions], labels, positions), nll, atol=1e-6)


def test_rows_without_targets_are_never_selected():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 1, 2]])
    nll = answer_nll(torch.zeros(2, 3, 4), labels)
    assert math.isinf(nll[0]) and math.isclose(float(nll[1]), math.log(4), rel_tol=1e-5)
    assert choose_views(nll, torch.tensor([True, True]), gamma=1e9).tolist() == [False, True]


def test_threshold_straddling_batch_picks_the_expected_labels():
    # Plain-answer losses 0.105 (p=.9), 0.357 (p=.7), 0.693 (p=.5), 0.105 but no CoT view; gamma = 0.4.
    plain_labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 4, 4]] * 4)
    losses = answer_nll(_logits_for(plain_labels.tolist(), [0.9, 0.7, 0.5, 0.9]), plain_labels)
    has_cot = torch.tensor([True, True, True, False])
    select = choose_views(losses, has_cot, gamma=0.4)
    assert select.tolist() == [True, True, False, False]

    pad = 0
    plain = {
        "input_ids": torch.tensor([[7, 8, 4, 4]] * 4),
        "attention_mask": torch.ones(4, 4, dtype=torch.long),
        "labels": plain_labels,
        "position_ids": torch.arange(4).expand(4, 4, 4).clone(),  # [k=4, B, T] like Qwen2-VL's M-RoPE ids
        "rope_deltas": torch.zeros(4, 1, dtype=torch.long),
        "pixel_values": torch.randn(6, 3),
    }
    cot = {  # CoT views are longer (6 tokens)
        "input_ids": torch.tensor([[7, 8, 1, 2, 3, 4]] * 4),
        "attention_mask": torch.ones(4, 6, dtype=torch.long),
        "labels": torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2, 3, 4]] * 4),
        "position_ids": torch.arange(6).expand(4, 4, 6).clone(),
        "rope_deltas": torch.full((4, 1), 5, dtype=torch.long),
    }
    merged = merge_views(plain, cot, select, pad_token_id=pad)
    assert merged["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 1, 2, 3, 4],
        [IGNORE_INDEX, IGNORE_INDEX, 1, 2, 3, 4],
        [IGNORE_INDEX, IGNORE_INDEX, 4, 4, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, 4, 4, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert merged["input_ids"][2].tolist() == [7, 8, 4, 4, pad, pad]
    assert merged["attention_mask"].sum(1).tolist() == [6, 6, 4, 4]
    assert merged["position_ids"].shape == (4, 4, 6)
    assert merged["position_ids"][:, 0].tolist() == [list(range(6))] * 4
    assert merged["position_ids"][:, 2, 4:].eq(1).all()  # padded positions, as get_rope_index fills them
    assert merged["rope_deltas"].flatten().tolist() == [5, 5, 0, 0]
    assert merged["pixel_values"] is plain["pixel_values"]  # images processed once, shared by both views


def test_no_selection_returns_the_plain_batch_value_for_value():
    plain = {"input_ids": torch.tensor([[1, 2]]), "labels": torch.tensor([[IGNORE_INDEX, 2]])}
    cot = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[IGNORE_INDEX, 2, 3]])}
    merged = merge_views(plain, cot, torch.tensor([False]), pad_token_id=0)
    assert all(merged[k] is plain[k] for k in plain)


def test_stack_views_duplicates_media_and_masks_missing_cot():
    plain = {
        "input_ids": torch.tensor([[1, 2], [1, 3]]),
        "attention_mask": torch.ones(2, 2, dtype=torch.long),
        "labels": torch.tensor([[IGNORE_INDEX, 2], [IGNORE_INDEX, 3]]),
        "pixel_values": torch.randn(4, 3),
        "image_grid_thw": torch.tensor([[1, 2, 2]]),
    }
    cot = {
        "input_ids": torch.tensor([[1, 5, 6], [1, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "labels": torch.tensor([[IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 3, IGNORE_INDEX]]),
    }
    stacked, is_cot = stack_views(plain, cot, torch.tensor([True, False]), pad_token_id=0)
    assert is_cot.tolist() == [False, False, True, True]
    assert stacked["labels"].tolist() == [
        [IGNORE_INDEX, 2, IGNORE_INDEX],
        [IGNORE_INDEX, 3, IGNORE_INDEX],
        [IGNORE_INDEX, 5, 6],
        [IGNORE_INDEX] * 3,  # sample 2 has no CoT view: its CoT row trains nothing
    ]
    assert stacked["pixel_values"].shape == (8, 3) and stacked["image_grid_thw"].shape == (2, 3)
