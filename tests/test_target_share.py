"""Steering the thinking decision: a target CoT share instead of a guessed γ, and the reverse rule."""

import json
import statistics

import pytest
import torch

from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import read_log, read_losses, write_plugin_dataset
from dyncot_plugin.train.gamma import GammaController


# ------------------------------------------------------------------------------------------------ the controller
def test_one_step_window_selects_exactly_the_target_share():
    controller = GammaController(0.4, target=0.25, window=8)
    losses = torch.tensor([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0], dtype=torch.float64)
    gamma = controller.update(losses)
    assert int((losses < gamma).sum()) == 2  # 25 % of 8
    assert controller.gamma == gamma and 1.5 < gamma < 3.0


def test_the_reverse_rule_takes_the_upper_quantile():
    controller = GammaController(0.4, target=0.25, window=8, when="above")
    losses = torch.tensor([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0], dtype=torch.float64)
    gamma = controller.update(losses)
    assert int((losses >= gamma).sum()) == 2


def test_the_window_is_taken_relative_to_each_steps_mean():
    """Losses that fall by 1.0 a step keep the same spread: γ follows the current step, not the old losses."""
    controller = GammaController(0.4, target=0.5, window=64)
    shape = torch.tensor([0.0, 0.2, 0.4, 0.6], dtype=torch.float64)
    for step in range(5):
        losses = 10.0 - step + shape
        gamma = controller.update(losses)
        assert int((losses < gamma).sum()) == 2
    assert gamma == pytest.approx(10.0 - 4 + 0.3, abs=1e-9)


def test_fixed_gamma_never_moves_and_nan_padding_is_ignored():
    fixed = GammaController(0.7)
    assert fixed.update(torch.tensor([1.0, 2.0])) == 0.7 and not fixed.adaptive
    steered = GammaController(0.7, target=0.5)
    assert steered.update(torch.tensor([float("nan")] * 4)) == 0.7  # no eligible loss yet: the starting value
    steered.update(torch.tensor([1.0, 3.0, float("nan"), float("nan")], dtype=torch.float64))
    assert 1.0 < steered.gamma < 3.0


def test_state_round_trips(tmp_path):
    a = GammaController(0.4, target=0.3, window=5)
    for losses in ([1.0, 2.0, 3.0], [0.5, 2.5, 4.0]):
        a.update(torch.tensor(losses, dtype=torch.float64))
    a.save(str(tmp_path))
    b = GammaController(0.4, target=0.3, window=5)
    assert b.load(str(tmp_path)) and b.state_dict() == a.state_dict()
    assert list(b.window) == list(a.window) and len(b.window) == 5
    assert not GammaController(0.4, target=0.3).load(str(tmp_path / "none"))


# ----------------------------------------------------------------------------------------- through llamafactory
@pytest.fixture(scope="module")
def spread_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("spread")
    write_plugin_dataset(data, "spread", n=32)  # 8 posts of different lengths, 4 images each
    return data


def _run(tiny_model_dir, data, tmp_path, **overrides):
    config = tiny_sft_config(
        tiny_model_dir, data, "spread", tmp_path / "out", max_steps=16, per_device_train_batch_size=4,
        dyncot_strategy="dynamic", dyncot_log_selection=True, **overrides,
    )
    proc = run_llamafactory("train", config, tmp_path)
    return read_log(tmp_path / "out"), proc


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.5, 0.25])
def test_target_share_tracks_the_target_and_logs_gamma(tiny_model_dir, spread_data, tmp_path, target):
    log, proc = _run(tiny_model_dir, spread_data, tmp_path, dyncot_target_cot_ratio=target)
    assert len(log) == 16
    assert all("gamma" in e and "cot_share" in e for e in log)  # every logging step
    second_half = [e["cot_ratio"] for e in log[8:]]
    assert abs(statistics.fmean(second_half) - target) <= 0.15, second_half
    assert all(e["cot_ratio"] == e["cot_share"] for e in log)  # every row has CoT text
    assert len({e["gamma"] for e in log}) > 8  # γ moves with the losses
    records = [json.loads(x) for x in (tmp_path / "out" / "dyncot_selection" / "rank0.jsonl").read_text().splitlines()]
    for record, entry in zip(records, log):  # the logged γ is the one each step selected with
        assert record["gamma"] == pytest.approx(entry["gamma"], abs=1e-6)
        finite = [x for x in record["loss"] if x is not None]
        assert record["cot"] == [x is not None and x < record["gamma"] for x in record["loss"]] and finite
    assert f"target_cot_ratio={target}" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_reverse_rule_gamma_zero_is_cot_and_gamma_huge_is_sft(tiny_model_dir, tmp_path):
    write_plugin_dataset(tmp_path / "data", "toy", n=8)

    def losses(name, **overrides):
        config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / name / "out", max_steps=4,
                                 **overrides)
        run_llamafactory("train", config, tmp_path / name)
        return read_losses(tmp_path / name / "out")

    cot, sft = losses("cot", dyncot_strategy="cot"), losses("sft", dyncot_strategy="sft")
    above0 = losses("above0", dyncot_strategy="dynamic", dyncot_cot_when="above", dyncot_gamma=0.0)
    above_huge = losses("above_huge", dyncot_strategy="dynamic", dyncot_cot_when="above", dyncot_gamma=1.0e6)
    assert len(cot) == 4 and cot != sft
    assert above0 == cot
    assert above_huge == sft
