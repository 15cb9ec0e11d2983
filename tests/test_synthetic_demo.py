"""The synthetic demo set (`dyncot-data synth-demo-data`): what it promises about its posts, and the per-kind split."""

from __future__ import annotations

import json

import pytest

from dyncot_plugin.tasks.mmkp import synthetic_demo as sd


@pytest.fixture(scope="module")
def rows():
    return sd.build_rows()


def _walk(row: dict) -> tuple[str, tuple[str, ...], list[str]]:
    """(colour, move words, seasons reached) of an image post, read back from its rationale."""
    body = row["cot"].split("<think>")[1].split("</think>")[0].rstrip(" .").split(" , ")
    colour = body[0].split()[-1]
    assert body[1] == f"{colour} means {sd.COLOURS[colour][1]}"
    return colour, tuple(step.split()[0] for step in body[2:]), [step.split()[1] for step in body[2:]]


def test_walk_moves_round_the_year():
    assert sd.walk("green", ("one", "once", "single")) == ["summer", "autumn", "winter"]
    assert sd.walk("white", ("three", "twice", "triple")) == ["autumn", "spring", "winter"]
    assert sorted(sd.SEASONS) == sorted(season for _, season in sd.COLOURS.values())


def test_posts_of_each_kind_and_held_out_posts_are_new(rows):
    train, held_out, images = rows
    assert len(train) == sd.NUM_TRAIN and len(held_out) == sd.NUM_EVAL
    # three image posts to one text post in training (the walk takes more learning), half and half held out
    assert sum(r["kind"] == "image" for r in train) == round(sd.IMAGE_SHARE * len(train)) == 192
    assert sum(r["kind"] == "image" for r in held_out) == len(held_out) // 2
    for row in train + held_out:
        if row["kind"] == "text":  # the post names its hashtags
            assert all(k in row["text"].split() for k in row["keyphrases"])
        else:  # the image's colour gives a season, the post's three move words walk it on: the hashtag
            colour, moves, states = _walk(row)
            assert images[row["images"][0].split("/")[-1]] == sd.COLOURS[colour][0]
            assert row["text"].endswith(f", then {moves[0]} , {moves[1]} and {moves[2]}")
            assert states == sd.walk(colour, moves) and row["keyphrases"] == [states[-1]]
            assert row["cot"].endswith(f"<answer>{states[-1]}</answer>")
    assert not {r["text"] for r in train} & {r["text"] for r in held_out if r["kind"] == "text"}
    # held-out image posts ask for (colour, moves) no training post shows, each a different one, each hashtag equally
    # often (a constant answer scores a quarter) ...
    combos = lambda rows: [_walk(r)[:2] for r in rows if r["kind"] == "image"]  # noqa: E731
    seen, unseen = set(combos(train)), combos(held_out)
    assert not seen & set(unseen) and len(set(unseen)) == len(unseen) == sd.NUM_EVAL // 2
    answers = [r["keyphrases"][0] for r in held_out if r["kind"] == "image"]
    assert all(answers.count(s) == len(answers) // 4 for s in sd.SEASONS)
    # ... while each step of the walk (a season moved on by a word) is seen in training
    def steps(rows):
        out = set()
        for row in rows:
            if row["kind"] == "image":
                colour, moves, states = _walk(row)
                out |= set(zip([sd.COLOURS[colour][1], *states[:-1]], moves))
        return out

    assert steps(held_out) <= steps(train)


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
