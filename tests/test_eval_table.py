"""``dyncot-eval table`` and the paired bootstrap (dyncot_plugin.tasks.mmkp.bootstrap): every cell is the run's own
``dyncot-eval mmkp`` score, a run against itself is [0, 0] with p = 1, a one-post difference lies in its interval,
the 95 % interval covers a known difference 92-97 % of the time, runs on other posts are refused before anything is
written, and ``dyncot-eval mmkp``'s per-mode comparison carries the same intervals."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from dyncot_plugin.cli.eval import main as eval_main
from dyncot_plugin.tasks.mmkp.bootstrap import (
    Layout,
    bootstrap_metrics,
    corpus_metrics,
    difference_summary,
    post_matrix,
    resample_counts,
)
from dyncot_plugin.tasks.mmkp.metrics import evaluate_keyphrases

TOPICS = ["cat", "dog", "rain", "sun", "game", "city", "coffee", "music", "beach", "snow", "party", "food"]
FILLER = ["look", "at", "this", "today", "we", "love", "the", "new", "big", "day"]


def _posts(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    posts = []
    for _ in range(n):
        gold = rng.sample(TOPICS, rng.randint(1, 3))
        words = rng.sample(FILLER, 4) + [g for g in gold if rng.random() < 0.5]  # some gold present, some absent
        rng.shuffle(words)
        posts.append((" ".join(words), gold))
    return posts


def _outputs(posts, skill: float, think_rate: float, seed: int) -> list[str]:
    """One run: per post some gold keyphrases (each with probability ``skill``) and some wrong ones, thinking on a
    share ``think_rate`` of the posts (a rationale of a few words)."""
    rng = random.Random(seed)
    out = []
    for text, gold in posts:
        kps = [g for g in gold if rng.random() < skill] + rng.sample(TOPICS, rng.randint(0, 3))
        rng.shuffle(kps)
        answer = "; ".join(kps)
        if rng.random() < think_rate:
            out.append(f"<think>the post says {text.split()[0]} and more</think><answer>{answer}</answer>")
        else:
            out.append(answer)
    return out


def _write_preds(path, posts, outputs):
    path.write_text("".join(json.dumps({"prompt": f"Post: {t}", "predict": o, "label": "; ".join(k)}) + "\n"
                            for (t, k), o in zip(posts, outputs)), encoding="utf-8")
    return path


def _write_dataset(path, posts):
    path.write_text(json.dumps([
        {"id": f"p{i}", "messages": [{"role": "user", "content": f"<image>Post: {t}"},
                                     {"role": "assistant", "content": "; ".join(k)}],
         "images": [f"{i}.jpg"], "text": t, "keyphrases": k}
        for i, (t, k) in enumerate(posts)
    ]), encoding="utf-8")
    return path


RUNS = {"sft": (0.3, 0.0), "cot": (0.5, 1.0), "multi_task": (0.4, 0.0), "dynamic": (0.55, 0.4)}


@pytest.fixture()
def files(tmp_path):
    posts = _posts(80)
    train = [("a post", TOPICS[:4]), ("another post", TOPICS[4:6])]  # the other six topics are unseen
    return {
        "dir": tmp_path,
        "posts": posts,
        "dataset": _write_dataset(tmp_path / "test.json", posts),
        "train": _write_dataset(tmp_path / "train.json", train),
        **{name: _write_preds(tmp_path / f"{name}.jsonl", posts, _outputs(posts, s, t, seed=i))
           for i, (name, (s, t)) in enumerate(RUNS.items())},
    }


def _cli(capsys, *argv):
    code = eval_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _table(capsys, files, runs, *argv):
    prefix = files["dir"] / "out" / "table"
    code, out, err = _cli(capsys, "table", *[f"{n}={files.get(n, p)}" for n, p in runs],
                          "--dataset", files["dataset"], "--train", files["train"], "--output", prefix, *argv)
    assert code == 0, err
    return json.loads((prefix.parent / "table.json").read_text()), out, prefix


def _mmkp(capsys, files, path, *argv):
    code, out, err = _cli(capsys, "mmkp", "--predictions", path, "--dataset", files["dataset"], "--train",
                          files["train"], "--json", "--no-plot", "--output", files["dir"] / "single.json", *argv)
    assert code == 0, err
    return json.loads(out)


SUBSETS = ("all", "present", "absent", "unseen")
KEYS = ("f1@1", "f1@3", "f1@5", "f1@M", "map@5")


# ------------------------------------------------------------------------------------------- the table's cells


@pytest.mark.parametrize("variant", ["cmkp", "per_post"])
def test_every_cell_equals_the_runs_own_evaluation(files, capsys, variant):
    runs = [(n, None) for n in RUNS]
    table, out, prefix = _table(capsys, files, runs, "--variant", variant, "--resamples", "200")
    assert [r["name"] for r in table["runs"]] == list(RUNS) and table["baseline"] == "sft"
    assert table["subsets"] == list(SUBSETS) and table["columns"] == list(KEYS)
    rows_csv = list(csv.DictReader(prefix.with_suffix(".csv").read_text().splitlines()))
    markdown = (prefix.parent / "table.md").read_text()
    assert out.startswith(markdown) and "written: " in out  # what is printed is what is written
    base = _mmkp(capsys, files, files["sft"], "--variant", variant)
    for row, row_csv in zip(table["runs"], rows_csv):
        alone = _mmkp(capsys, files, files[row["name"]], "--variant", variant)
        assert alone["variant"] == variant
        for sub in SUBSETS:
            for k in KEYS:
                value = alone[k] if sub == "all" else alone[sub][k]
                assert row["scores"][sub][k] == value  # exactly: the same evaluation
                assert float(row_csv[f"{sub} {k}"]) == value
                if not row["baseline"]:
                    base_value = base[k] if sub == "all" else base[sub][k]
                    assert row["vs_baseline"][sub][k]["delta"] == value - base_value
                    assert float(row_csv[f"{sub} {k} delta"]) == value - base_value
            assert row["scores"][sub]["num_posts"] == (alone if sub == "all" else alone[sub])["num_posts"]
        assert row["cot_rate"] == alone["cot_rate"] and row["gen_len"] == alone["gen_len"]["all"]
        assert float(row_csv["cot_rate"]) == alone["cot_rate"]
        if not row["baseline"]:
            assert row["vs_baseline"]["gen_len"]["relative_change"] == alone["gen_len"]["all"] / base["gen_len"]["all"] - 1
        # the whole evaluation is kept, as the single run's JSON (files and paths aside)
        assert {k: v for k, v in row["eval"].items() if k != "files"} == {
            k: v for k, v in alone.items() if k != "files"}
        # the Markdown shows the same values (in %, two decimals), on the run's line of each section
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {row['name']} "))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert [c.split(" ")[0] for c in cells[1:]] == [f"{100 * alone[k]:.2f}" for k in KEYS]
    assert "**unseen (" in markdown and "**CoT rate and length**" in markdown


def test_a_run_against_itself_is_zero_with_p_one(files, capsys):
    table, _, prefix = _table(capsys, files, [("dynamic", None), ("again", files["dynamic"])])
    again = table["runs"][1]["vs_baseline"]
    entries = [again[s][k] for s in SUBSETS for k in KEYS] + [again["cot_rate"], again["gen_len"]]
    assert len(entries) == 22
    for e in entries:
        assert (e.get("delta", e.get("relative_change")), e["low"], e["high"], e["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    assert table["bootstrap"]["resamples"] == 1000 and table["bootstrap"]["seed"] == 0  # the stated defaults
    assert "(+0.00 [+0.00, +0.00])" in (prefix.parent / "table.md").read_text()


def test_two_runs_that_differ_on_one_post(files, capsys):
    posts = files["posts"]
    outputs = _outputs(posts, 0.5, 0.3, seed=3)
    gold = posts[11][1]
    changed = list(outputs)
    changed[11] = "; ".join(gold)  # post 11 answered perfectly, without thinking, everything else the same
    assert changed[11] != outputs[11]
    _write_preds(files["dir"] / "a.jsonl", posts, outputs)
    _write_preds(files["dir"] / "b.jsonl", posts, changed)
    table, _, _ = _table(capsys, files, [("a", files["dir"] / "a.jsonl"), ("b", files["dir"] / "b.jsonl")])
    vs = table["runs"][1]["vs_baseline"]
    moved = 0
    for e in [vs[s][k] for s in SUBSETS for k in KEYS if vs[s] is not None] + [vs["cot_rate"], vs["gen_len"]]:
        d = e.get("delta", e.get("relative_change"))
        assert e["low"] <= d <= e["high"]
        assert e["low"] <= 0.0 <= e["high"]  # about 37 % of the resamples do not draw the post: no difference
        moved += d != 0
    assert moved >= 5  # the post did change the scores


# ------------------------------------------------------------------------------------------- the bootstrap itself


def _random_runs(n: int, seed: int):
    rng = random.Random(seed)
    posts = _posts(n, seed)
    runs = {}
    for name, skill in (("a", 0.3), ("b", 0.6)):
        preds = [[g for g in gold if rng.random() < skill] + rng.sample(TOPICS, rng.randint(0, 4)) for _, gold in posts]
        runs[name] = preds
    return posts, runs


@pytest.mark.parametrize("variant", ["cmkp", "per_post"])
def test_unit_weights_give_the_evaluators_scores(variant):
    """The resampled metric is the evaluator's formula: on the sample itself (every post once) it gives
    evaluate_keyphrases' scores, for every subset, cut-off and variant."""
    posts, runs = _random_runs(300, 1)
    golds, texts = [k for _, k in posts], [t for t, _ in posts]
    train = {"cat", "dog", "rain"}
    layout = Layout.make((1, 3, 5, 10), variant, present_absent=True, unseen=True)
    for preds in runs.values():
        outcomes = []
        res = evaluate_keyphrases(preds, golds, texts, train, ks=(1, 3, 5, 10), variant=variant, outcomes=outcomes)
        m = post_matrix(outcomes, [False] * len(posts), [len(p) for p in preds], layout)
        got = corpus_metrics(m.sum(axis=0), layout, float(len(posts)))
        assert layout.map_k == 5 and len(got) == 4 * 6 + 2  # F1 at 1, 3, 5, 10, M and MAP@5 per subset
        for (sub, key), v in got.items():
            if key == "gen_len":
                assert v[0] == pytest.approx(sum(map(len, preds)) / len(preds), abs=1e-12)
            elif key != "cot_rate":
                assert v[0] == pytest.approx((res if sub == "all" else res[sub])[key], abs=1e-12), (sub, key)


def test_resamples_depend_on_posts_count_and_seed_only(monkeypatch):
    import dyncot_plugin.tasks.mmkp.bootstrap as bs

    whole = np.vstack(list(resample_counts(40, 25, seed=5)))
    monkeypatch.setattr(bs, "_CHUNK_CELLS", 40 * 3)  # chunks of 3 resamples: the same draws
    assert np.array_equal(np.vstack(list(resample_counts(40, 25, seed=5))), whole)
    assert whole.shape == (25, 40) and set(whole.sum(axis=1)) == {40.0}
    assert not np.array_equal(np.vstack(list(resample_counts(40, 25, seed=6))), whole)


def test_p_value_inverts_the_percentile_interval():
    rng = np.random.default_rng(0)
    for shift in (-0.3, -0.05, 0.0, 0.02, 0.1, 0.4):
        d = rng.normal(shift, 0.1, size=999)
        s = difference_summary(d)
        assert s["low"] == pytest.approx(np.percentile(d, 2.5)) and s["high"] == pytest.approx(np.percentile(d, 97.5))
        tail = min(np.sum(d <= 0) + 1, np.sum(d >= 0) + 1)
        assert s["p_value"] == pytest.approx(min(1.0, 2 * tail / 1000))
        assert (s["p_value"] < 0.05) == (s["low"] > 0 or s["high"] < 0)
    assert difference_summary(np.zeros(50)) == {"low": 0.0, "high": 0.0, "p_value": 1.0}
    assert difference_summary(np.array([0.1, np.inf]))["p_value"] is None


def _simulated_population(size: int, seed: int):
    """Paired per-post outcomes of two systems on ``size`` posts: a post's difficulty is shared (so the runs are
    correlated, as two models on the same posts are) and system b matches more often."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(1, 5, size).tolist()
    npred = rng.integers(1, 7, size).tolist()
    skill = rng.beta(1, 1.5, size)  # spread out: the shared difficulty dominates, as on real posts
    out = {}
    for name, bonus in (("a", 0.0), ("b", 0.08)):
        hits = (rng.random((size, 6)) < np.minimum(skill + bonus, 1.0)[:, None]).tolist()
        rows = []
        for g, n, h in zip(gold, npred, hits):
            kept, m = [], 0
            for x in h[:n]:
                hit = x and m < g  # no more matches than gold keyphrases
                m += hit
                kept.append(hit)
            rows.append(((tuple(kept), g), None, None, None))
        out[name] = rows
    return out


def test_coverage_of_the_95_interval_on_simulated_pairs():
    """1,000 trials: draw 500 posts from a population whose F1@M difference is known, bootstrap the difference
    (1,000 resamples of the posts, paired), and count how often the 95 % interval holds the population's difference.

    Every trial resamples with the default seed, as every `dyncot-eval` run on 500 posts does: this is the coverage
    of the command as it is run. So the trials can share one call: 50 trials' samples side by side are 100 runs on
    the same 500 "posts" (sample positions), each trial's pair resampled together as in a call of its own."""
    layout = Layout.make(("M",), "cmkp", present_absent=False, unseen=False)
    pop = {name: post_matrix(rows, [False] * len(rows), [0] * len(rows), layout)
           for name, rows in _simulated_population(20_000, seed=0).items()}
    truth = {name: corpus_metrics(m.sum(axis=0), layout, float(len(m)))[("all", "f1@M")][0] for name, m in pop.items()}
    true_diff = truth["b"] - truth["a"]
    assert 0.03 < true_diff < 0.1
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(20):
        samples = [rng.integers(0, 20_000, 500) for _ in range(50)]
        runs = {(name, t): pop[name][idx] for t, idx in enumerate(samples) for name in ("a", "b")}
        boot = bootstrap_metrics(runs, ("a", 0), layout, resamples=1000, seed=0)
        for t in range(50):
            s = difference_summary(boot[("b", t)][("all", "f1@M")] - boot[("a", t)][("all", "f1@M")])
            covered += s["low"] <= true_diff <= s["high"]
    assert 0.92 <= covered / 1000 <= 0.97, covered


def test_given_counts_are_the_seeds_draws():
    posts, runs = _random_runs(60, 2)
    layout = Layout.make((1, 3, 5), "cmkp", present_absent=False, unseen=False)
    mats = {}
    for name, preds in runs.items():
        outcomes = []
        evaluate_keyphrases(preds, [k for _, k in posts], outcomes=outcomes)
        mats[name] = post_matrix(outcomes, [False] * 60, [1] * 60, layout)
    drawn = bootstrap_metrics(mats, "a", layout, resamples=300, seed=4)
    given = bootstrap_metrics(mats, "a", layout, counts=np.vstack(list(resample_counts(60, 300, seed=4))))
    assert all(np.array_equal(drawn[r][k], given[r][k]) for r in drawn for k in drawn[r])


# ------------------------------------------------------------------------------------------- refusals


def _refused(capsys, files, *runs, extra=()):
    out = files["dir"] / "refused"
    code, _, err = _cli(capsys, "table", *runs, "--dataset", files["dataset"], "--output", out / "t", *extra)
    assert code == 2
    assert not out.exists()  # nothing written
    return err


def test_runs_on_other_posts_are_refused_by_name_before_anything_is_written(files, capsys):
    posts = files["posts"]
    # another order: gold differs at row 0 (no --dataset: the labels are the gold)
    shuffled = posts[1:] + posts[:1]
    _write_preds(files["dir"] / "shuffled.jsonl", shuffled, _outputs(shuffled, 0.5, 0.5, 1))
    out = files["dir"] / "refused"
    code, _, err = _cli(capsys, "table", f"sft={files['sft']}", f"shuffled={files['dir'] / 'shuffled.jsonl'}",
                        "--output", out / "t")
    assert code == 2 and not out.exists()
    assert "sft (" in err and "shuffled (" in err and "differ at row 0" in err and "Traceback" not in err
    # fewer posts
    _write_preds(files["dir"] / "short.jsonl", posts[:-1], _outputs(posts[:-1], 0.5, 0.5, 1))
    code, _, err = _cli(capsys, "table", f"sft={files['sft']}", f"short={files['dir'] / 'short.jsonl'}",
                        "--output", out / "t")
    assert code == 2 and not out.exists() and "80 posts" in err and "79" in err and "short (" in err
    # the same gold but other labels (another prompt set): refused unless --no-label-check
    rows = [json.loads(x) for x in files["cot"].read_text().splitlines()]
    rows[5]["label"] = "something else"
    (files["dir"] / "relabelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = _cli(capsys, "table", f"sft={files['sft']}", f"relabelled={files['dir'] / 'relabelled.jsonl'}",
                        "--output", out / "t")
    assert code == 2 and not out.exists() and "relabelled (" in err and "row 5" in err
    # with --dataset the rows are paired with it first: a run of another dataset is named with its file
    err = _refused(capsys, files, f"sft={files['sft']}", f"short={files['dir'] / 'short.jsonl'}")
    assert "short.jsonl" in err


def test_bad_run_lists_are_refused(files, capsys):
    assert "NAME=PREDICTIONS" in _refused(capsys, files, str(files["sft"]))
    assert "given twice" in _refused(capsys, files, f"a={files['sft']}", f"a={files['cot']}")
    err = _refused(capsys, files, f"a={files['sft']}", f"b={files['cot']}", extra=("--baseline", "c"))
    assert "--baseline c" in err and "a, b" in err
    assert "not found" in _refused(capsys, files, f"a={files['sft']}", f"b={files['dir'] / 'missing.jsonl'}")


# ------------------------------------------------------------------------------------------- formats


def test_baseline_option_latex_and_csv(files, capsys):
    table, out, prefix = _table(capsys, files, [("sft", None), ("multi_task", None), ("cot", None)],
                                "--baseline", "cot", "--resamples", "300", "--seed", "7")
    assert table["baseline"] == "cot" and table["bootstrap"]["resamples"] == 300 and table["bootstrap"]["seed"] == 7
    assert [r["vs_baseline"] is None for r in table["runs"]] == [False, False, True]
    assert "300 resamples of the 80 posts, seed 7" in out
    tex = (prefix.parent / "table.tex").read_text()
    assert "multi\\_task" in tex and "\\toprule" in tex and tex.count("\\begin{tabular}") == 5
    rows = list(csv.DictReader(prefix.with_suffix(".csv").read_text().splitlines()))
    assert [r["run"] for r in rows] == ["sft", "multi_task", "cot"] and rows[2]["all f1@1 delta"] == ""
    sft = table["runs"][0]["vs_baseline"]["all"]["f1@M"]
    assert float(rows[0]["all f1@M p_value"]) == sft["p_value"] and float(rows[0]["all f1@M low"]) == sft["low"]
    # the same seed and resamples give the same intervals; another seed other ones
    again, _, _ = _table(capsys, files, [("sft", None), ("multi_task", None), ("cot", None)],
                         "--baseline", "cot", "--resamples", "300", "--seed", "7")
    assert again["runs"][0]["vs_baseline"] == table["runs"][0]["vs_baseline"]
    other, _, _ = _table(capsys, files, [("sft", None), ("cot", None)], "--baseline", "cot", "--resamples", "300")
    assert other["runs"][0]["vs_baseline"]["all"]["f1@M"]["low"] != sft["low"]
    # the intervals of a run do not depend on which other runs are in the table
    assert other["runs"][0]["vs_baseline"]["all"]["f1@M"]["delta"] == sft["delta"]


def test_no_post_texts_no_train_fewer_sections(files, capsys):
    prefix = files["dir"] / "bare" / "t"
    code, out, err = _cli(capsys, "table", f"sft={files['sft']}", f"cot={files['cot']}", "--output", prefix,
                          "--resamples", "0")
    assert code == 0, err
    table = json.loads(prefix.with_suffix(".json").read_text())
    assert table["subsets"] == ["all"] and table["runs"][1]["vs_baseline"]["present"] is None
    assert table["runs"][1]["vs_baseline"]["all"]["f1@1"]["low"] is None
    assert "**present" not in out and "(no resamples: no intervals)" in out


# ------------------------------------------------------------------------------------------- dyncot-eval mmkp


def test_mmkp_mode_comparison_has_the_tables_intervals(files, capsys):
    posts = files["posts"]
    for mode, (skill, think) in (("auto", (0.5, 0.5)), ("always", (0.55, 1.0)), ("never", (0.35, 0.0))):
        _write_preds(files["dir"] / f"{mode}.jsonl", posts, _outputs(posts, skill, think, seed=len(mode)))
    code, out, err = _cli(capsys, "mmkp", *[x for m in ("auto", "always", "never")
                                            for x in ("--predictions", f"{m}={files['dir'] / f'{m}.jsonl'}")],
                          "--dataset", files["dataset"], "--train", files["train"], "--no-plot",
                          "--output", files["dir"] / "modes.json")
    assert code == 0, err
    result = json.loads((files["dir"] / "modes.json").read_text())
    iv = result["comparison"]["intervals"]
    assert iv["reference"] == "auto" and set(iv["against"]) == {"always", "never"}
    assert (iv["resamples"], iv["seed"]) == (1000, 0)
    assert "auto - always in points (95% paired bootstrap interval, 1000 resamples of the 80 posts, seed 0" in out
    assert "auto - never in points" in out and max(map(len, out.splitlines())) <= 120
    for other in ("always", "never"):
        table, _, _ = _table(capsys, files, [(other, files["dir"] / f"{other}.jsonl"),
                                             ("auto", files["dir"] / "auto.jsonl")])
        vs = table["runs"][1]["vs_baseline"]  # auto - other, computed the other way round
        for sub in SUBSETS:
            auto, oth = (result["modes"][m] if sub == "all" else result["modes"][m][sub] for m in ("auto", other))
            for k in KEYS:
                a, b = iv["against"][other][sub][k], vs[sub][k]
                assert a["delta"] == b["delta"] == auto[k] - oth[k]
                assert a["low"] == pytest.approx(b["low"], abs=1e-12) and a["high"] == pytest.approx(b["high"], abs=1e-12)
                assert a["p_value"] == pytest.approx(b["p_value"], abs=2 / 1001)
    # --resamples 0: the differences without intervals
    code, out, err = _cli(capsys, "mmkp", "--predictions", f"auto={files['dir'] / 'auto.jsonl'}", "--predictions",
                          f"never={files['dir'] / 'never.jsonl'}", "--dataset", files["dataset"], "--no-plot",
                          "--resamples", "0", "--json", "--output", files["dir"] / "m0.json")
    assert code == 0, err
    iv0 = json.loads(out)["comparison"]["intervals"]
    assert iv0["against"]["never"]["all"]["f1@M"]["low"] is None
    assert iv0["against"]["never"]["all"]["f1@M"]["delta"] == iv["against"]["never"]["all"]["f1@M"]["delta"]


def test_an_empty_subset_is_said_not_tabled(files, capsys):
    _write_dataset(files["dir"] / "train_all.json", [("every topic", TOPICS)])
    prefix = files["dir"] / "seen" / "t"
    code, out, err = _cli(capsys, "table", f"sft={files['sft']}", f"cot={files['cot']}", "--dataset",
                          files["dataset"], "--train", files["dir"] / "train_all.json", "--output", prefix)
    assert code == 0, err
    table = json.loads(prefix.with_suffix(".json").read_text())
    assert table["runs"][1]["scores"]["unseen"]["num_posts"] == 0  # the evaluator's zeros, kept in the JSON
    assert "**unseen (0 posts)**: no post has a gold keyphrase of this kind" in out
    assert "% unseen (0 posts)" in prefix.with_suffix(".tex").read_text()
