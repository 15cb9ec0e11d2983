"""``dyncot-eval mmkp``'s frontier: the scores of the ``auto`` of every think-probability threshold, computed
incrementally from an ``always`` and a ``never`` file, must equal ``dyncot-eval`` run on the ``auto`` file built by
hand for that threshold (each post its always output where ``think_prob >= t``, else its never output); its ends are
the never and always scores; decision accuracy on the decisive posts; ``--think-rate``, the marked threshold, the
F1@M-best point; the PNG; and every bad ``think_prob`` named by file and row."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from dyncot_plugin.cli.eval import main as eval_main
from dyncot_plugin.cot_format import parse_output
from dyncot_plugin.tasks.mmkp.evaluate import evaluate_files
from dyncot_plugin.tasks.mmkp.frontier import point_at_think_rate, point_at_threshold
from dyncot_plugin.tasks.mmkp.modes import per_post_f1
from dyncot_plugin.tasks.mmkp.normalize import split_keyphrases_cmkp
from dyncot_plugin.tasks.mmkp.plots import frontier_series

TOL = 1e-12

# The five posts of tests/test_eval_modes.py. Per-post F1@M always / never: 1 / 2/3, 1 / 0, 2/3 / 1, 1 / 1, 0 / 1.
POSTS = [
    ("cats on the mat", ["cat", "dog"]),
    ("new york city", ["new york"]),
    ("sunny day", ["weather", "sun"]),
    ("big game tonight", ["game"]),
    ("rainy morning", ["rain"]),
]
AUTO = [
    "<think>a cat on a mat</think><answer>cat; mat</answer>",
    "nyc",
    "weather",
    "<think>a game</think><answer>game</answer>",
    "rain",
]
ALWAYS = [
    "<think>the cat and the dog</think><answer>cat; dog</answer>",
    "<think>a city</think><answer>new york</answer>",
    "<think>sunny</think><answer>sun</answer>",
    "<think>game</think><answer>game</answer>",
    "<think>dark sky</think><answer>storm</answer>",
]
NEVER = ["cat", "nyc", "weather; sun", "game", "rain"]
PROBS = [0.9, 0.3, 0.3, 0.6, 0.1]  # p1 and p2 tie


def _write_preds(path, posts, outputs, probs=None):
    with open(path, "w", encoding="utf-8") as f:
        for i, ((text, kps), out) in enumerate(zip(posts, outputs)):
            row = {"prompt": f"Post: {text}", "predict": out, "label": "; ".join(kps)}
            if probs is not None and probs[i] is not None:
                row["think_prob"] = probs[i]
            f.write(json.dumps(row) + "\n")
    return path


def _write_dataset(path, posts):
    path.write_text(json.dumps([
        {"id": f"p{i}", "messages": [{"role": "user", "content": f"<image>Post: {t}"},
                                     {"role": "assistant", "content": "; ".join(k)}],
         "images": [f"{i}.jpg"], "text": t, "keyphrases": k}
        for i, (t, k) in enumerate(posts)
    ]), encoding="utf-8")
    return path


@pytest.fixture()
def files(tmp_path):
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"text": "x", "keyphrases": ["cat"]}]), encoding="utf-8")
    return {
        "dir": tmp_path, "dataset": _write_dataset(tmp_path / "test.json", POSTS), "train": train,
        "auto": _write_preds(tmp_path / "auto.jsonl", POSTS, AUTO, PROBS),
        "always": _write_preds(tmp_path / "always.jsonl", POSTS, ALWAYS, PROBS),
        "never": _write_preds(tmp_path / "never.jsonl", POSTS, NEVER, PROBS),
    }


def _run(capsys, *argv):
    code = eval_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_point_equals_evaluation(point, ev, n_posts, probs):
    """A frontier point against dyncot-eval's result for the auto file of its threshold."""
    for key in [k for k in point if k.startswith(("f1@", "map@"))]:
        assert point[key] == pytest.approx(ev[key], abs=TOL), key
    for sub in ("present", "absent", "unseen"):
        if ev[sub] is None:
            assert point[sub] is None
            continue
        assert point[sub]["num_posts"] == ev[sub]["num_posts"]
        for key in [k for k in point[sub] if k.startswith(("f1@", "map@"))]:
            assert point[sub][key] == pytest.approx(ev[sub][key], abs=TOL), (sub, key)
    # lengths, counts and rates exactly
    assert point["mean_tokens"] == ev["gen_len"]["all"]
    assert point["cot_rate"] == ev["cot_rate"]
    assert point["num_think"] == sum(p >= point["threshold"] for p in probs)
    assert point["think_rate"] == point["num_think"] / n_posts


def _auto_by_hand(path, posts, always, never, probs, t):
    outs = [a if p >= t else nv for a, nv, p in zip(always, never, probs)]
    return _write_preds(path, posts, outs, probs)


# ------------------------------------------------------------------------------------------- five posts by hand


def test_frontier_points_equal_the_auto_files_they_stand_for(files):
    d = files["dir"]
    r = evaluate_files([("always", files["always"]), ("never", files["never"])], dataset=files["dataset"],
                       train=files["train"])
    points = r["frontier"]
    # one point per distinct think_prob plus the think-rate-0 end, ordered by think rate from 0 to 1; each point's
    # threshold lies strictly between the think_prob values it separates
    assert [p["min_thinking_prob"] for p in points] == [None, 0.9, 0.6, 0.3, 0.1]
    assert [p["max_plain_prob"] for p in points] == [0.9, 0.6, 0.3, 0.1, None]
    assert [p["threshold"] for p in points] == [1.0, 0.8, 0.4, 0.2, 0.0]
    assert [p["think_rate"] for p in points] == [0.0, 0.2, 0.4, 0.8, 1.0]
    assert [p["num_think"] for p in points] == [0, 1, 2, 4, 5]
    for j, p in enumerate(points):
        auto = _auto_by_hand(d / f"auto_{j}.jsonl", POSTS, ALWAYS, NEVER, PROBS, p["threshold"])
        ev = evaluate_files(auto, dataset=files["dataset"], train=files["train"])
        _assert_point_equals_evaluation(p, ev, 5, PROBS)
    # the ends are the never and always files' own scores
    _assert_point_equals_evaluation(points[0], r["modes"]["never"], 5, PROBS)
    _assert_point_equals_evaluation(points[-1], r["modes"]["always"], 5, PROBS)
    # by hand, threshold 0.6 (p0, p3 think): P@M = R@M = 4/5; threshold 0.3: P@M 1, R@M (1 + 1 + 1/2 + 1 + 1)/5
    assert points[2]["f1@M"] == pytest.approx(0.8, abs=TOL)
    assert points[3]["f1@M"] == pytest.approx(2 * 0.9 / 1.9, abs=TOL)
    assert [p["mean_tokens"] for p in points] == [6 / 5, 11 / 5, 11 / 5, 12 / 5, 13 / 5]
    # decisive posts p0, p1 (always better), p2, p4 (never better); p3 ties
    s = r["frontier_summary"]
    assert s["decisive"] == {"posts": 4, "always_better": 2, "never_better": 2}
    assert [p["decisive_correct"] for p in points] == [2, 3, 3, 3, 2]
    assert [p["decision_accuracy"] for p in points] == [0.5, 0.75, 0.75, 0.75, 0.5]
    # the marked threshold (default 0.5) is the point down to 0.6; the best F1@M is the one down to 0.3
    assert s["threshold"] == 0.5 and s["at_threshold"]["index"] == 2 and s["at_threshold"]["threshold"] == 0.4
    assert s["best"]["index"] == 3 and s["best"]["f1@M"] == points[3]["f1@M"]
    assert s["num_points"] == 5 and s["num_posts"] == 5 and s["auto_file"] is None
    assert s["think_prob"] == {"from": "always", "min": 0.1, "max": 0.9, "mean": pytest.approx(0.44)}
    assert s["at_think_rate"] is None


def test_thresholds_and_think_rates_pick_the_right_point(files):
    r = evaluate_files([("always", files["always"]), ("never", files["never"])], dataset=files["dataset"])
    points = r["frontier"]
    # dyncot_think_threshold t thinks where think_prob >= t
    for t, j in ((0.0, 4), (0.1, 4), (0.11, 3), (0.3, 3), (0.5, 2), (0.6, 2), (0.61, 1), (0.9, 1), (0.95, 0),
                 (1.0, 0), (1.5, 0)):
        assert point_at_threshold(points, t) == j, t
    # the lowest threshold whose think rate is at most R
    for rate, j in ((0.0, 0), (0.19, 0), (0.2, 1), (0.5, 2), (0.79, 2), (0.8, 3), (0.99, 3), (1.0, 4)):
        assert point_at_think_rate(points, rate) == j, rate


def test_three_modes_table_json_and_think_rate(files, capsys):
    d = files["dir"]
    code, out, err = _run(capsys, "mmkp", "--predictions", f"auto={files['auto']}", "--predictions",
                          f"always={files['always']}", "--predictions", f"never={files['never']}",
                          "--dataset", files["dataset"], "--think-rate", "0.5", "--output", d / "r.json")
    assert code == 0, err
    text = (d / "r.json").read_text()
    r = json.loads(text)
    # one compact line per point, the rest indented as before
    assert [json.loads(line.strip().rstrip(",")) for line in text.splitlines()
            if line.startswith('    {"threshold": ')] == r["frontier"]
    assert '\n  "frontier_summary": {\n' in text
    s = r["frontier_summary"]
    assert s["at_think_rate"]["max_think_rate"] == 0.5 and s["at_think_rate"]["threshold"] == 0.4
    assert s["at_think_rate"]["think_rate"] == 0.4
    # the given auto file's own point (as evaluated): 40 % thinking, F1@M 64.62 (tests/test_eval_modes.py)
    assert s["auto_file"]["think_rate"] == 0.4 and s["auto_file"]["cot_rate"] == 0.4
    assert s["auto_file"]["f1@M"] == pytest.approx(2 * 0.7 * 0.6 / 1.3, abs=TOL)
    assert s["auto_file"]["mean_tokens"] == pytest.approx(11 / 5)
    # auto's decision on the decisive posts: thinks on p0 (right), not on p1 (wrong), p2 and p4 (right)
    assert r["comparison"]["decisive"] == {"posts": 4, "always_better": 2, "never_better": 2}
    assert r["comparison"]["auto"]["decisive"] == {"posts": 4, "correct": 3, "accuracy": 0.75}
    assert r["comparison"]["auto"]["chose_better"] == 2  # the tie-inclusive count, unchanged
    assert "on the 4 decisive posts (F1@M of always and never differ) it took the better one on 3/4 (75.00%)" in out
    assert "frontier: the auto of each think_prob threshold (5 points)" in out
    assert "think rate at most 50.00%: threshold 0.4 (think rate 40.00%, mean length 2.20):" in out
    assert "  F1@1 68.57, F1@3 80.00, F1@5 80.00, F1@M 80.00, MAP@5 80.00" in out
    assert "best F1@M 94.74 at threshold 0.2 (think rate 80.00%)" in out
    section = out[out.index("frontier: "):].splitlines()
    rows = [line for line in section if line.startswith(("never ", "always ", "t=0.5", "best F1@M "))]
    assert [row.split()[0] for row in rows] == ["never", "t=0.5,", "best", "always"]
    assert max(len(line) for line in out.splitlines()) <= 120


def test_another_marked_threshold_and_the_png(files, capsys):
    pytest.importorskip("matplotlib")
    d = files["dir"]
    code, _, err = _run(capsys, "mmkp", "--predictions", f"auto={files['auto']}", "--predictions",
                        f"always={files['always']}", "--predictions", f"never={files['never']}",
                        "--dataset", files["dataset"], "--threshold", "0.3", "--output", d / "t.json")
    assert code == 0, err
    r = json.loads((d / "t.json").read_text())
    s = r["frontier_summary"]
    assert s["threshold"] == 0.3 and s["at_threshold"]["index"] == 3
    rates, lengths, f1, marks = frontier_series(r)
    assert rates == [0.0, 0.2, 0.4, 0.8, 1.0] and lengths == [p["mean_tokens"] for p in r["frontier"]]
    assert set(f1) == {"f1@1", "f1@M"} and f1["f1@M"][3] == r["frontier"][3]["f1@M"]
    assert [label for label, _ in marks] == ["threshold 0.3", "best F1@M (threshold 0.2)", "auto file"]
    assert marks[2][1]["think_rate"] == 0.4
    png = (d / "t.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and r["files"]["plot"] == str(d / "t.png")


class _CharTokenizer:
    name_or_path = "chars"

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(t) for t in texts]}


def test_lengths_in_tokenizer_units(files):
    r = evaluate_files([("always", files["always"]), ("never", files["never"])], dataset=files["dataset"],
                       tokenizer=_CharTokenizer())
    assert r["frontier_summary"]["unit"] == "tokenizer:chars"
    for p in r["frontier"]:
        outs = [a if q >= p["threshold"] else nv for a, nv, q in zip(ALWAYS, NEVER, PROBS)]
        assert p["mean_tokens"] == sum(map(len, outs)) / 5


# ------------------------------------------------------------------------------------------- random posts


def _random_case(tmp_path, seed, n=300):
    rnd = random.Random(seed)
    vocab = [f"w{i}" for i in range(40)] + ["running", "runs", "cities", "city", "<unk>", ","]
    posts, always, never, probs = [], [], [], []
    grid = [0.0, 0.05, 0.1, 0.2, 0.35, math.nextafter(0.35, 1.0), 0.5, 0.5000001, 0.65, 0.8, 0.95, 1.0]  # adjacent floats too
    for i in range(n):
        words = rnd.sample(vocab[:44], rnd.randint(2, 8))
        golds = []
        for _ in range(rnd.randint(1, 3)):
            if rnd.random() < 0.5:  # present: words of the post
                j = rnd.randrange(len(words))
                golds.append(" ".join(words[j:j + rnd.randint(1, 2)]))
            else:
                golds.append(" ".join(rnd.sample(vocab[:44], rnd.randint(1, 2))))
        posts.append((" ".join(words), golds))

        def guess(golds=golds):
            pool = golds + [" ".join(rnd.sample(vocab, rnd.randint(1, 2))) for _ in range(3)]
            return "; ".join(rnd.choice(pool) for _ in range(rnd.randint(0, 5)))

        rationale = " ".join(rnd.sample(vocab[:40], rnd.randint(1, 12)))
        always.append(f"<think>{rationale}</think><answer>{guess()}</answer>")
        r = rnd.random()
        never.append(guess() if r < 0.9 else f"oops</think>{guess()}" if r < 0.95 else always[-1])
        probs.append(rnd.choice(grid) if rnd.random() < 0.7 else round(rnd.random(), 6))
    ds = _write_dataset(tmp_path / f"ds{seed}.json", posts)
    train = tmp_path / f"train{seed}.json"
    train.write_text(json.dumps([{"text": "t", "keyphrases": [g for _, gs in posts[: n // 2] for g in gs]}]))
    a = _write_preds(tmp_path / f"always{seed}.jsonl", posts, always, probs)
    # the never file's think_prob differs in the last digits (other batching), within the tolerance
    nv = _write_preds(tmp_path / f"never{seed}.jsonl", posts, never, [min(p + 3e-5, 1.0) for p in probs])
    return posts, always, never, probs, ds, train, a, nv


@pytest.mark.parametrize("variant,ks", [("cmkp", (1, 3, 5)), ("per_post", (2, 10))])
def test_random_posts_every_point_equals_its_auto_file(tmp_path, variant, ks):
    posts, always, never, probs, ds, train, a, nv = _random_case(tmp_path, seed=len(ks))
    r = evaluate_files([("never", nv), ("always", a)], dataset=ds, train=train, variant=variant, ks=ks)
    points = r["frontier"]
    n = len(posts)
    assert len(points) == len(set(probs)) + 1
    assert [p["think_rate"] for p in points] == sorted(p["think_rate"] for p in points)
    assert points[0]["think_rate"] == 0.0 and points[-1]["think_rate"] == 1.0
    # some think_prob is 1.0: the rate-0 end needs a threshold above 1
    assert 1.0 in probs and points[0]["threshold"] > 1.0 and points[1]["min_thinking_prob"] == 1.0
    # every point's threshold gives that point, strictly between the values it separates (where floats allow)
    for j, p in enumerate(points):
        assert point_at_threshold(points, p["threshold"]) == j
        assert p["num_think"] == sum(q >= p["threshold"] for q in probs)
        lo, hi, t = p["max_plain_prob"], p["min_thinking_prob"], p["threshold"]
        if lo is None:  # the always end: 0.0 (everything thinks at 0)
            assert t == 0.0
        elif hi is None:  # the never end: above every think_prob
            assert lo < t and t >= 1.0
        else:  # no float lies between adjacent floats: the higher one itself (>= still splits them)
            assert lo < t < hi or math.nextafter(lo, 2.0) == hi == t
    assert any(p["max_plain_prob"] == 0.35 and p["min_thinking_prob"] == p["threshold"] == math.nextafter(0.35, 1.0)
               for p in points)
    assert r["frontier_summary"]["think_prob"]["from"] == "always"  # the first file that has it, always first
    _assert_point_equals_evaluation(points[0], r["modes"]["never"], n, probs)
    _assert_point_equals_evaluation(points[-1], r["modes"]["always"], n, probs)
    f1m = r["comparison"]["per_post"]["f1@M"]
    # the per-post F1@M read from the scoring pass's outcomes equals a separate evaluation of each post
    for mode, outs in (("always", always), ("never", never)):
        preds = [split_keyphrases_cmkp(parse_output(o).answer) for o in outs]
        assert f1m[mode] == per_post_f1(preds, [g for _, g in posts])
    for j in sorted({1, 2, len(points) // 3, len(points) // 2, len(points) - 2, point_at_threshold(points, 0.5)}):
        p = points[j]
        auto = _auto_by_hand(tmp_path / f"auto_{variant}_{j}.jsonl", posts, always, never, probs, p["threshold"])
        ev = evaluate_files(auto, dataset=ds, train=train, variant=variant, ks=ks)
        _assert_point_equals_evaluation(p, ev, n, probs)
        # decisive accuracy: posts with always != never whose choice took the higher F1@M
        thinks = [q >= p["threshold"] for q in probs]
        dec = [(x, y, t) for x, y, t in zip(f1m["always"], f1m["never"], thinks) if x != y]
        assert p["decisive_correct"] == sum((x > y) == t for x, y, t in dec)
        assert p["decision_accuracy"] == p["decisive_correct"] / len(dec)
    assert r["frontier_summary"]["decisive"]["posts"] == len(dec)
    assert points[r["frontier_summary"]["best"]["index"]]["f1@M"] == max(p["f1@M"] for p in points)
    if variant == "per_post":
        assert "map@M" in points[0] and "f1@2" in points[0] and "f1@10" in points[0]  # as the tables


# ------------------------------------------------------------------------------------------- think_prob errors


def test_think_prob_only_in_one_file_is_enough(files):
    d = files["dir"]
    never = _write_preds(d / "never_np.jsonl", POSTS, NEVER)
    r = evaluate_files([("always", files["always"]), ("never", never)], dataset=files["dataset"])
    assert len(r["frontier"]) == 5 and r["frontier_summary"]["think_prob"]["from"] == "always"
    r = evaluate_files([("never", files["never"]), ("always", _write_preds(d / "a_np.jsonl", POSTS, ALWAYS))],
                       dataset=files["dataset"])
    assert r["frontier_summary"]["think_prob"]["from"] == "never"


def test_no_think_prob_means_no_frontier_and_think_rate_is_refused(files, capsys):
    d = files["dir"]
    a = _write_preds(d / "a_old.jsonl", POSTS, ALWAYS)
    nv = _write_preds(d / "n_old.jsonl", POSTS, NEVER)
    r = evaluate_files([("always", a), ("never", nv)], dataset=files["dataset"])
    assert "frontier" not in r and any("no think_prob" in note for note in r["notes"])
    code, _out, err = _run(capsys, "mmkp", "--predictions", f"always={a}", "--predictions", f"never={nv}",
                           "--dataset", files["dataset"], "--think-rate", "0.3", "--output", d / "x.json")
    assert code == 2 and "--think-rate" in err and str(a) in err and "think_prob" in err and "Traceback" not in err
    # --think-rate without an always and a never file
    code, _, err = _run(capsys, "mmkp", "--predictions", files["always"], "--dataset", files["dataset"],
                        "--think-rate", "0.3", "--output", d / "y.json")
    assert code == 2 and "never=PATH" in err
    for option, value, message in (("--think-rate", "1.5", "'1.5' is not a rate between 0 and 1"),
                                   ("--threshold", "-1", "'-1' is not a finite number >= 0"),
                                   ("--threshold", "nan", "'nan' is not a finite number >= 0")):
        with pytest.raises(SystemExit) as exc:  # argparse's own usage error
            eval_main(["mmkp", "--predictions", f"always={a}", "--predictions", f"never={nv}", option, value])
        assert exc.value.code == 2 and f"argument {option}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("probs,message", [
    ([0.9, 0.3, None, 0.6, 0.1], "row 3: no 'think_prob'"),
    ([0.9, 0.3, "0.3", 0.6, 0.1], "row 3: think_prob is '0.3'"),
    ([0.9, 0.3, 1.5, 0.6, 0.1], "row 3: think_prob is 1.5"),
    ([0.9, 0.3, True, 0.6, 0.1], "row 3: think_prob is True"),
])
def test_bad_think_prob_rows_are_named(files, capsys, probs, message):
    d = files["dir"]
    bad = _write_preds(d / "never_bad.jsonl", POSTS, NEVER, probs)
    code, _, err = _run(capsys, "mmkp", "--predictions", f"always={files['always']}", "--predictions",
                        f"never={bad}", "--dataset", files["dataset"], "--output", d / "z.json")
    assert code == 2 and f"{bad}, {message}" in err and "Traceback" not in err
    assert not (d / "z.json").exists()


def test_think_probs_that_disagree_are_named(files, capsys):
    d = files["dir"]
    off = _write_preds(d / "never_off.jsonl", POSTS, NEVER, [0.9, 0.3, 0.3, 0.6002, 0.1])
    code, _, err = _run(capsys, "mmkp", "--predictions", f"always={files['always']}", "--predictions",
                        f"never={off}", "--dataset", files["dataset"], "--output", d / "o.json")
    assert code == 2 and "Traceback" not in err
    assert f"{files['always']} (always) and {off} (never) differ at row 4: think_prob 0.6 vs 0.6002" in err
    # the auto file is checked too
    auto_off = _write_preds(d / "auto_off.jsonl", POSTS, AUTO, [0.9, 0.3, 0.3, 0.6, 0.2])
    code, _, err = _run(capsys, "mmkp", "--predictions", f"auto={auto_off}", "--predictions",
                        f"always={files['always']}", "--predictions", f"never={files['never']}",
                        "--dataset", files["dataset"], "--output", d / "o2.json")
    assert code == 2 and f"{auto_off} (auto) differ at row 5" in err
    # within 1e-4 they agree; the always file's values are used
    near = _write_preds(d / "never_near.jsonl", POSTS, NEVER, [0.90009, 0.3, 0.3, 0.6, 0.1])
    r = evaluate_files([("never", near), ("always", files["always"])], dataset=files["dataset"])
    assert r["frontier"][1]["min_thinking_prob"] == 0.9


def test_the_auto_files_rule_from_its_dyncot_think_json(files):
    d = files["dir"]
    (d / "greedy").mkdir()
    greedy = _write_preds(d / "greedy" / "generated_predictions.jsonl", POSTS, AUTO, PROBS)
    (d / "greedy" / "dyncot_think.json").write_text(json.dumps({"think": "greedy", "threshold": 0.5}))
    (d / "thr").mkdir()
    wrong = _write_preds(d / "thr" / "generated_predictions.jsonl", POSTS, NEVER, PROBS)
    (d / "thr" / "dyncot_think.json").write_text(json.dumps({"think": "auto", "threshold": 0.3}))
    r = evaluate_files([("auto", greedy), ("always", files["always"]), ("never", wrong)], dataset=files["dataset"])
    a = r["frontier_summary"]["auto_file"]
    assert a["think"] == "greedy" and a["think_rate"] == 0.4
    assert frontier_series(r)[3][2][0] == "auto file (greedy)"
    # a file given under another mode than its run's is noted (not refused: the names are the user's)
    assert f"{wrong} is given as never, but its dyncot_think.json says dyncot_think auto" in r["notes"]
    r = evaluate_files([("auto", wrong), ("always", files["always"]), ("never", files["never"])],
                       dataset=files["dataset"])
    assert r["frontier_summary"]["auto_file"]["threshold"] == 0.3
    assert frontier_series(r)[3][2][0] == "auto file (threshold 0.3)"
    assert not [n for n in r["notes"] if "dyncot_think.json" in n]


# ------------------------------------------------------------------------------------------- real prediction runs


@pytest.mark.slow
def test_a_point_equals_the_auto_run_of_its_threshold(warm_model, tmp_path_factory):
    """Acceptance (issue 24): on one model (the shared ``warm_model``: a tiny Qwen2-VL after 64 SFT steps, whose
    plain answers score above 0 and whose forced rationales score 0, so the frontier's scores change along it), the
    threshold the frontier prints for an interior point, typed into a prediction run's dyncot_think_threshold, gives
    that point again: its think rate and every score (llamafactory-cli, greedy, the same batch size). never's property
    in prediction runs on a model that opens every reply with the tag: tests/test_think_decision.py."""
    from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config

    model, data = warm_model
    dataset = Path(data) / "spread.json"

    def predict(**overrides):
        work = tmp_path_factory.mktemp("frontier_predict")
        run_llamafactory("train", tiny_sft_config(
            model, data, None, work / "out", do_train=False, do_predict=True, predict_with_generate=True,
            eval_dataset="spread", per_device_eval_batch_size=4, max_new_tokens=32, do_sample=False, **overrides,
        ), work)
        return work / "out" / "generated_predictions.jsonl"

    always, never = predict(dyncot_think="always"), predict(dyncot_think="never")
    r = evaluate_files([("always", always), ("never", never)], dataset=dataset)
    probs = [json.loads(line)["think_prob"] for line in always.read_text().splitlines()]
    assert len(set(probs)) == len(probs) == 32
    # scores, not zeros: never's plain answers score, so the points between the ends score differently
    assert r["modes"]["never"]["f1@M"] > r["modes"]["always"]["f1@M"], r["modes"]
    interior = [p for p in r["frontier"] if 0 < p["think_rate"] < 1 and p["f1@M"] > 0]
    assert interior, r["frontier"]
    point = interior[len(interior) // 2]
    assert point["f1@M"] != r["frontier"][0]["f1@M"]  # the point's own score, neither end's
    threshold = point["threshold"]  # as printed (repr: every digit), strictly between two posts' think_prob
    assert point["max_plain_prob"] < threshold <= point["min_thinking_prob"]
    auto = predict(dyncot_think="auto", dyncot_think_threshold=threshold)
    ev = evaluate_files(auto, dataset=dataset)
    _assert_point_equals_evaluation(point, ev, len(probs), probs)
    # the run decided on the floats it wrote: its rows think exactly where think_prob >= threshold
    auto_rows = [json.loads(line) for line in auto.read_text().splitlines()]
    assert [row["think_prob"] for row in auto_rows] == probs
    thinks = [row["predict"].startswith("<think>") for row in auto_rows]
    assert thinks == [p >= threshold for p in probs] and sum(thinks) / len(probs) == point["think_rate"]
