"""The server middleware on a plain ASGI app with asyncio (no vLLM, fast): the stream rewriting
(``reasoning_content`` in streamed deltas), routes under ``--root-path``, the API key checked before a body is read,
the body cap, the request fields it validates and the think look-ahead; and the reply split that makes streamed
replies equal non-streamed ones. The real server is checked in ``tests/test_serve_vllm.py`` and
``tests/test_serve_robust.py``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import types

import pytest

from dyncot_plugin.serve import middleware as M
from dyncot_plugin.serve.fields import FieldError
from dyncot_plugin.serve.middleware import DyncotThinkMiddleware

CHUNKS = [
    {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"reasoning": "The pho\u00e9to "}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"reasoning": "shows a beach."}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"reasoning": "x", "reasoning_content": "kept"}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"content": "beach; sun"}, "finish_reason": "stop"}]},
    {"id": "c1", "choices": [], "usage": {"prompt_tokens": 9}},
]


def _stream_bytes() -> bytes:
    events = [b"data: " + json.dumps(c, ensure_ascii=False).encode() for c in CHUNKS]
    events += [b": a comment, not data", b"data: not json {", b"data: [DONE]"]
    return b"".join(e + b"\n\n" for e in events)


def _app(body_parts: list[bytes], status: int = 200, content_type: bytes = b"text/event-stream"):
    """A plain ASGI app answering with ``body_parts`` as separate body messages (the last one ends the body)."""
    seen = {}

    async def app(scope, receive, send):
        message = await receive()
        seen["request"] = json.loads(message["body"])
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type), (b"x-request-id", b"r1")]})
        for k, part in enumerate(body_parts):
            await send({"type": "http.response.body", "body": part, "more_body": k < len(body_parts) - 1})

    return app, seen


def _call(app, request: dict) -> list[dict]:
    sent: list[dict] = []
    body = json.dumps(request).encode()
    received = []

    async def receive():
        if not received:
            received.append(1)
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client stays connected

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    asyncio.run(DyncotThinkMiddleware(app)(scope, receive, send))
    return sent


def _events(body: bytes) -> list[bytes]:
    assert body.endswith(b"\n\n")
    return body[:-2].split(b"\n\n")


def test_streamed_deltas_get_reasoning_content_with_an_event_split_across_body_messages():
    raw = _stream_bytes()
    second = raw.index(b"shows a beach")  # inside the third event's JSON
    utf8 = raw.index("\u00e9".encode()) + 1  # inside a 2-byte character of the second event
    parts = [raw[:utf8], raw[utf8:second], raw[second:], b""]
    app, seen = _app(parts)
    sent = _call(app, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                          "vllm_xargs": {"dyncot_think": "always"}})
    assert seen["request"]["vllm_xargs"] == {"dyncot_think": "always"}
    start, bodies = sent[0], sent[1:]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert start["headers"] == [(b"content-type", b"text/event-stream"), (b"x-request-id", b"r1")]  # no length added
    assert all(m["type"] == "http.response.body" for m in bodies)
    assert [m["more_body"] for m in bodies] == [True] * (len(bodies) - 1) + [False]
    out = b"".join(m["body"] for m in bodies)
    for m in bodies[:-1]:  # every message sent on ends on an event boundary
        assert m["body"].endswith(b"\n\n")
    events, original = _events(out), _events(raw)
    assert len(events) == len(original) == len(CHUNKS) + 3
    got = [json.loads(e[len(b"data: "):]) for e in events[: len(CHUNKS)]]
    expected = json.loads(json.dumps(CHUNKS))
    expected[1]["choices"][0]["delta"]["reasoning_content"] = "The pho\u00e9to "
    expected[2]["choices"][0]["delta"]["reasoning_content"] = "shows a beach."
    assert got == expected  # the delta that already had reasoning_content keeps its own
    assert events[len(CHUNKS):] == original[len(CHUNKS):]  # comment, non-JSON data and [DONE] byte for byte
    for k in (0, 3, 4, 5):  # events without a delta to complete pass byte for byte
        assert events[k] == original[k]
    assert "".join(g["choices"][0]["delta"].get("reasoning_content", "") for g in got[1:3]) == \
        "The pho\u00e9to shows a beach."


def test_error_replies_and_non_streamed_requests_keep_their_bodies():
    error = json.dumps({"error": {"message": "bad", "code": 400}}).encode()
    app, _ = _app([error[:7], error[7:]], status=400, content_type=b"application/json")
    sent = _call(app, {"model": "m", "messages": [], "stream": True})
    assert sent[0]["status"] == 400 and b"".join(m["body"] for m in sent[1:]) == error
    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "reasoning": "R", "content": "A"}}]}
    app, _ = _app([json.dumps(reply).encode()], content_type=b"application/json")
    sent = _call(app, {"model": "m", "messages": [], "vllm_xargs": {"dyncot_think": "never"}})
    message = json.loads(sent[-1]["body"])["choices"][0]["message"]
    assert message["reasoning_content"] == message["reasoning"] == "R"


# ------------------------------------------------------------------------------------------ routes, keys, bodies
class Client:
    """An ASGI client channel that counts what the middleware reads: ``chunks`` body messages, then the client waits
    (connected) until the test ends."""

    def __init__(self, chunks: list[bytes]):
        self.chunks, self.reads = chunks, 0

    async def receive(self):
        if self.reads < len(self.chunks):
            self.reads += 1
            return {"type": "http.request", "body": self.chunks[self.reads - 1],
                    "more_body": self.reads < len(self.chunks)}
        await asyncio.sleep(3600)


def _scope(path: str, headers=(), root_path: str = "", keys=None, method: str = "POST") -> dict:
    scope = {"type": "http", "method": method, "path": path, "root_path": root_path,
             "headers": [(b"content-type", b"application/json"), *headers]}
    if keys is not None:  # vLLM's parsed arguments, as the middleware finds them on the FastAPI app
        scope["app"] = types.SimpleNamespace(state=types.SimpleNamespace(args=types.SimpleNamespace(api_key=keys)))
    return scope


def _run(middleware, scope, client) -> list[dict]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(middleware(scope, client.receive, send))
    return sent


def _echo_app():
    """An ASGI app standing in for vLLM: it records each request it reads and answers 200 with it."""
    seen: list[dict] = []

    async def app(scope, receive, send):
        message = await receive()
        seen.append({"path": scope["path"], "body": json.loads(message["body"])})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": message["body"], "more_body": False})

    return app, seen


def _error(sent) -> tuple[int, dict]:
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]


def test_routes_are_matched_as_vllms_router_matches_them():
    assert M.route_path({"path": "/p/v1/chat/completions", "root_path": "/p"}) == "/v1/chat/completions"
    assert M.route_path({"path": "/v1/chat/completions", "root_path": "/p"}) == "/v1/chat/completions"
    assert M.route_path({"path": "/pv1/chat/completions", "root_path": "/p"}) == "/pv1/chat/completions"
    assert M.route_kind("POST", "/v1/chat/completions") == "chat"
    assert M.route_kind("POST", "/v1/completions") == "completion"
    for route in M.REFUSED_ROUTES:
        assert M.route_kind("POST", route) == "refuse"
    assert M.route_kind("POST", "/v1/not_a_route") == "refuse"  # unknown POSTs could generate
    for route in ("/tokenize", "/v1/chat/completions/render", "/v1/responses/resp_1/cancel", "/v1/completions/"):
        assert M.route_kind("POST", route) == "pass"
    assert M.route_kind("GET", "/v1/models") == M.route_kind("GET", "/v1/responses/r1") == "pass"


def test_under_root_path_a_chat_goes_through_the_decision_and_other_generating_routes_are_refused_unread():
    app, seen = _echo_app()
    middleware = M.DyncotThinkMiddleware(app)
    body = json.dumps({"model": "m", "messages": [], "chat_template_kwargs": {"enable_thinking": False}}).encode()
    sent = _run(middleware, _scope("/p/v1/chat/completions", root_path="/p"), Client([body]))
    assert sent[0]["status"] == 200 and seen[-1]["body"]["vllm_xargs"] == {"dyncot_think": "never"}
    for route in M.REFUSED_ROUTES:
        client = Client([body])
        status, error = _error(_run(middleware, _scope("/p" + route, root_path="/p"), client))
        assert status == 404 and route in error["message"] and client.reads == 0
    assert len(seen) == 1


def test_without_a_valid_key_the_body_is_not_read():
    async def vllm_auth(scope, receive, send):  # vLLM's own check answers 401 without reading the body
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b'{"error": "Unauthorized"}', "more_body": False})

    middleware = M.DyncotThinkMiddleware(vllm_auth)
    big = [b"x" * 2**20] * 8
    for headers in ([], [(b"authorization", b"Bearer wrong")], [(b"authorization", b"Basic K")]):
        client = Client(big)
        sent = _run(middleware, _scope("/p/v1/chat/completions", headers, "/p", keys=["K"]), client)
        assert sent[0]["status"] == 401 and client.reads == 0
    app, seen = _echo_app()
    client = Client([json.dumps({"messages": []}).encode()])
    sent = _run(M.DyncotThinkMiddleware(app), _scope("/v1/chat/completions", [(b"authorization", b"Bearer K")],
                                                     keys=["K"]), client)
    assert sent[0]["status"] == 200 and client.reads == 1  # the right key: read and decided
    assert hashlib.sha256(b"K").digest() in M.DyncotThinkMiddleware(app)._keys(_scope("/", keys=["K"]))


def test_bodies_over_the_cap_get_413_and_reading_stops(monkeypatch):
    monkeypatch.setenv("DYNCOT_MAX_BODY_MB", "64")
    app, seen = _echo_app()
    middleware = M.DyncotThinkMiddleware(app)
    chunk = b"x" * 2**20
    client = Client([chunk] * 200)  # a 200 MB body streamed in 1 MB messages, no content-length
    status, error = _error(_run(middleware, _scope("/v1/chat/completions"), client))
    assert status == 413 and "64 MB" in error["message"] and client.reads == 65 and not seen
    client = Client([chunk] * 200)  # announced: refused before a byte is read
    status, _ = _error(_run(middleware, _scope("/v1/completions", [(b"content-length", b"209715200")]), client))
    assert status == 413 and client.reads == 0
    parts = [b'{"model": "m", "prompt": "' + b"y" * 4000, *([b"y" * 4096] * 1000), b'"}']  # 4 MB in 1002 pieces
    sent = _run(middleware, _scope("/v1/completions"), Client(parts))
    assert sent[0]["status"] == 200 and seen[-1]["body"]["prompt"] == "y" * (4000 + 4096 * 1000)


@pytest.mark.parametrize("request_, field", [
    ({"vllm_xargs": "never"}, "vllm_xargs"),
    ({"vllm_xargs": ["never"]}, "vllm_xargs"),
    ({"vllm_xargs": {"dyncot_think": "sometimes"}}, "vllm_xargs.dyncot_think"),
    ({"vllm_xargs": {"dyncot_think": ""}}, "vllm_xargs.dyncot_think"),
    ({"vllm_xargs": {"dyncot_think_threshold": -1}}, "vllm_xargs.dyncot_think_threshold"),
    ({"vllm_xargs": {"dyncot_think_threshold": "0.3"}}, "vllm_xargs.dyncot_think_threshold"),
    ({"vllm_xargs": {"dyncot_think_prob": 1.5}}, "vllm_xargs.dyncot_think_prob"),
    ({"vllm_xargs": {"dyncot_think_prob": float("nan")}}, "vllm_xargs.dyncot_think_prob"),
    ({"chat_template_kwargs": "x"}, "chat_template_kwargs"),
    ({"chat_template_kwargs": {"enable_thinking": "false"}}, "chat_template_kwargs.enable_thinking"),
    ({"chat_template_kwargs": {"enable_thinking": 0}}, "chat_template_kwargs.enable_thinking"),
    ({"chat_template_kwargs": {"enable_thinking": None}}, "chat_template_kwargs.enable_thinking"),
    ({"enable_thinking": "false"}, "enable_thinking"),
    ({"enable_thinking": None}, "enable_thinking"),
    ({"enable_thinking": True, "chat_template_kwargs": {"enable_thinking": False}}, "enable_thinking"),
    ({"use_beam_search": True, "vllm_xargs": {"dyncot_think": "never"}}, "use_beam_search"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ({"structured_outputs": {"choice": ["a", "b"]}, "vllm_xargs": {"dyncot_think": "greedy"}}, "structured_outputs"),
    ({"tool_choice": "required", "tools": []}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
])
def test_malformed_or_unhonourable_fields_are_named(request_, field):
    with pytest.raises(FieldError) as caught:
        M.prepare({"model": "m", "messages": [], **request_}, "chat", 3)
    assert caught.value.field == field
    app, seen = _echo_app()  # and over ASGI: a 400 in vLLM's error form, param = the field, nothing forwarded
    status, error = _error(_run(M.DyncotThinkMiddleware(app), _scope("/v1/chat/completions"),
                                Client([json.dumps({"model": "m", "messages": [], **request_}).encode()])))
    assert status == 400 and error["param"] == field and error["message"].startswith(field) and not seen


def test_modes_enable_thinking_spellings_and_when_a_look_ahead_is_needed(monkeypatch):
    monkeypatch.delenv("DYNCOT_THINK_DEFAULT", raising=False)
    chat = {"model": "m", "messages": []}
    out, probe = M.prepare({**chat, "enable_thinking": False}, "chat", 3)
    assert out["chat_template_kwargs"] == {"enable_thinking": False} and "enable_thinking" not in out
    assert out["vllm_xargs"] == {"dyncot_think": "never"} and probe == 0
    out, probe = M.prepare({**chat, "enable_thinking": True, "chat_template_kwargs": {"enable_thinking": True,
                                                                                      "other": 1}}, "chat", 3)
    assert out["chat_template_kwargs"] == {"enable_thinking": True, "other": 1}
    assert out["vllm_xargs"]["dyncot_think"] == "always"
    out, _ = M.prepare({**chat, "chat_template_kwargs": {"enable_thinking": True},
                        "vllm_xargs": {"dyncot_think": "never"}}, "chat", 3)
    assert out["vllm_xargs"]["dyncot_think"] == "never"  # vllm_xargs wins
    completion = {"model": "m", "prompt": "Post"}
    out, probe = M.prepare({**completion, "enable_thinking": False}, "completion", 3)
    assert out["vllm_xargs"]["dyncot_think"] == "never" and "enable_thinking" not in out and probe == 0
    assert M.prepare(completion, "completion", 3)[1] == 3  # auto on a 3-token tag: a 3-token look-ahead
    assert M.prepare(completion, "completion", 1)[1] == 0  # one token: the processor reads the prompt's end
    for field, value in (("logit_bias", {"5": 10}), ("min_tokens", 4), ("bad_words", ["a"]),
                         ("allowed_token_ids", [1, 2])):  # applied before the processor: a 1-token look-ahead
        assert M.prepare({**completion, field: value}, "completion", 1)[1] == 1
    assert M.prepare({**completion, "vllm_xargs": {"dyncot_think_prob": 0.2}}, "completion", 3)[1] == 0
    monkeypatch.setenv("DYNCOT_THINK_DEFAULT", "never")
    assert M.prepare(completion, "completion", 3) == ({**completion, "vllm_xargs": {"dyncot_think": "never"}}, 0)
    monkeypatch.delenv("DYNCOT_THINK_DEFAULT")
    with pytest.raises(FieldError) as caught:  # one probability per request
        M.prepare({**completion, "prompt": ["Post 1", "Post 2"]}, "completion", 3)
    assert caught.value.field == "prompt"
    assert M.prepare({**completion, "prompt": ["Post 1", "Post 2"], "vllm_xargs": {"dyncot_think": "always"}},
                     "completion", 3)[1] == 0
    assert M.prepare({**completion, "prompt": [1, 2, 3]}, "completion", 3)[1] == 3  # one prompt of token ids


def _probe_app(tag_logprobs: list[float], probe_status: int = 200, kind: str = "chat"):
    """vLLM for the look-ahead: a request forcing the tag (``dyncot_think: always`` with ``logprobs``) gets
    ``tag_logprobs`` (or an error); the real request is echoed."""
    seen: list[dict] = []

    async def app(scope, receive, send):
        body = json.loads((await receive())["body"])
        seen.append(body)
        if body["vllm_xargs"]["dyncot_think"] == "always" and body.get("logprobs") is not None:
            if probe_status != 200:
                raw = M.error_body(probe_status, "This model's maximum context length is 32 tokens")
            elif kind == "chat":
                raw = json.dumps({"choices": [{"logprobs": {"content": [{"logprob": v} for v in tag_logprobs]}}]})
            else:
                raw = json.dumps({"choices": [{"logprobs": {"token_logprobs": tag_logprobs}}]})
            raw = raw if isinstance(raw, bytes) else raw.encode()
            await send({"type": "http.response.start", "status": probe_status, "headers": []})
            await send({"type": "http.response.body", "body": raw, "more_body": False})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps({"choices": []}).encode(), "more_body": False})

    return app, seen


def test_the_look_ahead_measures_the_raw_tag_and_its_failure_is_returned(monkeypatch):
    monkeypatch.setenv("DYNCOT_THINK_TAG_LEN", "3")
    request = {"model": "m", "messages": [{"role": "user", "content": "Post"}], "max_tokens": 40, "min_tokens": 5,
               "stop": ["<"], "n": 2, "stream": False, "logprobs": False, "request_id": "r1", "echo": True,
               "include_reasoning": False, "logit_bias": {"7": -100}, "temperature": 0.7, "cache_salt": "s"}
    app, seen = _probe_app([-0.5, -0.25, -0.125])
    sent = _run(M.DyncotThinkMiddleware(app), _scope("/v1/chat/completions"), Client([json.dumps(request).encode()]))
    assert sent[0]["status"] == 200 and len(seen) == 2
    probe, real = seen
    assert probe["max_tokens"] == 3 and probe["logprobs"] is True and probe["n"] == 1 and probe["temperature"] == 0
    for dropped in ("min_tokens", "stop", "request_id", "echo", "include_reasoning", "logit_bias", "stream"):
        assert dropped not in probe, dropped  # would stop or reshape the look-ahead
    assert probe["messages"] == request["messages"] and probe["cache_salt"] == "s"  # the same prompt and cache
    assert math.isclose(real["vllm_xargs"]["dyncot_think_prob"], math.exp(-0.875), rel_tol=1e-12)
    assert real["vllm_xargs"]["dyncot_think"] == "auto" and real["min_tokens"] == 5 and real["n"] == 2
    # completions: token_logprobs; a look-ahead stopped early (no room for the whole tag) measures 0
    app, seen = _probe_app([-0.5], kind="completion")
    _run(M.DyncotThinkMiddleware(app), _scope("/v1/completions"), Client([b'{"model": "m", "prompt": "Post"}']))
    assert seen[0]["logprobs"] == 0 and seen[1]["vllm_xargs"]["dyncot_think_prob"] == 0.0
    # a failed look-ahead: its error, prefixed, and no real request
    app, seen = _probe_app([], probe_status=400)
    status, error = _error(_run(M.DyncotThinkMiddleware(app), _scope("/v1/chat/completions"),
                                Client([json.dumps(request).encode()])))
    assert status == 400 and len(seen) == 1
    assert error["message"].startswith("the think look-ahead (3 tokens") and "maximum context length" in error["message"]


# --------------------------------------------------------------------------- streamed = non-streamed reply split
def test_streamed_reply_parts_add_up_to_the_final_split_whatever_the_cut():
    import random

    from dyncot_plugin.serve.replies import StreamSplit, split_reply

    pieces = ["<think>", "</think>", "<answer>", "</answer>", "<th", "ink>", "</th", "ink", ">", "\n", "\n\n", "x",
              "<", "/", "ans", "wer>", " ", "é"]
    rng = random.Random(0)
    cases = ["<think>R</think><answer>A</answer>", "<th", "<think>R</thi", "<think>R</think><answer>A</ans",
             "<answer>A</answer>\n", "A\n\n", "<think>\n</think>\n<answer>\nA\n</answer>\n", ""]
    cases += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(20000)]
    for text in cases:
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 6)))) if len(text) > 1 else []
        stream, got, before = StreamSplit(), ["", ""], (None, None)
        for a, b in zip([0, *cuts], [*cuts, len(text)]):
            for k, part in enumerate(stream.feed(text[a:b])):
                got[k] += part
            now = split_reply(text[:b], final=False)
            for x, y in zip(before, now):  # what a stream has sent is never taken back
                assert (y or "").startswith(x or ""), (text, text[:b])
            before = now
        for k, part in enumerate(stream.finish()):
            got[k] += part
        reasoning, content = split_reply(text)
        assert got == [reasoning or "", content or ""], text
    assert split_reply("<think>R</think><answer>A</answer>") == ("R", "A")
    assert split_reply("<think>R</thi") == ("R</thi", None) and split_reply("<th") == (None, "<th")
    assert split_reply("\n<answer>A\n</ans") == (None, "A\n</ans")
