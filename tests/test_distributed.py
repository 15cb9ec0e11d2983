"""Two ranks on CPU (torchrun + gloo), DeepSpeed ZeRO-3, ranks selecting different targets."""

import json
import os
import sys
from pathlib import Path

import pytest

from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import read_log, write_plugin_dataset

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.serial]
DS_Z3 = Path(__file__).resolve().parents[1] / "examples" / "deepspeed" / "ds_z3.json"


def test_zero3_two_ranks_selecting_differently_finish(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed")
    # Sequential order, 2 rows per rank per step: rank 0 gets rows 0-1 then 4-5, rank 1 rows 2-3 then 6-7.
    # Only rank 0's rows have CoT text, and gamma is above any loss: rank 0 trains on CoT, rank 1 on plain,
    # so the two ranks run sequences of different lengths through ZeRO-3's gathered layers at every step.
    write_plugin_dataset(tmp_path / "data", "split", n=8, cot_rows=[0, 1, 4, 5])
    config = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "split", tmp_path / "out", max_steps=2,
        deepspeed=str(DS_Z3), disable_shuffling=True,
        dyncot_strategy="dynamic", dyncot_gamma=1.0e6, dyncot_missing_cot="sft", dyncot_log_selection=True,
    )
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = run_llamafactory("train", config, tmp_path, env=env, timeout=900)
    output = proc.stdout + proc.stderr
    # the plugin is active in both torchrun workers
    assert "(rank 0): patched llamafactory" in output and "(rank 1): patched llamafactory" in output
    # ZeRO-3 partitions the frozen vision tower too; the training forward still takes the selection pass's features
    assert "image features reused in 2 training forwards, recomputed in 0" in output
    records = {
        rank: [json.loads(line) for line in (tmp_path / "out" / "dyncot_selection" / f"rank{rank}.jsonl").read_text().splitlines()]
        for rank in (0, 1)
    }
    assert [r["cot"] for r in records[0]] == [[True, True], [True, True]]
    assert [r["cot"] for r in records[1]] == [[False, False], [False, False]]
    # cot_ratio is reduced over ranks: half the samples of each step trained on CoT
    assert [e["cot_ratio"] for e in read_log(tmp_path / "out")] == [0.5, 0.5]


def test_zero3_two_ranks_hold_the_target_share_with_the_same_gamma(warm_model, tmp_path):
    """Target share 0.5, one row per rank per step (two rows per optimizer step): γ is tracked from both ranks'
    losses in rank order and broadcast, so every step's records agree on it bit for bit; the share of CoT over the
    second half (200 rows) is within 0.1 of 0.5; and the report's per-epoch view changes, merged over the ranks
    (a sample moves between ranks from one epoch to the next), equal the hand count. Window 16 rows for the warm
    tiny model, as in test_target_share.py. With ``dyncot_target_rescore: 1``: each rank also re-scores its next
    row (an extra no-grad forward through ZeRO-3's gathered layers on both ranks, none at an epoch's last step), and
    the re-scored rows of both ranks reach the controller, which still gives both ranks the same γ."""
    pytest.importorskip("deepspeed")
    from dyncot_plugin.testing.plugin_data import view_change_count
    from dyncot_plugin.train.report import selection_records, view_changes

    model, data = warm_model
    config = tiny_sft_config(
        model, data, "spread", tmp_path / "out", max_steps=200, per_device_train_batch_size=1, num_train_epochs=100,
        learning_rate=1.0e-5, deepspeed=str(DS_Z3), logging_steps=10, dyncot_strategy="dynamic",
        dyncot_target_cot_ratio=0.5, dyncot_target_window=16, dyncot_target_rescore=1, dyncot_log_selection=True,
    )
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run_llamafactory("train", config, tmp_path, env=env, timeout=1800)
    records = {
        rank: [json.loads(line) for line in (tmp_path / "out" / "dyncot_selection" / f"rank{rank}.jsonl").read_text().splitlines()]
        for rank in (0, 1)
    }
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]] == list(range(200))
    assert [r["gamma"] for r in records[0]] == [r["gamma"] for r in records[1]]  # bit for bit
    log = read_log(tmp_path / "out")
    assert [e["gamma"] for e in log] == pytest.approx([records[0][s]["gamma"] for s in range(9, 200, 10)], abs=1e-6)
    second_half = [cot for rank in (0, 1) for r in records[rank][100:] for cot in r["cot"]]
    assert len(second_half) == 200 and abs(sum(second_half) / 200 - 0.5) <= 0.1, sum(second_half) / 200
    merged = selection_records(tmp_path / "out")
    for epoch in range(12):  # 32 rows, 16 steps of 2 rows per epoch: each sample once per epoch, on either rank
        assert len({s for r in merged if r["epoch"] == epoch for s in r["id"]}) == 32
    rows, unnamed = view_changes(merged)
    assert unnamed == 0 and {r["epoch"]: (r["samples"], r["changed"]) for r in rows} == view_change_count(merged)
