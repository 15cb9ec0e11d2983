"""ScienceQA converter (`dyncot-data convert-scienceqa`): MM-CoT layout, datasets, images, dataset_info, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.scienceqa import raw

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.tasks.scienceqa import convert as sqa


@pytest.fixture
def raw_paths(tmp_path):
    return raw.build_raw(tmp_path / "raw")


def _convert(raw_paths, out, **kw):
    kw.setdefault("image_dir", raw_paths["image_dir"])
    kw.setdefault("captions_path", raw_paths["captions"])
    return sqa.convert(raw_paths["problems"], raw_paths["splits"], out, **kw)


def _rows(out: Path, name: str) -> dict[str, dict]:
    return {r["id"]: r for r in json.loads((out / f"{name}.json").read_text())}


def test_fixture_has_the_required_schema_and_mix(raw_paths):
    problems = json.loads(raw_paths["problems"].read_text())
    keys = {"question", "choices", "answer", "hint", "image", "lecture", "solution", "grade", "subject", "topic",
            "category", "skill", "split"}  # fmt: skip
    assert all(set(p) == keys for p in problems.values())
    assert any(p["image"] and p["hint"] for p in problems.values())
    assert any(p["image"] and not p["hint"] for p in problems.values())
    assert any(not p["image"] and p["hint"] for p in problems.values())
    assert any(not p["image"] and not p["hint"] for p in problems.values())


def test_mmcot_input_layout_and_targets(raw_paths, tmp_path):
    out = tmp_path / "data"
    summary = _convert(raw_paths, out)
    assert summary["datasets"] == {
        f"sqa_{split}_{kind}": n
        for split, n in (("train", 6), ("val", 2), ("test", 8))
        for kind in ("answer", "rationale", "stage2_gold")
    }
    answer = _rows(out, "sqa_test_answer")
    # image + hint + caption: Context = hint + " " + caption (MM-CoT's get_context_text).
    r = answer["301"]
    assert r["messages"][0] == {
        "role": "user",
        "content": "<image>Question: Which bird can swim?\n"
        "Context: Some birds live near the sea. A penguin in the water.\n"
        "Options: (A) penguin (B) robin (C) crow",
    }
    assert r["messages"][1] == {"role": "assistant", "content": "The answer is (A)."}
    assert r["images"] == ["images/301.png"]
    assert r["cot"] == (
        "<think>Birds have feathers and lay eggs. A penguin can swim.</think><answer>The answer is (A).</answer>"
    )
    # no hint, no caption: N/A; no image: no <image>, images [].
    r = answer["304"]
    assert r["messages"][0]["content"] == (
        "Question: What is the capital of France?\nContext: N/A\nOptions: (A) Paris (B) Rome"
    )
    assert r["images"] == []
    # five options, answer index 4 -> (E)
    assert answer["306"]["messages"][0]["content"].endswith(
        "Options: (A) your friend (B) Your friend, (C) Your Friend (D) your Friend, (E) Your friend"
    )
    assert answer["306"]["messages"][1]["content"] == "The answer is (B)."
    # empty lecture: the rationale is the solution alone.
    assert answer["307"]["cot"] == "<think>The sun is a star.</think><answer>The answer is (B).</answer>"

    rationale = _rows(out, "sqa_test_rationale")
    assert rationale["301"]["messages"][0] == answer["301"]["messages"][0]
    assert rationale["301"]["messages"][1]["content"] == "Birds have feathers and lay eggs. A penguin can swim."
    assert "cot" not in rationale["301"]

    gold2 = _rows(out, "sqa_test_stage2_gold")
    assert gold2["301"]["messages"][0]["content"] == (
        answer["301"]["messages"][0]["content"] + "\nSolution: Birds have feathers and lay eggs. A penguin can swim."
    )
    assert gold2["301"]["messages"][1]["content"] == "The answer is (A)."
    # order = pid_splits order
    assert list(answer) == raw.TEST_IDS


def test_white_space_and_missing_rationale(raw_paths, tmp_path):
    out = tmp_path / "data"
    summary = _convert(raw_paths, out, splits=["train"])
    train = _rows(out, "sqa_train_answer")
    # the question's new line is collapsed (MM-CoT's loader joins on white space)
    assert train["106"]["messages"][0]["content"].startswith(
        "Question: Which tense does the sentence use? Mona will paint a picture.\n"
    )
    # neither lecture nor solution: cot is null (the plugin's dyncot_missing_cot policy decides), counted.
    assert train["105"]["cot"] is None
    assert summary["no_cot"] == {"train": 1}


def test_images_and_dataset_info(raw_paths, tmp_path):
    out = tmp_path / "data"
    summary = _convert(raw_paths, out, splits=["train", "minival"])
    assert summary["images"] == 2  # 101, 102 (minival = 201, no image)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["101.png", "102.png"]
    src = raw_paths["image_dir"] / "train" / "101" / "image.png"
    assert (out / "images" / "101.png").read_bytes() == src.read_bytes()
    info = json.loads((out / "dataset_info.json").read_text())
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    assert info["sqa_train_answer"] == {
        "file_name": "sqa_train_answer.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images", "cot": "cot"},
        "tags": tags,
    }
    assert info["sqa_train_rationale"]["columns"] == {"messages": "messages", "images": "images"}
    assert info["sqa_minival_answer"]["columns"] == {"messages": "messages", "cot": "cot"}  # no image at all


def test_symlink_mode_limit_and_prefix(raw_paths, tmp_path):
    out = tmp_path / "data"
    summary = _convert(raw_paths, out, splits=["test"], limit=3, prefix="sq", image_mode="symlink")
    assert summary["datasets"] == {"sq_test_answer": 3, "sq_test_rationale": 3, "sq_test_stage2_gold": 3}
    assert list(_rows(out, "sq_test_answer")) == ["301", "302", "303"]
    assert (out / "images" / "301.png").is_symlink()


def test_without_captions_context_is_hint_only(raw_paths, tmp_path):
    out = tmp_path / "data"
    _convert(raw_paths, out, splits=["test"], captions_path=None)
    assert "Context: Some birds live near the sea.\n" in _rows(out, "sqa_test_answer")["301"]["messages"][0]["content"]


def _break(raw_paths, pid, **changes):
    problems = json.loads(raw_paths["problems"].read_text())
    for key, value in changes.items():
        if value is KeyError:
            del problems[pid][key]
        else:
            problems[pid][key] = value
    raw_paths["problems"].write_text(json.dumps(problems))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"answer": KeyError}, "problem '303': missing key 'answer'"),
        ({"answer": 7}, "problem '303': key 'answer' is 7; expected an index into 'choices' (0..3)"),
        ({"choices": ["a"] * 6}, "problem '303': key 'choices' has 6 entries; expected 2..5"),
        ({"grade": 5}, "problem '303': key 'grade' is 5; expected str"),
        ({"image": "image.png"}, "problem '303': image not found at"),
    ],
)
def test_schema_errors_name_file_problem_and_key(raw_paths, tmp_path, changes, message):
    _break(raw_paths, "303", **changes)
    with pytest.raises(sqa.ScienceQAError, match="problems.json") as err:
        _convert(raw_paths, tmp_path / "data", splits=["test"])
    assert message in str(err.value)
    assert not (tmp_path / "data").exists()  # nothing written when the input is bad


def test_other_errors(raw_paths, tmp_path):
    with pytest.raises(sqa.ScienceQAError, match=r"no split 'dev'; the file has minitest, minival, test, train, val"):
        _convert(raw_paths, tmp_path / "d1", splits=["dev"])
    with pytest.raises(sqa.ScienceQAError, match=r"problem '301' has image 'image.png' but no --image-dir"):
        _convert(raw_paths, tmp_path / "d2", splits=["test"], image_dir=None)
    splits = json.loads(raw_paths["splits"].read_text())
    splits["test"].append("999")
    raw_paths["splits"].write_text(json.dumps(splits))
    with pytest.raises(sqa.ScienceQAError, match=r"split 'test' lists problem '999', which is not in"):
        _convert(raw_paths, tmp_path / "d3", splits=["test"])


def test_cli(raw_paths, tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["convert-scienceqa", "--problems", str(raw_paths["problems"]), "--splits-file", str(raw_paths["splits"]),
            "--image-dir", str(raw_paths["image_dir"]), "--captions", str(raw_paths["captions"]), "--out", str(out),
            "--split", "train", "--split", "test"]  # fmt: skip
    assert data_main(argv) == 0
    printed = capsys.readouterr().out
    assert "sqa_test_answer: 8 rows" in printed and "sqa_train_rationale: 6 rows" in printed
    assert "1 problem(s) of split 'train' have neither lecture nor solution" in printed
    assert not (out / "sqa_val_answer.json").exists()
    # errors: exit code 1 and a one-line message naming the file
    assert data_main(argv[:-4] + ["--split", "nope"]) == 2
    assert "pid_splits.json: no split 'nope'" in capsys.readouterr().err
