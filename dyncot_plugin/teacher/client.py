"""Async client for any OpenAI-compatible chat endpoint, with retry, back-off and clear errors.

Transport failures are retried with exponential back-off and jitter (``backoff * 2**k``, capped at
``backoff_max``; a ``Retry-After`` header wins when the server sends one):

- HTTP 429 (rate limit), 408, 409 and 5xx;
- time-outs (no answer within ``timeout`` seconds) and connection errors.

When a sample's retries run out on a connection error or time-out, the endpoint is treated as unreachable and
:class:`EndpointError` stops the whole run (every other sample would fail the same way). HTTP 401/403/404 stop
the run at once (wrong key, no access, wrong URL or model name): retrying cannot help. Any other 4xx (for instance
an image the server refuses) and exhausted 5xx retries fail only that sample (:class:`SampleRequestError`).

The client never logs or returns the API key; error texts pass through :class:`Redactor` in case a server echoes
it back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import openai
from openai.types.chat import ChatCompletion

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}
FATAL_STATUS = {
    401: "the API key was refused (HTTP 401)",
    403: "access denied (HTTP 403)",
    404: "not found (HTTP 404): check --base-url (it usually ends in /v1) and --model",
}


class Redactor:
    """Replaces each secret (the API key) by ``***`` in any text."""

    def __init__(self, *secrets: str | None) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: Any) -> str:
        text = str(text)
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


class RedactingFormatter(logging.Formatter):
    def __init__(self, redact: Redactor, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class TeacherError(RuntimeError):
    """Stops the run: retrying other samples cannot help."""


class EndpointError(TeacherError):
    """The endpoint could not be reached, or did not answer, within the allowed retries."""


class SampleRequestError(RuntimeError):
    """This sample's request failed for good (a 4xx other than 401/403/404, or 5xx after all retries)."""


@dataclass
class Completion:
    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    transport_retries: int = 0


def _retry_after(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _status_detail(err: openai.APIStatusError, redact: Redactor) -> str:
    detail = ""
    try:
        body = err.response.json()
        if isinstance(body, dict):
            detail = body.get("detail") or (body.get("error") or {}).get("message") or ""
            if not isinstance(detail, str):
                detail = str(detail)
    except ValueError:  # not JSON
        detail = (err.response.text or "")[:200]
    return redact(detail.strip())


def is_loopback(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


class TeacherClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        *,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        redact: Redactor | None = None,
        key_hint: str = "the API key",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.redact = redact or Redactor(api_key)
        self.key_hint = key_hint
        self._api_key = api_key or "EMPTY"
        # Every request sent, answered or not: chat requests (first tries, re-sends after 429/5xx/time-outs) and
        # the endpoint probe, counted apart. The summary and the cost report these, not only the answered ones.
        self.chat_requests = 0
        self.transport_retries = 0
        self.probe_requests = 0
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key,
            timeout=timeout,
            max_retries=0,  # retries are ours: the back-off policy and the error classes above
        )

    async def aclose(self) -> None:
        await self._client.close()

    def _delay(self, attempt: int, err: Exception | None) -> float:
        hinted = _retry_after(err) if err is not None else None
        if hinted is not None and hinted >= 0:
            return min(hinted, max(self.backoff_max, 1.0) * 2)
        base = min(self.backoff_max, self.backoff * (2**attempt))
        return base / 2 + random.uniform(0, base / 2)

    async def probe(self) -> None:
        """One cheap ``GET {base_url}/models`` (one try) to fail fast with a clear message when the endpoint is
        unreachable or the key is refused. Any other HTTP answer (even 404: some servers have no /models) counts
        as reachable."""
        self.probe_requests += 1
        try:
            await self._client.models.list()
        except openai.APITimeoutError:
            raise EndpointError(
                f"the teacher endpoint {self.base_url} did not answer within {self.timeout:g}s"
            ) from None
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise EndpointError(
                f"cannot reach the teacher endpoint {self.base_url}: {self.redact(cause) or type(cause).__name__}"
            ) from None
        except openai.AuthenticationError:
            raise TeacherError(f"{self.base_url}: {FATAL_STATUS[401]}; check {self.key_hint}") from None
        except openai.APIError:
            pass  # reachable; /models may be missing or restricted

    async def complete(self, body: dict[str, Any]) -> Completion:
        """POST ``body`` to ``{base_url}/chat/completions`` as it is (the JSON the batch path writes for the same
        request: :func:`~dyncot_plugin.teacher.request_body.build_request_body`), with the retry policy above."""
        retries = 0
        last: Exception | None = None
        while True:
            self.chat_requests += 1
            try:
                resp = await self._client.post("/chat/completions", body=body, cast_to=ChatCompletion)
                choice = resp.choices[0] if resp.choices else None
                usage = resp.usage
                return Completion(
                    text=(choice.message.content if choice is not None else None),
                    finish_reason=(choice.finish_reason if choice is not None else None),
                    prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                    completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                    transport_retries=retries,
                )
            except openai.APIStatusError as err:
                code = err.status_code
                detail = _status_detail(err, self.redact)
                if code in FATAL_STATUS:
                    hint = f"; check {self.key_hint}" if code == 401 else ""
                    raise TeacherError(
                        f"{self.base_url}: {FATAL_STATUS[code]}" + (f": {detail}" if detail else "") + hint
                    ) from None
                if code not in RETRYABLE_STATUS and code < 500:
                    raise SampleRequestError(f"HTTP {code}" + (f": {detail}" if detail else "")) from None
                last = err
                what = f"HTTP {code}" + (f" ({detail[:120]})" if detail else "")
            except openai.APITimeoutError as err:
                last = err
                what = f"no answer within {self.timeout:g}s"
            except openai.APIConnectionError as err:
                last = err
                cause = err.__cause__ or err
                what = f"connection error ({self.redact(cause) or type(cause).__name__})"
            if retries >= self.max_retries:
                if isinstance(last, openai.APIStatusError):
                    raise SampleRequestError(f"{what}, after {retries + 1} tries") from None
                raise EndpointError(
                    f"the teacher endpoint {self.base_url} failed {retries + 1} tries in a row: {what}"
                ) from None
            delay = self._delay(retries, last)
            logger.info("teacher request failed (%s); retry %d/%d in %.1fs", what, retries + 1, self.max_retries, delay)
            retries += 1
            self.transport_retries += 1
            await asyncio.sleep(delay)
