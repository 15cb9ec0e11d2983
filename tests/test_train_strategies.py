"""The four strategies through real ``llamafactory-cli train`` runs of the tiny Qwen2-VL on CPU.

Equivalences are exact (same seed, same data order, fp32): they pin down that the plugin adds nothing but the
choice of target.
"""

import json
import math

import pytest

from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import read_log, read_losses, write_plugin_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    dataset_dir = tmp_path_factory.mktemp("toy_data")
    write_plugin_dataset(dataset_dir, "toy", n=8)
    return dataset_dir


@pytest.fixture(scope="module")
def train(tiny_model_dir, toy_dataset, tmp_path_factory):
    """Run one 4-step training and return its output folder; identical configs are run once per module."""
    cache = {}

    def _train(dataset="toy", dataset_dir=None, **overrides):
        key = json.dumps([dataset, str(dataset_dir), overrides], sort_keys=True, default=str)
        if key not in cache:
            out = tmp_path_factory.mktemp("run")
            config = tiny_sft_config(
                tiny_model_dir, dataset_dir or toy_dataset, dataset, out / "out", max_steps=4, **overrides
            )
            cache[key] = (out / "out", run_llamafactory("train", config, out))
        return cache[key]

    return _train


@pytest.mark.low_end  # also on the low-end stack (.ci/run)
def test_dynamic_gamma_zero_equals_sft_equals_vanilla(train):
    vanilla, _ = train()
    sft, _ = train(dyncot_strategy="sft")
    dyn0, _ = train(dyncot_strategy="dynamic", dyncot_gamma=0.0)
    assert len(read_losses(vanilla)) == 4
    assert read_losses(sft) == read_losses(vanilla)
    assert read_losses(dyn0) == read_losses(sft)
    assert [e["cot_ratio"] for e in read_log(dyn0)] == [0.0] * 4
    assert "cot_ratio" not in read_log(vanilla)[0]  # vanilla logs are untouched


@pytest.mark.low_end  # also on the low-end stack (.ci/run)
def test_dynamic_gamma_above_any_loss_equals_cot(train):
    cot, _ = train(dyncot_strategy="cot")
    dyn, _ = train(dyncot_strategy="dynamic", dyncot_gamma=1.0e6)
    sft, _ = train(dyncot_strategy="sft")
    assert read_losses(dyn) == read_losses(cot)
    assert read_losses(cot) != read_losses(sft)  # the targets really differ
    assert [e["cot_ratio"] for e in read_log(dyn)] == [1.0] * 4
    # The mean selection loss is the plain answer's NLL: at step 1 (same weights) it is close to sft's loss
    # (a mean of per-row means vs. a token mean of the batch).
    assert abs(read_log(dyn)[0]["selection_loss"] - read_losses(sft)[0]) < 0.1


@pytest.mark.low_end  # also on the low-end stack (.ci/run)
def test_multitask_first_step_is_the_mean_of_plain_and_cot(train):
    multi, _ = train(dyncot_strategy="multitask")
    sft, _ = train(dyncot_strategy="sft")
    cot, _ = train(dyncot_strategy="cot")
    expected = 0.5 * (read_losses(sft)[0] + read_losses(cot)[0])
    assert math.isclose(read_losses(multi)[0], expected, rel_tol=1e-6)


def test_dynamic_writes_cot_ratio_plot_and_selection_records(train):
    out, proc = train(dyncot_strategy="dynamic", dyncot_gamma=1.0e6, dyncot_log_selection=True, plot_loss=True)
    assert (out / "training_loss.png").stat().st_size > 0
    assert (out / "training_cot_ratio.png").stat().st_size > 0
    records = [json.loads(line) for line in (out / "dyncot_selection" / "rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(all(r["cot"]) and len(r["loss"]) == 2 for r in records)
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["cot_ratio"] for e in state["log_history"] if "loss" in e] == [1.0] * 4  # what report_to receives


def test_cot_ratio_and_selection_loss_reach_tensorboard(train):
    """`report_to: tensorboard` receives the plugin's metrics at every logging step, equal to trainer_log.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = train(dyncot_strategy="dynamic", dyncot_gamma=1.0e6, report_to="tensorboard")
    (event_file,) = (out / "runs").rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file.parent))
    events.Reload()
    assert {"train/cot_ratio", "train/selection_loss", "train/loss"} <= set(events.Tags()["scalars"])
    log = read_log(out)
    for key in ("cot_ratio", "selection_loss", "loss"):
        scalars = events.Scalars(f"train/{key}")
        assert [e.step for e in scalars] == [1, 2, 3, 4]
        assert [e.value for e in scalars] == pytest.approx([entry[key] for entry in log], rel=1e-5)


def test_samples_without_cot_fall_back_when_allowed(train, tmp_path_factory):
    data = tmp_path_factory.mktemp("half")
    write_plugin_dataset(data, "half", n=8, cot_rows=[0, 1, 2, 3])
    out, proc = train(
        dataset="half", dataset_dir=data, dyncot_strategy="dynamic", dyncot_gamma=1.0e6,
        dyncot_missing_cot="sft", disable_shuffling=True,
    )
    # rows 0-3 (steps 1-2) have CoT, rows 4-7 (steps 3-4) do not: with gamma huge, exactly those train on CoT.
    assert [e["cot_ratio"] for e in read_log(out)] == [1.0, 1.0, 0.0, 0.0]
    assert "4 sample(s) without CoT text train on their plain target" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def alternating(tmp_path_factory):
    """Run overrides where every other row has CoT text: with gamma huge, each batch of 2 mixes a CoT and a plain row."""
    data = tmp_path_factory.mktemp("alternating")
    write_plugin_dataset(data, "alt", n=8, cot_rows=[0, 2, 4, 6])
    return dict(dataset="alt", dataset_dir=data, dyncot_strategy="dynamic", dyncot_gamma=1.0e6,
                dyncot_missing_cot="sft", disable_shuffling=True)


def test_reusing_image_features_changes_no_loss(train, alternating):
    reused, proc = train(**alternating, gradient_accumulation_steps=2)
    recomputed, proc_off = train(**alternating, gradient_accumulation_steps=2, dyncot_reuse_image_features=False)
    assert [e["cot_ratio"] for e in read_log(reused)] == [0.5] * 4  # mixed batches: one CoT row, one plain row
    assert len(read_losses(reused)) == 4 and read_losses(reused) == read_losses(recomputed)
    # 4 steps x 2 accumulated micro-batches: every training forward took the selection pass's features
    assert "image features reused in 8 training forwards, recomputed in 0" in proc.stdout + proc.stderr
    assert "image features" not in proc_off.stdout + proc_off.stderr


def test_image_features_are_not_reused_when_the_vision_tower_trains(train, alternating):
    out, proc = train(**alternating, freeze_vision_tower=False)
    log = proc.stdout + proc.stderr
    assert "image features are computed twice per step: the vision tower or projector trains" in log
    assert "reused in" not in log
    assert [e["cot_ratio"] for e in read_log(out)] == [0.5] * 4


def test_cot_too_long_for_cutoff_falls_back_and_is_counted(train, tmp_path_factory):
    data = tmp_path_factory.mktemp("long")

    def lengthen(rows):
        for row in rows[:3]:
            row["cot"] = "<think>" + "the image shows a long story " * 40 + "</think><answer>x; y</answer>"

    write_plugin_dataset(data, "long", n=8, mutate=lengthen)
    out, proc = train(dataset="long", dataset_dir=data, dyncot_strategy="cot", cutoff_len=128, disable_shuffling=True)
    log = proc.stdout + proc.stderr
    assert "5 with a CoT view, 0 without CoT text (plain target), 3 whose CoT view does not fit cutoff_len=128" in log
    # rows 0-2 fall back to plain: step 1 has 0 CoT rows out of 2, step 2 one of two.
    assert [e["cot_ratio"] for e in read_log(out)] == [0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize(
    "overrides",
    [
        {"finetuning_type": "lora", "lora_target": "all", "freeze_vision_tower": True},
        {"finetuning_type": "full", "freeze_vision_tower": False},
    ],
    ids=["lora-frozen-vision", "full-trainable-vision"],
)
def test_dynamic_trains_lora_and_full(train, tiny_model_dir, overrides):
    import safetensors.torch

    out, _ = train(dyncot_strategy="dynamic", dyncot_gamma=1.0e6, **overrides)
    losses = read_losses(out)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert [e["cot_ratio"] for e in read_log(out)] == [1.0] * 4
    if overrides["finetuning_type"] == "lora":
        adapter = safetensors.torch.load_file(str(out / "adapter_model.safetensors"))
        assert adapter and not any("visual" in key for key in adapter)  # vision tower frozen: no LoRA there
    else:
        before = safetensors.torch.load_file(f"{tiny_model_dir}/model.safetensors")
        after = safetensors.torch.load_file(str(out / "model.safetensors"))
        visual = [k for k in before if "visual" in k]
        assert visual and any(not before[k].equal(after[k]) for k in visual if k in after)


@pytest.mark.parametrize("strategy", ["cot", "multitask", "dynamic"])
def test_an_eval_set_without_cot_text_is_scored_on_its_plain_view(train, tmp_path_factory, strategy):
    """eval_dataset without a cot column: fine for every strategy; at step 0 (same weights) its eval_loss is the
    plain view's, i.e. what sft reports."""
    data = tmp_path_factory.mktemp(f"nocot_eval_{strategy}")
    write_plugin_dataset(data, "toy", n=8)
    info = json.loads((data / "dataset_info.json").read_text())
    info["plain_eval"] = {**info["toy"], "columns": {k: v for k, v in info["toy"]["columns"].items() if k != "cot"}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    common = dict(dataset_dir=data, eval_dataset="plain_eval", eval_strategy="steps", eval_steps=4, eval_on_start=True,
                  per_device_eval_batch_size=2)
    ours, _ = train(dyncot_strategy=strategy, dyncot_gamma=1.0e6, **common)
    sft, _ = train(dyncot_strategy="sft", **common)

    def eval_losses(out):
        return [e["eval_loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"]
                if "eval_loss" in e]

    assert len(eval_losses(ours)) == 2
    assert eval_losses(ours)[0] == pytest.approx(eval_losses(sft)[0], rel=1e-6)
