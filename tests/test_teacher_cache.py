"""The append-only gen-cot cache: fsync'd lines, torn last line, last-final-wins folding, single writer."""

from __future__ import annotations

import json

import pytest

from dyncot_plugin.teacher.cache import CacheLockedError, JsonlCache, read_records


def _rec(i, status, **kw):
    return {"id": f"s{i}", "status": status, **kw}


def test_append_and_reload(tmp_path):
    path = tmp_path / "c" / "cache.jsonl"
    with JsonlCache(path) as c:
        c.append(_rec(1, "attempt", attempt=1, reply="x", reason="bad"))
        c.append(_rec(1, "done", attempt=2, cot="<think>a</think><answer>k</answer>"))
        c.append(_rec(2, "attempt", attempt=1, reply="y", reason="bad"))
        c.append(_rec(3, "error", attempt=1, reason="HTTP 400"))
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    with JsonlCache(path) as c:
        assert c.states["s1"].status == "done" and c.states["s1"].attempts == []
        assert c.states["s2"].status is None and [a["attempt"] for a in c.states["s2"].attempts] == [1]
        assert c.states["s3"].status is None and c.states["s3"].errors == 1


def test_torn_last_line_is_ignored_and_cut_before_next_append(tmp_path):
    path = tmp_path / "cache.jsonl"
    with JsonlCache(path) as c:
        c.append(_rec(1, "done", cot="c1"))
    with open(path, "ab") as f:  # what kill -9 in the middle of a write can leave
        f.write(b'{"id": "s2", "status": "do')
    records, _ = read_records(path)
    assert [r["id"] for r in records] == ["s1"]
    with JsonlCache(path) as c:
        assert set(c.states) == {"s1"}
        c.append(_rec(2, "done", cot="c2"))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["s1", "s2"]


def test_corrupt_middle_line_is_skipped(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"id": "s1", "status": "done", "cot": "c"}\nnot json\n{"id": "s2", "status": "rejected"}\n')
    with JsonlCache(path) as c:
        assert c.states["s1"].status == "done" and c.states["s2"].status == "rejected"


def test_attempts_after_a_final_record_start_a_new_conversation(tmp_path):
    path = tmp_path / "cache.jsonl"
    with JsonlCache(path) as c:
        c.append(_rec(1, "attempt", attempt=1))
        c.append(_rec(1, "rejected", attempt=2, reason="r"))
        c.append(_rec(1, "attempt", attempt=1))  # a --retry-rejected run, interrupted
    with JsonlCache(path) as c:
        st = c.states["s1"]
        assert st.status == "rejected" and len(st.attempts) == 1


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "cache.jsonl"
    with JsonlCache(path), pytest.raises(CacheLockedError):
        JsonlCache(path).open()
    with JsonlCache(path):  # released on close
        pass


def test_bad_record_refused(tmp_path):
    with JsonlCache(tmp_path / "cache.jsonl") as c, pytest.raises(ValueError):
        c.append({"id": "x", "status": "maybe"})


def test_redaction_applies_to_written_lines(tmp_path):
    path = tmp_path / "cache.jsonl"
    with JsonlCache(path, redact=lambda s: s.replace("sk-test-SECRET123", "***")) as c:
        c.append(_rec(1, "error", reason="server said: bad key sk-test-SECRET123"))
    assert "SECRET" not in path.read_text()
