"""``dyncot-eval mmkp`` per thinking mode: scores split by thinking, auto/always/never compared post by post, the
oracle, the side-by-side comparison with a baseline run, the PNG, and the error cases. Every number is computed by
hand from the five posts below."""

from __future__ import annotations

import json
import sys

import pytest

from dyncot_plugin.cli.eval import main as eval_main
from dyncot_plugin.tasks.mmkp.modes import parse_named_predictions, per_post_f1
from dyncot_plugin.tasks.mmkp.plots import plot_series


def approx(x):
    return pytest.approx(x, abs=1e-12)


POSTS = [
    ("cats on the mat", ["cat", "dog"]),  # cat present, dog absent
    ("new york city", ["new york"]),  # present
    ("sunny day", ["weather", "sun"]),  # both absent (sunny stems to sunni)
    ("big game tonight", ["game"]),  # present
    ("rainy morning", ["rain"]),  # absent (rainy stems to raini)
]
# Per-post F1@M (gold above):        p0    p1   p2    p3   p4
AUTO = [  # thinks on p0 and p3       1/2   0    2/3   1    1
    "<think>a cat on a mat</think><answer>cat; mat</answer>",  # 6 words
    "nyc",
    "weather",
    "<think>a game</think><answer>game</answer>",  # 2 words
    "rain",
]
ALWAYS = [  #                         1     1    2/3   1    0
    "<think>the cat and the dog</think><answer>cat; dog</answer>",  # 6 words
    "<think>a city</think><answer>new york</answer>",  # 3 words
    "<think>sunny</think><answer>sun</answer>",  # 1 word
    "<think>game</think><answer>game</answer>",  # 1 word
    "<think>dark sky</think><answer>storm</answer>",  # 2 words
]
NEVER = ["cat", "nyc", "weather; sun", "game", "rain"]  # 2/3  0  1  1  1
# Winner per post (a tie goes to auto): p0 always, p1 always, p2 never, p3 auto (all tied), p4 auto (tied with never).


def _write_preds(path, outputs, posts=POSTS):
    path.write_text(
        "".join(json.dumps({"prompt": f"Post: {t}", "predict": o, "label": "; ".join(k)}) + "\n"
                for (t, k), o in zip(posts, outputs)),
        encoding="utf-8",
    )
    return path


@pytest.fixture()
def files(tmp_path):
    ds = tmp_path / "test.json"
    ds.write_text(json.dumps([
        {"id": f"p{i}", "messages": [{"role": "user", "content": f"<image>Post: {t}"},
                                     {"role": "assistant", "content": "; ".join(k)}],
         "images": [f"{i}.jpg"], "text": t, "keyphrases": k}
        for i, (t, k) in enumerate(POSTS)
    ]), encoding="utf-8")
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"text": "x", "keyphrases": ["cat"]}]), encoding="utf-8")
    return {
        "dir": tmp_path, "dataset": ds, "train": train,
        "auto": _write_preds(tmp_path / "auto.jsonl", AUTO),
        "always": _write_preds(tmp_path / "always.jsonl", ALWAYS),
        "never": _write_preds(tmp_path / "never.jsonl", NEVER),
    }


def _run(capsys, *argv):
    code = eval_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _eval(capsys, files, *argv):
    code, out, err = _run(capsys, "mmkp", *argv, "--dataset", files["dataset"], "--json")
    assert code == 0, err
    return json.loads(out)


def _three(files):
    return ("--predictions", f"auto={files['auto']}", "--predictions", f"always={files['always']}",
            "--predictions", f"never={files['never']}")


# ------------------------------------------------------------------------------------------- split by thinking


def test_scores_split_by_thinking(files, capsys):
    r = _eval(capsys, files, "--predictions", files["auto"], "--train", files["train"], "--no-plot",
              "--output", files["dir"] / "a.json")
    th, nt = r["by_think"]["thinking"], r["by_think"]["not_thinking"]
    assert th["num_posts"] == 2 and nt["num_posts"] == 3 and r["num_posts"] == 5
    # thinking: p0 [cat, mat] vs {cat, dog}, p3 [game] vs {game}: P@1 1, R@1 (1/2 + 1)/2; P@M = R@M = 3/4
    assert th["f1@1"] == approx(2 * 0.75 / 1.75) and th["f1@M"] == approx(0.75) and th["map@5"] == approx(0.75)
    assert (th["num_targets"], th["num_predictions"], th["num_matches"]) == (3, 3, 2)
    # not thinking: p1 [nyc] 0, p2 [weather] P 1 R 1/2, p4 [rain] 1: P 2/3, R 1/2
    assert nt["f1@1"] == approx(4 / 7) and nt["f1@M"] == approx(4 / 7) and nt["map@5"] == approx(0.5)
    # present, thinking: p0 [cat, mat] vs [cat] (P 1/2, R 1), p3 [game] (1): P 3/4, R 1
    assert th["present"]["num_posts"] == 2 and th["present"]["f1@M"] == approx(6 / 7)
    assert th["present"]["f1@1"] == approx(1.0)
    # absent, thinking: only p0 ([dog], no absent prediction)
    assert th["absent"]["num_posts"] == 1 and th["absent"]["f1@M"] == 0.0
    # present, not thinking: only p1 (new york present; nyc is an absent prediction); absent: p2 and p4
    assert nt["present"]["num_posts"] == 1 and nt["present"]["f1@M"] == 0.0
    assert nt["absent"]["num_posts"] == 2 and nt["absent"]["f1@1"] == approx(2 * 1 * 0.75 / 1.75)
    # unseen (train has only "cat"), thinking: p0 [mat] vs {dog} 0, p3 [game] vs {game} 1: P = R = 1/2
    assert th["unseen"]["num_posts"] == 2 and th["unseen"]["f1@M"] == approx(0.5)
    assert nt["unseen"]["num_posts"] == 3
    # the whole-set scores are unchanged: P@M (1/2 + 0 + 1 + 1 + 1)/5, R@M (1/2 + 0 + 1/2 + 1 + 1)/5
    assert r["f1@M"] == approx(2 * 0.7 * 0.6 / 1.3)
    assert r["gen_len"] == {"all": approx(11 / 5), "with_think": 4.0, "without_think": 1.0, "unit": "whitespace_words"}
    assert r["mode"] is None and "comparison" not in r


def test_split_with_no_thinking_post_and_table(files, capsys):
    r = _eval(capsys, files, "--predictions", files["never"], "--no-plot", "--output", files["dir"] / "n.json")
    assert r["by_think"]["thinking"]["num_posts"] == 0 and r["by_think"]["thinking"]["f1@M"] == 0.0
    assert r["by_think"]["not_thinking"]["f1@M"] == approx(r["f1@M"])
    code, out, err = _run(capsys, "mmkp", "--predictions", files["never"], "--dataset", files["dataset"], "--no-plot",
                          "--output", files["dir"] / "n2.json")
    assert code == 0 and "(thinking / not thinking: every output answers without thinking)" in out
    assert "  thinking" not in out
    code, out, err = _run(capsys, "mmkp", "--predictions", files["auto"], "--dataset", files["dataset"], "--no-plot",
                          "--output", files["dir"] / "t.json")
    assert code == 0, err
    lines = out.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("all "))
    assert lines[i + 1].split()[:5] == ["thinking", "2", "3", "3", "85.71"]  # posts, gold, pred, F1@1 (6/7)
    assert lines[i + 2].split()[:6] == ["not", "thinking", "3", "4", "3", "57.14"]
    assert not (files["dir"] / "t.png").exists()


# ------------------------------------------------------------------------------------------- modes compared


def test_three_modes_winners_auto_share_and_oracle(files, capsys):
    r = _eval(capsys, files, *_three(files), "--train", files["train"], "--output", files["dir"] / "m.json")
    c = r["comparison"]
    assert c["modes"] == ["auto", "always", "never"] and c["num_posts"] == 5
    assert c["per_post"]["winner"] == ["always", "always", "never", "auto", "auto"]
    assert c["per_post"]["ids"] == ["p0", "p1", "p2", "p3", "p4"]
    assert c["per_post"]["f1@M"]["auto"] == [approx(0.5), 0.0, approx(2 / 3), 1.0, 1.0]
    assert c["per_post"]["f1@M"]["always"] == [1.0, 1.0, approx(2 / 3), 1.0, 0.0]
    assert c["per_post"]["f1@M"]["never"] == [approx(2 / 3), 0.0, 1.0, 1.0, 1.0]
    assert c["wins"] == {"auto": 2, "always": 2, "never": 1}
    assert c["ties"] == 2 and c["all_tied"] == 1  # p4 (auto = never), p3 (all three)
    assert c["pairwise"]["auto_vs_always"] == {"auto_better": 1, "always_better": 2, "tie": 2}
    assert c["pairwise"]["auto_vs_never"] == {"auto_better": 0, "never_better": 2, "tie": 3}
    assert c["pairwise"]["always_vs_never"] == {"always_better": 2, "never_better": 2, "tie": 1}
    # auto at least as good as both forced modes on p3 and p4; it thought on p0 (lost) and p3 (won)
    assert c["auto"]["chose_better"] == 2 and c["auto"]["chose_better_rate"] == approx(0.4)
    assert c["auto"]["thought"] == {"posts": 2, "chose_better": 1}
    assert c["auto"]["did_not_think"] == {"posts": 3, "chose_better": 1}
    # decisive posts (always and never differ): p0, p1 (always better), p2, p4 (never better); auto thought on p0
    # (right) and not on p1 (wrong), p2 and p4 (right): 3 of 4, where the tie-inclusive count says 2 of 5
    assert c["decisive"] == {"posts": 4, "always_better": 2, "never_better": 2}
    assert c["auto"]["decisive"] == {"posts": 4, "correct": 3, "accuracy": 0.75}
    # oracle: p0 [cat, dog], p1 [new york], p2 [weather, sun], p3 [game], p4 [rain]: every prediction right;
    # R@1 = (1/2 + 1 + 1/2 + 1 + 1)/5 = 0.8 with P@1 = 1
    o = c["oracle"]
    assert o["f1@1"] == approx(2 * 0.8 / 1.8) and o["f1@3"] == 1.0 and o["f1@5"] == 1.0 and o["f1@M"] == 1.0
    assert o["map@5"] == 1.0 and o["num_matches"] == 7 and o["present"]["f1@M"] == 1.0
    assert o["picks"] == {"auto": 2, "always": 2, "never": 1}
    # chosen outputs: always 6 and 3 words (think), never 2, auto 2 (think) and 1
    assert o["cot_rate"] == approx(0.6)
    assert o["gen_len"] == {"all": approx(14 / 5), "with_think": approx(11 / 3), "without_think": 1.5,
                            "unit": "whitespace_words"}
    assert c["gen_len"]["auto"]["all"] == approx(11 / 5)
    assert c["gen_len"]["always"] == {"all": approx(13 / 5), "with_think": approx(13 / 5), "without_think": None,
                                      "unit": "whitespace_words"}
    assert c["gen_len"]["never"]["all"] == approx(6 / 5) and c["gen_len"]["never"]["with_think"] is None
    # every mode scored in full; the top level is auto's
    assert r["mode"] == "auto" and r["f1@M"] == approx(2 * 0.7 * 0.6 / 1.3)
    assert r["modes"]["always"]["f1@M"] == approx(2 * 0.8 * 0.7 / 1.5)  # P (1+1+1+1+0)/5, R (1+1+1/2+1+0)/5
    assert r["modes"]["always"]["cot_rate"] == 1.0 and r["modes"]["never"]["cot_rate"] == 0.0
    assert r["files"]["modes"] == {m: str(files[m]) for m in ("auto", "always", "never")}


def test_without_auto_pairwise_and_oracle(files, capsys):
    # always named first: it is the top level and takes the p3 tie
    r = _eval(capsys, files, "--predictions", f"always={files['always']}", "--predictions", f"never={files['never']}",
              "--output", files["dir"] / "an.json", "--no-plot")
    c = r["comparison"]
    assert r["mode"] == "always" and c["auto"] is None
    assert c["per_post"]["winner"] == ["always", "always", "never", "always", "never"]
    assert c["wins"] == {"always": 3, "never": 2} and c["ties"] == 1
    assert c["decisive"] == {"posts": 4, "always_better": 2, "never_better": 2}
    assert c["pairwise"] == {"always_vs_never": {"always_better": 2, "never_better": 2, "tie": 1}}
    assert c["oracle"]["f1@M"] == 1.0 and c["oracle"]["f1@1"] == approx(2 * 0.8 / 1.8)
    assert c["oracle"]["cot_rate"] == approx(3 / 5)  # always on p0, p1, p3


def test_two_modes_auto_vs_never(files, capsys):
    r = _eval(capsys, files, "--predictions", f"never={files['never']}", "--predictions", f"auto={files['auto']}",
              "--output", files["dir"] / "x.json", "--no-plot")
    c = r["comparison"]
    assert r["mode"] == "auto" and c["modes"] == ["never", "auto"]
    # auto >= never on p1, p3, p4 (ties); never wins p0 and p2
    assert c["per_post"]["winner"] == ["never", "auto", "never", "auto", "auto"]
    assert c["auto"]["chose_better"] == 3 and c["auto"]["against"] == ["never"]
    assert "decisive" not in c and c["auto"]["decisive"] is None  # needs always and never
    # oracle: p0 [cat], p1 [nyc], p2 [weather, sun], p3 [game], p4 [rain]: P@M (1+0+1+1+1)/5, R@M (1/2+0+1+1+1)/5
    assert c["oracle"]["f1@M"] == approx(2 * 0.8 * 0.7 / 1.5)


def test_modes_table(files, capsys):
    code, out, err = _run(capsys, "mmkp", *_three(files), "--dataset", files["dataset"], "--no-plot",
                          "--output", files["dir"] / "tab.json")
    assert code == 0, err
    start = out.index("modes on the same 5 posts")
    rows = {line.split()[0]: line.split() for line in out[start:].splitlines()[2:6]}
    # CoT, F1@1, F1@3, F1@5, F1@M, MAP@5, len all, think, no think, best
    assert rows["auto"][1:] == ["40.00", "68.57", "64.62", "64.62", "64.62", "60.00", "2.20", "4.00", "1.00", "2"]
    assert rows["never"][1:] == ["0.00", "68.57", "74.67", "74.67", "74.67", "70.00", "1.20", "-", "1.20", "1"]
    assert rows["oracle"][1:] == ["60.00", "88.89", "100.00", "100.00", "100.00", "100.00", "2.80", "3.67", "1.50"]
    assert "auto chose the better mode on 2/5 posts (40.00%;" in out
    assert "when it thought 1/2, when it did not think 1/3" in out
    assert "on the 4 decisive posts (F1@M of always and never differ) it took the better one on 3/4 (75.00%)" in out
    assert "frontier: " not in out  # no think_prob in these files


def test_per_post_f1_and_name_parsing(tmp_path):
    assert per_post_f1([["a", "b"], [], ["x"]], [["a"], ["a"], ["y", "x"]]) == [approx(2 / 3), 0.0, approx(2 / 3)]
    odd = tmp_path / "auto=run.jsonl"  # an existing file whose name has '=' is a path
    odd.write_text("{}\n")
    assert parse_named_predictions([str(odd)]) == [(None, str(odd))]
    assert parse_named_predictions(["runs/a=b.jsonl"]) == [(None, "runs/a=b.jsonl")]
    assert parse_named_predictions(["never=n.jsonl", "auto=a.jsonl"]) == [("never", "n.jsonl"), ("auto", "a.jsonl")]


# ------------------------------------------------------------------------------------------- errors


def test_unknown_duplicate_and_unnamed_modes(files, capsys):
    code, out, err = _run(capsys, "mmkp", "--predictions", f"sometimes={files['auto']}", "--dataset", files["dataset"])
    assert code == 2 and out == "" and "unknown mode 'sometimes'" in err and "auto, always, never" in err
    code, _, err = _run(capsys, "mmkp", "--predictions", f"auto={files['auto']}", "--predictions",
                        f"auto={files['never']}", "--dataset", files["dataset"])
    assert code == 2 and "mode 'auto' is given 2 times" in err
    code, _, err = _run(capsys, "mmkp", "--predictions", files["auto"], "--predictions", f"never={files['never']}",
                        "--dataset", files["dataset"])
    assert code == 2 and str(files["auto"]) in err and "name each one by its mode" in err
    assert "Traceback" not in err


def test_misaligned_files_are_refused(files, capsys):
    d = files["dir"]
    # another order, no dataset: the gold (from the labels) differs at row 0
    order = [1, 0, 2, 3, 4]
    shuffled = _write_preds(d / "shuf.jsonl", [NEVER[i] for i in order], [POSTS[i] for i in order])
    code, out, err = _run(capsys, "mmkp", "--predictions", f"auto={files['auto']}", "--predictions",
                          f"never={shuffled}")
    assert code == 2 and out == ""
    assert str(files["auto"]) in err and str(shuffled) in err and "row 0" in err and "same posts" in err
    # fewer posts, no dataset
    short = _write_preds(d / "short.jsonl", NEVER[:4], POSTS[:4])
    code, _, err = _run(capsys, "mmkp", "--predictions", f"auto={files['auto']}", "--predictions", f"never={short}")
    assert code == 2 and "has 5 posts" in err and str(short) in err and "has 4" in err
    # with the dataset: the short file is refused against it, naming both
    code, _, err = _run(capsys, "mmkp", "--predictions", f"auto={files['auto']}", "--predictions", f"never={short}",
                        "--dataset", files["dataset"])
    assert code == 2 and str(short) in err and str(files["dataset"]) in err
    # gold from a CMKP source file (labels are not checked against it): the labels of the shuffled file differ
    src = d / "test_src.txt"
    src.write_text("".join(f"{t}<sep>{';'.join(k)}<sep>u\n" for t, k in POSTS))
    code, _, err = _run(capsys, "mmkp", "--predictions", f"auto={files['auto']}", "--predictions", f"never={shuffled}",
                        "--src", src)
    assert code == 2 and "row 0" in err and "label 'cat; dog'" in err and "--no-label-check" in err
    code, _, err = _run(capsys, "mmkp", "--predictions", f"auto={files['auto']}", "--predictions", f"never={shuffled}",
                        "--src", src, "--no-label-check", "--no-plot", "--output", d / "forced.json")
    assert code == 0, err
    assert not (d / "auto.mmkp_eval.json").exists()


# ------------------------------------------------------------------------------------------- baseline


def test_baseline_side_by_side(files, capsys):
    d = files["dir"]
    base_json = d / "always.json"
    _eval(capsys, files, "--predictions", files["always"], "--train", files["train"], "--output", base_json)
    r = _eval(capsys, files, "--predictions", files["auto"], "--train", files["train"], "--output", d / "vs.json",
              "--baseline", f"fine-tune-cot={base_json}", "--no-plot")
    b = r["vs_baseline"]
    assert b["name"] == "fine-tune-cot" and b["baseline_file"] == str(base_json) and b["notes"] == []
    f1m = b["scores"]["all"]["f1@M"]
    assert f1m["baseline"] == approx(2 * 0.8 * 0.7 / 1.5) and f1m["ours"] == approx(2 * 0.7 * 0.6 / 1.3)
    assert f1m["change"] == approx(2 * 0.7 * 0.6 / 1.3 - 2 * 0.8 * 0.7 / 1.5)
    assert b["scores"]["all"]["f1@1"]["change"] == approx(0.0)  # both 24/35
    # present: always gets cat, new york, game (1.0); auto P (1/2 + 0 + 1)/3, R (1 + 0 + 1)/3 -> 4/7
    assert b["scores"]["present"]["f1@M"] == {"baseline": 1.0, "ours": approx(4 / 7), "change": approx(-3 / 7)}
    assert b["scores"]["absent"]["map@5"]["change"] == approx(0.0)
    assert set(b["scores"]) == {"all", "present", "absent", "unseen"}
    assert set(b["scores"]["unseen"]) == {"f1@1", "f1@3", "f1@5", "f1@M", "map@5", "num_posts"}
    assert b["cot_rate"] == {"baseline": 1.0, "ours": approx(0.4), "change": approx(-0.6)}
    # lengths: always 13/5 words (all thinking); auto 11/5, thinking 4, not thinking 1
    assert b["gen_len"]["all"]["relative_change"] == approx((11 / 5) / (13 / 5) - 1)
    assert b["gen_len"]["with_think"]["relative_change"] == approx(4 / (13 / 5) - 1)
    assert b["gen_len"]["without_think"] == {"baseline": None, "ours": 1.0, "relative_change": None}
    assert r["gen_len_vs_baseline"]["reduction"] == approx(1 - 11 / 13)  # the older key, unchanged

    code, out, err = _run(capsys, "mmkp", "--predictions", files["auto"], "--dataset", files["dataset"],
                          "--train", files["train"], "--baseline", base_json, "--no-plot", "--output", d / "vs2.json")
    assert code == 0, err
    assert "vs baseline baseline" in out
    lines = out.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("present  baseline"))
    assert lines[i].split()[2:] == ["100.00"] * 5
    assert lines[i + 2].split() == ["change", "-33.33", "-42.86", "-42.86", "-42.86", "-33.33"]
    assert next(line for line in lines if "all outputs" in line).split()[-1] == "-15.38%"
    assert next(line for line in lines if "thinking outputs" in line).split()[-1] == "+53.85%"


def test_baseline_from_an_older_json_and_errors(files, capsys):
    d = files["dir"]
    old = d / "old.json"  # only what earlier versions needed
    old.write_text(json.dumps({"f1@M": 0.5, "num_posts": 4, "variant": "per_post",
                               "gen_len": {"all": 10.0, "unit": "whitespace_words"}}))
    r = _eval(capsys, files, "--predictions", files["auto"], "--baseline", old, "--output", d / "o.json", "--no-plot")
    b = r["vs_baseline"]
    assert b["scores"]["all"]["f1@M"]["change"] == approx(2 * 0.7 * 0.6 / 1.3 - 0.5)
    assert b["scores"]["all"]["f1@1"] == {"baseline": None, "ours": approx(24 / 35), "change": None}
    assert b["scores"]["present"]["f1@M"]["baseline"] is None and b["scores"]["unseen"] is None
    assert b["gen_len"]["all"]["relative_change"] == approx(0.22 - 1)
    assert any("per_post variant" in n for n in b["notes"]) and any("scored 4 posts" in n for n in b["notes"])

    other_unit = d / "tok.json"
    other_unit.write_text(json.dumps({"gen_len": {"all": 3.0, "unit": "tokenizer:qwen"}}))
    code, _, err = _run(capsys, "mmkp", "--predictions", files["auto"], "--dataset", files["dataset"],
                        "--baseline", other_unit, "--output", d / "u.json")
    assert code == 2 and str(other_unit) in err and "tokenizer:qwen" in err
    broken = d / "broken.json"
    broken.write_text("{not json")
    code, _, err = _run(capsys, "mmkp", "--predictions", files["auto"], "--dataset", files["dataset"],
                        "--baseline", broken, "--output", d / "u.json")
    assert code == 2 and f"{broken}:1: not valid JSON" in err
    code, _, err = _run(capsys, "mmkp", "--predictions", files["auto"], "--dataset", files["dataset"],
                        "--baseline", files["dataset"], "--output", d / "u.json")
    assert code == 2 and "not a dyncot-eval mmkp JSON" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- PNG

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_png_next_to_the_json_and_at_a_chosen_path(files, capsys):
    pytest.importorskip("matplotlib")
    d = files["dir"]
    r = _eval(capsys, files, *_three(files), "--output", d / "cmp.json")
    png = d / "cmp.png"
    assert r["files"]["plot"] == str(png)
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert json.loads((d / "cmp.json").read_text())["files"]["plot"] == str(png)

    chosen = d / "figs" / "single.png"  # --plot draws a single run too (thinking vs not thinking)
    r = _eval(capsys, files, "--predictions", files["auto"], "--plot", chosen, "--output", d / "one.json")
    assert r["files"]["plot"] == str(chosen) and chosen.read_bytes()[:8] == PNG_MAGIC
    assert not (d / "one.png").exists()

    r = _eval(capsys, files, *_three(files), "--output", d / "np.json", "--no-plot")
    assert r["files"]["plot"] is None and not (d / "np.png").exists()

    # modes and a baseline run: one bar per mode, the oracle and the baseline ("per strategy")
    r = _eval(capsys, files, *_three(files), "--output", d / "mb.json", "--baseline", f"ft-cot={d / 'one.json'}")
    keys, scores, lengths = plot_series(r)
    assert keys == ["f1@1", "f1@3", "f1@5", "f1@M", "map@5"]
    assert [label for label, _ in scores] == ["auto", "always", "never", "oracle", "ft-cot"]
    assert scores[3][1]["f1@M"] == 1.0 and lengths[2][1]["all"] == approx(6 / 5)
    assert (d / "mb.png").read_bytes()[:8] == PNG_MAGIC


def test_no_png_without_matplotlib(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # the import fails as if not installed
    d = files["dir"]
    code, out, err = _run(capsys, "mmkp", *_three(files), "--dataset", files["dataset"], "--output", d / "nm.json")
    assert code == 0, err
    r = json.loads((d / "nm.json").read_text())
    assert r["files"]["plot"] is None and not (d / "nm.png").exists()
    assert any("matplotlib is not installed" in n for n in r["notes"])
    assert "note: matplotlib is not installed" in out


# ------------------------------------------------------------------------------------------- API, units, imports


class _CharTokenizer:
    """One token per character (no special tokens): lengths that differ from word counts."""

    name_or_path = "chars"

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(t) for t in texts]}


def test_lengths_in_tokenizer_units_for_every_mode(files):
    from dyncot_plugin.tasks.mmkp.evaluate import evaluate_files

    r = evaluate_files([("auto", files["auto"]), ("never", files["never"])], dataset=files["dataset"],
                       tokenizer=_CharTokenizer())
    c = r["comparison"]
    assert r["gen_len"]["unit"] == "tokenizer:chars" and c["oracle"]["gen_len"]["unit"] == "tokenizer:chars"
    assert c["gen_len"]["never"]["all"] == approx(sum(map(len, NEVER)) / 5)
    # winners auto vs never: never, auto, never, auto, auto (ties to auto)
    chosen = [NEVER[0], AUTO[1], NEVER[2], AUTO[3], AUTO[4]]
    assert c["oracle"]["gen_len"]["all"] == approx(sum(map(len, chosen)) / 5)
    assert c["oracle"]["gen_len"]["with_think"] == len(AUTO[3])
    single = evaluate_files([("never", files["never"])], dataset=files["dataset"])
    assert single["mode"] == "never" and "comparison" not in single


def test_importing_the_command_does_not_import_matplotlib():
    import subprocess

    code = ("import sys, dyncot_plugin.tasks.mmkp.evaluate; "
            "print(sorted(m for m in ('matplotlib', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
