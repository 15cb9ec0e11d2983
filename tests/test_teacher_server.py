"""``dyncot-data gen-cot`` end to end against a real ``llamafactory-cli api`` serving the tiny Qwen2-VL on loopback.

The tiny random model cannot write a valid ``<think>…</think><answer>…</answer>`` reply, so every sample is
rejected: these tests cover the real request path (base64 image, bearer key, usage fields), the rejection, re-ask
and record path, and resume after ``kill -9`` (counting requests on the server side, from its request log).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.io.datasets import update_dataset_info
from dyncot_plugin.io.files import atomic_write_json
from dyncot_plugin.testing.lf_runner import llamafactory_cli, make_image, offline_env

KEY = "sk-test-SECRET123"
KEY_ENV = "DYNCOT_TEST_TEACHER_KEY"
START_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def requests(self, start: int = 0, end: int | None = None) -> list[dict]:
        """Chat requests the server logged (``API_VERBOSE``), parsed from its log between two character offsets."""
        text = self.log_text()
        end = len(text) if end is None else end
        out, decoder = [], json.JSONDecoder()
        for m in re.finditer(r"==== request ====\n", text):
            if not start <= m.start() < end:
                continue
            obj, _ = decoder.raw_decode(text, m.end())
            out.append(obj)
        return out


@pytest.fixture(scope="module")
def api_server(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("lf_api")
    cfg = work / "api.yaml"
    cfg.write_text(f"model_name_or_path: {tiny_model_dir}\ntemplate: qwen2_vl\ninfer_backend: huggingface\n")
    port = _free_port()
    log = work / "server.log"
    env = offline_env({"API_HOST": "127.0.0.1", "API_PORT": str(port), "API_KEY": KEY, "API_VERBOSE": "1"})
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [llamafactory_cli(), "api", str(cfg)],
            cwd=work,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llamafactory-cli api exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"llamafactory-cli api not up after {START_TIMEOUT}s:\n{log.read_text()[-4000:]}")
            req = urllib.request.Request(url + "/models", headers={"Authorization": f"Bearer {KEY}"})
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        yield ApiServer(proc, url, log)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def make_dataset(root: Path, n: int, name: str = "toy") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        make_image(root / f"img{i}.png", seed=i, size=(32, 32))
        rows.append(
            {
                "id": f"{name}_train_{i:06d}",
                "messages": [
                    {"role": "user", "content": f"<image>Keyphrases?\nPost: post number {i} about cats"},
                    {"role": "assistant", "content": "cats; pets"},
                ],
                "images": [f"img{i}.png"],
                "text": f"post number {i} about cats",
                "keyphrases": ["cats", "pets"],
                "cot": None,
            }
        )
    atomic_write_json(root / f"{name}.json", rows)
    update_dataset_info(root, name, f"{name}.json")
    return root


def sample_of(request: dict) -> int:
    return int(re.search(r"post number (\d+) about", json.dumps(request["messages"])).group(1))


def attempt_of(request: dict) -> int:
    return sum(1 for m in request["messages"] if m["role"] == "user")


def cli_args(data: Path, url: str, *extra: str) -> list[str]:
    return [
        "gen-cot",
        "--dataset-dir",
        str(data),
        "--dataset",
        "toy",
        "--base-url",
        url,
        "--model",
        "tiny",
        "--api-key-env",
        KEY_ENV,
        "--max-tokens",
        "16",
        "--retries",
        "1",
        "--timeout",
        "60",
        "--backoff",
        "0.1",
        *extra,
    ]


def test_real_server_rejection_retry_and_record_path(api_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    data = make_dataset(tmp_path / "d", 3)
    offset = len(api_server.log_text())
    rc = data_main(
        cli_args(data, api_server.url, "--concurrency", "2", "--price-prompt", "1", "--price-completion", "2")
    )
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err  # every sample reached a final state (rejected)

    rep = json.loads((data / "gen_cot" / "toy.report.json").read_text())
    s = rep["summary"]
    assert (s["done"], s["rejected"], s["failed"], s["requests"], s["retried"]) == (0, 3, 0, 6, 3)
    assert s["prompt_tokens"] > 0 and s["completion_tokens"] > 0 and s["estimated_cost_usd"] > 0
    assert sorted(f["id"] for f in rep["failures"]) == [f"toy_train_{i:06d}" for i in range(3)]
    assert all(f["status"] == "rejected" and f["attempts"] == 2 and f["reason"] for f in rep["failures"])
    assert "rejected         3" in cap.out and "retried          3" in cap.out

    rows = json.loads((data / "toy.json").read_text())
    assert [r["cot"] for r in rows] == [None, None, None]  # recorded in the report, never a fake CoT
    records = [json.loads(x) for x in (data / "gen_cot" / "toy.cache.jsonl").read_text().splitlines()]
    assert sorted((r["id"][-1], r["status"], r["attempt"]) for r in records) == [
        (str(i), st, a) for i in range(3) for st, a in (("attempt", 1), ("rejected", 2))
    ]

    # What the server saw: the image as a data URL, and on the re-ask the rejected reply plus the feedback.
    reqs = api_server.requests(offset)
    assert len(reqs) == 6
    first = [r for r in reqs if attempt_of(r) == 1]
    assert all(r["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,") for r in first)
    retry = next(r for r in reqs if attempt_of(r) == 2)["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert "Your reply was rejected:" in retry[3]["content"]

    # The key was accepted by the server (it enforces API_KEY) but is in no output.
    assert KEY not in cap.out + cap.err
    for path in data.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path

    # A rerun asks nothing.
    offset = len(api_server.log_text())
    assert data_main(cli_args(data, api_server.url)) == 0
    assert api_server.requests(offset) == []


def test_kill_9_then_resume_loses_nothing_and_asks_nothing_twice(api_server, tmp_path):
    n = 8
    data = make_dataset(tmp_path / "d", n)
    cache = data / "gen_cot" / "toy.cache.jsonl"
    env = offline_env({KEY_ENV: KEY})
    argv = [sys.executable, "-m", "dyncot_plugin.cli.data", *cli_args(data, api_server.url, "--concurrency", "1")]
    log0 = len(api_server.log_text())

    def finals() -> list[dict]:
        if not cache.exists():
            return []
        out = []
        for line in cache.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn line being written
            if rec["status"] in ("done", "rejected"):
                out.append(rec)
        return out

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while len(finals()) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "gen-cot made no progress"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    # Let the server log the request that was in flight, then split its log into "run 1" and "run 2".
    time.sleep(1.0)
    log1 = len(api_server.log_text())
    at_kill = {}
    for line in cache.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        at_kill.setdefault(rec["id"], []).append(rec)
    finished_at_kill = {r["id"] for r in finals()}
    assert 3 <= len(finished_at_kill) < n
    assert not (data / "toy.json").read_text().count('"cot": "')  # nothing written yet: killed before the end

    rerun = subprocess.run(argv + ["--no-progress"], env=env, capture_output=True, text=True, timeout=180, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # Every sample has a final state; the rerun finished exactly the ones the kill interrupted.
    assert f"rejected         {n}  (failed validation on every attempt; {n - len(finished_at_kill)} this run" in (
        rerun.stdout
    )

    run1 = api_server.requests(log0, log1)
    run2 = api_server.requests(log1)
    ids = [f"toy_train_{i:06d}" for i in range(n)]
    # No finished sample was asked about again.
    assert not [r for r in run2 if ids[sample_of(r)] in finished_at_kill]
    # No reply already received (an attempt recorded in the cache) was asked for again.
    recorded = {(rec["id"], rec["attempt"]) for recs in at_kill.values() for rec in recs}
    assert not [r for r in run2 if (ids[sample_of(r)], attempt_of(r)) in recorded]
    # At most the one request in flight at the kill (concurrency 1) was sent twice.
    pairs = [(sample_of(r), attempt_of(r)) for r in run1 + run2]
    assert len(pairs) - len(set(pairs)) <= 1
    # Nothing lost: every sample has exactly one final record, made by one of the two runs.
    final_ids = [r["id"] for r in finals()]
    assert sorted(final_ids) == ids
    assert len(pairs) >= 2 * n  # every sample had its two attempts
