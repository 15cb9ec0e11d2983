"""The synthetic demo set (`dyncot-data synth-demo-data`): what it promises about its posts, and the per-kind split."""

from __future__ import annotations

import json

import pytest

from dyncot_plugin.tasks.mmkp import synthetic_demo as sd


@pytest.fixture(scope="module")
def rows():
    return sd.build_rows()


def _colours(row: dict) -> tuple[str, ...]:
    """The colours of an image post, read back from its rationale (``red noon , teal night , ...``)."""
    body = row["cot"].split("<think>")[1].split("</think>")[0]
    return tuple(step.split()[0] for step in body.split(" , "))


def test_clock_walk_is_a_running_sum():
    assert sd.clock_walk(("red", "teal", "pink", "grey")) == ["noon", "night", "noon", "night"]
    assert sd.clock_walk(("yellow", "blue", "brown", "black")) == ["night", "dusk", "noon", "dawn"]
    assert sorted(sd.STEPS.values()) == [1] * 4 + [2] * 4 + [3] * 4


def test_image_posts_need_the_walk_and_held_out_ones_are_unseen_combinations(rows):
    train, held_out, images = rows
    assert len(train) == sd.NUM_TRAIN and len(held_out) == sd.NUM_EVAL
    for split in (train, held_out):
        assert sum(r["kind"] == "image" for r in split) == len(split) // 2
    for row in train + held_out:
        if row["kind"] != "image":
            continue
        colours = _colours(row)
        # one colour of each palette, in palette order; the hashtag is where the hand stops
        assert [next(i for i, p in enumerate(sd.PALETTES) if c in dict(p)) for c in colours] == [0, 1, 2, 3]
        assert row["keyphrases"] == [sd.clock_walk(colours)[-1]]
        assert row["cot"].endswith(f"<answer>{row['keyphrases'][0]}</answer>")
        assert sorted(images[row["images"][0].split("/")[-1]]) == sorted(sd.COLOURS[c] for c in colours)
    seen = {frozenset(_colours(r)) for r in train if r["kind"] == "image"}
    unseen = [frozenset(_colours(r)) for r in held_out if r["kind"] == "image"]
    assert not seen & set(unseen) and len(set(unseen)) == len(unseen)
    # every held-out hashtag occurs about equally often: a constant answer scores at most about a quarter
    counts = [sum(r["keyphrases"] == [h] for r in held_out if r["kind"] == "image") for h in sd.CLOCK]
    assert max(counts) - min(counts) <= 1
    # each step of the walk (a state and a colour) is seen in training: the rationale's steps generalise
    steps = {(s0, c) for r in train if r["kind"] == "image"
             for s0, c in zip(["dawn"] + sd.clock_walk(_colours(r))[:-1], _colours(r))}
    assert all((s0, c) in steps for r in held_out if r["kind"] == "image"
               for s0, c in zip(["dawn"] + sd.clock_walk(_colours(r))[:-1], _colours(r)))


def test_text_posts_name_their_hashtag_and_held_out_texts_are_new(rows):
    train, held_out, images = rows
    texts = {r["text"] for r in train}
    for row in train + held_out:
        if row["kind"] == "text":
            assert row["keyphrases"][0] in row["text"].split()
            assert len(set(images[row["images"][0].split("/")[-1]])) == 1  # a flat image: nothing to read
    assert not texts & {r["text"] for r in held_out if r["kind"] == "text"}


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
