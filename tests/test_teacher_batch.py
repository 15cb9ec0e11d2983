"""``gen-cot``'s batch paths: ``--batch-write`` / ``--batch-read`` files, and ``--batch openai`` against a loopback
HTTP endpoint implementing OpenAI's Files and Batches routes (``files.create``/``list``/``content``,
``batches.create``/``retrieve``/``list``) with fault injection: a batch that stays in progress, expires or is
cancelled with part of its output, fails, or has an error file; ``kill -9`` while uploading, between
``batches.create`` and saving its id, while polling and while reading the results.

The teacher behind the endpoint answers from the request alone (the sample's post text and how many rejected
replies the conversation holds), so an interrupted run and an uninterrupted one get the same replies to the same
requests, and their datasets can be compared. ``test_teacher_batch_vllm.py`` runs vLLM's own batch runner.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from test_teacher_gen_cot import KEY, KEY_ENV, completion, gold_of, make_dataset, rows, sample_of

from dyncot_plugin.cli.data import main as data_main

REPO = Path(__file__).resolve().parents[1]


def attempt_of(body: dict) -> int:
    return 1 + sum(1 for m in body["messages"] if m["role"] == "assistant")


def good_reply(body: dict) -> str:
    return f"<think>The post is about {gold_of(body)}.</think><answer>{gold_of(body)}</answer>"


class Teacher:
    """Sample 3's first request fails with HTTP 400 (a request error: asked again on the next run); sample 4 misses
    a keyphrase on attempt 1 only; sample 5 never uses the format; the others are right at once."""

    def __init__(self) -> None:
        self.failed: set[int] = set()

    def __call__(self, body: dict):
        i, attempt = sample_of(body), attempt_of(body)
        if i == 3 and i not in self.failed:
            self.failed.add(i)
            return 400, "the image could not be decoded"
        if i == 4 and attempt == 1:
            return f"<think>It is about kp {i}.</think><answer>kp {i}</answer>"
        if i == 5:
            return "no tags here"
        return good_reply(body)


# ------------------------------------------------------------------------------------- the loopback Batch API


class BatchAPI:
    """OpenAI's Files and Batches routes on loopback. ``reply(body) -> text | (status, message)`` answers each request
    of a batch. Faults: ``hang`` ("upload", "create", "poll" or "ingest") holds that request (after the upload is
    stored, after the batch is created, on a retrieve, on the second result file's download) until ``release``;
    ``polls`` retrieves answer ``in_progress`` before a batch ends; ``end`` is its final status, ``done_lines``
    how many requests complete when it expires or is cancelled; ``errors`` the ``errors.data`` of a failed one."""

    def __init__(self, reply=None, polls: int = 1, end: str = "completed", done_lines: int | None = None):
        self.reply, self.polls, self.end, self.done_lines = reply or Teacher(), polls, end, done_lines
        self.errors: list[dict] = []
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.log: list[str] = []
        self.hang: str | None = None
        self.reached = threading.Event()
        self.release = threading.Event()
        self.lock = threading.RLock()
        self.n = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if not size:
                            return out
                        out += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, obj=None, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _hang(self, point: str) -> bool:
                if api.hang != point:
                    return False
                api.hang = None
                api.reached.set()
                api.release.wait(60)
                self.close_connection = True
                return True

            def do_POST(self):
                path = urlparse(self.path).path
                body = self._body()
                with api.lock:
                    api.log.append(f"POST {path}")
                if path == "/v1/files":
                    f = api._store_upload(self.headers["Content-Type"], body)
                    if self._hang("upload"):
                        return
                    return self._send(200, f)
                if path == "/v1/batches":
                    b = api._create(json.loads(body))
                    if self._hang("create"):
                        return
                    return self._send(200, b)
                self._send(404, {"error": {"message": f"no route {path}"}})

            def do_GET(self):
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                query = parse_qs(url.query)
                with api.lock:
                    api.log.append(f"GET {url.path}")
                if parts[:2] == ["v1", "files"] and len(parts) == 2:
                    data = [api._public(f) for f in reversed(api.files.values())
                            if f["purpose"] == query.get("purpose", [f["purpose"]])[0]]
                    return self._send(200, {"object": "list", "data": data, "has_more": False})
                if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
                    f = api.files[parts[2]]
                    if f["purpose"] == "batch_output" and f.get("second") and self._hang("ingest"):
                        return
                    return self._send(200, raw=f["content"])
                if parts[:2] == ["v1", "batches"] and len(parts) == 2:
                    data = list(reversed(api.batches.values()))
                    return self._send(200, {"object": "list", "data": data, "has_more": False})
                if parts[:2] == ["v1", "batches"] and len(parts) == 3:
                    if self._hang("poll"):
                        return
                    return self._send(200, api._advance(parts[2]))
                self._send(404, {"error": {"message": f"no route {url.path}"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # ---- state
    def _id(self, prefix: str) -> str:
        with self.lock:
            self.n += 1
            return f"{prefix}{self.n:04d}"

    def _public(self, f: dict) -> dict:
        return {k: v for k, v in f.items() if k not in ("content", "second")}

    def _file(self, content: bytes, filename: str, purpose: str, second: bool = False) -> dict:
        f = {"id": self._id("file-"), "object": "file", "bytes": len(content), "created_at": int(time.time()),
             "filename": filename, "purpose": purpose, "status": "processed", "content": content, "second": second}
        self.files[f["id"]] = f
        return f

    def _store_upload(self, content_type: str, body: bytes) -> dict:
        msg = BytesParser(policy=email_policy).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        fields = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
        upload = fields["file"]
        purpose = fields["purpose"].get_payload(decode=True).decode()
        return self._public(self._file(upload.get_payload(decode=True), upload.get_filename(), purpose))

    def _create(self, req: dict) -> dict:
        b = {"id": self._id("batch_"), "object": "batch", "endpoint": req["endpoint"],
             "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
             "status": "validating", "created_at": int(time.time()), "metadata": req.get("metadata"),
             "request_counts": {"total": 0, "completed": 0, "failed": 0}, "output_file_id": None,
             "error_file_id": None, "polls": 0}
        self.batches[b["id"]] = b
        return b

    def requests_of(self, batch: dict) -> list[dict]:
        content = self.files[batch["input_file_id"]]["content"].decode()
        return [json.loads(line) for line in content.splitlines() if line.strip()]

    def _advance(self, batch_id: str) -> dict:
        with self.lock:
            b = self.batches[batch_id]
            if b["status"] in ("completed", "expired", "cancelled", "failed"):
                return b
            reqs = self.requests_of(b)
            b["polls"] += 1
            b["request_counts"] = {"total": len(reqs), "completed": 0, "failed": 0}
            if b["polls"] <= self.polls:
                b["status"] = "in_progress"
                return b
            if self.end == "failed":
                b.update(status="failed", errors={"object": "list", "data": self.errors})
                return b
            out, err = [], []
            for k, req in enumerate(reqs):
                line = {"id": f"batch_req_{batch_id}_{k}", "custom_id": req["custom_id"]}
                if self.done_lines is not None and k >= self.done_lines:
                    code = "batch_expired" if self.end == "expired" else "batch_cancelled"
                    err.append({**line, "response": None, "error": {"code": code, "message": "not run in time"}})
                    continue
                got = self.reply(req["body"])
                if isinstance(got, tuple):
                    status, message = got
                    err.append({**line, "response": {"status_code": status, "request_id": f"req_{k}", "body": {
                        "error": {"message": message, "type": "invalid_request_error", "code": None}}},
                        "error": None})
                else:
                    out.append({**line, "response": {"status_code": 200, "request_id": f"req_{k}",
                                                     "body": completion(got)}, "error": None})
            as_bytes = lambda ls: "".join(json.dumps(x) + "\n" for x in ls).encode()
            b["request_counts"] = {"total": len(reqs), "completed": len(out), "failed": len(err)}
            b["status"] = self.end
            if out:
                b["output_file_id"] = self._file(as_bytes(out), f"{batch_id}_output.jsonl", "batch_output")["id"]
            if err:
                b["error_file_id"] = self._file(as_bytes(err), f"{batch_id}_error.jsonl", "batch_output",
                                                second=bool(out))["id"]
            return b

    def asked(self) -> dict[tuple[int, int], int]:
        """(sample, attempt) -> how many batches asked it."""
        out: dict[tuple[int, int], int] = {}
        for b in self.batches.values():
            for req in self.requests_of(b):
                key = (sample_of(req["body"]), attempt_of(req["body"]))
                out[key] = out.get(key, 0) + 1
        return out


@pytest.fixture
def api_factory():
    apis = []

    def make(**kw):
        apis.append(BatchAPI(**kw))
        return apis[-1]

    yield make
    for a in apis:
        a.stop()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def argv(data: Path, *extra: str) -> list[str]:
    return ["gen-cot", "--dataset-dir", str(data), "--dataset", "toy", "--model", "gpt-4o", "--api-key-env", KEY_ENV,
            "--no-progress", "--batch-poll", "0.02", "--backoff", "0.01", "--backoff-max", "0.05", *extra]


def gen(data: Path, *extra: str) -> int:
    return data_main(argv(data, *extra))


def report(data: Path) -> dict:
    return json.loads((data / "gen_cot" / "toy.report.json").read_text())


def cache_records(data: Path) -> list[dict]:
    path = data / "gen_cot" / "toy.cache.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_LINE_IDS = itertools.count()


def results_for(requests: list[dict], answer, style: str = "openai") -> list[dict]:
    """What a batch runner returns for request lines: OpenAI's output/error lines, or vLLM's (its error a string)."""
    out = []
    for k, req in enumerate(requests):
        got = answer(req["body"])
        line = {"id": f"{style}-{next(_LINE_IDS)}", "custom_id": req["custom_id"]}  # unique, as a runner's are
        if isinstance(got, tuple):
            status, message = got
            if style == "vllm":
                out.append({**line, "response": {"status_code": status, "request_id": f"r{k}", "body": None},
                            "error": message})
            else:
                out.append({**line, "response": {"status_code": status, "request_id": f"r{k}", "body": {
                    "error": {"message": message, "type": "invalid_request_error", "code": None}}}, "error": None})
        else:
            out.append({**line, "response": {"status_code": 200, "request_id": f"r{k}", "body": completion(got)},
                        "error": None})
    return out


def write_jsonl(path: Path, objs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


# ---------------------------------------------------------------------------------------- --batch-write / -read


def test_online_and_batch_files_send_equal_bodies_and_give_the_same_dataset(tmp_path, key_env, capsys):
    """The same 6 samples online (captured on a loopback endpoint) and through two rounds of --batch-write /
    --batch-read with the same teacher: every request body is JSON-equal, round 2 holds exactly the samples whose
    reply was rejected (with the feedback turn the online retry sends) or failed, and the datasets are equal."""
    from test_teacher_gen_cot import Stub

    online, batch = make_dataset(tmp_path / "online", n=6), make_dataset(tmp_path / "batch", n=6)

    online_teacher, batch_teacher = Teacher(), Teacher()

    def online_script(body, n):
        got = online_teacher(body)
        return (got[0], {"error": {"message": got[1]}}) if isinstance(got, tuple) else got

    stub = Stub(online_script)
    try:
        extra = ("--retries", "1", "--temperature", "0.2", "--extra-body", '{"seed": 7}', "--image-detail", "low")
        assert gen(online, "--base-url", stub.url, *extra) == 1  # sample 3's request failed
        assert gen(online, "--base-url", stub.url, *extra) == 0  # ... and is asked again
    finally:
        stub.stop()
    sent_online = {(sample_of(b), attempt_of(b)): b for b in stub.requests}

    sent_batch: dict[tuple[int, int], dict] = {}
    for rnd, expected_rc in ((1, 1), (2, 0)):
        req_file = tmp_path / f"round{rnd}.jsonl"
        assert gen(batch, *extra, "--batch-write", str(req_file)) == 0
        requests = lines_of(req_file)
        for r in requests:
            assert (r["method"], r["url"]) == ("POST", "/v1/chat/completions")
            assert r["custom_id"] == f"toy_train_{sample_of(r['body']):06d}"
            sent_batch[(sample_of(r["body"]), attempt_of(r["body"]))] = r["body"]
        if rnd == 2:  # the rejected ones at attempt 2 with the feedback turn, and the one whose request failed
            assert sorted((sample_of(r["body"]), attempt_of(r["body"])) for r in requests) == [(3, 1), (4, 2), (5, 2)]
            fb = next(r["body"] for r in requests if sample_of(r["body"]) == 4)["messages"]
            assert fb[-2]["role"] == "assistant" and "missing 'topic'" in fb[-1]["content"]
        out = write_jsonl(tmp_path / f"round{rnd}.out.jsonl", results_for(requests, batch_teacher))
        assert gen(batch, *extra, "--batch-read", str(out)) == expected_rc
    capsys.readouterr()

    assert sent_batch.keys() == sent_online.keys() == {(i, 1) for i in range(6)} | {(3, 1), (4, 2), (5, 2)}
    for key, body in sent_online.items():
        assert body == sent_batch[key], key  # JSON-equal: images, prompts, feedback, params, extra body
    assert sent_online[(0, 1)]["seed"] == 7 and sent_online[(0, 1)]["temperature"] == 0.2
    assert rows(online) == rows(batch)
    assert [r["cot"] is not None for r in rows(batch)] == [True, True, True, True, True, False]
    rep = report(batch)
    assert [(f["id"], f["status"]) for f in rep["failures"]] == [("toy_train_000005", "rejected")]


def test_batch_read_reports_rejected_and_failed_replies_by_sample_and_the_cost(tmp_path, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=6)
    req = tmp_path / "req.jsonl"
    assert gen(data, "--batch-write", str(req), "--price-prompt", "2.5", "--price-completion", "10") == 0
    out = capsys.readouterr().out
    assert f"written          6  requests to {req}" in out
    assert "estimate   6 requests" in out and "6 image(s)" in out and "OpenAI tiles 85 + 170/tile rule" in out
    assert "50% batch discount" in out
    est = report(data)["batch"]["estimate"]
    assert est["image_tokens"] == 6 * (85 + 170)  # an 8x8 image is one tile at detail high (auto counted as high)
    assert est["completion_tokens_max"] == 6 * 1024

    results = results_for(lines_of(req), Teacher())
    results[3] = results_for(lines_of(req)[3:4], Teacher(), style="vllm")[0]  # vLLM's error form: a string
    assert gen(data, "--batch-read", str(write_jsonl(tmp_path / "out.jsonl", results)), "--price-prompt", "2.5",
               "--price-completion", "10") == 1
    cap = capsys.readouterr()
    rep = report(data)
    assert {f["id"]: (f["status"], f["reason"]) for f in rep["failures"]} == {
        "toy_train_000003": ("error", "batch request failed: HTTP 400: the image could not be decoded"),
        "toy_train_000004": ("attempt", "the answer's keyphrases do not match the given ones: missing 'topic'"),
        "toy_train_000005": ("attempt", "the reply has no <think> tag"),
    }
    s = rep["summary"]
    assert (s["done"], s["failed"], s["open_attempts"], s["batch_replies_read"]) == (3, 1, 2, 5)
    assert (s["batch_prompt_tokens"], s["batch_completion_tokens"]) == (500, 100)  # the usage each reply reported
    assert s["estimated_cost_usd"] == pytest.approx((500 * 2.5 + 100 * 10) / 1e6 * 0.5)
    assert s["estimated_cost_online_usd"] == pytest.approx((500 * 2.5 + 100 * 10) / 1e6)
    assert f"est. cost  ${s['estimated_cost_usd']:.4f} this run (online: ${s['estimated_cost_online_usd']:.4f})" in cap.out
    assert "read             6  result lines from 1 file(s): 5 replies (3 accepted, 2 to ask again" in cap.out
    assert "batch replies at 50% off" in cap.out
    assert "no result" not in cap.out  # sample 3's error line is its result


def test_batch_files_split_at_the_count_and_size_limits(tmp_path, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=5)
    req = tmp_path / "req.jsonl"
    assert gen(data, "--batch-write", str(req), "--batch-max-requests", "2") == 0
    parts = [tmp_path / f"req-{i:03d}.jsonl" for i in (1, 2, 3)]
    assert [len(lines_of(p)) for p in parts] == [2, 2, 1] and not req.exists()
    assert [r["custom_id"] for p in parts for r in lines_of(p)] == [f"toy_train_{i:06d}" for i in range(5)]
    size = max(len(line.encode()) + 1 for p in parts for line in p.read_text().splitlines())
    shutil.rmtree(data / "gen_cot")
    for p in parts:
        p.unlink()
    mb = (size * 2.5) / 1e6  # two lines fit, three do not
    assert gen(data, "--batch-write", str(req), "--batch-max-mb", f"{mb:.6f}") == 0
    assert [len(lines_of(p)) for p in parts] == [2, 2, 1]
    assert all(p.stat().st_size <= mb * 1e6 for p in parts)
    capsys.readouterr()
    shutil.rmtree(data / "gen_cot")
    for p in parts:
        p.unlink()
    assert gen(data, "--batch-write", str(req), "--batch-max-mb", f"{size / 2e6:.6f}") == 2
    err = capsys.readouterr().err
    assert "toy_train_000000: its request is" in err and "no batch file can hold it" in err
    assert not list(tmp_path.glob("req*")) and not list(tmp_path.glob(".req*"))


def test_batch_read_refuses_a_file_with_any_bad_line_whole(tmp_path, key_env, capsys):
    """Unknown, duplicate and unasked custom_ids and malformed lines are named, and the file is refused whole: the
    cache and the dataset stay byte for byte as they were. Reading a good file twice reads it once, and a reply for
    a sample whose rationale was accepted is refused: an accepted rationale is never replaced."""
    data = make_dataset(tmp_path / "d", n=4)
    req = tmp_path / "req.jsonl"
    assert gen(data, "--batch-write", str(req), "--limit", "3") == 0  # samples 0..2 asked
    good = results_for(lines_of(req), lambda body: good_reply(body))
    cache_file, dataset_file = data / "gen_cot" / "toy.cache.jsonl", data / "toy.json"
    before = (cache_file.read_bytes(), dataset_file.read_bytes())

    def refused(lines: list, *expected: str) -> None:
        path = tmp_path / "bad.jsonl"
        path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
        assert gen(data, "--batch-read", str(path)) == 2
        err = capsys.readouterr().err
        assert "they are refused whole, nothing was read into the cache or the dataset" in err, err
        for text in expected:
            assert text in err, (text, err)
        assert "Traceback" not in err
        assert (cache_file.read_bytes(), dataset_file.read_bytes()) == before

    refused([*good, {**good[0], "custom_id": "nobody"}], "bad.jsonl:4: custom_id 'nobody' is no sample of this dataset")
    refused([*good, {**good[1], "id": "other"}],
            "bad.jsonl:4: custom_id 'toy_train_000001' again (first at ")
    refused([*good[:2], "{not json", good[2]], "bad.jsonl:3: not JSON")
    refused([good[0], {"id": "x", "custom_id": "toy_train_000001"}],
            "bad.jsonl:2 (custom_id 'toy_train_000001'): neither a response nor an error")
    refused([good[0], {"id": "y", "response": {"status_code": 200, "body": {}}}], "bad.jsonl:2: no custom_id")
    refused([good[0], {"id": "z", "custom_id": "toy_train_000001", "response": {"status_code": 200, "body": {}}}],
            "a 200 response without a chat completion (no 'choices')")
    four = {**good[0], "id": "w", "custom_id": "toy_train_000003"}  # sample 3 was never asked (--limit 3)
    refused([*good, four], "bad.jsonl:4: custom_id 'toy_train_000003': no request for it was written")

    out = write_jsonl(tmp_path / "out.jsonl", good)
    assert gen(data, "--batch-read", str(out)) == 0
    assert [r["cot"] is not None for r in rows(data)] == [True, True, True, False]
    n = len(cache_records(data))
    assert gen(data, "--batch-read", str(out)) == 0  # read before: skipped, nothing added
    assert len(cache_records(data)) == n and "3 read before (skipped)" in capsys.readouterr().out
    again = {**good[0], "id": "another-line"}
    before = (cache_file.read_bytes(), dataset_file.read_bytes())
    refused([again], "custom_id 'toy_train_000000': its rationale was accepted already; an accepted rationale is "
                     "never replaced")


def test_a_batch_read_killed_midway_resumes_to_the_same_dataset(tmp_path, key_env):
    """``kill -9`` while a result file is read leaves the cache with the records written so far (one fsync'd line
    each): here the cache is cut back to its first 2 result records. Reading the file again skips those lines,
    reads the rest, and ends with the dataset and cache records of the uninterrupted read."""
    full, cut = make_dataset(tmp_path / "full", n=5), make_dataset(tmp_path / "cut", n=5)
    req = tmp_path / "req.jsonl"
    assert gen(full, "--batch-write", str(req)) == 0
    shutil.copytree(full / "gen_cot", cut / "gen_cot")
    out = write_jsonl(tmp_path / "out.jsonl", results_for(lines_of(req), Teacher()))
    assert gen(full, "--batch-read", str(out)) == 1
    lines = (full / "gen_cot" / "toy.cache.jsonl").read_text().splitlines(keepends=True)
    (cut / "gen_cot" / "toy.cache.jsonl").write_text("".join(lines[:2]))
    assert gen(cut, "--batch-read", str(out)) == 1
    same = lambda recs: [{k: v for k, v in r.items() if k != "time"} for r in recs]
    assert same(cache_records(cut)) == same(cache_records(full))
    assert rows(cut) == rows(full)
    assert report(cut)["batch"]["read"]["read_before"] == 2


# ---------------------------------------------------------------------------------------------- --batch openai

BATCH = ("--batch", "openai", "--retries", "1", "--price-prompt", "2.5", "--price-completion", "10", "--timeout", "30")


def uninterrupted(tmp_path: Path, api_factory) -> tuple[BatchAPI, Path, int]:
    api = api_factory()
    data = make_dataset(tmp_path / "reference", n=6)
    return api, data, gen(data, "--base-url", api.url, *BATCH)


def test_openai_batch_round_trip(tmp_path, api_factory, key_env, capsys):
    """Round 1: 6 requests; sample 3's fails (error file), 4 and 5 are rejected with a re-ask left. Round 2: 4 and
    5 with the feedback turn; 4 is accepted, 5 rejected for good. Files, batches, ids, progress and cost."""
    api, data, rc = uninterrupted(tmp_path, api_factory)
    cap = capsys.readouterr()
    assert rc == 1  # sample 3's request failed: asked again on the next run
    assert [r["cot"] is not None for r in rows(data)] == [True, True, True, False, True, False]
    assert [f["purpose"] for f in api.files.values()].count("batch") == 2 and len(api.batches) == 2
    b1, b2 = api.batches.values()
    state = json.loads((data / "gen_cot" / "toy.openai-batch.json").read_text())
    run = state["run"]
    assert b1["metadata"] == {"dyncot_run": run, "dyncot_file": "1.1", "dyncot_dataset": "toy"}
    assert b2["metadata"]["dyncot_file"] == "2.1" and (b1["endpoint"], b1["completion_window"]) == (
        "/v1/chat/completions", "24h")
    assert [p["batch_id"] for r in state["rounds"] for p in r["parts"]] == [b1["id"], b2["id"]]
    assert all(r["closed"] for r in state["rounds"])
    assert api.asked() == {**{(i, 1): 1 for i in range(6)}, (4, 2): 1, (5, 2): 1}
    kept = sorted(p.name for p in (data / "gen_cot").iterdir())
    assert f"toy.{b1['id']}.output.jsonl" in kept and f"toy.{b1['id']}.error.jsonl" in kept
    assert "toy.round-1.requests.jsonl" in kept and "toy.round-2.requests.jsonl" in kept
    assert f"batch {b1['id']} (round 1, toy.round-1.requests.jsonl): in_progress, 0/6 done, 0 failed" in cap.err
    assert f"batch {b1['id']} (round 1, toy.round-1.requests.jsonl): completed, 5/6 done, 1 failed" in cap.err
    assert "round 1: estimate   6 requests" in cap.err
    rep = report(data)
    assert {f["id"]: f["status"] for f in rep["failures"]} == {"toy_train_000003": "error",
                                                               "toy_train_000005": "rejected"}
    assert "HTTP 400: invalid_request_error: the image could not be decoded" in rep["failures"][0]["reason"]
    s = rep["summary"]
    assert (s["done"], s["rejected"], s["failed"], s["batch_replies_read"]) == (4, 1, 1, 7)
    assert s["estimated_cost_usd"] == pytest.approx((700 * 2.5 + 140 * 10) / 1e6 * 0.5)
    assert [b["status"] for b in rep["batch"]["batches"]] == ["completed", "completed"]

    # The next run asks about sample 3 only, in a new batch.
    assert gen(data, "--base-url", api.url, *BATCH) == 0
    assert len(api.batches) == 3 and api.asked()[(3, 1)] == 2
    assert all(r["cot"] is not None for i, r in enumerate(rows(data)) if i != 5)


@pytest.mark.parametrize("point", ["upload", "create", "poll", "ingest"])
def test_kill_9_at_any_step_then_rerun_equals_an_uninterrupted_run(point, tmp_path, api_factory, key_env, capsys):
    """``kill -9`` during the upload (the server stored the file), between ``batches.create`` and saving its id,
    while polling (the batch stays in progress across the rerun) and while reading the results (between the output
    and the error file). The rerun creates no second batch, uploads no second file, asks no sample again, and ends
    with the uninterrupted run's dataset."""
    ref_api, ref_data, ref_rc = uninterrupted(tmp_path, api_factory)
    api = api_factory(polls=3 if point == "poll" else 1)
    api.hang = point
    data = make_dataset(tmp_path / "killed", n=6)
    env = dict(os.environ, PYTHONPATH=str(REPO), **{KEY_ENV: KEY})
    proc = subprocess.Popen([sys.executable, "-m", "dyncot_plugin.cli.data", *argv(data, "--base-url", api.url,
                                                                                     *BATCH)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert api.reached.wait(120), proc.communicate(timeout=5)[0]
    finally:
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate(timeout=60)[0]
        api.release.set()
    assert proc.returncode == -signal.SIGKILL, out
    uploads = {"upload": 1, "create": 1, "poll": 1, "ingest": 1}[point]
    assert [f["purpose"] for f in api.files.values()].count("batch") == uploads
    assert len(api.batches) == (0 if point == "upload" else 1)

    capsys.readouterr()
    assert gen(data, "--base-url", api.url, *BATCH) == ref_rc
    err = capsys.readouterr().err
    assert "resuming round 1" in err
    if point == "create":
        assert "created by a run stopped before it saved the id" in err
    assert len(api.batches) == len(ref_api.batches) == 2  # no second paid copy
    assert [f["purpose"] for f in api.files.values()].count("batch") == 2
    assert api.asked() == ref_api.asked()  # no sample asked again
    assert rows(data) == rows(ref_data)
    records = [r for r in cache_records(data) if r["status"] != "error"]
    assert len(records) == len({(r["id"], r["attempt"]) for r in records}) == 7  # each reply read once


@pytest.mark.parametrize("end", ["expired", "cancelled"])
def test_an_expired_or_cancelled_batch_keeps_what_came_back(end, tmp_path, api_factory, key_env, capsys):
    """The batch ends after 2 of its 5 requests: their replies are read, the 3 others are reported by name (the
    error file's batch_expired / batch_cancelled lines), and the next run asks only about them, in a new batch."""
    api = api_factory(end=end, done_lines=2, reply=good_reply)
    data = make_dataset(tmp_path / "d", n=5)
    assert gen(data, "--base-url", api.url, *BATCH) == 1
    out = capsys.readouterr().out
    (b1,) = api.batches.values()
    assert f"batch {b1['id']} {end} with 2 of 5 requests done; the results that came back are kept, the 3 others " \
           "are asked again on the next run" in out
    assert [r["cot"] is not None for r in rows(data)] == [True, True, False, False, False]
    code = "batch_expired" if end == "expired" else "batch_cancelled"
    assert {f["id"]: f["reason"] for f in report(data)["failures"]} == {
        f"toy_train_{i:06d}": f"batch request failed: {code}: not run in time" for i in (2, 3, 4)}
    assert report(data)["batch"]["batches"][0]["status"] == end
    api.end, api.done_lines = "completed", None
    assert gen(data, "--base-url", api.url, *BATCH) == 0
    assert len(api.batches) == 2 and api.asked() == {(0, 1): 1, (1, 1): 1, (2, 1): 2, (3, 1): 2, (4, 1): 2}
    assert all(r["cot"] == f"<think>The post is about kp {i}; topic.</think><answer>kp {i}; topic</answer>"
               for i, r in enumerate(rows(data)))


def test_a_failed_batch_is_reported_by_name_and_nothing_is_read(tmp_path, api_factory, key_env, capsys):
    api = api_factory(end="failed", reply=good_reply)
    api.errors = [{"code": "invalid_request", "message": "model gpt-4o is not available in batch", "line": 1,
                   "param": "body.model"}]
    data = make_dataset(tmp_path / "d", n=3)
    assert gen(data, "--base-url", api.url, *BATCH) == 1
    out = capsys.readouterr().out
    (b1,) = api.batches.values()
    assert f"batch {b1['id']} failed: line 1: invalid_request: model gpt-4o is not available in batch" in out
    assert all(r["cot"] is None for r in rows(data)) and cache_records(data) == []
    assert "not asked        3" in out


def test_a_bad_image_stops_an_openai_batch_before_anything_is_uploaded(tmp_path, api_factory, key_env, capsys):
    """Like the online path: every image of the round is checked before the upload; a missing one is an error
    naming it (exit 2), no file is uploaded and no batch created, and the report names the sample."""
    from test_teacher_gen_cot import _set_images

    api = api_factory(reply=good_reply)
    data = make_dataset(tmp_path / "d", n=3)
    _set_images(data, {1: ["gone.png"]})
    assert gen(data, "--base-url", api.url, *BATCH) == 2
    err = capsys.readouterr().err
    assert "row 1 (id toy_train_000001): image 'gone.png'" in err and "nothing was sent to the teacher" in err
    assert api.files == {} and api.batches == {}
    assert [(f["id"], f["status"]) for f in report(data)["failures"]] == [("toy_train_000001", "bad_image")]
    assert all(r["cot"] is None for r in rows(data)) and cache_records(data) == []
