"""The synthetic demo set (`dyncot-data synth-demo-data`): what it promises about its posts, and the per-kind split."""

from __future__ import annotations

import json

import pytest

from dyncot_plugin.tasks.mmkp import synthetic_demo as sd


@pytest.fixture(scope="module")
def rows():
    return sd.build_rows()


def test_posts_of_each_kind_and_held_out_texts_are_new(rows):
    train, held_out, images = rows
    assert len(train) == sd.NUM_TRAIN and len(held_out) == sd.NUM_EVAL
    for split in (train, held_out):
        assert sum(r["kind"] == "image" for r in split) == len(split) // 2
    hashtag = {tag: name for name, (_, tag) in sd.COLOURS.items()}
    for row in train + held_out:
        if row["kind"] == "text":  # the post names its hashtags
            assert all(k in row["text"].split() for k in row["keyphrases"])
        else:  # the hashtag follows from the image's background colour, which the rationale names
            colour = hashtag[row["keyphrases"][0]]
            assert f"mostly {colour}" in row["cot"] and images[row["images"][0].split("/")[-1]] == sd.COLOURS[colour][0]
    assert not {r["text"] for r in train} & {r["text"] for r in held_out if r["kind"] == "text"}


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
