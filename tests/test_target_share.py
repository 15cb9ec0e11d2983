"""Steering the thinking decision: a target CoT share instead of a guessed γ, and the reverse rule."""

import json
import statistics

import pytest
import torch

from dyncot_plugin.config import DynCotConfigError
from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import read_log, read_losses, write_plugin_dataset
from dyncot_plugin.train.gamma import STATE_FILE, STATE_VERSION, GammaController
from dyncot_plugin.train.selection import choose_views


# ------------------------------------------------------------------------------------------------ the controller
def test_float32_losses_at_one_row_per_step_hold_the_share_below_and_above():
    """The failure the tracker replaces: one float32 loss per step (γ == that loss) trained 0 % CoT below and
    100 % above. Stationary losses, fed as the trainer feeds them (float32, one per step)."""
    generator = torch.Generator().manual_seed(0)
    losses = (2.0 + 0.3 * torch.randn(4000, generator=generator)).float()
    for target in (0.25, 0.5):
        for when in ("below", "above"):
            controller = GammaController(0.4, target=target, window=256, when=when)
            chosen = [bool(choose_views(x.view(1), torch.ones(1, dtype=torch.bool), controller.update(x.view(1)), when))
                      for x in losses]
            assert abs(statistics.fmean(chosen[2000:]) - target) < 0.02, (target, when)
            assert controller.gamma == pytest.approx(
                torch.quantile(losses.double(), target if when == "below" else 1 - target).item(), abs=0.05
            )


def test_choose_views_compares_float32_losses_with_gamma_in_float64():
    loss = torch.tensor([1.0], dtype=torch.float32)
    gamma = 1.0 + 1e-12  # between float32 1.0 and the next float32: rounding γ to float32 would give 1.0
    assert bool((loss < gamma).item()) is False  # what a float32 comparison does
    assert choose_views(loss, torch.ones(1, dtype=torch.bool), gamma, "below").tolist() == [True]
    assert choose_views(loss, torch.ones(1, dtype=torch.bool), gamma, "above").tolist() == [False]


def test_the_first_losses_start_the_tracker_and_dyncot_gamma_stands_until_then():
    controller = GammaController(0.4, target=0.25, window=8)
    assert controller.update(torch.tensor([float("nan")] * 4)) == 0.4  # no eligible loss yet
    losses = torch.tensor([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0], dtype=torch.float32)
    gamma = controller.update(losses)  # the first step selects with its own 0.25-quantile, where the tracker starts
    assert gamma == torch.quantile(losses.double(), 0.25).item()
    assert int(choose_views(losses, torch.ones(8, dtype=torch.bool), gamma).sum()) == 2
    assert controller.seen == 8 and controller.gamma != gamma  # then its losses are fed: the next step's γ


def test_a_row_never_moves_the_gamma_it_is_judged_by():
    """Each step selects with γ as the earlier steps left it: a loss just below γ stays below it (fed first, it
    would push γ under itself), so at one row per step the share has no bias toward the far side."""
    controller = GammaController(0.4, target=0.25, window=4)
    controller.update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    before = controller.gamma
    just_below = torch.tensor([before - 1e-3], dtype=torch.float64).float()
    assert controller.update(just_below) == before and controller.gamma < just_below.item()
    assert choose_views(just_below, torch.ones(1, dtype=torch.bool), before).tolist() == [True]


def test_gamma_is_an_absolute_loss_threshold_that_follows_falling_losses():
    """Losses falling by 1.0 over 2,000 rows (one per step), spread 0.2: γ stays within half a spread of the current
    median (an absolute loss, comparable with dyncot_gamma)."""
    controller = GammaController(0.4, target=0.5, window=256)
    generator = torch.Generator().manual_seed(1)
    for step in range(2000):
        level = 5.0 - 0.0005 * step
        controller.update((level + 0.2 * torch.randn(1, generator=generator)).float())
    assert controller.gamma == pytest.approx(5.0 - 0.0005 * 1999, abs=0.1)


def test_fixed_gamma_never_moves():
    fixed = GammaController(0.7)
    assert fixed.update(torch.tensor([1.0, 2.0])) == 0.7 and not fixed.adaptive


def test_the_step_is_the_same_on_every_rank_whatever_the_split():
    """Feeding one step's losses at once or in rank-order pieces gives the same γ (rows are fed one at a time)."""
    losses = [1.0, 3.5, 2.25, 0.5, 4.0, 2.0]
    a, b = GammaController(0.4, target=0.5, window=16), GammaController(0.4, target=0.5, window=16)
    a.feed(losses[:1])
    b.feed(losses[:1])
    a.feed(losses[1:])
    for x in losses[1:]:
        b.feed([x])
    assert a.state_dict() == b.state_dict()


def test_state_round_trips_and_is_versioned(tmp_path):
    a = GammaController(0.4, target=0.3, window=5)
    for losses in ([1.0, 2.0, 3.0], [0.5, 2.5, 4.0]):
        a.update(torch.tensor(losses, dtype=torch.float32))
    a.save(str(tmp_path))
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["version"] == STATE_VERSION and state["seen"] == 6
    b = GammaController(0.4, target=0.3, window=5)
    assert b.load(str(tmp_path)) and b.state_dict() == a.state_dict()
    for c in (a, b):
        c.update(torch.tensor([1.25, 2.75], dtype=torch.float32))
    assert b.gamma == a.gamma  # a resumed run continues the same γ sequence
    assert not GammaController(0.4, target=0.3).load(str(tmp_path / "none"))


def test_an_old_relative_deviation_state_is_converted_and_an_unknown_version_refused(tmp_path):
    old = {"gamma": 2.5, "target": 0.5, "when": "below", "window": [-0.5, -0.25, 0.0, 0.25, 0.5], "window_size": 256}
    (tmp_path / STATE_FILE).write_text(json.dumps(old))
    controller = GammaController(0.4, target=0.5)
    assert controller.load(str(tmp_path))
    assert controller.gamma == 2.5 and controller.seen == 5 and controller.spread == pytest.approx(0.3)
    (tmp_path / STATE_FILE).write_text(json.dumps({**controller.state_dict(), "version": 99}))
    with pytest.raises(DynCotConfigError, match=f"{STATE_FILE}.*version 99"):
        GammaController(0.4, target=0.5).load(str(tmp_path))


# ----------------------------------------------------------------------------------------------- the simulation
def _mixture_quantile(p: torch.Tensor, quantile: float) -> torch.Tensor:
    """The exact ``quantile`` of the issue's two-population mixture at run progress ``p`` (bisection on its CDF)."""
    m1, m2 = 0.5 + 2.5 * torch.exp(-4 * p), 1.5 + 4 * torch.exp(-3 * p)
    lo, hi = torch.zeros_like(p), torch.full_like(p, 20.0)
    for _ in range(80):
        mid = (lo + hi) / 2
        below = 0.6 * torch.special.ndtr((mid - m1) / (0.15 * m1)) + 0.4 * torch.special.ndtr((mid - m2) / (0.15 * m2))
        lo, hi = torch.where(below < quantile, mid, lo), torch.where(below < quantile, hi, mid)
    return (lo + hi) / 2


def simulate(rows_per_step: int, target: float, when: str, rows: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """(agreement with the exact per-step quantile's choice, CoT share) over the second half of a run of ``rows``
    float32 losses fed to the real controller ``rows_per_step`` at a time: 60 % from N(μ₁, 0.15 μ₁), μ₁ = 0.5 +
    2.5 e^(−4p), 40 % from N(μ₂, 0.15 μ₂), μ₂ = 1.5 + 4 e^(−3p), at run progress p."""
    generator = torch.Generator().manual_seed(seed)
    steps = rows // rows_per_step
    p = torch.arange(steps, dtype=torch.float64) / steps
    m1, m2 = (0.5 + 2.5 * torch.exp(-4 * p)).repeat_interleave(rows_per_step), (1.5 + 4 * torch.exp(-3 * p)).repeat_interleave(rows_per_step)
    mu = torch.where(torch.rand(steps * rows_per_step, generator=generator, dtype=torch.float64) < 0.6, m1, m2)
    noise = torch.randn(steps * rows_per_step, generator=generator, dtype=torch.float64)
    losses = (mu + 0.15 * mu * noise).float().view(steps, rows_per_step)
    reference = _mixture_quantile(p, target if when == "below" else 1 - target)
    controller = GammaController(0.4, target=target, window=256, when=when)
    gammas = torch.tensor([controller.update(losses[t]) for t in range(steps)], dtype=torch.float64)
    everyone = torch.ones(rows_per_step, dtype=torch.bool)
    chosen = choose_views(losses, everyone, gammas.unsqueeze(1), when)[steps // 2 :]
    expected = choose_views(losses, everyone, reference.unsqueeze(1), when)[steps // 2 :]
    return (chosen == expected).double().mean().item(), chosen.double().mean().item()


@pytest.mark.parametrize("when", ["below", "above"])
@pytest.mark.parametrize("target", [0.25, 0.5])
@pytest.mark.parametrize("rows_per_step", [1, 2, 4, 8, 128])
def test_simulation_selects_what_the_exact_quantile_selects(rows_per_step, target, when):
    agreement, share = simulate(rows_per_step, target, when)
    assert agreement >= 0.95 and abs(share - target) <= 0.03, (agreement, share)


# ----------------------------------------------------------------------------------------- through llamafactory
def selection_records(output_dir) -> list[dict]:
    return [json.loads(x) for x in (output_dir / "dyncot_selection" / "rank0.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(("target", "when"), [(0.5, "below"), (0.25, "below"), (0.5, "above"), (0.25, "above")])
def test_one_row_per_step_holds_the_target_share(warm_model, tmp_path, target, when):
    """One rank, per_device_train_batch_size 1, no accumulation: one float32 selection loss per optimizer step.
    800 steps; the share of CoT over the second half (400 rows) is within 0.1 of the target.

    The window is 16 rows because of what the tiny model's losses do: ``below`` trains the low-loss rows on CoT and
    the others on their plain answer, which pulls all 32 rows' losses together (spread 0.07 down to 0.01) while
    they still fall by about 1e-4 a row. Over n rows the share misses the target by (change of γ) / (step · n), so
    the tracker's step (4/window of the spread) must be large next to that drift: with a 64-row window the share
    was 0.63 for 0.5 here. The simulation above shows the default window on losses whose spread the selection does
    not collapse."""
    model, data = warm_model
    config = tiny_sft_config(
        model, data, "spread", tmp_path / "out", max_steps=800, per_device_train_batch_size=1, num_train_epochs=100,
        learning_rate=1.0e-5, dyncot_strategy="dynamic", dyncot_log_selection=True, dyncot_target_cot_ratio=target,
        dyncot_cot_when=when, dyncot_target_window=16,
    )
    proc = run_llamafactory("train", config, tmp_path)
    records, log = selection_records(tmp_path / "out"), read_log(tmp_path / "out")
    assert [len(r["loss"]) for r in records] == [1] * 800 and all(r["eligible"] == [True] for r in records)
    second_half = [r["cot"][0] for r in records[400:]]
    assert abs(statistics.fmean(second_half) - target) <= 0.1, statistics.fmean(second_half)
    for record, entry in zip(records, log):  # the logged γ is the one each step selected with, in float64
        assert record["gamma"] == pytest.approx(entry["gamma"], abs=1e-6)
        assert record["cot"] == [(x < record["gamma"]) == (when == "below") for x in record["loss"]]
    assert all("gamma" in e and "cot_share" in e for e in log)
    gammas = sorted(r["gamma"] for r in records[400:])
    losses = sorted(r["loss"][0] for r in records[400:])
    assert losses[20] < gammas[200] < losses[380]  # an absolute loss threshold, among the losses it selects from
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
