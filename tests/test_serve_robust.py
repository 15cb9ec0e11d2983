"""``dyncot-serve`` survives every request, and its think decision holds, on a real vLLM server (CPU) per tag size.

Per think-tag size (a 3-token ``<think>`` on Qwen's real vocabulary and a 1-token one on the tiny tokenizer), ONE
server started as an exposed server would be (``--api-key K --root-path /p``; the session's shared servers,
``conftest.dyncot_server``) receives every request that used to take it down or answer 500, every other generating
route vLLM serves and each malformed field, and stays up: ``/health`` 200 and a following chat request right. Then
streamed replies equal non-streamed ones field by field, the load test's shape (64 requests in flight, mixed modes,
streamed and not, chat and completions) passes with every mode honoured, ``--logprobs-mode`` other than
``raw_logprobs`` stops the start, and ``auto``'s one-token decision under chunked prefill, a small batch and a prefix-cache
hit equals an engine's without chunking (offline ``LLM``).
"""

from __future__ import annotations

import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fixtures.serve_vllm import API_KEY, ROOT_PATH, serve_env

from dyncot_plugin.serve.middleware import DECIDED_ROUTES, PASSED_ROUTES, REFUSED_ROUTES, route_kind
from dyncot_plugin.serve.replies import THINK_CLOSE, THINK_OPEN

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm_serve")]  # shares the session's dyncot-serve servers
TESTS = Path(__file__).resolve().parent
USER = "Post: Sunset at the beach with friends #summer\nGive keyphrases."


@pytest.fixture(scope="module", params=[3, 1], ids=["tag3", "tag1"])
def served(request, dyncot_server):
    return dyncot_server(request.param), request.param


def _messages(text: str = USER) -> list[dict]:
    return [{"role": "user", "content": text}]


def _text_of(status: int, reply, kind: str) -> str:
    assert status == 200, reply
    choice = reply["choices"][0]
    if kind == "completion":
        return choice["text"]
    message = choice["message"]
    reasoning = message.get("reasoning_content")
    return (THINK_OPEN + reasoning + (THINK_CLOSE if message.get("content") is not None else "")
            if reasoning is not None else message.get("content") or "")


def never_holds(text: str) -> bool:
    """``never``'s property: no prefix of ``<think>`` of two or more characters at the start (after leading
    whitespace), no ``<think>``, no ``</think>``."""
    start = text.lstrip()
    return not any(start.startswith(THINK_OPEN[:k]) for k in range(2, len(THINK_OPEN) + 1)) \
        and THINK_OPEN not in text and THINK_CLOSE not in text


def _chat_reasoning(status: int, reply) -> str | None:
    assert status == 200, reply
    return reply["choices"][0]["message"].get("reasoning_content")


# --------------------------------------------------------------------------------------------- bad requests
def _bad_requests(model: str, tag: int, max_len: int) -> list[tuple[str, str, dict | bytes, int, str]]:
    """(what, route, body, expected status, what the error must name); status 200 = served, mode checked apart."""
    chat = {"model": model, "messages": _messages(), "max_tokens": 6, "temperature": 0.0}
    completion = {"model": model, "prompt": "Post: sunset at the beach", "max_tokens": 6, "temperature": 0.0}
    cases: list[tuple[str, str, dict | bytes, int, str]] = [
        ("plain completion (auto)", "/v1/completions", {**completion, "max_tokens": 8}, 200, ""),
        ("chat with min_tokens above the look-ahead", "/v1/chat/completions", {**chat, "min_tokens": 5}, 200, ""),
        ("chat with include_reasoning false", "/v1/chat/completions", {**chat, "include_reasoning": False}, 200, ""),
        ("chat with logit_bias", "/v1/chat/completions", {**chat, "logit_bias": {"5": 5.0}}, 200, ""),
        ("completion n=2 with stop", "/v1/completions", {**completion, "n": 2, "stop": ["<"], "temperature": 1.0},
         200, ""),
        ("prompt one token short of max_model_len", "/v1/completions",
         {**completion, "prompt": [100] * (max_len - 1), "max_tokens": 1}, 200, ""),
        ("prompt of max_model_len", "/v1/completions",
         {**completion, "prompt": [100] * max_len, "max_tokens": 1}, 400, "max_tokens"),
        ("beam search, never", "/v1/chat/completions",
         {**chat, "use_beam_search": True, "n": 2, "vllm_xargs": {"dyncot_think": "never"}}, 400, "use_beam_search"),
        ("beam search, completion", "/v1/completions", {**completion, "use_beam_search": True, "n": 2}, 400,
         "use_beam_search"),
        ("vllm_xargs a string", "/v1/chat/completions", {**chat, "vllm_xargs": "never"}, 400, "vllm_xargs"),
        ("vllm_xargs a list", "/v1/chat/completions", {**chat, "vllm_xargs": ["never"]}, 400, "vllm_xargs"),
        ("unknown mode", "/v1/completions", {**completion, "vllm_xargs": {"dyncot_think": "sometimes"}}, 400,
         "vllm_xargs.dyncot_think"),
        ("negative threshold", "/v1/chat/completions", {**chat, "vllm_xargs": {"dyncot_think_threshold": -1}}, 400,
         "vllm_xargs.dyncot_think_threshold"),
        ("probability above 1", "/v1/completions", {**completion, "vllm_xargs": {"dyncot_think_prob": 2}}, 400,
         "vllm_xargs.dyncot_think_prob"),
        ("chat_template_kwargs a string", "/v1/chat/completions", {**chat, "chat_template_kwargs": "x"}, 400,
         "chat_template_kwargs"),
        ('enable_thinking "false"', "/v1/chat/completions",
         {**chat, "chat_template_kwargs": {"enable_thinking": "false"}}, 400, "chat_template_kwargs.enable_thinking"),
        ("enable_thinking 0", "/v1/chat/completions", {**chat, "chat_template_kwargs": {"enable_thinking": 0}}, 400,
         "chat_template_kwargs.enable_thinking"),
        ("enable_thinking null", "/v1/chat/completions",
         {**chat, "chat_template_kwargs": {"enable_thinking": None}}, 400, "chat_template_kwargs.enable_thinking"),
        ("top-level enable_thinking a string", "/v1/completions", {**completion, "enable_thinking": "no"}, 400,
         "enable_thinking"),
        ("response_format json_object", "/v1/chat/completions", {**chat, "response_format": {"type": "json_object"}},
         400, "response_format"),
        ("structured_outputs", "/v1/completions", {**completion, "structured_outputs": {"choice": ["a", "b"]}}, 400,
         "structured_outputs"),
        ("tool_choice required", "/v1/chat/completions", {**chat, "tool_choice": "required", "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, 400, "tool_choice"),
        ("not JSON", "/v1/chat/completions", b"{not json", 400, ""),
        ("several prompts", "/v1/completions", {**completion, "prompt": ["Post one", "Post two"]},
         400 if tag > 1 else 200, "prompt" if tag > 1 else ""),
    ]
    other = {"model": model, "messages": _messages(), "max_tokens": 6, "input": "Post", "max_output_tokens": 6,
             "token_ids": [1, 2, 3], "sampling_params": {"max_tokens": 6}}
    cases += [(f"route {route}", route, other, 404, route) for route in REFUSED_ROUTES]
    return cases


def test_every_bad_request_gets_a_named_4xx_and_the_server_stays_up(served):
    server, tag = served
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(f"{server.v1}/models",
                                                       headers={"Authorization": f"Bearer {API_KEY}"})) as r:
        max_len = json.loads(r.read())["data"][0]["max_model_len"]
    for what, route, body, status, named in _bad_requests(server.model, tag, max_len):
        got, reply = server.post(route, body)
        assert got == status, (what, reply)
        if named:
            error = reply["error"]
            assert named in (error.get("param") or "") + error["message"], (what, reply)
        assert server.healthy(), what
    # a body over --max-body-mb 2: 413 before a byte of it is sent; one under it is read
    status, reply = server.status_of_large_post("/v1/chat/completions", 3 * 2**20)
    assert status == 413 and b"max-body-mb" in reply, reply[:300]
    assert server.post("/v1/chat/completions", {"model": server.model, "messages": _messages("x " * 2**19),
                                                "max_tokens": 1})[0] == 400  # 1 MB of text: read, then too long
    # the key is checked as vLLM checks it (and before the middleware reads a body): 401 without it
    for key in (None, "wrong"):
        assert server.post("/v1/chat/completions", {"model": server.model, "messages": _messages()}, key=key)[0] == 401
    # both spellings of the route (with and without the root path) go through the decision; the mode holds
    for root in (ROOT_PATH, ""):
        never = server.post("/v1/completions", {"model": server.model, "prompt": USER, "max_tokens": 8,
                                                "temperature": 0.0, "enable_thinking": False}, root=root)
        assert never_holds(_text_of(*never, "completion"))
        always = server.post("/v1/completions", {"model": server.model, "prompt": USER, "max_tokens": tag + 2,
                                                 "vllm_xargs": {"dyncot_think": "always"}}, root=root)
        assert _text_of(*always, "completion").startswith(THINK_OPEN)
    # auto at a threshold of 0 thinks, above 1 never does (completions and chats alike; a look-ahead on tag3)
    for threshold, thinks in ((0.0, True), (1.5, False)):
        reply = server.post("/v1/chat/completions", {"model": server.model, "messages": _messages(), "max_tokens": 8,
                                                     "vllm_xargs": {"dyncot_think_threshold": threshold}})
        assert (_chat_reasoning(*reply) is not None) == thinks
        text = _text_of(*server.post("/v1/completions", {"model": server.model, "prompt": USER, "max_tokens": 8,
                                                          "vllm_xargs": {"dyncot_think_threshold": threshold}}),
                        "completion")
        assert text.startswith(THINK_OPEN) if thinks else never_holds(text)
    # the top-level enable_thinking is honoured like chat_template_kwargs'
    assert _chat_reasoning(*server.post("/v1/chat/completions", {"model": server.model, "messages": _messages(),
                                                                 "max_tokens": 8, "enable_thinking": True}))
    assert server.healthy()
    assert "Traceback" not in server.log.read_text(errors="replace")


def test_every_post_route_vllm_serves_is_classified(served):
    """The server's own route table (its OpenAPI document): every POST route goes through the decision, passes as
    non-generating, or is refused by name; none is left to the 'unknown' default (a vLLM upgrade adding a
    generating route fails here until the table says what it is)."""
    server, _ = served
    import urllib.request

    with urllib.request.urlopen(f"{server.base}/openapi.json", timeout=60) as reply:
        paths = json.loads(reply.read())["paths"]
    posts = {path for path, methods in paths.items() if "post" in methods}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/tokenize"} <= posts
    for path in posts:
        known = path in DECIDED_ROUTES or path in PASSED_ROUTES or path in REFUSED_ROUTES \
            or route_kind("POST", path) == "pass"
        assert known, path


# ------------------------------------------------------------------------------------- streamed = non-streamed
def _streamed(server, body: dict) -> tuple[str, str, int]:
    """(reasoning_content, content, number of deltas with reasoning) of a streamed chat, from its SSE events."""
    import urllib.request

    request = urllib.request.Request(f"{server.v1}/chat/completions", data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {API_KEY}"})
    reasoning, content, deltas = "", "", 0
    with urllib.request.urlopen(request, timeout=600) as reply:
        for line in reply.read().decode().split("\n"):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                delta = choice.get("delta") or {}
                assert delta.get("reasoning_content") == delta.get("reasoning")
                reasoning += delta.get("reasoning_content") or ""
                deltas += delta.get("reasoning_content") is not None
                content += delta.get("content") or ""
    return reasoning, content, deltas


def test_streamed_replies_equal_non_streamed_ones(served):
    server, tag = served
    history = [{"role": "user", "content": "Post: rain in the city"},
               {"role": "assistant", "content": "<think>The photo shows rain.</think><answer>rain; city</answer>"},
               {"role": "user", "content": USER}]
    no_think = [{"role": "user", "content": USER}, {"role": "assistant", "content": "<think>\n\n</think>\n\nbeach"},
                {"role": "user", "content": "And this one? </think> Post: coffee"}]
    cases = [(_messages("Post: a </think> in the user's text, and <think> too"), 12), (history, 12), (no_think, 12)]
    cases += [(_messages(), n) for n in (1, 2, 3, 16)]  # cut inside <think> (tag3), right after it, longer
    thought = 0
    for messages, max_tokens in cases:
        for mode in ("auto", "always", "never"):
            body = {"model": server.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
                    "vllm_xargs": {"dyncot_think": mode}}
            status, reply = server.post("/v1/chat/completions", body)
            assert status == 200, reply
            message = reply["choices"][0]["message"]
            reasoning, content, _ = _streamed(server, body)
            assert (reasoning, content) == (message.get("reasoning_content") or "", message.get("content") or ""), \
                (mode, max_tokens, messages[-1]["content"])
            thought += message.get("reasoning_content") is not None
            if mode == "always":  # a think block once the whole tag fits, else the cut tag as content (<th)
                assert (message.get("reasoning_content") is not None) == (max_tokens >= tag), (max_tokens, message)
                assert max_tokens >= tag or THINK_OPEN.startswith(message["content"]), message
            if mode == "never":
                assert message.get("reasoning_content") is None and never_holds(message.get("content") or "")
    assert thought >= sum(max_tokens >= tag for _, max_tokens in cases)  # always's, at least


# --------------------------------------------------------------------------------------------------- load test
def test_load_64_in_flight_mixed_modes_streamed_and_not(served):
    """The load test's shape: 96 requests, 64 in flight at once, modes auto (default threshold, 0 and 1.5), always,
    never, chat and completions, streamed and not: 0 failures and every mode honoured."""
    server, tag = served
    import urllib.request

    modes = [("auto", None), ("auto", 0.0), ("auto", 1.5), ("always", None), ("never", None), ("auto", None)]
    jobs = [(k, modes[k % 6], ("chat", "completion")[(k // 6) % 2], bool((k // 12) % 2)) for k in range(96)]
    barrier = threading.Barrier(64, timeout=600)

    def run(job):
        k, (mode, threshold), kind, stream = job
        xargs = {"dyncot_think": mode} if threshold is None else {"dyncot_think": mode,
                                                                  "dyncot_think_threshold": threshold}
        body = {"model": server.model, "max_tokens": 8, "temperature": 0.0, "vllm_xargs": xargs, "stream": stream}
        body.update({"messages": _messages(f"Post {k}: {USER}")} if kind == "chat" else {"prompt": f"Post {k}: {USER}"})
        if k < 64:
            barrier.wait()  # the first 64 are sent together: 64 in flight
        if kind == "chat" and stream:
            reasoning, content, deltas = _streamed(server, body)
            return k, (THINK_OPEN + reasoning if deltas else content)
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        if not stream:
            return k, _text_of(*server.post(path, body), kind)
        request = urllib.request.Request(f"{server.v1}/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(request, timeout=600) as reply:
            events = [json.loads(line[6:]) for line in reply.read().decode().split("\n")
                      if line.startswith("data: ") and line != "data: [DONE]"]
        return k, "".join(c["text"] for e in events for c in e.get("choices", []))

    with ThreadPoolExecutor(64) as pool:
        texts = dict(pool.map(run, jobs))
    assert len(texts) == 96
    for k, (mode, threshold), _, _ in jobs:
        text = texts[k]
        if mode == "always" or threshold == 0.0:
            assert text.startswith(THINK_OPEN), (k, text)
        elif mode == "never" or threshold == 1.5:
            assert never_holds(text), (k, text)
        else:  # auto at the model's threshold: one of the two, whole
            assert text.startswith(THINK_OPEN) or never_holds(text), (k, text)
    assert server.healthy()


# -------------------------------------------------------------------------------------------- start-up, decisions
def test_a_logprobs_mode_other_than_raw_is_refused_at_start(vllm_python_path, served_model):
    for spelling in (["--logprobs-mode", "processed_logprobs"], ["--logprobs_mode=raw_logits"]):
        proc = subprocess.run([vllm_python_path, "-m", "dyncot_plugin.serve.server", served_model(1), "--", *spelling],
                              env=serve_env(), capture_output=True, text=True, timeout=600)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("[dyncot-plugin] error:")]
        assert proc.returncode == 2 and len(errors) == 1 and "--logprobs-mode" in errors[0], proc.stderr[-2000:]
        assert spelling[-1].split("=")[-1] in errors[0] and "Traceback" not in proc.stderr


def test_auto_decides_at_the_end_of_the_prompt_under_chunked_prefill(vllm_python_path, served_model, tmp_path):
    """One-token tag, offline ``LLM``: with ``max_num_batched_tokens`` 32 (every prompt of 100-149 tokens is
    prefilled in 4-5 chunks), ``max_num_seqs`` 2, 18 requests at once and one prompt served from the prefix cache,
    ``auto`` at thresholds ``think_prob * (1 -/+ 1e-3)`` thinks exactly where an engine without chunking does
    (and where ``think_prob``, measured at the end of the prompt, says). Then vLLM's request validation refuses, with
    the field's name, what the processor needs and cannot get (``validate_params``)."""
    out = tmp_path / "decisions.json"
    proc = subprocess.run([vllm_python_path, str(TESTS / "fixtures" / "vllm_decisions.py"), served_model(1), str(out)],
                          env=serve_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    n = len(result["probs"])
    assert n >= 9 and all(0 < p < 1 for p in result["probs"])
    expected = [True, False] * n  # think at p(1 - 1e-3), not at p(1 + 1e-3)
    assert result["unchunked"] == expected
    assert result["chunked"] == expected
    assert result["cached_tokens"][-2] >= 64 and result["cached_tokens"][-1] >= 64  # the repeated prompt's KV
    assert result["refused"] == {"bad mode": "vllm_xargs.dyncot_think",
                                 "auto without a probability on a 3-token tag": "vllm_xargs.dyncot_think_prob",
                                 "structured outputs": "structured_outputs"}
