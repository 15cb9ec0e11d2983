"""ASGI middleware of the OpenAI-compatible vLLM server (``--middleware``, vLLM's own extension point): the
per-request think control of ``/v1/chat/completions``.

* **Mode.** ``vllm_xargs.dyncot_think`` wins; else ``chat_template_kwargs.enable_thinking`` false / true means
  ``never`` / ``always``; else the server's default (``dyncot-serve --think``, default ``auto``). The mode reaches
  :class:`~dyncot_plugin.serve.logits.DyncotThinkLogitsProcessor` as ``vllm_xargs``.
* **Look-ahead.** ``auto`` on a multi-token tag (``<think>`` is ``<th`` ``ink`` ``>`` on Qwen2/2.5) needs P(whole
  tag | prompt) before the first token is chosen, which a logits processor cannot compute. The middleware first
  sends the same request with the tag forced for ``len(tag)`` tokens and ``logprobs`` on (vLLM returns raw logprobs:
  the model's own), sums them, and passes the probability as ``dyncot_think_prob``. Cost per request: ``len(tag)``
  decode steps; prefix caching serves the real request's prompt from the probe's KV (only the last partial block
  is prefilled again). A one-token tag (Qwen3) needs no probe: the processor reads the first step's logits.
* **LoRA adapters.** A request naming an adapter (``model: dyn`` of ``--lora-modules dyn=PATH``) runs the look-ahead
  on that adapter (the probe is the same request) and, without its own ``dyncot_think_threshold``, gets the
  adapter's saved threshold (:func:`~dyncot_plugin.serve.adapters.adapter_xargs`).
* **reasoning_content.** vLLM 0.32 names the parsed rationale ``reasoning``; replies also get it as
  ``reasoning_content`` (the name most OpenAI-compatible reasoning servers use): a non-streamed reply in its
  ``message``, a streamed one in every delta that has ``reasoning`` (:class:`ReasoningContentStream`: the SSE
  stream is rewritten event by event, an event split across ASGI body messages is buffered up to its blank line,
  ``data: [DONE]`` and anything that is not a JSON object pass unchanged, headers are kept: a stream has no
  content-length). Only ``200 text/event-stream`` responses are rewritten; an error reply to a streamed request
  passes as vLLM wrote it.

Imports nothing from vLLM (``tests/test_serve_middleware.py`` runs it on a plain ASGI app).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from dyncot_plugin.serve.adapters import adapter_xargs
from dyncot_plugin.serve.fields import DEFAULT_MODE_ENV, MODE_KEY, PROB_KEY, TAG_LEN_ENV, THRESHOLD_KEY

CHAT_PATH = "/v1/chat/completions"


def think_mode(request: dict[str, Any]) -> str:
    xargs = request.get("vllm_xargs") or {}
    if xargs.get(MODE_KEY):
        return str(xargs[MODE_KEY])
    enable = (request.get("chat_template_kwargs") or {}).get("enable_thinking")
    if enable is True:
        return "always"
    if enable is False:
        return "never"
    return os.environ.get(DEFAULT_MODE_ENV) or "auto"


async def _read_body(receive: Any) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def _with_body(scope: dict, body: bytes, client_receive: Any) -> tuple[dict, Any]:
    """The request with a new body; after it, ``receive`` waits on the client's own channel (vLLM's handlers listen
    for a disconnect while they run: answering one at once would cancel them)."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await client_receive()

    return {**scope, "headers": headers}, receive


class DyncotThinkMiddleware:
    """See the module docstring."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.tag_len = int(os.environ.get(TAG_LEN_ENV, "1"))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") != CHAT_PATH:
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        try:
            request = json.loads(body)
            assert isinstance(request, dict)
        except (ValueError, AssertionError):
            scope2, receive2 = _with_body(scope, body, receive)
            return await self.app(scope2, receive2, send)
        mode = think_mode(request)
        xargs = dict(request.get("vllm_xargs") or {})
        xargs[MODE_KEY] = mode
        if THRESHOLD_KEY not in xargs:  # a request naming a served LoRA adapter: that adapter's saved threshold
            xargs.update(adapter_xargs(request.get("model")))
        if mode == "auto" and self.tag_len > 1 and PROB_KEY not in xargs:
            prob = await self._probe(scope, request, receive)
            if prob is not None:
                xargs[PROB_KEY] = prob
        request["vllm_xargs"] = xargs
        scope2, receive2 = _with_body(scope, json.dumps(request).encode(), receive)
        if request.get("stream"):
            stream = ReasoningContentStream(send)
            await self.app(scope2, receive2, stream)
            return await stream.flush()
        status, raw = await self._call(scope2, receive2)
        await self._send_json(send, status, raw)

    async def _call(self, scope: dict, receive: Any) -> tuple[dict, bytes]:
        start: dict = {}
        chunks: list[bytes] = []

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return start, b"".join(chunks)

    async def _send_json(self, send: Any, start: dict, raw: bytes) -> None:
        if start.get("status") == 200:
            try:
                reply = json.loads(raw)
                for choice in reply.get("choices", []):
                    message = choice.get("message") or {}
                    if "reasoning" in message and "reasoning_content" not in message:
                        message["reasoning_content"] = message["reasoning"]
                raw = json.dumps(reply).encode()
            except ValueError:
                pass
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await send({"type": "http.response.start", "status": start.get("status", 500), "headers": headers})
        await send({"type": "http.response.body", "body": raw, "more_body": False})

    async def _probe(self, scope: dict, request: dict, receive: Any) -> float | None:
        """P(whole tag | prompt) from the same request with the tag forced and vLLM's raw logprobs."""
        probe = {k: v for k, v in request.items() if k not in ("stream", "stream_options", "n", "max_tokens",
                                                                "max_completion_tokens", "top_logprobs")}
        probe.update({"max_tokens": self.tag_len, "logprobs": True, "n": 1, "temperature": 0.0,
                      "vllm_xargs": {**(request.get("vllm_xargs") or {}), MODE_KEY: "always"}})
        scope2, receive2 = _with_body(scope, json.dumps(probe).encode(), receive)
        start, raw = await self._call(scope2, receive2)
        if start.get("status") != 200:
            return None  # the real request then fails with vLLM's own error for the same input
        content = json.loads(raw)["choices"][0]["logprobs"]["content"][: self.tag_len]
        return math.exp(sum(item["logprob"] for item in content))


def _add_reasoning_content(event: bytes) -> bytes:
    """One SSE event (its lines, without the blank line ending it) with ``reasoning_content`` beside ``reasoning``
    in every choice's delta; unchanged when it has no such delta or its data is not a JSON object."""
    lines = event.split(b"\n")
    changed = False
    for k, line in enumerate(lines):
        if not line.startswith(b"data:"):
            continue
        head = b"data: " if line.startswith(b"data: ") else b"data:"
        try:
            chunk = json.loads(line[len(head):])
        except ValueError:  # [DONE], or not JSON
            continue
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            continue
        touched = False
        for choice in chunk["choices"]:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and "reasoning" in delta and "reasoning_content" not in delta:
                delta["reasoning_content"] = delta["reasoning"]
                touched = True
        if touched:
            lines[k] = head + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode()
            changed = True
    return b"\n".join(lines) if changed else event


class ReasoningContentStream:
    """An ASGI ``send`` that adds ``reasoning_content`` to a streamed chat completion's deltas (see the module
    docstring). Body bytes are passed on up to the last complete event (``\\n\\n``, as vLLM ends each); the rest
    waits for the next body message, or for the last one (``more_body`` false), which flushes everything."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.sse = False
        self.buffer = b""

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = {k.lower(): v for k, v in message.get("headers", [])}
            self.sse = message.get("status") == 200 and headers.get(b"content-type", b"").startswith(
                b"text/event-stream")
            return await self.send(message)
        if message["type"] != "http.response.body" or not self.sse:
            return await self.send(message)
        self.buffer += message.get("body", b"")
        more = message.get("more_body", False)
        if more:
            cut = self.buffer.rfind(b"\n\n")
            if cut < 0:
                return  # no complete event yet
            ready, self.buffer = self.buffer[: cut + 2], self.buffer[cut + 2:]
        else:
            ready, self.buffer = self.buffer, b""
        events = ready.split(b"\n\n")  # the last piece: b"" after a final blank line, else an unterminated event
        body = b"\n\n".join(_add_reasoning_content(e) if e else e for e in events)
        await self.send({**message, "body": body, "more_body": more})

    async def flush(self) -> None:
        """What an app that ended without a final ``more_body: false`` message left in the buffer."""
        if self.buffer:
            body, self.buffer = _add_reasoning_content(self.buffer), b""
            await self.send({"type": "http.response.body", "body": body, "more_body": False})


__all__ = ["DyncotThinkMiddleware", "ReasoningContentStream", "think_mode"]
