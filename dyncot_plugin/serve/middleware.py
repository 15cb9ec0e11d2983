"""ASGI middleware of the OpenAI-compatible vLLM server (``--middleware``, vLLM's own extension point): the
per-request think control, on every route vLLM serves.

* **Routes** (:func:`route_kind`). ``POST /v1/chat/completions`` and ``POST /v1/completions`` go through the think
  decision (below). The other routes that generate (:data:`REFUSED_ROUTES`: the Responses and Anthropic Messages
  APIs, batch chat, token-in/token-out generate, SageMaker's ``/invocations``, generative scoring, structured
  decisions) are refused with HTTP 404 naming the route, without reading the body: their requests carry no
  ``vllm_xargs`` and no look-ahead, so no mode could be honoured. Non-generating routes (:data:`PASSED_ROUTES`:
  tokenize, render, LoRA loading, health, metrics ...) and every GET pass untouched; any other POST is refused
  like a generating one (a route this table does not know could generate). Paths are matched as vLLM's router
  matches them (``--root-path`` removed, as Starlette's ``get_route_path`` does).
* **API key and body size.** With ``--api-key`` (or ``VLLM_API_KEY``), a request on vLLM's guarded paths without a
  valid ``Authorization: Bearer`` key is handed to vLLM untouched, body unread (vLLM answers 401); the key check
  mirrors vLLM's ``AuthenticationMiddleware`` with the keys of vLLM's own parsed arguments. A body is read as a list
  of chunks and joined once, up to ``dyncot-serve --max-body-mb`` (default 64): a larger ``content-length`` or a
  stream past the cap is answered 413 and no further byte is read.
* **Mode.** ``vllm_xargs.dyncot_think`` wins; else ``enable_thinking`` (in ``chat_template_kwargs``, or top-level:
  the spelling some OpenAI-compatible servers use, copied into ``chat_template_kwargs`` so the chat template sees
  it too) false / true means ``never`` / ``always``; else the server's default (``dyncot-serve --think``, default
  ``auto``). Malformed fields get HTTP 400 naming them (``vllm_xargs``, ``chat_template_kwargs``,
  ``enable_thinking`` that is not a boolean, a mode, threshold or probability out of range); so do requests the
  decision cannot honour: ``use_beam_search`` (vLLM runs beam search as one-token requests without ``vllm_xargs``)
  and structured outputs (``response_format`` json_object / json_schema / structural_tag, ``structured_outputs``,
  ``tool_choice`` required or a named tool: their grammar mask applies before the decision). The mode reaches
  :class:`~dyncot_plugin.serve.logits.DyncotThinkLogitsProcessor` as ``vllm_xargs``.
* **Look-ahead.** ``auto`` on a multi-token tag (``<think>`` is ``<th`` ``ink`` ``>`` on Qwen2/2.5) needs P(whole
  tag | prompt) before the first token is chosen, which a logits processor cannot compute. The middleware first
  sends the same request with the tag forced for ``len(tag)`` tokens and ``logprobs`` on (vLLM returns raw logprobs:
  the model's own), without the fields that change generation only (stop conditions, ``min_tokens``, masks and
  biases, ``n``, ``echo`` ...), sums them, and passes the probability as ``dyncot_think_prob``. A look-ahead that
  fails returns its error to the client (its message prefixed). A one-token tag needs no look-ahead (the processor
  reads the logits at the prompt's end) unless the request masks or biases them (``logit_bias``, ``min_tokens``,
  ``bad_words``, ``allowed_token_ids`` apply before the processor): then a one-token look-ahead measures the raw
  probability. ``/v1/completions`` with several prompts and a look-ahead is refused (one probability per request).
  Cost per request: ``len(tag)`` decode steps; prefix caching serves the real request's prompt from the look-ahead's
  KV (only the last partial block is prefilled again).
* **LoRA adapters.** A request naming an adapter (``model: dyn`` of ``--lora-modules dyn=PATH``) runs the look-ahead
  on that adapter (the look-ahead is the same request) and, without its own ``dyncot_think_threshold``, gets the
  adapter's saved threshold (:func:`~dyncot_plugin.serve.adapters.adapter_xargs`).
* **reasoning_content.** vLLM 0.32 names the parsed rationale ``reasoning``; chat replies also get it as
  ``reasoning_content`` (the name most OpenAI-compatible reasoning servers use): a non-streamed reply in its
  ``message``, a streamed one in every delta that has ``reasoning`` (:class:`ReasoningContentStream`: the SSE
  stream is rewritten event by event, an event split across ASGI body messages is buffered up to its blank line,
  ``data: [DONE]`` and anything that is not a JSON object pass unchanged, headers are kept: a stream has no
  content-length). Only ``200 text/event-stream`` responses are rewritten; an error reply to a streamed request
  passes as vLLM wrote it.

Imports nothing from vLLM (``tests/test_serve_middleware.py`` runs it on a plain ASGI app).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from typing import Any

from dyncot_plugin.serve.adapters import adapter_xargs
from dyncot_plugin.serve.fields import DEFAULT_MAX_BODY_MB, MAX_BODY_ENV, MODE_KEY, PROB_KEY, TAG_LEN_ENV, THRESHOLD_KEY, \
    FieldError, default_mode, request_settings

CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"
DECIDED_ROUTES = {CHAT_PATH: "chat", COMPLETIONS_PATH: "completion"}
"""Routes whose requests go through the think decision."""
REFUSED_ROUTES = {
    "/v1/chat/completions/batch": "batch chat completions",
    "/v1/responses": "the Responses API",
    "/v1/messages": "the Anthropic Messages API",
    "/inference/v1/generate": "token-in/token-out generation",
    "/invocations": "SageMaker invocations",
    "/generative_scoring": "generative scoring",
    "/v1/systemone": "structured decisions",
}
"""vLLM 0.32's other generating routes (POST): refused by name."""
PASSED_ROUTES = frozenset({
    "/tokenize", "/detokenize", "/ping", "/v1/messages/count_tokens",
    "/v1/chat/completions/render", "/v1/completions/render", "/v1/messages/render", "/v1/responses/render",
    "/v1/chat/completions/derender", "/v1/completions/derender",
    "/inference/v1/abort_requests", "/abort_requests", "/scale_elastic_ep", "/is_scaling_elastic_ep",
    "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/adapters",
    # VLLM_SERVER_DEV_MODE and RL routes: caches, sleep, weights
    "/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache", "/collective_rpc", "/sleep", "/wake_up",
    "/release_kv_cache_memory", "/pause", "/resume", "/init_weight_transfer_engine",
    "/shutdown_weight_transfer_engine", "/start_weight_update", "/start_draft_weight_update", "/update_weights",
    "/finish_weight_update", "/update_weight_version", "/weight_checker",
})
"""vLLM 0.32's POST routes that generate nothing: passed untouched."""
GUARDED_PREFIX = ("/v1", "/v2", "/inference", "/cohere")  # vLLM's AuthenticationMiddleware guards these paths

STRUCTURED_FORMATS = ("json_object", "json_schema", "structural_tag")
LOGIT_FIELDS = ("logit_bias", "min_tokens", "bad_words", "allowed_token_ids")  # applied before the processor
PROBE_DROPS = ("stream", "stream_options", "n", "best_of", "max_tokens", "max_completion_tokens", "min_tokens",
               "logprobs", "top_logprobs", "prompt_logprobs", "logprob_token_ids", "echo", "stop", "stop_token_ids",
               "include_stop_str_in_output", "ignore_eos", "bad_words", "allowed_token_ids", "logit_bias",
               "request_id", "include_reasoning", "return_token_ids", "return_tokens_as_token_ids",
               "repetition_detection", "seed", "suffix", "thinking_token_budget", "kv_transfer_params",
               "use_beam_search", "length_penalty", "presence_penalty", "frequency_penalty", "repetition_penalty",
               "temperature", "top_p", "top_k", "min_p")
"""Fields the look-ahead leaves out: they change how tokens are chosen or returned, not the prompt."""


def route_path(scope: dict) -> str:
    """The path vLLM's router matches: ``--root-path`` removed where the path starts with it (Starlette's
    ``get_route_path``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and (path == root or path[len(root)] == "/"):
        return path[len(root):]
    return path


def route_kind(method: str, path: str) -> str:
    """``chat`` / ``completion`` (through the decision), ``pass`` or ``refuse`` for a request's method and route."""
    if method != "POST":
        return "pass"
    if path in DECIDED_ROUTES:
        return DECIDED_ROUTES[path]
    if path in PASSED_ROUTES or (path.startswith("/v1/responses/") and path.endswith("/cancel")):
        return "pass"
    if path.endswith("/") and path.rstrip("/") in set(DECIDED_ROUTES) | PASSED_ROUTES:
        return "pass"  # vLLM redirects it to the route without the slash, which comes back here
    return "refuse"


def _is_structured(request: dict[str, Any]) -> str | None:
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in STRUCTURED_FORMATS:
        return "response_format"
    if request.get("structured_outputs") is not None:
        return "structured_outputs"
    choice = request.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        return "tool_choice"
    return None


def _several_prompts(request: dict[str, Any]) -> bool:
    prompt = request.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        return True
    embeds = request.get("prompt_embeds")
    return isinstance(embeds, list) and len(embeds) > 1


def prepare(request: dict[str, Any], kind: str, tag_len: int) -> tuple[dict[str, Any], int]:
    """The request to forward (its mode in ``vllm_xargs``; for chats a top-level ``enable_thinking`` moved into
    ``chat_template_kwargs``) and the look-ahead's length in tokens (0: none), or a :class:`FieldError` naming the
    field."""
    request = dict(request)
    top_given = "enable_thinking" in request
    top = request.pop("enable_thinking", None)
    if top_given and not isinstance(top, bool):
        raise FieldError("enable_thinking", f"got {json.dumps(top)[:80]}; expected true or false")
    kwargs = request.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise FieldError("chat_template_kwargs", f"got {json.dumps(kwargs)[:80]}; expected an object such as "
                         '{"enable_thinking": false}')
    kwargs = dict(kwargs or {})
    if "enable_thinking" in kwargs:
        if not isinstance(kwargs["enable_thinking"], bool):
            raise FieldError("chat_template_kwargs.enable_thinking",
                             f"got {json.dumps(kwargs['enable_thinking'])[:80]}; expected true or false")
        if top_given and kwargs["enable_thinking"] != top:
            raise FieldError("enable_thinking", "differs from chat_template_kwargs.enable_thinking; give one")
    enable = kwargs.get("enable_thinking", top)
    if kind == "chat" and top_given:  # the chat template sees it too, as it sees chat_template_kwargs
        request["chat_template_kwargs"] = {**kwargs, "enable_thinking": top}
    xargs = request.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        request_settings(xargs, 0.5)  # raises the FieldError naming vllm_xargs
    xargs = dict(xargs or {})
    if MODE_KEY not in xargs:
        xargs[MODE_KEY] = "always" if enable is True else "never" if enable is False else default_mode()
    if THRESHOLD_KEY not in xargs:  # a request naming a served LoRA adapter: that adapter's saved threshold
        xargs.update(adapter_xargs(request.get("model")))
    mode, _, prob = request_settings(xargs, 0.5)
    if request.get("use_beam_search"):
        raise FieldError("use_beam_search", "beam search cannot honour dyncot_think (vLLM runs it as one-token "
                         "requests without vllm_xargs); sample instead")
    structured = _is_structured(request)
    if structured:
        raise FieldError(structured, "structured outputs are not supported with dyncot_think (their grammar mask "
                         "applies before the think decision, and the reasoning parser never hands the reply over to "
                         "the grammar)")
    probe = 0
    if mode == "auto" and prob is None:
        if tag_len > 1:
            probe = tag_len
        elif any(request.get(k) for k in LOGIT_FIELDS):
            probe = 1
    if probe and kind == "completion" and _several_prompts(request):
        raise FieldError("prompt", "several prompts in one request: dyncot_think=auto measures one think "
                         "probability per request; send one prompt per request (or choose always / never)")
    request["vllm_xargs"] = xargs
    return request, probe


def probe_request(request: dict[str, Any], kind: str, tokens: int) -> dict[str, Any]:
    """The look-ahead: the same prompt, the tag forced for ``tokens`` tokens, greedy, one choice, raw logprobs."""
    probe = {k: v for k, v in request.items() if k not in PROBE_DROPS}
    xargs = {k: v for k, v in (request.get("vllm_xargs") or {}).items() if k != PROB_KEY}
    probe.update({"max_tokens": tokens, "temperature": 0.0, "n": 1, "vllm_xargs": {**xargs, MODE_KEY: "always"}})
    probe["logprobs"] = True if kind == "chat" else 0
    return probe


def probe_logprobs(reply: Any, kind: str) -> list[float]:
    """The tag's raw logprobs in a look-ahead's reply (a ValueError if the reply has none)."""
    try:
        logprobs = reply["choices"][0]["logprobs"]
        values = [item["logprob"] for item in logprobs["content"]] if kind == "chat" else logprobs["token_logprobs"]
        return [float(v) for v in values]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ValueError(f"no logprobs in the look-ahead's reply ({type(e).__name__}: {e})") from None


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """An error in vLLM's (OpenAI's) form."""
    kinds = {400: "BadRequestError", 404: "NotFoundError", 413: "RequestEntityTooLarge"}
    return json.dumps({"error": {"message": message, "type": kinds.get(status, "InternalServerError"),
                                 "param": param, "code": status}}).encode()


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


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class DyncotThinkMiddleware:
    """See the module docstring."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.tag_len = int(os.environ.get(TAG_LEN_ENV, "1"))
        self.max_body = int(float(os.environ.get(MAX_BODY_ENV) or DEFAULT_MAX_BODY_MB) * 2**20)
        self._key_hashes: list[bytes] | None = None

    # ------------------------------------------------------------------------------------------------- checks
    def _keys(self, scope: dict) -> list[bytes]:
        """sha256 of the API keys vLLM checks: its parsed ``--api-key`` list, else ``VLLM_API_KEY``."""
        if self._key_hashes is None:
            args = getattr(getattr(scope.get("app"), "state", None), "args", None)
            keys = getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY")]
            self._key_hashes = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys if k]
        return self._key_hashes

    def _authorized(self, scope: dict) -> bool:
        """vLLM's own rule (``AuthenticationMiddleware``): guarded paths need ``Authorization: Bearer <key>``."""
        keys = self._keys(scope)
        if not keys:
            return True
        url_path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if not url_path.startswith(GUARDED_PREFIX):
            return True
        value = next((v for k, v in scope.get("headers", []) if k.lower() == b"authorization"), b"")
        scheme, _, param = value.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(param.encode("utf-8")).digest()
        match = False
        for key in keys:
            match |= secrets.compare_digest(digest, key)
        return match

    async def _read_body(self, scope: dict, receive: Any) -> bytes:
        """The body, read in chunks and joined once; :class:`_TooLarge` past the cap (nothing more is read)."""
        for k, v in scope.get("headers", []):
            if k.lower() == b"content-length":
                try:
                    if int(v) > self.max_body:
                        raise _TooLarge
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message.get("type") == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    # ------------------------------------------------------------------------------------------------ serving
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        kind = route_kind(scope.get("method", ""), path)
        if kind == "pass" or not self._authorized(scope):
            return await self.app(scope, receive, send)  # vLLM answers an unauthorized request (401), body unread
        if kind == "refuse":
            what = REFUSED_ROUTES.get(path, "a route dyncot-serve does not know")
            return await self._error(send, 404, f"dyncot-serve: POST {path} ({what}) is not served for a dyncot "
                                     "model: the think decision (dyncot_think) is applied on /v1/chat/completions "
                                     "and /v1/completions only; use one of those")
        try:
            body = await self._read_body(scope, receive)
        except _TooLarge:
            return await self._error(send, 413, f"request body over {self.max_body / 2**20:g} MB "
                                     "(dyncot-serve --max-body-mb)")
        except _Disconnected:
            return None
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict):  # vLLM answers it with its own 400
            scope2, receive2 = _with_body(scope, body, receive)
            return await self.app(scope2, receive2, send)
        try:
            request, probe = prepare(request, kind, self.tag_len)
        except FieldError as e:
            return await self._error(send, 400, str(e), e.field)
        if probe:
            measured = await self._probe(scope, receive, request, kind, probe)
            if not isinstance(measured, float):
                status, raw = measured
                return await self._send(send, status, raw)
            request["vllm_xargs"][PROB_KEY] = measured
        scope2, receive2 = _with_body(scope, json.dumps(request).encode(), receive)
        if kind != "chat":
            return await self.app(scope2, receive2, send)
        if request.get("stream"):
            stream = ReasoningContentStream(send)
            await self.app(scope2, receive2, stream)
            return await stream.flush()
        start, raw = await self._call(scope2, receive2)
        await self._send_json(send, start, raw)

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

    async def _error(self, send: Any, status: int, message: str, param: str | None = None) -> None:
        await self._send(send, status, error_body(status, message, param))

    @staticmethod
    async def _send(send: Any, status: int, raw: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": raw, "more_body": False})

    async def _send_json(self, send: Any, start: dict, raw: bytes) -> None:
        if start.get("status") == 200:
            try:
                reply = json.loads(raw)
                for choice in reply.get("choices", []):
                    message = choice.get("message") or {}
                    if "reasoning" in message and "reasoning_content" not in message:
                        message["reasoning_content"] = message["reasoning"]
                raw = json.dumps(reply).encode()
            except (ValueError, AttributeError, TypeError):
                pass
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await send({"type": "http.response.start", "status": start.get("status", 500), "headers": headers})
        await send({"type": "http.response.body", "body": raw, "more_body": False})

    async def _probe(self, scope: dict, receive: Any, request: dict, kind: str, tokens: int) -> float | tuple:
        """P(whole tag | prompt) from the look-ahead (vLLM's raw logprobs of the forced tag), or (status, body) of
        the error to return: the look-ahead's own error, its message prefixed."""
        scope2, receive2 = _with_body(scope, json.dumps(probe_request(request, kind, tokens)).encode(), receive)
        start, raw = await self._call(scope2, receive2)
        status = start.get("status", 500)
        what = f"the think look-ahead ({tokens} token{'s' if tokens > 1 else ''} of <think> after the prompt)"
        if status != 200:
            try:
                reply = json.loads(raw)
                reply["error"]["message"] = f"{what} failed: {reply['error']['message']}"
                raw = json.dumps(reply).encode()
            except (ValueError, KeyError, TypeError):
                pass
            return status, raw
        try:
            values = probe_logprobs(json.loads(raw), kind)
        except ValueError as e:
            return 500, error_body(500, f"{what}: {e}")
        if len(values) < tokens:
            # vLLM stopped the look-ahead early: the prompt leaves no room for the whole tag, which then cannot be
            # generated either; its probability within the room left is 0
            return 0.0
        return math.exp(sum(values[:tokens]))


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


__all__ = ["DECIDED_ROUTES", "DyncotThinkMiddleware", "PASSED_ROUTES", "REFUSED_ROUTES", "ReasoningContentStream",
           "prepare", "probe_request", "route_kind", "route_path"]
