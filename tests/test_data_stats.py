"""dyncot-data stats: hand-checked counts on bundled CMKP lines, the README's facts on the full CMKP files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.io.datasets import DatasetError
from dyncot_plugin.io.files import atomic_write_json
from dyncot_plugin.tasks.mmkp import convert as cmkp
from dyncot_plugin.tasks.mmkp import stats

DATA = Path(__file__).resolve().parent / "data"
TRAIN = DATA / "cmkp_train_src.txt"  # 120 posts from CMKP tw_mm_s1_tiny/train_src.txt
TEST = DATA / "cmkp_test_src.txt"  # 40 posts from CMKP tw_mm_s1/test_src.txt
SHARED = Path(os.environ.get("DYNCOT_CMKP_DIR", Path(__file__).resolve().parents[2] / "shared" / "cmkp"))
needs_shared = pytest.mark.skipif(
    not (SHARED / "tw_mm_s1" / "test_src.txt").is_file(), reason=f"full CMKP files not found in {SHARED}"
)


def test_present_rule_on_hand_checked_lines():
    """Lines 1-10 of the CMKP test file, checked by eye: 'beagles' ~ 'beagle' (stems agree), 'chicken'/'pasta'
    occur, 'storm hour' does not ('storm' alone is not enough), multi-word 'go hoos' is absent."""
    posts = stats.load_posts(TEST)[:10]
    per_post = [stats.split_stats([p])["present"] for p in posts]
    assert [p[1] for p in posts][:5] == [["wildflower hour"], ["zshq"], ["beagles"], ["bbmas"], ["storm hour"]]
    assert per_post == [0, 0, 1, 1, 0, 0, 0, 0, 2, 0]


def test_bundled_counts():
    train, test = stats.load_posts(TRAIN), stats.load_posts(TEST)
    s = stats.compute_stats({"train": train, "test": test})
    assert s["splits"]["train"] == {
        "posts": 120,
        "keyphrases": 160,
        "keyphrases_per_post": 160 / 120,
        "unique_keyphrases": 150,
        "present": 50,
        "absent": 110,
        "present_share": 50 / 160,
        "absent_share": 110 / 160,
    }
    assert s["splits"]["test"] == {
        "posts": 40,
        "keyphrases": 59,
        "keyphrases_per_post": 59 / 40,
        "unique_keyphrases": 58,
        "present": 30,
        "absent": 29,
        "present_share": 30 / 59,
        "absent_share": 29 / 59,
    }
    # the 8 shared keyphrases: arrow, bbmas, cats of twitter, coys, mn twins, storm hour, tbt, throwback thursday
    assert s["overlap"] == {
        "train->test": {
            "unique_target_keyphrases": 58,
            "seen_in_source": 8,
            "overlap": 8 / 58,
            "occurrence_overlap": 9 / 59,
        }
    }


def test_overlap_is_exact_string_and_directional():
    a = [("t", ["new york", "nyc"])]
    b = [("t", ["New York", "nyc", "nyc", "boston"])]
    assert stats.keyphrase_overlap(a, b) == {
        "unique_target_keyphrases": 3,
        "seen_in_source": 1,
        "overlap": 1 / 3,
        "occurrence_overlap": 2 / 4,
    }
    assert stats.keyphrase_overlap(b, a)["overlap"] == 1 / 2


def test_json_and_cmkp_inputs_agree(tmp_path):
    cmkp.convert({"test": TEST, "train": TRAIN}, tmp_path, use_images=False)
    from_json = stats.compute_stats(
        {"train": stats.load_posts(tmp_path / "mmkp_train.json"), "test": stats.load_posts(tmp_path / "mmkp_test.json")}
    )
    from_src = stats.compute_stats({"train": stats.load_posts(TRAIN), "test": stats.load_posts(TEST)})
    assert from_json == from_src


def test_bad_json_rows(tmp_path):
    atomic_write_json(tmp_path / "a.json", [{"id": "x_test_000000", "text": "t", "messages": []}])
    with pytest.raises(DatasetError, match=r"a\.json: row 0 \(x_test_000000\) lacks a 'text' string or a 'keyphrases'"):
        stats.load_posts(tmp_path / "a.json")
    atomic_write_json(tmp_path / "b.json", [{"text": "t", "keyphrases": []}])
    with pytest.raises(DatasetError, match=r"b\.json: row 0 \(no id\): empty keyphrase list"):
        stats.load_posts(tmp_path / "b.json")


def test_cli_table_and_json(tmp_path, capsys):
    out = tmp_path / "stats.json"
    assert data_main(["stats", f"train={TRAIN}", f"test={TEST}", "--json", str(out), "-q"]) == 0
    table = capsys.readouterr().out
    assert "train       120    1.333        150   31.25%   68.75%" in table
    assert "test         40    1.475         58   50.85%   49.15%" in table
    assert "train->test   13.79%  (8 / 58; 15.25% of keyphrase occurrences)" in table
    saved = json.loads(out.read_text())
    assert saved["splits"]["test"]["file"] == str(TEST)
    assert saved["overlap"]["train->test"]["seen_in_source"] == 8
    assert data_main(["stats", f"test={TEST}", "--json", "-", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["test"]["posts"] == 40


@pytest.mark.parametrize(
    "argv, message",
    [
        (["dev=x.txt"], "unknown split name 'dev' in 'dev=x.txt'; use one of train, valid, test"),
        ([f"test={TEST}", f"test={TRAIN}"], "split test given twice"),
        (["test=/nonexistent/test_src.txt"], "/nonexistent/test_src.txt: no such file"),
        ([str(TEST).replace("cmkp_test_src", "cmkp_src")], "cannot tell the split from the file name"),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, message):
    assert data_main(["stats", *argv, "--json", str(tmp_path / "s.json"), "-q"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_cli_bad_line_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "test_src.txt"
    lines = TEST.read_text().split("\n")
    lines[20] = lines[20].replace("<sep>", " ", 1)
    bad.write_text("\n".join(lines))
    assert data_main(["stats", str(bad), "-q"]) == 2
    assert f"{bad}:21: expected 3 fields separated by <sep>" in capsys.readouterr().err


@needs_shared
def test_full_cmkp_facts():
    """The facts the shared README states: 70.01% of the 2,534 unique test keyphrases occur in valid; 1.325
    keyphrases per test post."""
    s = stats.compute_stats(
        {
            "valid": stats.load_posts(SHARED / "tw_mm_s1" / "valid_src.txt"),
            "test": stats.load_posts(SHARED / "tw_mm_s1" / "test_src.txt"),
        }
    )
    test = s["splits"]["test"]
    assert (test["posts"], test["unique_keyphrases"]) == (5372, 2534)
    assert round(test["keyphrases_per_post"], 3) == 1.325
    assert s["splits"]["valid"]["posts"] == 5370
    o = s["overlap"]["valid->test"]
    assert (o["seen_in_source"], o["unique_target_keyphrases"]) == (1774, 2534)
    assert round(100 * o["overlap"], 2) == 70.01
    assert round(100 * test["present_share"], 2) == 37.45


def test_present_rule_agrees_with_the_evaluator():
    """Same present/absent decision as dyncot-eval's scorer. The scorer also merges gold keyphrases of one post
    whose stems coincide (line 27: 'cat' and 'cats' both stem to 'cat'), so it counts one absent target fewer."""
    from dyncot_plugin.tasks.mmkp.metrics import evaluate_keyphrases

    posts = stats.load_posts(TEST)
    golds = [kps for _, kps in posts]
    scored = evaluate_keyphrases(golds, golds, [text for text, _ in posts])
    ours = stats.split_stats(posts)
    assert posts[26][1] == ["cat", "cats of twitter", "cats"]
    assert (scored["present"]["num_targets"], scored["absent"]["num_targets"]) == (30, 28)
    assert (ours["present"], ours["absent"]) == (30, 29)
