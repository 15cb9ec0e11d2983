"""dataset_io: atomic writes, row loading, split names, dataset_info.json entries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dyncot_plugin.io import datasets, files, splits
from dyncot_plugin.io.datasets import DatasetError


def _listing(path):
    return sorted(p.name for p in path.iterdir())


def test_atomic_write_json_list_is_one_row_per_line_and_valid_json(tmp_path):
    rows = [{"id": "a", "x": "é"}, {"id": "b", "x": None}]
    out = files.atomic_write_json(tmp_path / "sub" / "rows.json", rows)
    text = out.read_text(encoding="utf-8")
    assert text == '[\n{"id": "a", "x": "é"},\n{"id": "b", "x": null}\n]\n'
    assert json.loads(text) == rows
    assert _listing(tmp_path / "sub") == ["rows.json"]  # no temporary file left
    files.atomic_write_json(tmp_path / "empty.json", [])
    assert json.loads((tmp_path / "empty.json").read_text()) == []
    files.atomic_write_json(tmp_path / "obj.json", {"a": [1, 2]})
    assert (tmp_path / "obj.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'


def test_atomic_open_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "data.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), files.atomic_open(target) as f:
        f.write("half a fi")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["data.json"]
    files.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert _listing(tmp_path) == ["data.json"]


def test_atomic_write_new_file_gets_normal_permissions(tmp_path):
    path = files.atomic_write_text(tmp_path / "f.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_staged_writes_all_or_nothing(tmp_path):
    (tmp_path / "a.json").write_text("old a")
    with pytest.raises(ValueError), files.StagedWrites() as staged:
        staged.write_json(tmp_path / "a.json", [1])
        staged.write_text(tmp_path / "b.txt", "b")
        raise ValueError("fails before commit")
    assert _listing(tmp_path) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old a"
    with files.StagedWrites() as staged:
        staged.write_json(tmp_path / "a.json", [1])
        staged.write_text(tmp_path / "b.txt", "b")
    assert _listing(tmp_path) == ["a.json", "b.txt"]
    assert json.loads((tmp_path / "a.json").read_text()) == [1]


def test_load_rows_json_and_jsonl(tmp_path):
    rows = [{"id": "x_test_000000"}, {"id": "x_test_000001"}]
    files.atomic_write_json(tmp_path / "r.json", rows)
    assert datasets.load_rows(tmp_path / "r.json") == rows
    (tmp_path / "r.jsonl").write_text('{"id": 1}\n\n{"id": 2}\n')
    assert datasets.load_rows(tmp_path / "r.jsonl") == [{"id": 1}, {"id": 2}]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", '[{"id": 1},\n{"id": }]', "bad.json:2: not valid JSON"),
        ("obj.json", '{"id": 1}', "expected a JSON list of rows, got dict"),
        ("ints.json", "[1, 2]", "row 0 is a int, expected an object"),
        ("bad.jsonl", '{"id": 1}\n{oops\n', "bad.jsonl:2: not valid JSON"),
    ],
)
def test_load_rows_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message):
        datasets.load_rows(tmp_path / name)


def test_load_rows_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        datasets.load_rows(tmp_path / "nope.json")


def test_split_names():
    assert splits.SPLITS == ("train", "valid", "test")
    assert splits.parse_split_spec("test=a/b.txt") == ("test", Path("a/b.txt"))
    assert splits.parse_split_spec("dir/valid_src.txt") == ("valid", Path("dir/valid_src.txt"))
    assert splits.parse_split_spec("mmkp_v2_train.json")[0] == "train"
    with pytest.raises(DatasetError, match="unknown split name 'dev' in 'dev=x.txt'; use one of train, valid, test"):
        splits.parse_split_spec("dev=x.txt")
    with pytest.raises(DatasetError, match="cannot tell the split"):
        splits.parse_split_spec("posts.txt")
    with pytest.raises(DatasetError, match="unknown split name 'eval'"):
        splits.check_split("eval")
    assert splits.sample_id("mmkp", "test", 17) == "mmkp_test_000017"
    assert splits.sample_id("mmkp_360k", "train", 1234567) == "mmkp_360k_train_1234567"


def test_dataset_entry_shapes():
    assert datasets.dataset_entry("mmkp_train.json") == {
        "file_name": "mmkp_train.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images", "cot": "cot"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    entry = datasets.dataset_entry("t.json", has_images=False, cot_column=None)
    assert entry["columns"] == {"messages": "messages"}


def test_update_dataset_info_merges_and_replaces(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "o.json"}}))
    datasets.update_dataset_info(tmp_path, "mmkp_test", "mmkp_test.json")
    datasets.update_dataset_info(tmp_path, "mmkp_test", "mmkp_test.json", has_images=False)
    datasets.update_dataset_info(tmp_path, "x", "x.json", entry={"file_name": "x.json", "custom": 1})
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert list(info) == ["other", "mmkp_test", "x"]
    assert info["other"] == {"file_name": "o.json"}
    assert info["mmkp_test"] == datasets.dataset_entry("mmkp_test.json", has_images=False)
    assert info["x"] == {"file_name": "x.json", "custom": 1}
    assert datasets.read_dataset_info(tmp_path) == info
    assert datasets.read_dataset_info(tmp_path / "none") == {}


def test_update_dataset_info_refuses_broken_file(tmp_path):
    (tmp_path / "dataset_info.json").write_text("{ broken")
    with pytest.raises(DatasetError, match="dataset_info.json:1: not valid JSON"):
        datasets.update_dataset_info(tmp_path, "a", "a.json")
    assert (tmp_path / "dataset_info.json").read_text() == "{ broken"


def test_project_dataset_info_lists_the_mmkp_files():
    """data_info/dataset_info.json: the converter's file names, the cot column, and LLaMA-Factory can parse it."""
    from pathlib import Path

    data_info = Path(__file__).resolve().parents[1] / "data_info"
    info = datasets.read_dataset_info(data_info)
    for name in (
        "mmkp_train",
        "mmkp_valid",
        "mmkp_test",
        "mmkp_v2_train",
        "mmkp_v2_test",
        "mmkp_360k_train",
        "mmkp_360k_valid",
        "mmkp_360k_test",
        "mmkp_demo",
    ):
        assert info[name] == datasets.dataset_entry(f"{name}.json"), name
    from llamafactory.data.parser import get_dataset_list

    attrs = get_dataset_list(["mmkp_train", "mmkp_v2_test", "mmkp_360k_test"], str(data_info))
    assert [(a.load_from, a.dataset_name, a.formatting, a.messages, a.images) for a in attrs] == [
        ("file", f"{n}.json", "sharegpt", "messages", "images")
        for n in ("mmkp_train", "mmkp_v2_test", "mmkp_360k_test")
    ]
