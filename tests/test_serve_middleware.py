"""The server middleware's stream rewriting (``reasoning_content`` in streamed deltas), on a plain ASGI app with
asyncio: no vLLM, fast. The real server's streamed replies are checked in ``tests/test_serve_vllm.py``."""

from __future__ import annotations

import asyncio
import json

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
