"""Issue 11, the data tools: bad and empty files name the file, convert-cmkp keeps gen-cot's CoTs, counts empty text,
``;;`` and over-long posts, output names stay inside the dataset folder, and a writer killed with ``kill -9`` leaves
no temporary file for good."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.cli.eval import main as eval_main
from dyncot_plugin.io.files import lock_path, locked_files, temp_files

POSTS = [
    "the cats sat on the mat<sep>cat;dog<sep>https://x/a.jpg",
    "new york city at night<sep>new york<sep>https://x/b.jpg",
    "sunny day at the beach<sep>summer;beach<sep>https://x/c.jpg",
]


def _cmkp(tmp_path: Path, lines=POSTS, name="test_src.txt") -> Path:
    src = tmp_path / name
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return src


def _images(ds: Path, names=("a.jpg", "b.jpg", "c.jpg")) -> None:
    (ds / "images").mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (4, 4)).save(ds / "images" / n, "JPEG")


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def _fill_cots(path: Path, indices) -> None:
    """What gen-cot leaves behind: a cot and a cot_source on some rows."""
    rows = _rows(path)
    for i in indices:
        rows[i]["cot"] = f"<think>because {i}</think><answer>{rows[i]['messages'][1]['content']}</answer>"
        rows[i]["cot_source"] = "teacher:gpt-4o"
    path.write_text(json.dumps(rows), encoding="utf-8")


# ------------------------------------------------------------------------------------- convert-cmkp keeps CoTs


def test_convert_over_a_filled_dataset_keeps_the_cots(tmp_path, capsys):
    """Case 6: re-running convert-cmkp over a dataset gen-cot filled keeps every CoT whose post is unchanged."""
    ds = tmp_path / "ds"
    _images(ds)
    src = _cmkp(tmp_path)
    assert data_main(["convert-cmkp", f"test={src}", "-o", str(ds), "-q"]) == 0
    _fill_cots(ds / "mmkp_test.json", [0, 2])
    filled = _rows(ds / "mmkp_test.json")
    capsys.readouterr()

    assert data_main(["convert-cmkp", f"test={src}", "-o", str(ds), "-q"]) == 0
    assert "2 CoTs kept from the previous file" in capsys.readouterr().out
    assert _rows(ds / "mmkp_test.json") == filled  # the same rows, CoTs and cot_source included

    # A post whose keyphrases changed would lose its CoT: refused, nothing written, the count and the id named.
    changed = [POSTS[0].replace("cat;dog", "cat;kitten"), POSTS[1], POSTS[2]]
    src2 = _cmkp(tmp_path, changed, "v2_test_src.txt")
    assert data_main(["convert-cmkp", f"test={src2}", "-o", str(ds), "-q"]) == 2
    err = capsys.readouterr().err
    assert "1 row(s) of the existing output would lose their CoT" in err and "mmkp_test_000000 (its post changed)" in err
    assert "--overwrite-cot" in err and "Traceback" not in err
    assert _rows(ds / "mmkp_test.json") == filled
    # A post no longer written (--missing-images skip) would lose it too.
    os.unlink(ds / "images" / "c.jpg")
    assert data_main(["convert-cmkp", f"test={src}", "-o", str(ds), "-q", "--missing-images", "skip"]) == 2
    assert "mmkp_test_000002 (no longer written)" in capsys.readouterr().err
    Image.new("RGB", (4, 4)).save(ds / "images" / "c.jpg", "JPEG")

    # --overwrite-cot: fresh rows, the dropped CoTs counted.
    assert data_main(["convert-cmkp", f"test={src2}", "-o", str(ds), "-q", "--overwrite-cot"]) == 0
    assert "2 CoTs dropped (--overwrite-cot)" in capsys.readouterr().out
    assert [r["cot"] for r in _rows(ds / "mmkp_test.json")] == [None, None, None]


# ---------------------------------------------------------------------------------------------------- case 10


def test_convert_counts_empty_text_empty_keyphrase_pieces_and_long_posts(tmp_path, capsys):
    ds = tmp_path / "ds"
    _images(ds, ("a.jpg", "b.jpg", "c.jpg", "d.jpg"))
    lines = [
        POSTS[0],
        "<sep>new york<sep>https://x/b.jpg",  # empty post text: kept, counted
        "sunny day<sep>summer;;beach;<sep>https://x/c.jpg",  # two empty pieces: dropped, counted
        "x" * 10_001 + "<sep>long<sep>https://x/d.jpg",  # over the default --max-post-chars 10000: skipped
    ]
    src = _cmkp(tmp_path, lines)
    assert data_main(["convert-cmkp", f"test={src}", "-o", str(ds), "-q"]) == 0
    out = capsys.readouterr().out
    assert "test: 3 of 4 posts" in out
    assert "1 skipped (text over --max-post-chars 10000)" in out
    assert "1 with an empty post text" in out and "1 with empty keyphrase pieces (';;', dropped)" in out
    assert f"{src}:4 (10,001 characters)" in out and f"{src}:2 (empty post text)" in out
    assert f"{src}:3 (empty keyphrase piece)" in out
    rows = _rows(ds / "mmkp_test.json")
    assert [r["id"] for r in rows] == ["mmkp_test_000000", "mmkp_test_000001", "mmkp_test_000002"]
    assert rows[1]["text"] == "" and rows[2]["keyphrases"] == ["summer", "beach"]

    # The limit is a flag; 0 turns it off.
    assert data_main(["convert-cmkp", f"test={src}", "-o", str(ds), "-q", "--max-post-chars", "0"]) == 0
    assert "test: 4 of 4 posts" in capsys.readouterr().out
    # Every post too long: an error naming the file and line, not an empty split.
    src = _cmkp(tmp_path, POSTS, "all_test_src.txt")
    assert data_main(["convert-cmkp", f"test={src}", "-o", str(ds), "-q", "--max-post-chars", "3"]) == 2
    assert f"every post of {src} is longer than --max-post-chars 3 (first: {src}:1" in capsys.readouterr().err


def test_a_writer_killed_with_kill_9_leaves_no_temporary_file_after_the_next_run(tmp_path, capsys):
    """A real ``kill -9`` between writing the temporary file and renaming it; the next convert-cmkp removes the
    leftover under the file's lock (and only under it)."""
    ds = tmp_path / "ds"
    _images(ds)
    src = _cmkp(tmp_path)
    target = ds / "mmkp_test.json"
    code = (
        "import os, signal, sys\n"
        "from dyncot_plugin.io.files import StagedWrites, locked_files\n"
        f"with locked_files({str(target)!r}):\n"
        "    s = StagedWrites()\n"
        f"    f = s.open({str(target)!r}); f.write('[half a row'); f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    left = temp_files(target)
    assert len(left) == 1 and left[0].read_text() == "[half a row"
    assert not target.exists()
    assert data_main(["convert-cmkp", f"test={src}", "-o", str(ds), "-q"]) == 0
    assert temp_files(target) == [] and len(_rows(target)) == 3
    assert lock_path(target).is_file() and lock_path(target).stat().st_size == 0


def test_locked_files_is_reentrant_and_removes_leftovers_only_when_held(tmp_path):
    target = tmp_path / "x.json"
    leftover = tmp_path / ".x.json.abc123.tmp"
    leftover.write_text("old")
    other = tmp_path / ".y.json.abc123.tmp"  # another file's: not touched
    other.write_text("old")
    assert leftover.exists()
    with locked_files(target) as removed:
        assert removed == [leftover] and not leftover.exists()
        with locked_files(target, tmp_path / "y.json") as again:  # nested in one thread: no deadlock
            assert again == [other]
    assert not other.exists()


# --------------------------------------------------------------------------------- output names stay inside


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "sub/x"])
def test_output_names_with_folders_are_refused(tmp_path, capsys, name):
    ds = tmp_path / "ds"
    _images(ds)
    src = _cmkp(tmp_path)
    assert data_main(["convert-cmkp", f"test={src}", "-o", str(ds), "--name", name, "-q"]) == 2
    assert f"dataset name {name!r}" in capsys.readouterr().err
    pool = [_cmkp(tmp_path, POSTS * 2, "train_src.txt")]
    assert data_main(["resplit", *map(str, pool), "-o", str(tmp_path / "o"), "--test-size", "2", "--name", name]) == 2
    assert f"--name {name!r}: names a file <name>.json inside the dataset folder" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists() and not Path("/tmp/abs_train.json").exists()


# ------------------------------------------------------------------------------ bad files name the file (case 4)


BAD_FILES = {
    "not_utf8": (b"[\n{\"text\": \"caf\xe9\"}\n]\n", ":2: not UTF-8 text (byte 0xe9"),
    "bad_json": (b"[\n{\"text\": 1,,}\n]\n", ":2: not valid JSON"),
    "empty": (b"", ": the dataset file is empty"),
    "no_rows": (b"[]\n", ": the dataset file has no rows"),
    "wrong_shape": (b"{\"rows\": []}\n", ": expected a JSON list of rows, got dict"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("command", ["stats", "resplit", "eval-dataset"])
def test_each_bad_json_file_names_the_file(tmp_path, capsys, command, kind):
    content, message = BAD_FILES[kind]
    bad = tmp_path / "mmkp_test.json"
    bad.write_bytes(content)
    if command == "stats":
        rc = data_main(["stats", f"test={bad}", "-q"])
        prog = "dyncot-data stats"
    elif command == "resplit":
        rc = data_main(["resplit", f"test={bad}", "-o", str(tmp_path / "o")])
        prog = "dyncot-data resplit"
    else:
        pred = tmp_path / "generated_predictions.jsonl"
        pred.write_text('{"prompt": "p", "predict": "cat", "label": "cat"}\n')
        rc = eval_main(["mmkp", "--predictions", str(pred), "--dataset", str(bad)])
        prog = "dyncot-eval mmkp"
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"{prog}: error: {bad}{message}"), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"predict": "caf\xe9"}\n', ":1: not UTF-8 text (byte 0xe9"),
        (b'{"predict": "a"}\n{"predict": \n', ":2: not valid JSON"),
        (b"", ": no predictions (the file is empty)"),
        (b'["a"]\n', ":1: expected a JSON object, got list"),
    ],
)
def test_bad_prediction_files_name_the_file(tmp_path, capsys, content, message):
    pred = tmp_path / "generated_predictions.jsonl"
    pred.write_bytes(content)
    src = _cmkp(tmp_path)
    assert eval_main(["mmkp", "--predictions", str(pred), "--src", str(src)]) == 2
    err = capsys.readouterr().err
    assert f"{pred}{message}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"a<sep>cat<sep>u\nb\xff<sep>dog<sep>u\n", ":2: not UTF-8 text (byte 0xff"),
        (b"", ": no posts; nothing to do"),
        (b"just one field\n", ", line 1: expected 'post text<sep>kp1;kp2<sep>image-url'"),
    ],
)
def test_bad_src_files_name_the_file(tmp_path, capsys, content, message):
    src = tmp_path / "test_src.txt"
    src.write_bytes(content)
    pred = tmp_path / "pred.txt"
    pred.write_text("cat\ndog\n")
    assert eval_main(["mmkp", "--predictions", str(pred), "--src", str(src)]) == 2
    err = capsys.readouterr().err
    assert f"{src}{message}" in err and "Traceback" not in err


def test_bad_scienceqa_problems_file_names_the_file(tmp_path, capsys):
    problems = tmp_path / "problems.json"
    problems.write_bytes(b'{"1": {"question": "caf\xe9"}}')
    splits = tmp_path / "pid_splits.json"
    splits.write_text('{"train": ["1"]}')
    assert data_main(["convert-scienceqa", "--problems", str(problems), "--splits-file", str(splits),
                      "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{problems}:1: not UTF-8 text" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------- empty inputs (case 5)


def test_empty_inputs_exit_non_zero_naming_the_file(tmp_path, capsys):
    empty_list = tmp_path / "mmkp_test.json"
    empty_list.write_text("[]\n")
    assert data_main(["stats", f"test={empty_list}", "-q"]) == 2
    assert f"{empty_list}: the dataset file has no rows" in capsys.readouterr().err

    empty_pred = tmp_path / "generated_predictions.jsonl"
    empty_pred.write_text("\n\n")
    src = _cmkp(tmp_path)
    assert eval_main(["mmkp", "--predictions", str(empty_pred), "--src", str(src)]) == 2
    assert f"{empty_pred}: no predictions (the file is empty)" in capsys.readouterr().err

    pred_txt = tmp_path / "pred.txt"
    pred_txt.write_text("")
    assert eval_main(["mmkp", "--predictions", str(pred_txt), "--src", str(src)]) == 2
    assert f"{pred_txt}: no predictions; nothing to do" in capsys.readouterr().err
    pred_txt.write_text("cat\n")
    empty_src = tmp_path / "empty_src.txt"
    empty_src.write_text("")
    assert eval_main(["mmkp", "--predictions", str(pred_txt), "--src", str(empty_src)]) == 2
    assert f"{empty_src}: no posts; nothing to do" in capsys.readouterr().err
    assert data_main(["convert-cmkp", f"test={empty_src}", "-o", str(tmp_path / "o"), "-q"]) == 2
    assert f"{empty_src}: the file has no posts" in capsys.readouterr().err


def _no_flock(monkeypatch):
    """A file system that refuses flock (ENOLCK, as NFS without a lock daemon): cannot be mounted here, so the
    system call itself answers as it would there."""
    import errno
    import fcntl

    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", refuse)


def test_a_lock_the_file_system_refuses_is_an_error_naming_the_path(tmp_path, capsys, monkeypatch):
    from dyncot_plugin.io.files import LockUnavailableError
    from dyncot_plugin.teacher.cache import CacheLockedError, JsonlCache

    _no_flock(monkeypatch)
    target = tmp_path / "x.json"
    refused = pytest.raises(LockUnavailableError, match=f"{lock_path(target)}: cannot take its lock .*flock")
    with refused, locked_files(target):
        pytest.fail("the block ran without the lock")
    with pytest.raises(CacheLockedError, match=f"{tmp_path / 'c.jsonl'}: cannot take the cache's lock"):
        JsonlCache(tmp_path / "c.jsonl").open()
    # a command: one error line naming the file, exit 2, nothing written
    ds = tmp_path / "ds"
    _images(ds)
    assert data_main(["convert-cmkp", f"test={_cmkp(tmp_path)}", "-o", str(ds), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "cannot take its lock" in err and str(ds) in err and "Traceback" not in err
    assert not (ds / "mmkp_test.json").exists()
