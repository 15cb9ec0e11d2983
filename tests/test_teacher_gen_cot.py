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

    def __init__(self, script=None, on_get=None):
        self.script = script or good
        self.on_get = on_get  # called once per GET (the probe), before it is answered
        self.requests: list[dict] = []
        self.gets: list[str] = []  # GET /models: the endpoint probe
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
                with stub.lock:
                    stub.gets.append(self.path)
                    if stub.on_get is not None:
                        stub.on_get()
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

    def make(script=None, on_get=None):
        s = Stub(script, on_get)
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
    # Every request sent is counted, the two that were answered by 429/503 included (and the probe apart).
    assert (s["done"], s["transport_retries"], s["requests"], s["replies"], s["probe_requests"]) == (1, 2, 3, 1, 1)
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


# ------------------------------------------------------------------- issue 11: images, paths, merges, counts


def _set_images(data: Path, images: dict[int, list]) -> None:
    got = rows(data)
    for i, imgs in images.items():
        got[i]["images"] = imgs
    atomic_write_json(data / "toy.json", got)


def test_image_outside_the_media_dir_is_never_sent(tmp_path, stub_factory, key_env, capsys):
    """Case 1 (exfiltration): an escape, an absolute path and a link out of the dataset folder: nothing is sent (no
    probe either), the error names the row, the id and the path, and the report is written."""
    from PIL import Image

    data = make_dataset(tmp_path / "d", n=4)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(outside / "secret.png")
    (data / "link.png").symlink_to(outside / "secret.png")
    _set_images(data, {1: ["../../../../etc/passwd"], 2: [str(outside / "secret.png")], 3: ["link.png"]})
    stub = stub_factory()
    assert gen_cot(data, stub.url) == 2
    err = capsys.readouterr().err
    assert stub.requests == [] and stub.gets == []
    assert "3 image(s) of the 4 selected samples cannot be sent; nothing was sent" in err
    assert "row 1 (id toy_train_000001): image '../../../../etc/passwd'" in err and "/etc/passwd" in err
    assert f"row 2 (id toy_train_000002): image '{outside / 'secret.png'}'" in err
    assert "row 3 (id toy_train_000003): image 'link.png'" in err and "resolves to" in err
    assert "Traceback" not in err
    rep = report(data)
    assert rep["stopped"].startswith("3 image(s)")
    assert sorted((f["row"], f["status"]) for f in rep["failures"]) == [(1, "bad_image"), (2, "bad_image"),
                                                                         (3, "bad_image")]
    assert all(r["cot"] is None for r in rows(data))  # the dataset was written, unchanged

    # Widening the media folder lets the two outside images through; /etc/passwd still is not.
    assert gen_cot(data, stub.url, "--allow-images-in", str(outside)) == 2
    err = capsys.readouterr().err
    assert "1 image(s)" in err and "etc/passwd" in err and stub.requests == []
    _set_images(data, {1: ["img1.png"]})
    assert gen_cot(data, stub.url, "--allow-images-in", str(outside)) == 0
    assert len(stub.requests) == 4 and len(stub.gets) == 1


def _sent_images(request: dict) -> list[bytes]:
    import base64

    parts = [p for m in request["messages"] if isinstance(m["content"], list) for p in m["content"]]
    return [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in parts if p.get("type") == "image_url"]


def test_a_link_swapped_after_the_check_is_not_followed(tmp_path, stub_factory, key_env, capsys):
    """The check resolves links inside the media folder; hours may pass before a sample is sent. Here the links are
    swapped when the endpoint is probed (after the check, before the first request): a file link (row 3) and a
    folder on the real path (row 1). Row 3 sends the file that was checked; row 1's checked path now leads outside,
    to another file: it is not sent, and the failure names it."""
    from PIL import Image

    data = make_dataset(tmp_path / "d", n=4)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(outside / "secret.png")
    Image.new("RGB", (4, 4), (255, 0, 0)).save(outside / "pic.png")
    (data / "sub").mkdir()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(data / "sub" / "pic.png")
    (data / "link.png").symlink_to(data / "img3.png")
    _set_images(data, {1: ["sub/pic.png"], 3: ["link.png"]})
    checked = {1: (data / "sub" / "pic.png").read_bytes(), 3: (data / "img3.png").read_bytes()}
    secrets = {(outside / "secret.png").read_bytes(), (outside / "pic.png").read_bytes()}

    def swap():
        (data / "link.png").unlink()
        (data / "link.png").symlink_to(outside / "secret.png")  # the row's own link, re-pointed
        (data / "sub").rename(data / "sub_old")
        (data / "sub").symlink_to(outside)  # a folder on the checked real path, now a link out

    stub = stub_factory(on_get=swap)
    assert gen_cot(data, stub.url) == 1  # one sample failed
    sent = {sample_of(r): _sent_images(r) for r in stub.requests}
    assert sorted(sent) == [0, 2, 3] and sent[3] == [checked[3]]
    assert not any(image in secrets for images in sent.values() for image in images)
    failure = next(f for f in report(data)["failures"] if f["id"] == "toy_train_000001")
    assert failure["status"] == "error"
    assert "is no longer the file that was checked" in failure["reason"] and str(data / "sub" / "pic.png") in failure["reason"]
    assert rows(data)[1]["cot"] is None and rows(data)[3]["cot"] is not None
    assert checked[1] != (outside / "pic.png").read_bytes()


def test_missing_broken_or_unsupported_image_fails_before_any_request(tmp_path, stub_factory, key_env, capsys):
    """Case 2: every selected sample is checked first; nothing is paid for, the report and dataset are written."""
    from PIL import Image

    data = make_dataset(tmp_path / "d", n=5)
    (data / "notes.png").write_text("not an image")
    Image.new("RGB", (4, 4)).save(data / "scan.tiff")
    _set_images(data, {1: ["gone.png"], 3: ["notes.png"], 4: ["scan.tiff"]})
    stub = stub_factory()
    assert gen_cot(data, stub.url) == 2
    err = capsys.readouterr().err
    assert stub.requests == [] and stub.gets == []
    assert "row 1 (id toy_train_000001): image 'gone.png'" in err and "no such file" in err
    assert "row 3 (id toy_train_000003): image 'notes.png'" in err and "not an image PIL can decode" in err
    assert "row 4 (id toy_train_000004): image 'scan.tiff'" in err and "TIFF image" in err
    assert [f["id"] for f in report(data)["failures"]] == [f"toy_train_{i:06d}" for i in (1, 3, 4)]


def test_the_data_url_carries_the_decoded_image_type(tmp_path, stub_factory, key_env):
    from PIL import Image

    data = make_dataset(tmp_path / "d", n=3)
    Image.new("RGB", (4, 4)).save(data / "photo.jpg", "JPEG")
    Image.new("RGB", (4, 4)).save(data / "really_png.jpg", "PNG")
    Image.new("RGB", (4, 4)).save(data / "anim.webp", "WEBP")
    _set_images(data, {0: ["photo.jpg"], 1: ["really_png.jpg"], 2: ["anim.webp"]})
    stub = stub_factory()
    assert gen_cot(data, stub.url, "--concurrency", "1") == 0
    urls = {sample_of(r): r["messages"][1]["content"][0]["image_url"]["url"].split(";")[0] for r in stub.requests}
    assert urls == {0: "data:image/jpeg", 1: "data:image/png", 2: "data:image/webp"}  # by content, not suffix


def test_summary_counts_equal_the_server_request_log_when_every_request_fails(tmp_path, stub_factory, key_env,
                                                                              capsys):
    """Case 7: 3 samples x (1 + 2 transport retries) = 9 chat requests, all HTTP 500; plus 1 probe."""
    data = make_dataset(tmp_path / "d", n=3)
    stub = stub_factory(lambda req, n: (500, {"error": {"message": "boom"}}))
    assert gen_cot(data, stub.url, "--max-retries", "2", "--concurrency", "1", "--price-prompt", "1",
                   "--price-completion", "1") == 1
    out = capsys.readouterr().out
    s = report(data)["summary"]
    assert len(stub.requests) == 9 and len(stub.gets) == 1
    assert (s["requests"], s["replies"], s["unanswered_requests"], s["transport_retries"], s["probe_requests"]) == (
        len(stub.requests), 0, 9, 6, len(stub.gets))
    assert s["failed"] == 3 and s["estimated_cost_usd"] == 0.0
    assert "requests         9  chat requests sent this run (0 answered, 9 failed" in out
    assert "plus 1 endpoint probe" in out and "for 9 requests; the 9 failed ones returned no token usage" in out


def test_output_paths_stay_inside_the_dataset_dir(tmp_path, stub_factory, key_env, capsys):
    data = make_dataset(tmp_path / "d", n=2)
    stub = stub_factory()
    for name in ("../x", str(tmp_path / "abs"), "sub/x"):
        assert gen_cot(data, stub.url, "--output-dataset", name) == 2
        assert f"--output-dataset {name!r}: a dataset name" in capsys.readouterr().err
    # A dataset_info entry whose file lies outside: not rewritten in place unless allowed.
    (tmp_path / "x.json").write_text((data / "toy.json").read_text())
    update_dataset_info(data, "toy", "../x.json")
    before = (tmp_path / "x.json").read_text()
    assert gen_cot(data, stub.url) == 2
    err = capsys.readouterr().err
    assert "dataset 'toy': the file to write," in err and "../x.json lies outside" in err
    assert "--allow-outside-dataset-dir" in err
    assert (tmp_path / "x.json").read_text() == before and stub.requests == [] and not list(tmp_path.glob(".x*"))
    assert gen_cot(data, stub.url, "--output-dataset", "toy_cot") == 0  # reading it is fine
    assert gen_cot(data, stub.url, "--allow-outside-dataset-dir") == 0
    assert all(r["cot"] for r in json.loads((tmp_path / "x.json").read_text()))


def test_bad_and_empty_inputs_name_the_file(tmp_path, stub_factory, key_env, capsys):
    """Cases 4 and 5 for gen-cot: a non-UTF-8 dataset or prompt file, an empty dataset, no usable row."""
    stub = stub_factory()
    data = make_dataset(tmp_path / "d", n=2)
    (data / "toy.json").write_bytes(b"[\n{\"id\": \"caf\xe9\"}\n]\n")
    assert gen_cot(data, stub.url) == 2
    assert f"{data / 'toy.json'}:2: not UTF-8 text (byte 0xe9" in capsys.readouterr().err
    (data / "toy.json").write_text("[]\n")
    assert gen_cot(data, stub.url) == 2
    assert f"{data / 'toy.json'}: the dataset file has no rows" in capsys.readouterr().err
    (data / "toy.json").write_text('[{"id": "a", "messages": []}]\n')
    assert gen_cot(data, stub.url) == 2
    assert "none of its 1 rows can be asked about (no post text); nothing to do" in capsys.readouterr().err
    data = make_dataset(tmp_path / "d2", n=2)
    assert gen_cot(data, stub.url, "--limit", "0") == 2
    assert "--limit 0: ask about at least 1 sample" in capsys.readouterr().err
    prompt = tmp_path / "user.txt"
    prompt.write_bytes(b"\xff{text}")
    assert gen_cot(data, stub.url, "--user-prompt-file", str(prompt)) == 2
    assert f"{prompt}:1: not UTF-8 text" in capsys.readouterr().err
    assert stub.requests == []


def test_converted_datasets_pass_the_image_check(tmp_path, stub_factory, key_env, capsys):
    """convert-cmkp's output (images in <dataset>/images, or elsewhere with --allow-images-in as docs/teacher.md
    shows) and convert-scienceqa's (copied images) pass with the documented flags."""
    from PIL import Image

    from dyncot_plugin.tasks.mmkp.convert import read_cmkp_file

    src = Path(__file__).parent / "data" / "cmkp_test_src.txt"
    posts = read_cmkp_file(src)[:3]
    one = tmp_path / "test_src.txt"
    one.write_text("".join(p.to_line() + "\n" for p in posts))
    for ds, image_dir in ((tmp_path / "a", tmp_path / "a" / "images"), (tmp_path / "b", tmp_path / "pics")):
        image_dir.mkdir(parents=True)
        for p in posts:
            Image.new("RGB", (4, 4)).save(image_dir / p.image, "JPEG")
        assert data_main(["convert-cmkp", f"test={one}", "-o", str(ds), "--image-dir", str(image_dir), "-q"]) == 0
    argv = ["--dataset", "mmkp_test", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--dry-run"]
    assert data_main(["gen-cot", "--dataset-dir", str(tmp_path / "a"), *argv]) == 0
    assert data_main(["gen-cot", "--dataset-dir", str(tmp_path / "b"), *argv]) == 2
    assert "'../pics/" in capsys.readouterr().err
    assert data_main(["gen-cot", "--dataset-dir", str(tmp_path / "b"), *argv,
                      "--allow-images-in", str(tmp_path / "pics")]) == 0
    assert "data:image/jpeg;base64," in capsys.readouterr().out

    import importlib.util

    spec = importlib.util.spec_from_file_location("sqa_raw", Path(__file__).parent / "fixtures" / "scienceqa" / "raw.py")
    raw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(raw)
    paths = raw.build_raw(tmp_path / "raw")
    sqa_out = tmp_path / "sqa"
    assert data_main(["convert-scienceqa", "--problems", str(paths["problems"]), "--splits-file",
                      str(paths["splits"]), "--image-dir", str(paths["image_dir"]), "-o", str(sqa_out)]) == 0
    from dyncot_plugin.io.datasets import load_rows
    from dyncot_plugin.teacher.gen_cot import build_samples, check_images

    samples, _ = build_samples(load_rows(sqa_out / "sqa_train_answer.json"), sqa_out)
    assert sum(len(s.images) for s in samples) > 0
    assert check_images(samples, sqa_out / "sqa_train_answer.json", [sqa_out], False) == []


def test_two_concurrent_runs_on_one_dataset_end_with_the_union(tmp_path, stub_factory, key_env):
    """Case 3: two gen-cot processes, different --cache, same dataset. Teacher "a" only answers even samples well,
    "b" only odd ones. The server holds each run's first request until both runs have sent one, so both have read
    the dataset before either writes it: the one that writes last must not drop the other's CoTs."""
    import os
    import subprocess
    import sys

    data = make_dataset(tmp_path / "d", n=8)
    barrier = threading.Barrier(2, timeout=120)  # a safety net against a hang, not a timing assumption
    first: set[str] = set()
    guard = threading.Lock()

    def script(req, n):
        model = req["model"]
        with guard:
            wait = model not in first
            first.add(model)
        if wait:
            barrier.wait()
        mine = sample_of(req) % 2 == (0 if model == "a" else 1)
        return good(req) if mine else "no tags here"

    stub = stub_factory(script)
    env = dict(os.environ, **{KEY_ENV: KEY})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dyncot_plugin.cli.data", "gen-cot", "--dataset-dir", str(data), "--dataset", "toy",
             "--base-url", stub.url, "--model", model, "--api-key-env", KEY_ENV, "--no-progress", "--retries", "0",
             "--cache", str(tmp_path / f"{model}.cache.jsonl"), "--report", str(tmp_path / f"{model}.report.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for model in ("a", "b")
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    got = rows(data)
    assert all(r["cot"] for r in got), [r["cot"] for r in got]
    assert [r["cot_source"] for r in got] == ["teacher:a", "teacher:b"] * 4
    for model in ("a", "b"):
        s = json.loads((tmp_path / f"{model}.report.json").read_text())["summary"]
        # Each run asked each of the 8 samples exactly once: 8 replies, one final record per sample, at attempt 1.
        # ``requests`` also counts transport re-sends (a connection reset or time-out under load), so it is only
        # asserted to be the replies plus the re-sends the run reported, which holds however the timing falls.
        assert (s["done"], s["rejected"], s["failed"], s["replies"]) == (4, 4, 0, 8)
        assert s["requests"] == s["replies"] + s["transport_retries"]
        records = [json.loads(line) for line in (tmp_path / f"{model}.cache.jsonl").read_text().splitlines()]
        assert sorted((r["id"], r["status"], r["attempt"]) for r in records) == sorted(
            (f"toy_train_{i:06d}", "done" if i % 2 == (0 if model == "a" else 1) else "rejected", 1) for i in range(8))
        asked = [sample_of(r) for r in stub.requests if r["model"] == model]
        assert set(asked) == set(range(8)) and len(asked) <= s["requests"]
    assert not [p.name for p in data.iterdir() if p.name.endswith(".tmp")]
