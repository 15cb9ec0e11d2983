"""Selection records name their samples, and the report says how stable each sample's target is across epochs."""

from __future__ import annotations

import json

import pytest

from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import view_change_count, write_plugin_dataset
from dyncot_plugin.train.report import format_view_changes, main, selection_records, view_changes


def test_view_changes_per_epoch_on_written_records():
    records = [
        {"step": 0, "epoch": 0, "id": ["a", "b", "c"], "cot": [True, False, False], "eligible": [True, True, False]},
        {"step": 1, "epoch": 0, "id": ["d"], "cot": [True], "eligible": [True]},
        {"step": 2, "epoch": 1, "id": ["a", "b"], "cot": [True, True], "eligible": [True, True]},  # b changed
        {"step": 3, "epoch": 1, "id": ["c", "d"], "cot": [True, False], "eligible": [True, True]},  # d changed
        {"step": 4, "epoch": 2, "id": ["a", "b", None], "cot": [False, True, True], "eligible": [True, True, True]},
    ]
    rows, unnamed = view_changes(records)
    assert rows == [{"epoch": 1, "samples": 3, "changed": 2, "share": 2 / 3},  # c was not eligible in epoch 0
                    {"epoch": 2, "samples": 2, "changed": 1, "share": 0.5}]
    assert unnamed == 1
    text = format_view_changes(rows, unnamed)
    assert "     1        3        2   0.667" in text and "1 selection(s) without a sample id" in text


@pytest.mark.slow
def test_records_name_each_sample_and_the_report_counts_view_changes(tiny_model_dir, tmp_path, capsys):
    """Two datasets, one with ids and one without (named ``noid#<row>``), 8 rows, 4 epochs of 4 steps at a 0.5
    target share (rows 3 and 6 without CoT text): every epoch names each of the 8 samples once, and the report's
    per-epoch share of eligible samples that changed view equals the hand count."""
    write_plugin_dataset(tmp_path / "data", "toy", n=4, cot_rows=[0, 1, 2])
    write_plugin_dataset(tmp_path / "data", "noid", n=4, cot_rows=[0, 1, 3],
                         mutate=lambda rows: [row.pop("id") for row in rows])
    config = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "toy,noid", tmp_path / "out", max_steps=16, num_train_epochs=4,
        dyncot_strategy="dynamic", dyncot_target_cot_ratio=0.5, dyncot_target_window=8, dyncot_missing_cot="sft",
        dyncot_log_selection=True,
    )
    stale = tmp_path / "out" / "dyncot_selection" / "rank0.jsonl"  # an earlier run's records in the same output_dir
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"step": 0, "epoch": 0, "id": ["old"], "cot": [True], "eligible": [True]}) + "\n")
    run_llamafactory("train", config, tmp_path)
    records = selection_records(tmp_path / "out")
    names = {f"toy_{i:06d}" for i in range(4)} | {f"noid#{i}" for i in range(4)}
    for epoch in range(4):
        seen = [s for r in records if r["epoch"] == epoch for s in r["id"]]
        assert sorted(seen) == sorted(names), epoch
    without_cot = {s for r in records for s, ok in zip(r["id"], r["eligible"]) if not ok}
    assert without_cot == {"toy_000003", "noid#2"}
    for r in records:  # a sample without a CoT view is never chosen for CoT
        assert not any(cot and not ok for cot, ok in zip(r["cot"], r["eligible"]))

    rows, unnamed = view_changes(records)
    expected = view_change_count(records)
    assert unnamed == 0 and [r["epoch"] for r in rows] == [1, 2, 3]
    assert {r["epoch"]: (r["samples"], r["changed"]) for r in rows} == expected
    assert all(samples == 6 for samples, _ in expected.values())
    assert any(changed for _, changed in expected.values())  # a 0.5 share on a moving model: some views flip

    capsys.readouterr()
    assert main([str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for epoch, (samples, changed) in expected.items():
        assert f"{epoch:>6} {samples:>8} {changed:>8} {changed / samples:>7.3f}" in out

