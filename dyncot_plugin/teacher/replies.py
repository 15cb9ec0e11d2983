"""What a teacher's reply does to the cache, the same for a reply received online and one read from a batch result.

:func:`record_reply` validates the reply against the sample's gold keyphrases and appends one record: ``done``
(accepted: the CoT), ``attempt`` (rejected, re-asks left: the next request sends it back with the reason) or
``rejected`` (rejected on its last allowed attempt: final). Records carry the sample's gold keyphrases, the model,
the attempt number and the token usage; a batch reply also names where it came from (``batch``), which makes
reading the same result line twice a no-op.
"""

from __future__ import annotations

import time
from typing import Any

from dyncot_plugin.teacher.cache import JsonlCache
from dyncot_plugin.teacher.report import Stats
from dyncot_plugin.teacher.samples import Sample
from dyncot_plugin.teacher.validate import validate_reply


def record(s: Sample, status: str, model: str, **fields: Any) -> dict:
    rec = {
        "id": s.id,
        "status": status,
        "model": model,
        "keyphrases": s.keyphrases,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    rec.update(fields)
    return rec


def close_if_exhausted(cache: JsonlCache, s: Sample, history: list[dict], max_attempts: int, model: str) -> bool:
    """A sample whose earlier run used up its attempts (``--retries`` lowered since, or a run killed after its last
    rejected reply) is recorded as rejected with its last reason, without a request; returns whether it was."""
    if not history or len(history) < max_attempts:
        return False
    last = history[-1]
    cache.append(record(s, "rejected", model, attempt=len(history), reason=last.get("reason", ""),
                        reply=last.get("reply"), usage={"prompt_tokens": 0, "completion_tokens": 0}))
    return True


def record_reply(
    cache: JsonlCache,
    st: Stats,
    s: Sample,
    *,
    model: str,
    match: str,
    attempt: int,
    max_attempts: int,
    text: str | None,
    finish_reason: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    batch: dict[str, Any] | None = None,
) -> str:
    """Validate one reply and append its record; returns ``done``, ``attempt`` or ``rejected``. Counts the reply,
    its tokens and its outcome in ``st`` (``done_new``/``rejected_new``/``retried``)."""
    st.replies += 1
    st.prompt_tokens += prompt_tokens
    st.completion_tokens += completion_tokens
    if attempt > 1:
        st.retried += 1
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    verdict = validate_reply(text, s.keyphrases, match=match, finish_reason=finish_reason)
    common: dict[str, Any] = {
        "attempt": attempt,
        "reply": text,
        "finish_reason": finish_reason,
        "usage": usage,
        "match": match,
    }
    if batch is not None:
        common["batch"] = batch
        st.batch_replies += 1
        st.batch_prompt_tokens += prompt_tokens
        st.batch_completion_tokens += completion_tokens
    if verdict.ok:
        cache.append(record(s, "done", model, cot=verdict.cot, extra_keyphrases=verdict.extra, **common))
        st.done_new += 1
        st.failures.pop(s.id, None)
        return "done"
    if attempt >= max_attempts:
        cache.append(record(s, "rejected", model, reason=verdict.reason, **common))
        st.rejected_new += 1
        st.failures[s.id] = {"id": s.id, "status": "rejected", "attempts": attempt, "reason": verdict.reason}
        return "rejected"
    cache.append(record(s, "attempt", model, reason=verdict.reason, **common))
    return "attempt"
