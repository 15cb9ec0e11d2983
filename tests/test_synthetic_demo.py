"""The synthetic demo set (`dyncot-data synth-demo-data`): what it promises about its posts, and the per-kind split."""

from __future__ import annotations

import json

import pytest

from dyncot_plugin.tasks.mmkp import synthetic_demo as sd


@pytest.fixture(scope="module")
def rows():
    return sd.build_rows()


def _steps(row: dict) -> tuple[str, str, str]:
    """(colour, season, shift) of an image post, read back from its rationale."""
    body = row["cot"].split("<think>")[1].split("</think>")[0].split(" , ")
    colour = body[0].split()[-1]
    season = body[1].split()[-1]
    return colour, season, body[2].split()[0]


def test_season_after_moves_round_the_year():
    assert sd.season_after("green", "one") == "summer" and sd.season_after("black", "two") == "summer"
    assert sd.season_after("orange", "three") == "summer" and sd.season_after("blue", "three") == "spring"
    assert sorted(sd.SEASONS) == sorted({season for _, season in sd.COLOURS.values()})
    assert all(sum(s == season for _, s in sd.COLOURS.values()) == 3 for season in sd.SEASONS)


def test_posts_of_each_kind_and_held_out_posts_are_new(rows):
    train, held_out, images = rows
    assert len(train) == sd.NUM_TRAIN and len(held_out) == sd.NUM_EVAL
    for split in (train, held_out):
        assert sum(r["kind"] == "image" for r in split) == len(split) // 2
    for row in train + held_out:
        if row["kind"] == "text":  # the post names its hashtags
            assert all(k in row["text"].split() for k in row["keyphrases"])
        else:  # the image's colour tells a season, the text how many seasons later: the hashtag
            colour, season, shift = _steps(row)
            assert images[row["images"][0].split("/")[-1]] == sd.COLOURS[colour][0]
            assert season == sd.COLOURS[colour][1] and f", {shift} season" in row["text"]
            assert row["keyphrases"] == [sd.season_after(colour, shift)]
            assert row["cot"].endswith(f"<answer>{row['keyphrases'][0]}</answer>")
    assert not {r["text"] for r in train} & {r["text"] for r in held_out if r["kind"] == "text"}
    # held-out image posts ask for (colour, shift) pairs no training post shows, each pair twice; a constant answer
    # scores a quarter
    pairs = lambda rows: [(c, k) for c, _, k in map(_steps, (r for r in rows if r["kind"] == "image"))]  # noqa: E731
    seen, unseen = set(pairs(train)), pairs(held_out)
    assert not seen & set(unseen) and len(set(unseen)) == 12 and all(unseen.count(p) == 2 for p in unseen)
    answers = [r["keyphrases"][0] for r in held_out if r["kind"] == "image"]
    assert all(answers.count(s) == len(answers) // 4 for s in sd.SEASONS)
    # ... while each step of the rationale is seen in training: the colour's season, the season moved by the shift
    train_steps = [_steps(r) for r in train if r["kind"] == "image"]
    assert {c for c, _, _ in train_steps} == set(sd.COLOURS)
    assert {(s, k) for _, s, k in train_steps} == {(s, k) for s in sd.SEASONS for k in sd.SHIFTS}


def test_write_kind_subsets_splits_posts_and_predictions_in_order(tmp_path, rows):
    _, held_out, _ = rows
    (tmp_path / f"{sd.EVAL_NAME}.json").write_text(json.dumps(held_out))
    runs = {}
    for mode in ("auto", "never"):
        runs[mode] = tmp_path / f"{mode}.jsonl"
        runs[mode].write_text("".join(json.dumps({"predict": f"{mode}{i}"}) + "\n" for i in range(len(held_out))))
    folders = sd.write_kind_subsets(tmp_path, runs, tmp_path / "by_kind")
    for kind, folder in folders.items():
        posts = json.loads((folder / f"{sd.EVAL_NAME}.json").read_text())
        keep = [i for i, r in enumerate(held_out) if r["kind"] == kind]
        assert [p["id"] for p in posts] == [held_out[i]["id"] for i in keep]
        for mode in runs:
            got = [json.loads(x)["predict"] for x in (folder / f"{mode}.jsonl").read_text().splitlines()]
            assert got == [f"{mode}{i}" for i in keep]
    runs["never"].write_text("{}\n")
    with pytest.raises(ValueError, match="1 predictions for 48 posts"):
        sd.write_kind_subsets(tmp_path, runs, tmp_path / "by_kind")
