"""Steering the thinking decision: a target CoT share instead of a guessed γ, and the reverse rule."""

import json
import statistics

import numpy as np
import pytest
import torch

from dyncot_plugin.config import DynCotConfigError
from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import read_log, read_losses, write_plugin_dataset
from dyncot_plugin.train.gamma import STATE_FILE, STATE_VERSION, GammaController
from dyncot_plugin.train.selection import choose_views


# ------------------------------------------------------------------------------------------------ the controller
def test_float32_losses_at_one_row_per_step_hold_the_share_below_and_above():
    """The failure an early per-step rule had: one float32 loss per step (γ == that loss) trained 0 % CoT below and
    100 % above. Stationary losses, fed as the trainer feeds them (float32, one per step)."""
    generator = torch.Generator().manual_seed(0)
    losses = (2.0 + 0.3 * torch.randn(1600, generator=generator)).float()
    for target in (0.25, 0.5):
        for when in ("below", "above"):
            controller = GammaController(0.4, target=target, when=when)
            gammas = [controller.update(x.view(1)) for x in losses]
            one = torch.ones(1, dtype=torch.bool)
            chosen = [bool(choose_views(x.view(1), one, g, when)) for x, g in zip(losses, gammas)]
            assert abs(statistics.fmean(chosen[800:]) - target) < 0.02, (target, when)
            assert statistics.median(gammas[800:]) == pytest.approx(
                torch.quantile(losses.double(), target if when == "below" else 1 - target).item(), abs=0.05
            )


def test_choose_views_compares_float32_losses_with_gamma_in_float64():
    loss = torch.tensor([1.0], dtype=torch.float32)
    gamma = 1.0 + 1e-12  # between float32 1.0 and the next float32: rounding γ to float32 would give 1.0
    assert bool((loss < gamma).item()) is False  # what a float32 comparison does
    assert choose_views(loss, torch.ones(1, dtype=torch.bool), gamma, "below").tolist() == [True]
    assert choose_views(loss, torch.ones(1, dtype=torch.bool), gamma, "above").tolist() == [False]


def test_the_first_losses_start_the_controller_and_dyncot_gamma_stands_until_then():
    controller = GammaController(0.4, target=0.25)
    assert controller.update(torch.tensor([float("nan")] * 4)) == 0.4  # no eligible loss yet
    losses = torch.tensor([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0], dtype=torch.float32)
    gamma = controller.update(losses)  # the first step selects with its own 0.25-quantile: no history yet
    assert gamma == torch.quantile(losses.double(), 0.25).item()
    assert int(choose_views(losses, torch.ones(8, dtype=torch.bool), gamma).sum()) == 2
    assert controller.seen == 8 and controller.below == 2


def test_a_step_selects_with_a_gamma_its_own_rows_never_moved():
    """γ of a step depends on the earlier steps only: the same history and any losses of the step give one γ."""
    history = [torch.tensor(v, dtype=torch.float32) for v in ([3.0, 1.0, 2.0], [2.5, 0.5, 1.5], [2.0, 0.25, 1.0])]
    gammas = set()
    for step in ([0.0, 0.1, 0.2], [9.0], [1.1, 1.2, 1.3, 1.4]):
        controller = GammaController(0.4, target=0.5)
        for losses in history:
            controller.update(losses)
        gammas.add(controller.update(torch.tensor(step, dtype=torch.float32)))
    assert len(gammas) == 1


def test_the_integral_correction_repays_the_share_a_run_trained_off_target():
    """Stationary losses at one row per step, from the first step: every stretch of 200 steps holds the share
    (the share error of the first rows is repaid, not carried)."""
    generator = torch.Generator().manual_seed(3)
    for target, when in ((0.25, "below"), (0.25, "above"), (0.5, "below")):
        controller = GammaController(0.4, target=target, when=when)
        losses = (2.0 + 0.3 * torch.randn(600, generator=generator)).float()
        chosen = [bool(choose_views(x.view(1), torch.ones(1, dtype=torch.bool), controller.update(x.view(1)), when))
                  for x in losses]
        for start in range(0, 600, 200):
            assert abs(statistics.fmean(chosen[start:start + 200]) - target) <= 0.05, (target, when, start)


def test_gamma_is_an_absolute_loss_threshold_that_follows_falling_losses():
    """Losses falling by 1.0 over 1,000 steps (one row per step), spread 0.2: the median of γ over the last 200
    steps is within a quarter of a spread of their median (an absolute loss, comparable with dyncot_gamma)."""
    controller = GammaController(0.4, target=0.5)
    generator = torch.Generator().manual_seed(1)
    gammas = []
    for step in range(1000):
        level = 5.0 - 0.001 * step
        gammas.append(controller.update((level + 0.2 * torch.randn(1, generator=generator)).float()))
    assert statistics.median(gammas[-200:]) == pytest.approx(5.0 - 0.001 * 900, abs=0.05)


def test_fixed_gamma_never_moves():
    fixed = GammaController(0.7)
    assert fixed.update(torch.tensor([1.0, 2.0])) == 0.7 and not fixed.adaptive


def test_the_look_back_is_bounded_by_the_window():
    controller = GammaController(0.4, target=0.5, window=10)
    for step in range(20):
        controller.update(torch.full((4,), float(step)))
    assert sum(len(s) for s in controller.steps) == 12  # whole steps: the newest ones covering 10 rows
    assert max(k for _, k in controller.candidates()) == 2  # 1 step or 2 (8 rows); 4 steps would be 16 rows


def test_state_round_trips_and_is_versioned(tmp_path):
    a = GammaController(0.4, target=0.3, window=5)
    for losses in ([1.0, 2.0, 3.0], [0.5, 2.5, 4.0], [0.25, 2.0, 3.5]):
        a.update(torch.tensor(losses, dtype=torch.float32))
    a.save(str(tmp_path))
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["version"] == STATE_VERSION and state["rows"] == 9
    b = GammaController(0.4, target=0.3, window=5)
    assert b.load(str(tmp_path)).startswith("gamma state restored") and b.state_dict() == a.state_dict()
    for c in (a, b):
        c.update(torch.tensor([1.25, 2.75], dtype=torch.float32))
    assert b.gamma == a.gamma and b.state_dict() == a.state_dict()  # a resumed run continues the same γ sequence
    assert GammaController(0.4, target=0.3).load(str(tmp_path / "none")) is None


@pytest.mark.parametrize(("changed", "named"), [
    ({"target": 0.25}, "target 0.3 -> 0.25"), ({"when": "above"}, "when 'below' -> 'above'"),
    ({"window": 64}, "window 5 -> 64"),
])
def test_a_state_saved_with_another_target_rule_or_window_restarts_the_controller(tmp_path, changed, named):
    a = GammaController(0.4, target=0.3, window=5)
    for losses in ([1.0, 2.0, 3.0], [0.5, 2.5, 4.0]):
        a.update(torch.tensor(losses, dtype=torch.float32))
    a.save(str(tmp_path))
    b = GammaController(0.4, **{"target": 0.3, "window": 5, "when": "below", **changed})
    line = b.load(str(tmp_path))
    assert named in line and "restarts" in line
    assert b.gamma == a.gamma and b.steps == [] and b.rows == 0  # γ kept until the next step's own losses
    losses = torch.tensor([1.0, 3.0, 2.0, 4.0], dtype=torch.float32)
    assert b.update(losses) == torch.quantile(losses.double(), b.quantile).item()


def test_earlier_states_are_converted_and_an_unknown_version_refused(tmp_path):
    old = {"gamma": 2.5, "target": 0.5, "when": "below", "window": [-0.5, -0.25, 0.0, 0.25, 0.5], "window_size": 256}
    v2 = {"version": 2, "gamma": 1.75, "spread": 0.3, "seen": 40, "target": 0.5, "when": "below", "window": 256}
    for state, gamma, name in ((old, 2.5, "unversioned"), (v2, 1.75, "version-2")):
        (tmp_path / STATE_FILE).write_text(json.dumps(state))
        controller = GammaController(0.4, target=0.5)
        assert name in controller.load(str(tmp_path))
        assert controller.gamma == gamma and controller.rows == 0 and controller.steps == []
    (tmp_path / STATE_FILE).write_text(json.dumps({**controller.state_dict(), "version": 99}))
    with pytest.raises(DynCotConfigError, match=f"{STATE_FILE}.*version 99"):
        GammaController(0.4, target=0.5).load(str(tmp_path))


# ----------------------------------------------------------------------------------------------- the simulation
def simulate(rows_per_step: int, target: float, when: str, model: str, seed: int = 0,
             rescore: int = 0) -> dict[str, float]:
    """A closed loop with the optimizer step as its clock: the real controller (float32 losses, float64 γ, the
    trainer's ``choose_views``) picks each step's rows, and training changes the losses it sees next.

    ``rows_per_step`` × 100 samples, 3 epochs of 100 steps, every sample once per epoch (a fresh order each epoch).
    A sample's plain-answer loss is ``(floor · mem + excess) · e^(0.05 ξ)`` (fresh noise each step). ``excess`` falls
    with every step (the general learning; the same curve per *step* at every rows-per-step, so fewer rows per step
    means fewer losses to follow the same fall with), and training moves the sample: on its plain answer ``mem``
    drops by 15 % and ``excess`` by 20 % (memorisation: stairs between epochs), on its CoT target ``mem`` rises 3 %.
    Loss models: ``fall`` (two populations, 60 % starting near 3 and 40 % near 5.5, falling to floors near 0.5 and
    1.5 with a time constant of 15 steps: the fall per step is close to the spread at first) and ``cliff`` (one
    population, 4.0 → floor 1.0 ± 10 % within ~10 steps, the spread tiny next to the fall, as a random model learning
    a format). The reference is the exact target quantile of the samples not yet trained this epoch, at the
    current losses. Returns the share trained on CoT over the run and over epoch 1, and the agreement with the
    reference's choice over the run. ``rescore``: as ``dyncot_target_rescore``, the controller also gets the current
    losses of the next ``rescore`` samples of the epoch (fewer at its end), as the trainer re-scores them.
    """
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch, epochs = 100, 3
    n = rows_per_step * steps_per_epoch

    def lognormal(sigma: float) -> torch.Tensor:
        return torch.exp(sigma * torch.randn(n, generator=generator, dtype=torch.float64))

    if model == "fall":
        hard = torch.rand(n, generator=generator, dtype=torch.float64) < 0.4
        floor = torch.where(hard, 1.5, 0.5) * lognormal(0.15)
        excess = torch.where(hard, 5.5, 3.0) * lognormal(0.1) - floor
        rate = lognormal(0.3) / 15
    else:
        floor = 1.0 * lognormal(0.1)
        excess = 4.0 * lognormal(0.02) - floor
        rate = lognormal(0.1) / 4
    mem, decay = torch.ones(n, dtype=torch.float64), torch.exp(-rate)
    quantile = target if when == "below" else 1 - target
    controller = GammaController(0.4, target=target, when=when)
    chosen, agreed, epoch1 = [], [], []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for j in range(steps_per_epoch):
            noise = torch.exp(0.05 * torch.randn(n, generator=generator, dtype=torch.float64))
            losses = ((floor * mem + excess) * noise).float()
            ids = order[j * rows_per_step:(j + 1) * rows_per_step]
            reference = torch.quantile(losses[order[j * rows_per_step:]].double(), quantile).item()
            everyone = torch.ones(rows_per_step, dtype=torch.bool)
            upcoming = order[(j + 1) * rows_per_step:][:rescore]
            fresh = losses[upcoming] if rescore else None
            cot = choose_views(losses[ids], everyone, controller.update(losses[ids], fresh=fresh), when)
            chosen.append(cot)
            agreed.append(cot == choose_views(losses[ids], everyone, reference, when))
            if epoch == 0:
                epoch1.append(cot)
            excess *= decay
            plain_ids, cot_ids = ids[~cot], ids[cot]
            mem[plain_ids] *= 0.85
            excess[plain_ids] *= 0.8
            mem[cot_ids] *= 1.03
            mem.clamp_(0.05, 3.0)
    share = lambda rows: torch.cat(rows).double().mean().item()
    return {"share": share(chosen), "epoch1": share(epoch1), "agreement": share(agreed)}


@pytest.mark.parametrize("model", ["fall", "cliff"])
@pytest.mark.parametrize("when", ["below", "above"])
@pytest.mark.parametrize("target", [0.25, 0.5])
@pytest.mark.parametrize("rows_per_step", [1, 8, 64])
def test_simulation_holds_the_share_from_the_first_steps(rows_per_step, target, when, model):
    """The share over the whole run within 0.05 of the target at one row per step and 0.03 at 8 and 64, epoch 1's
    within 0.1 at 8 and 64, and the choices agree with the exact quantile's on at least 90 % of the rows
    (75 % at one row per step, where a step's γ can only come from earlier single losses)."""
    result = simulate(rows_per_step, target, when, model)
    assert abs(result["share"] - target) <= (0.05 if rows_per_step == 1 else 0.03), result
    if rows_per_step > 1:
        assert abs(result["epoch1"] - target) <= 0.1, result
    assert result["agreement"] >= (0.75 if rows_per_step == 1 else 0.9), result


@pytest.mark.parametrize("model", ["fall", "cliff"])
@pytest.mark.parametrize("when", ["below", "above"])
@pytest.mark.parametrize("target", [0.25, 0.5])
def test_rescoring_lifts_agreement_at_one_row_per_step(target, when, model):
    """At one row per step no look-back at past single losses agrees with the exact quantile on 90 % of the rows
    here (0.78-0.88); re-scoring the next 16 rows of the epoch at the current weights does, and the share over the
    run and over epoch 1 stays within 0.05 of the target."""
    without, with_ = simulate(1, target, when, model), simulate(1, target, when, model, rescore=16)
    assert without["agreement"] < 0.9 <= with_["agreement"], (without, with_)
    assert abs(with_["share"] - target) <= 0.05 and abs(with_["epoch1"] - target) <= 0.05, with_


# ----------------------------------------------------------------------------------------- through llamafactory
def selection_records(output_dir) -> list[dict]:
    return [json.loads(x) for x in (output_dir / "dyncot_selection" / "rank0.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(("target", "when"), [(0.5, "below"), (0.25, "below"), (0.5, "above"), (0.25, "above")])
def test_one_row_per_step_holds_the_target_share(warm_model, tmp_path, target, when):
    """One rank, per_device_train_batch_size 1, no accumulation: one float32 selection loss per optimizer step.
    800 steps; the share of CoT over the second half (400 rows) is within 0.1 of the target, with no window set.
    (``below`` pulls the 32 rows' losses together here, spread 0.07 down to 0.01, while they still fall by about
    1e-4 a row: the hand-set window of 16 rows the earlier tracker needed is not needed.)"""
    model, data = warm_model
    config = tiny_sft_config(
        model, data, "spread", tmp_path / "out", max_steps=800, per_device_train_batch_size=1, num_train_epochs=100,
        learning_rate=1.0e-5, dyncot_strategy="dynamic", dyncot_log_selection=True, dyncot_target_cot_ratio=target,
        dyncot_cot_when=when,
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


def rescored_gammas(records: list[dict], target: float, steps_per_epoch: int, rows: int) -> list[tuple[float, float]]:
    """(logged γ, the γ ``dyncot_target_rescore`` documents) for every step of a run with one row per step and
    unchanging weights that has ``rows`` = 2 re-scored rows ahead of it in its epoch: the level-quantile of those rows'
    losses (at unchanging weights, the losses their own steps record), the level being the target plus the integral
    correction of the rows counted before (one row per step: repaid over 40 rows)."""
    out, below = [], 0
    for s, record in enumerate(records):
        if s % steps_per_epoch + rows < steps_per_epoch:
            fresh = np.sort([records[s + 1 + i]["loss"][0] for i in range(rows)])
            level = min(max(target + (target * s - below) / 40.0, 0.005), 0.995)
            out.append((record["gamma"], float(fresh[0] + level * (fresh[1] - fresh[0]))))
        below += record["loss"][0] < record["gamma"]
    return out


@pytest.mark.slow
def test_rescoring_sets_gamma_from_the_next_rows_and_trains_the_same_rows(tiny_model_dir, tmp_path):
    """``dyncot_target_rescore: 2`` at one row per step, through ``llamafactory-cli train`` with a learning rate of 0
    (weights that never move: a row re-scored ahead of its step has the very loss its step records). Each step whose
    epoch still holds two rows after it selects with the level-quantile of those two rows' losses, as documented; the
    run without re-scoring does not (its γ comes from past steps); both runs train the same rows in the same order."""
    write_plugin_dataset(tmp_path / "data", "toy", n=8, image_size=(32, 32))

    def run(name, **keys):
        config = tiny_sft_config(
            tiny_model_dir, tmp_path / "data", "toy", tmp_path / name, max_steps=16, num_train_epochs=2,
            per_device_train_batch_size=1, learning_rate=0.0, dyncot_strategy="dynamic", dyncot_log_selection=True,
            dyncot_target_cot_ratio=0.5, **keys,
        )
        proc = run_llamafactory("train", config, tmp_path / f"{name}_work")
        return selection_records(tmp_path / name), proc.stdout + proc.stderr

    rescored, log = run("rescore", dyncot_target_rescore=2)
    plain, _ = run("plain")
    assert "rescore=2" in log
    assert [r["id"] for r in rescored] == [r["id"] for r in plain] and len(rescored) == 16
    assert [r["loss"] for r in rescored] == [r["loss"] for r in plain]  # the same rows, the same (unmoved) weights
    pairs = rescored_gammas(rescored, 0.5, 8, 2)
    assert len(pairs) == 12
    assert all(logged == pytest.approx(documented, abs=1e-12) for logged, documented in pairs), pairs
    other = rescored_gammas(plain, 0.5, 8, 2)
    assert sum(logged == pytest.approx(documented, abs=1e-12) for logged, documented in other) <= 3, other
