"""``dyncot-data gen-cot`` against a scripted OpenAI-compatible stub on loopback (fast, no model).

The stub lets these tests cover what the tiny real model cannot: accepted replies, re-asks that succeed, HTTP 429
and 5xx back-off, per-sample 4xx errors, an endpoint that dies mid-run, one that never answers, and a server that
echoes the API key back. ``test_teacher_server.py`` runs the same command against a real ``llamafactory-cli api``.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.io.datasets import update_dataset_info
from dyncot_plugin.io.files import atomic_write_json

KEY = "sk-test-SECRET123"
KEY_ENV = "DYNCOT_TEST_TEACHER_KEY"


# ------------------------------------------------------------------------------------------------------ helpers


def make_dataset(root: Path, n: int = 4, name: str = "toy") -> Path:
    """``n`` rows with tiny PNGs; sample i has text "post number i about ..." and gold ["kp i", "topic"]."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 40 % 256, 80, 160)).save(root / f"img{i}.png")
        rows.append(
            {
                "id": f"{name}_train_{i:06d}",
                "messages": [
                    {"role": "user", "content": f"<image>Keyphrases?\nPost: post number {i} about kp {i}"},
                    {"role": "assistant", "content": f"kp {i}; topic"},
                ],
                "images": [f"img{i}.png"],
                "text": f"post number {i} about kp {i}",
                "keyphrases": [f"kp {i}", "topic"],
                "cot": None,
            }
        )
    atomic_write_json(root / f"{name}.json", rows)
    update_dataset_info(root, name, f"{name}.json")
    return root


def sample_of(request: dict) -> int | None:
    text = json.dumps(request["messages"])
    m = re.search(r"post number (\d+) about", text)
    return int(m.group(1)) if m else None


def gold_of(request: dict) -> str:
    first_user = next(m for m in request["messages"] if m["role"] == "user")
    content = first_user["content"]
    text = content if isinstance(content, str) else "".join(p.get("text") or "" for p in content)
    return re.findall(r"<answer>(.*?)</answer>", text)[-1]


def good(request: dict, n: int = 0) -> str:
    return f"<think>The post is about {gold_of(request)}.</think><answer>{gold_of(request)}</answer>"


def completion(text: str, finish: str = "stop") -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


class Stub:
    """A threaded loopback server. ``script(request, n_for_sample) -> (status, body[, headers])`` or a reply str."""

    def __init__(self, script=None):
        self.script = script or good
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, status, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append(body)
                    stub.auth.append(self.headers.get("Authorization", ""))
                    sid = sample_of(body)
                    n = sum(1 for r in stub.requests if sample_of(r) == sid)
                out = stub.script(body, n)
                if out is None:  # drop the connection without an answer
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(out, str):
                    out = (200, completion(out))
                self._send(*out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def per_sample(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.requests:
            out[sample_of(r)] = out.get(sample_of(r), 0) + 1
        return out


@pytest.fixture
def stub_factory():
    stubs = []

    def make(script=None):
        s = Stub(script)
        stubs.append(s)
        return s

    yield make
    for s in stubs:
        s.stop()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def gen_cot(data: Path, url: str, *extra: str) -> int:
    argv = [
        "gen-cot",
        "--dataset-dir",
        str(data),
        "--dataset",
        "toy",
        "--base-url",
        url,
        "--model",
        "stub-teacher",
        "--api-key-env",
        KEY_ENV,
        "--no-progress",
        "--backoff",
        "0.01",
        "--backoff-max",
        "0.05",
        *extra,
    ]
    return data_main(argv)


def rows(data: Path, name: str = "toy") -> list[dict]:
    return json.loads((data / f"{name}.json").read_text())


def report(data: Path) -> dict:
    return json.loads((data / "gen_cot" / "toy.report.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------------------------------------------------- tests


def test_done_path_writes_cot_column_and_dataset_info_and_never_asks_twice(tmp_path, stub_factory, key_env, capsys):
    data = make_dataset(tmp_path / "d")
    stub = stub_factory()
    rc = gen_cot(data, stub.url, "--price-prompt", "2.5", "--price-completion", "10")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert all(a == f"Bearer {KEY}" for a in stub.auth)  # the key is sent, from the environment
    got = rows(data)
    assert [r["cot"] for r in got] == [
        f"<think>The post is about kp {i}; topic.</think><answer>kp {i}; topic</answer>" for i in range(4)
    ]
    assert {r["cot_source"] for r in got} == {"teacher:stub-teacher"}
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["toy"]["columns"]["cot"] == "cot" and info["toy"]["file_name"] == "toy.json"
    s = report(data)["summary"]
    assert (s["done"], s["rejected"], s["failed"], s["requests"]) == (4, 0, 0, 4)
    assert (s["prompt_tokens"], s["completion_tokens"]) == (400, 80)
    assert s["estimated_cost_usd"] == pytest.approx((400 * 2.5 + 80 * 10) / 1e6)
    assert "done             4" in out and "est. cost  $0.0018" in out

    # The image went as a base64 data URL before the text; gold keyphrases are in the prompt.
    first = stub.requests[0]["messages"]
    assert first[0]["role"] == "system"
    assert first[1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")

    rc = gen_cot(data, stub.url)
    assert rc == 0 and len(stub.requests) == 4  # all cached: nothing asked again
    assert "4 from cache" in capsys.readouterr().out


def test_rejected_reply_is_retried_with_feedback_then_accepted(tmp_path, stub_factory, key_env):
    data = make_dataset(tmp_path / "d", n=2)

    def script(req, n):
        if sample_of(req) == 0 and n == 1:
            return "<think>hmm</think><answer>kp 0; wrong</answer>"
        return good(req)

    stub = stub_factory(script)
    assert gen_cot(data, stub.url) == 0
    assert stub.per_sample() == {0: 2, 1: 1}
    retry = [r for r in stub.requests if sample_of(r) == 0][1]["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == "<think>hmm</think><answer>kp 0; wrong</answer>"
    assert "missing 'topic'" in retry[3]["content"] and "unexpected 'wrong'" in retry[3]["content"]
    s = report(data)["summary"]
    assert (s["done"], s["retried"], s["requests"]) == (2, 1, 3)


def test_always_rejected_sample_is_recorded_with_reason_not_dropped(tmp_path, stub_factory, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=2)
    stub = stub_factory(lambda req, n: "no tags here" if sample_of(req) == 1 else good(req))
    assert gen_cot(data, stub.url, "--retries", "2") == 0
    assert stub.per_sample() == {0: 1, 1: 3}
    rep = report(data)
    assert rep["summary"]["rejected"] == 1 and rep["summary"]["retried"] == 2
    assert rep["failures"] == [
        {"id": "toy_train_000001", "status": "rejected", "attempts": 3, "reason": "the reply has no <think> tag"}
    ]
    assert rows(data)[1]["cot"] is None
    assert "rejected         1" in capsys.readouterr().out
    # A rerun does not pay again for the rejected sample ...
    assert gen_cot(data, stub.url) == 0 and len(stub.requests) == 4
    # ... unless asked to.
    assert gen_cot(data, stub.url, "--retry-rejected", "--retries", "0") == 0 and len(stub.requests) == 5


def test_superset_rule(tmp_path, stub_factory, key_env):
    data = make_dataset(tmp_path / "d", n=1)
    extra = lambda req, n: f"<think>r</think><answer>{gold_of(req)}; bonus</answer>"
    stub = stub_factory(extra)
    assert gen_cot(data, stub.url, "--retries", "0") == 0  # default exact: rejected
    assert report(data)["summary"]["rejected"] == 1
    data2 = make_dataset(tmp_path / "d2", n=1)
    assert gen_cot(data2, stub.url, "--match", "superset") == 0
    assert rows(data2)[0]["cot"] == "<think>r</think><answer>kp 0; topic</answer>"  # extras are not labels


def test_backoff_on_429_and_5xx(tmp_path, stub_factory, key_env):
    data = make_dataset(tmp_path / "d", n=1)

    def script(req, n):
        if n == 1:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
        if n == 2:
            return 503, {"error": {"message": "overloaded"}}
        return good(req)

    stub = stub_factory(script)
    t0 = time.monotonic()
    assert gen_cot(data, stub.url) == 0
    assert time.monotonic() - t0 < 10
    s = report(data)["summary"]
    assert (s["done"], s["transport_retries"], s["requests"]) == (1, 2, 1)
    assert len(stub.requests) == 3


def test_4xx_fails_only_that_sample_and_next_run_asks_again(tmp_path, stub_factory, key_env):
    data = make_dataset(tmp_path / "d", n=3)
    stub = stub_factory(lambda req, n: (400, {"detail": "bad image"}) if sample_of(req) == 1 else good(req))
    assert gen_cot(data, stub.url) == 1  # something left to do
    rep = report(data)
    assert rep["summary"]["done"] == 2 and rep["summary"]["failed"] == 1
    assert rep["failures"] == [{"id": "toy_train_000001", "status": "error", "reason": "HTTP 400: bad image"}]
    stub.script = good
    assert gen_cot(data, stub.url) == 0
    assert stub.per_sample() == {0: 1, 1: 2, 2: 1}


def test_resume_continues_a_half_finished_conversation(tmp_path, stub_factory, key_env):
    """A reply already received (attempt 1, rejected) is not asked for again: the rerun sends attempt 2."""
    data = make_dataset(tmp_path / "d", n=1)
    cache = data / "gen_cot" / "toy.cache.jsonl"
    cache.parent.mkdir()
    cache.write_text(
        json.dumps(
            {
                "id": "toy_train_000000",
                "status": "attempt",
                "attempt": 1,
                "reply": "nope",
                "reason": "the reply has no <think> tag",
                "keyphrases": ["kp 0", "topic"],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3},
            }
        )
        + "\n"
    )
    stub = stub_factory()
    assert gen_cot(data, stub.url) == 0
    assert len(stub.requests) == 1
    msgs = stub.requests[0]["messages"]
    assert msgs[2] == {"role": "assistant", "content": "nope"} and "attempt 2" in msgs[3]["content"]
    assert report(data)["summary"]["all_runs_prompt_tokens"] == 107


def test_unreachable_endpoint_clear_error_fast_and_nothing_lost(tmp_path, stub_factory, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=4)
    stub = stub_factory()
    assert gen_cot(data, stub.url, "--limit", "2") == 0
    capsys.readouterr()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    t0 = time.monotonic()
    rc = gen_cot(data, dead, "--timeout", "3")
    elapsed = time.monotonic() - t0
    cap = capsys.readouterr()
    assert rc == 1 and elapsed < 3
    assert f"cannot reach the teacher endpoint {dead}" in cap.out + cap.err
    assert [r["cot"] is not None for r in rows(data)] == [True, True, False, False]  # kept
    assert report(data)["stopped"].startswith("cannot reach")


def test_endpoint_dying_mid_run_keeps_finished_samples(tmp_path, stub_factory, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=5)
    stub_holder = {}

    def script(req, n):
        if len(stub_holder["s"].requests) >= 3:
            threading.Thread(target=stub_holder["s"].stop, daemon=True).start()
            return None  # hang up, then the port is closed
        return good(req)

    stub = stub_holder["s"] = stub_factory(script)
    t0 = time.monotonic()
    rc = gen_cot(data, stub.url, "--concurrency", "1", "--max-retries", "2", "--timeout", "5")
    assert rc == 1 and time.monotonic() - t0 < 15
    cap = capsys.readouterr()
    assert "STOPPED" in cap.out and "failed 3 tries in a row" in cap.out
    done = [r["cot"] is not None for r in rows(data)]
    assert done == [True, True, False, False, False]
    assert report(data)["summary"]["not_reached"] == 3


def test_endpoint_that_never_answers_times_out(tmp_path, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=1)
    with socket.socket() as black_hole:  # accepts connections (kernel backlog) but never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}/v1"
        t0 = time.monotonic()
        rc = gen_cot(data, url, "--timeout", "1", "--max-retries", "0")
        elapsed = time.monotonic() - t0
    cap = capsys.readouterr()
    assert rc == 1 and elapsed < 5
    assert "did not answer within 1s" in cap.out + cap.err


def test_api_key_never_written_even_when_the_server_echoes_it(tmp_path, stub_factory, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=3)

    def script(req, n):
        if sample_of(req) == 0:
            return 400, {"detail": f"refusing request with key {KEY}"}
        if sample_of(req) == 1:
            return f"<think>your key is {KEY}</think><answer>wrong</answer>"
        return good(req)

    stub = stub_factory(script)
    gen_cot(data, stub.url, "--retries", "1", "--max-consecutive-errors", "0")
    cap = capsys.readouterr()
    assert KEY not in cap.out + cap.err
    for path in data.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert "***" in (data / "gen_cot" / "toy.cache.jsonl").read_text()


def test_refused_key_stops_with_clear_error(tmp_path, stub_factory, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=2)
    stub = stub_factory(lambda req, n: (401, {"error": {"message": "Incorrect API key"}}))
    stub.server.RequestHandlerClass.do_GET = lambda self: self._send(401, {"detail": "Invalid API key."})
    assert gen_cot(data, stub.url) == 1
    cap = capsys.readouterr()
    assert f"API key was refused (HTTP 401); check ${KEY_ENV}" in cap.out + cap.err
    assert stub.requests == []  # the probe caught it before any paid request


def test_dry_run_sends_nothing(tmp_path, stub_factory, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=2)
    stub = stub_factory()
    assert gen_cot(data, stub.url, "--dry-run") == 0
    out = capsys.readouterr().out
    assert stub.requests == [] and "2 would be asked" in out and "data:image/png;base64," in out
    assert "chars)" in out  # image data shortened


def test_usage_errors(tmp_path, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=1)
    assert (
        data_main(
            [
                "gen-cot",
                "--dataset-dir",
                str(data),
                "--dataset",
                "nope",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--model",
                "m",
            ]
        )
        == 2
    )
    assert "no entry 'nope'" in capsys.readouterr().err


def test_concurrency_is_bounded(tmp_path, stub_factory, key_env):
    data = make_dataset(tmp_path / "d", n=6)
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def script(req, n):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return good(req)

    stub = stub_factory(script)
    assert gen_cot(data, stub.url, "--concurrency", "2") == 0
    assert state["max"] == 2 and len(stub.requests) == 6


def test_output_dataset_writes_a_new_entry_and_leaves_the_source(tmp_path, stub_factory, key_env):
    data = make_dataset(tmp_path / "d", n=2)
    before = (data / "toy.json").read_text()
    stub = stub_factory()
    assert gen_cot(data, stub.url, "--output-dataset", "toy_cot") == 0
    assert (data / "toy.json").read_text() == before
    assert all(r["cot"] for r in rows(data, "toy_cot"))
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["toy_cot"]["file_name"] == "toy_cot.json" and info["toy_cot"]["columns"]["cot"] == "cot"
    assert "toy" in info


def test_rows_that_already_have_a_cot_are_skipped_unless_overwrite(tmp_path, stub_factory, key_env):
    data = make_dataset(tmp_path / "d", n=2)
    got = rows(data)
    got[0]["cot"] = "<think>old</think><answer>kp 0; topic</answer>"
    atomic_write_json(data / "toy.json", got)
    stub = stub_factory()
    assert gen_cot(data, stub.url) == 0
    assert stub.per_sample() == {1: 1} and rows(data)[0]["cot"].startswith("<think>old")
    assert gen_cot(data, stub.url, "--overwrite") == 0
    assert stub.per_sample() == {0: 1, 1: 1} and rows(data)[0]["cot"].startswith("<think>The post")
