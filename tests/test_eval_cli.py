"""``dyncot-eval mmkp``: inputs, JSON keys and values, error messages."""

from __future__ import annotations

import json

import pytest

from dyncot_plugin.cli.eval import main as eval_main


def approx(x):
    return pytest.approx(x, abs=1e-12)


ROWS = [
    ("the cats sat on the mat", ["cat", "dog"],
     "<think>cats on a mat</think><answer>cats; cat; <unk>; dogs; mat; ,</answer>"),
    ("new york city", ["new york"], "new york; nyc"),
    ("sunny day", ["weather"], "<think>looks sunny"),  # unclosed think: no answer
]


def _dataset(rows):
    return [
        {
            "id": f"p{i}",
            "messages": [
                {"role": "user", "content": f"<image>Post: {text}"},
                {"role": "assistant", "content": "; ".join(kps)},
            ],
            "images": [f"img{i}.jpg"],
            "text": text,
            "keyphrases": kps,
            "cot": None,
        }
        for i, (text, kps, _) in enumerate(rows)
    ]


@pytest.fixture()
def files(tmp_path):
    ds = tmp_path / "mmkp_test.json"
    ds.write_text(json.dumps(_dataset(ROWS)), encoding="utf-8")
    preds = tmp_path / "generated_predictions.jsonl"
    preds.write_text(
        "".join(json.dumps({"prompt": f"Post: {t}", "predict": p, "label": "; ".join(k)}) + "\n" for t, k, p in ROWS),
        encoding="utf-8",
    )
    train = tmp_path / "mmkp_train.json"
    train.write_text(json.dumps(_dataset([("x", ["cat", "new york"], ""), ("y", ["sun"], "")])), encoding="utf-8")
    return {"dataset": ds, "preds": preds, "train": train, "dir": tmp_path}


def _run(capsys, *argv):
    code = eval_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_llamafactory_predictions_json_values(files, capsys):
    out_json = files["dir"] / "metrics.json"
    code, out, err = _run(
        capsys, "mmkp", "--predictions", str(files["preds"]), "--dataset", str(files["dataset"]),
        "--train", str(files["train"]), "--output", str(out_json), "--json",
    )
    assert code == 0, err
    r = json.loads(out)
    assert r == json.loads(out_json.read_text())
    for key in ("f1@1", "f1@3", "f1@5", "f1@M", "map@5", "present", "absent", "unseen", "cot_rate", "gen_len"):
        assert key in r
    # all: post 1 hits [cat, dogs] of 3 kept (cats, cat dup, <unk> and "," invalid); post 2 [new york] of 2;
    # post 3 one empty prediction
    assert r["num_posts"] == 3 and r["num_duplicates"] == 1 and r["num_invalid"] == 2
    assert r["f1@1"] == approx(4 / 7)
    assert r["f1@3"] == approx(28 / 57) and r["f1@5"] == approx(28 / 57) and r["f1@M"] == approx(28 / 57)
    assert r["map@5"] == approx(2 / 3)
    assert r["present"]["num_posts"] == 2 and r["present"]["f1@1"] == approx(1.0)
    assert r["present"]["f1@3"] == approx(6 / 7)
    assert r["absent"]["num_posts"] == 2 and r["absent"]["f1@1"] == approx(0.5)
    assert r["unseen"]["num_posts"] == 2 and r["unseen"]["f1@1"] == 0.0 and r["unseen"]["f1@3"] == approx(0.25)
    assert r["cot_rate"] == approx(2 / 3)
    assert r["outputs"]["kinds"]["cot"] == 1 and r["outputs"]["kinds"]["unclosed_think"] == 1
    assert r["outputs"]["kinds"]["bare"] == 1
    assert r["gen_len"] == {"all": approx(14 / 3), "with_think": 5.5, "without_think": 3.0, "unit": "whitespace_words"}
    # split by thinking: posts 1 and 3 think (post 3 never closes its think block), post 2 does not.
    # thinking: P@1 (1 + 0)/2, R@1 (1/2 + 0)/2 -> F1@1 1/3; not thinking: new york right at rank 1
    th, nt = r["by_think"]["thinking"], r["by_think"]["not_thinking"]
    assert th["num_posts"] == 2 and th["f1@1"] == approx(1 / 3) and th["num_duplicates"] == 1
    assert nt["num_posts"] == 1 and nt["f1@1"] == approx(1.0) and nt["f1@M"] == approx(2 * 0.5 / 1.5)
    assert th["unseen"]["num_posts"] == 2 and nt["unseen"]["num_posts"] == 0  # dog, weather; new york is seen
    # keys added since the first version; nothing renamed, no PNG unless modes or a baseline are compared
    assert r["mode"] is None and r["files"]["plot"] is None and "comparison" not in r and "vs_baseline" not in r


def test_table_and_default_json_path(files, capsys):
    code, out, err = _run(capsys, "--predictions", str(files["preds"]), "--dataset", str(files["dataset"]))
    assert code == 0, err
    assert "F1@1" in out and "present" in out and "absent" in out and "CoT triggered 2" in out
    assert "(unseen: give --train)" in out
    written = files["dir"] / "generated_predictions.mmkp_eval.json"
    assert json.loads(written.read_text())["unseen"] is None
    assert f"JSON: {written}" in out


def test_per_post_variant(files, capsys):
    code, out, _ = _run(
        capsys, "mmkp", "--predictions", str(files["preds"]), "--dataset", str(files["dataset"]), "--json",
        "--variant", "per_post", "--output", str(files["dir"] / "pp.json"),
    )
    r = json.loads(out)
    # per-post F1@1: post 1 P=1 R=1/2 -> 2/3; post 2 -> 1; post 3 -> 0
    assert r["variant"] == "per_post" and r["f1@1"] == approx((2 / 3 + 1) / 3)


def test_row_count_mismatch_names_both_files(files, capsys):
    short = files["dir"] / "short.json"
    short.write_text(json.dumps(_dataset(ROWS[:2])), encoding="utf-8")
    code, out, err = _run(capsys, "mmkp", "--predictions", str(files["preds"]), "--dataset", str(short))
    assert code == 2 and out == ""
    assert str(files["preds"]) in err and str(short) in err and "3 rows" in err and "has 2" in err


def test_misaligned_labels_are_an_error(files, capsys):
    shuffled = files["dir"] / "shuffled.json"
    shuffled.write_text(json.dumps(_dataset([ROWS[1], ROWS[0], ROWS[2]])), encoding="utf-8")
    code, _, err = _run(capsys, "mmkp", "--predictions", str(files["preds"]), "--dataset", str(shuffled))
    assert code == 2 and "does not match" in err and str(shuffled) in err and "row 0" in err
    code, _, err = _run(
        capsys, "mmkp", "--predictions", str(files["preds"]), "--dataset", str(shuffled), "--no-label-check",
        "--output", str(files["dir"] / "x.json"),
    )
    assert code == 0, err


def test_cmkp_format_files(tmp_path, capsys):
    src = tmp_path / "test_src.txt"
    src.write_text(
        "the cats sat on the mat<sep>cat;dog<sep>https://x/a.jpg\nnew york city<sep>new york<sep>https://x/b.jpg\n",
        encoding="utf-8",
    )
    pred = tmp_path / "pred.txt"
    pred.write_text("cats;cat;<unk>;dog house;mat;,\nnew york;\n", encoding="utf-8")
    train = tmp_path / "train_src.txt"
    train.write_text("x<sep>cat;new york<sep>u\n", encoding="utf-8")
    code, out, err = _run(
        capsys, "mmkp", "--predictions", str(pred), "--src", str(src), "--train", str(train), "--json",
        "--output", str(tmp_path / "m.json"),
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["files"]["format"] == "cmkp"
    # post 2 "new york;" = new york + the empty keyphrase (CMKP keeps it): P@3 = 1/2
    assert r["p@3"] == approx((1 / 3 + 1 / 2) / 2)
    assert r["f1@1"] == approx(2 * 1 * 0.75 / 1.75)
    assert r["unseen"]["num_posts"] == 1 and r["unseen"]["num_targets"] == 1  # dog
    assert r["cot_rate"] == 0.0

    code, _, err = _run(capsys, "mmkp", "--predictions", str(pred))
    assert code == 2 and "--src" in err
    short = tmp_path / "short_src.txt"
    short.write_text("a<sep>b<sep>c\n", encoding="utf-8")
    code, _, err = _run(capsys, "mmkp", "--predictions", str(pred), "--src", str(short))
    assert code == 2 and str(pred) in err and str(short) in err and "2 lines" in err


def test_baseline_length_reduction(files, capsys):
    base = files["dir"] / "base.json"
    base.write_text(json.dumps({"gen_len": {"all": 10.0, "unit": "whitespace_words"}}), encoding="utf-8")
    code, out, err = _run(
        capsys, "mmkp", "--predictions", str(files["preds"]), "--dataset", str(files["dataset"]), "--json",
        "--baseline", str(base), "--output", str(files["dir"] / "b.json"),
    )
    assert code == 0, err
    assert json.loads(out)["gen_len_vs_baseline"]["reduction"] == approx(1 - (14 / 3) / 10)
