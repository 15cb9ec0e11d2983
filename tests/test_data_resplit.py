"""dyncot-data resplit: target overlap within ±1 point on the real CMKP pool, exact test size, disjoint,
deterministic; CMKP and JSON outputs; errors write nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.io.datasets import DatasetError, dataset_entry, load_rows
from dyncot_plugin.tasks.mmkp import convert as cmkp
from dyncot_plugin.tasks.mmkp import stats
from dyncot_plugin.tasks.mmkp.convert import read_cmkp_file
from dyncot_plugin.tasks.mmkp.resplit import select_split

DATA = Path(__file__).resolve().parent / "data"
SHARED = Path(os.environ.get("DYNCOT_CMKP_DIR", Path(__file__).resolve().parents[2] / "shared" / "cmkp"))
needs_shared = pytest.mark.skipif(
    not (SHARED / "tw_mm_s1" / "test_src.txt").is_file(), reason=f"full CMKP files not found in {SHARED}"
)


def _overlap(posts, train_idx, test_idx) -> float:
    """Independent check: share of unique test keyphrases that occur in train (exact string)."""
    train_kps = {kp for i in train_idx for kp in posts[i].keyphrases}
    test_kps = {kp for i in test_idx for kp in posts[i].keyphrases}
    return len(test_kps & train_kps) / len(test_kps)


@pytest.fixture(scope="module")
def full_pool():
    if not (SHARED / "tw_mm_s1" / "test_src.txt").is_file():
        pytest.skip(f"full CMKP files not found in {SHARED}")
    return read_cmkp_file(SHARED / "tw_mm_s1" / "valid_src.txt") + read_cmkp_file(SHARED / "tw_mm_s1" / "test_src.txt")


def _keys(posts):
    return [["t:" + p.text, "i:" + p.image] for p in posts]


@needs_shared
@pytest.mark.parametrize("target", [0.45, 0.70, 0.90])
@pytest.mark.parametrize("test_size", [5372, 2000])
def test_real_pool_hits_target_within_one_point(full_pool, target, test_size):
    posts = full_pool
    r = select_split([p.keyphrases for p in posts], test_size, target, seed=0, group_keys=_keys(posts))
    assert len(r.test) == test_size
    assert len(r.train) == len(posts) - test_size
    assert set(r.train).isdisjoint(r.test)
    assert sorted(r.train + r.test) == list(range(len(posts)))
    achieved = _overlap(posts, r.train, r.test)
    assert achieved == pytest.approx(r.overlap)
    assert abs(achieved - target) <= 0.01
    # posts with the same text or image are never split across train and test
    side = {i: "test" for i in r.test} | {i: "train" for i in r.train}
    by_key: dict[str, set[str]] = {}
    for i, keys in enumerate(_keys(posts)):
        for k in keys:
            by_key.setdefault(k, set()).add(side[i])
    assert all(len(sides) == 1 for sides in by_key.values())


@needs_shared
def test_real_pool_deterministic_for_a_seed(full_pool):
    kps = [p.keyphrases for p in full_pool]
    a = select_split(kps, 2000, 0.45, seed=7, group_keys=_keys(full_pool))
    b = select_split(kps, 2000, 0.45, seed=7, group_keys=_keys(full_pool))
    c = select_split(kps, 2000, 0.45, seed=8, group_keys=_keys(full_pool))
    assert (a.test, a.overlap, a.swaps) == (b.test, b.overlap, b.swaps)
    assert a.test != c.test
    assert abs(c.overlap - 0.45) <= 0.01


@needs_shared
def test_real_pool_cli_mmkp_v2_recipe(tmp_path, capsys):
    """valid+test pool, test size kept from the test= input, CMKP output with side files, checked by stats."""
    src = SHARED / "tw_mm_s1"
    out = tmp_path / "v2"
    rc = data_main(
        [
            "resplit",
            str(src / "valid_src.txt"),
            f"test={src / 'test_src.txt'}",
            "-o",
            str(out),
            "--target-overlap",
            "0.45",
            "--side-files",
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "train: 5370 posts, test: 5372 posts" in printed
    s = stats.compute_stats(
        {"train": stats.load_posts(out / "train_src.txt"), "test": stats.load_posts(out / "test_src.txt")}
    )
    assert s["splits"]["test"]["posts"] == 5372
    assert abs(s["overlap"]["train->test"]["overlap"] - 0.45) <= 0.01
    report = json.loads((out / "mmkp_v2_resplit.json").read_text())
    assert report["overlap"] == pytest.approx(s["overlap"]["train->test"]["overlap"])
    assert f"{100 * report['overlap']:.2f}%" in printed
    # side files stay aligned with their posts
    originals = {}
    for split in ("valid", "test"):
        lines = (src / f"{split}_attribute_cleaned.txt").read_text().split("\n")
        for p in read_cmkp_file(src / f"{split}_src.txt"):
            originals[p.to_line()] = lines[p.index].strip()
    for split in ("train", "test"):
        attrs = (out / f"{split}_attribute_cleaned.txt").read_text().split("\n")
        for p in read_cmkp_file(out / f"{split}_src.txt"):
            assert originals[p.to_line()] == attrs[p.index]


# --------------------------------------------------------------------------------------- bundled pool (no ../shared)


def _bundled_pool_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cmkp"
    d.mkdir()
    shutil.copy(DATA / "cmkp_test_src.txt", d / "test_src.txt")
    shutil.copy(DATA / "cmkp_test_attribute_cleaned.txt", d / "test_attribute_cleaned.txt")
    shutil.copy(DATA / "cmkp_test_ocr_final.txt", d / "test_ocr_final.txt")
    shutil.copy(DATA / "cmkp_train_src.txt", d / "train_src.txt")
    return d


def test_bundled_pool_targets(tmp_path):
    posts = read_cmkp_file(DATA / "cmkp_train_src.txt") + read_cmkp_file(DATA / "cmkp_test_src.txt")
    kps = [p.keyphrases for p in posts]
    for target in (0.0, 0.2, 0.3):
        r = select_split(kps, 40, target, seed=0, group_keys=_keys(posts))
        assert len(r.test) == 40 and set(r.test).isdisjoint(r.train)
        assert abs(_overlap(posts, r.train, r.test) - target) <= 0.01
    assert select_split(kps, 40, 0.3, seed=3).test == select_split(kps, 40, 0.3, seed=3).test


def test_duplicate_posts_move_together():
    kps = [["a"], ["b"], ["a"], ["c"], ["c"], ["d"], ["e"], ["b"]]
    keys = [["t:x"], ["t:y"], ["t:x"], ["t:z"], ["t:w"], ["t:v"], ["t:u"], ["t:y"]]  # posts 0+2 and 1+7 are copies
    for seed in range(20):
        r = select_split(kps, 4, 0.5, seed=seed, tolerance=0.5, group_keys=keys, patience=50)
        assert len(r.test) == 4
        assert (0 in r.test) == (2 in r.test) and (1 in r.test) == (7 in r.test)


def test_cli_json_pool_rebases_images_and_registers(tmp_path, capsys):
    ds = tmp_path / "ds"
    pool = _bundled_pool_dir(tmp_path)
    posts = {s: read_cmkp_file(pool / f"{s}_src.txt") for s in ("train", "test")}
    for ps in posts.values():
        for p in ps:
            (ds / "images").mkdir(parents=True, exist_ok=True)
            (ds / "images" / p.image).write_bytes(b"")
    cmkp.convert({"train": pool / "train_src.txt", "test": pool / "test_src.txt"}, ds)
    out = tmp_path / "v2"
    rc = data_main(
        [
            "resplit",
            str(ds / "mmkp_train.json"),
            f"test={ds / 'mmkp_test.json'}",
            "-o",
            str(out),
            "--target-overlap",
            "0.2",
            "--seed",
            "0",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    train, test = load_rows(out / "mmkp_v2_train.json"), load_rows(out / "mmkp_v2_test.json")
    assert (len(train), len(test)) == (120, 40)
    assert [r["id"] for r in test] == [f"mmkp_v2_test_{i:06d}" for i in range(40)]
    assert {r["source_id"] for r in train} | {r["source_id"] for r in test} == {
        f"mmkp_{s}_{i:06d}" for s, n in (("train", 120), ("test", 40)) for i in range(n)
    }
    assert {r["source_id"] for r in train}.isdisjoint({r["source_id"] for r in test})
    row = test[0]
    assert row["images"][0].startswith("../ds/images/") and (out / row["images"][0]).is_file()
    assert row["messages"][0]["content"].startswith("<image>") and row["cot"] is None
    train_kps = {k for r in train for k in r["keyphrases"]}
    test_kps = {k for r in test for k in r["keyphrases"]}
    assert abs(len(test_kps & train_kps) / len(test_kps) - 0.2) <= 0.01
    info = json.loads((out / "dataset_info.json").read_text())
    assert info == {
        "mmkp_v2_train": dataset_entry("mmkp_v2_train.json"),
        "mmkp_v2_test": dataset_entry("mmkp_v2_test.json"),
    }
    report = json.loads((out / "mmkp_v2_resplit.json").read_text())
    assert (report["pool"], report["test_posts"], report["seed"]) == (160, 40, 0)
    assert sorted(report["test_sources"]) == sorted(r["source_id"] for r in test)


def test_cli_cmkp_pool_side_files_fraction_size(tmp_path, capsys):
    pool = _bundled_pool_dir(tmp_path)
    (pool / "train_attribute_cleaned.txt").write_text("".join(f"attr {i}\n" for i in range(120)))
    (pool / "train_ocr_final.txt").write_text("\n" * 120)
    out = tmp_path / "out"
    rc = data_main(
        [
            "resplit",
            str(pool / "train_src.txt"),
            str(pool / "test_src.txt"),
            "-o",
            str(out),
            "--test-size",
            "0.25",
            "--target-overlap",
            "0.3",
            "--side-files",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == [
        "mmkp_v2_resplit.json",
        "test_attribute_cleaned.txt",
        "test_ocr_final.txt",
        "test_src.txt",
        "train_attribute_cleaned.txt",
        "train_ocr_final.txt",
        "train_src.txt",
    ]
    train, test = read_cmkp_file(out / "train_src.txt"), read_cmkp_file(out / "test_src.txt")
    assert (len(train), len(test)) == (120, 40)
    for split, ps in (("train", train), ("test", test)):
        assert len((out / f"{split}_attribute_cleaned.txt").read_text().split("\n")) == len(ps) + 1
        assert len((out / f"{split}_ocr_final.txt").read_text().split("\n")) == len(ps) + 1
    # a post's attribute line travels with it
    src_attr = {
        p.to_line(): (pool / "test_attribute_cleaned.txt").read_text().split("\n")[p.index]
        for p in read_cmkp_file(pool / "test_src.txt")
    }
    src_attr |= {p.to_line(): f"attr {p.index}" for p in read_cmkp_file(pool / "train_src.txt")}
    for split, ps in (("train", train), ("test", test)):
        lines = (out / f"{split}_attribute_cleaned.txt").read_text().split("\n")
        assert all(src_attr[p.to_line()].strip() == lines[p.index] for p in ps)
    s = stats.compute_stats(
        {"train": stats.load_posts(out / "train_src.txt"), "test": stats.load_posts(out / "test_src.txt")}
    )
    assert abs(s["overlap"]["train->test"]["overlap"] - 0.3) <= 0.01


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--target-overlap", "0.5"],
            "could not reach a train->test overlap of 0.5000 ± 0.0100 with 40 test posts out of 160",
        ),
        (["--target-overlap", "1.5"], "target overlap 1.5 is not between 0 and 1"),
        (["--test-size", "160"], "test size 160 must be between 1 and the pool size minus 1 (159)"),
        (["--test-size", "many"], "--test-size 'many': give a count"),
        (["--test-size", "1.5"], "--test-size '1.5': give a count"),
        (["dev=x.txt"], "unknown split name 'dev' in 'dev=x.txt'"),
        (["{ds}/mmkp_test.json"], "mixes converted .json files and CMKP source files"),
        (["--side-files"], "--side-files: {pool}/train_src.txt has no side file {pool}/train_attribute_cleaned.txt"),
    ],
)
def test_cli_errors_write_nothing(tmp_path, capsys, extra, message):
    pool = _bundled_pool_dir(tmp_path)
    ds = tmp_path / "ds"
    cmkp.convert({"test": pool / "test_src.txt"}, ds, use_images=False)
    extra = [e.format(ds=ds, pool=pool) for e in extra]
    out = tmp_path / "out"
    inputs = [str(pool / "train_src.txt"), f"test={pool / 'test_src.txt'}"]
    rc = data_main(["resplit", *inputs, *extra, "-o", str(out)])
    assert rc == 2
    assert message.format(pool=pool) in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_to_overwrite_its_input(tmp_path, capsys):
    pool = _bundled_pool_dir(tmp_path)
    before = (pool / "train_src.txt").read_text()
    rc = data_main(
        [
            "resplit",
            str(pool / "train_src.txt"),
            f"test={pool / 'test_src.txt'}",
            "-o",
            str(pool),
            "--target-overlap",
            "0.2",
        ]
    )
    assert rc == 2
    assert "would overwrite the input file(s)" in capsys.readouterr().err
    assert (pool / "train_src.txt").read_text() == before
    assert sorted(p.name for p in pool.iterdir()) == [
        "test_attribute_cleaned.txt",
        "test_ocr_final.txt",
        "test_src.txt",
        "train_src.txt",
    ]


def test_select_split_errors():
    with pytest.raises(DatasetError, match="test size 0 must be between 1"):
        select_split([["a"], ["b"]], 0, 0.5)
