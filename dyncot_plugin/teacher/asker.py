"""The online asker: one chat request per sample at a time, ``--concurrency`` samples in flight, each driven to a
final state (or a request error) with re-asks that send the rejected reply back with the reason.

Every reply goes into the cache (:func:`~dyncot_plugin.teacher.replies.record_reply`) before the next request, so
``kill -9`` loses at most the requests in flight. The request body is
:func:`~dyncot_plugin.teacher.request_body.build_request_body`'s, the one the batch path writes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading

from dyncot_plugin.io.datasets import row_label
from dyncot_plugin.teacher.cache import JsonlCache, SampleState
from dyncot_plugin.teacher.client import Redactor, SampleRequestError, TeacherClient, TeacherError
from dyncot_plugin.teacher.prompts import PromptSet
from dyncot_plugin.teacher.replies import close_if_exhausted, record, record_reply
from dyncot_plugin.teacher.report import Stats
from dyncot_plugin.teacher.request_body import build_request_body, request_params
from dyncot_plugin.teacher.samples import Sample


class OnlineAsker:
    def __init__(self, args: argparse.Namespace, redact: Redactor, api_key: str | None, prompts: PromptSet,
                 cache: JsonlCache, stats: Stats) -> None:
        self.args = args
        self.redact = redact
        self.api_key = api_key
        self.prompts = prompts
        self.cache = cache
        self.stats = stats
        self.params = request_params(args)
        self.client: TeacherClient | None = None
        self._consecutive_errors = 0
        self._bar = None

    def _error(self, s: Sample, attempt: int, reason: str) -> str:
        self.cache.append(record(s, "error", self.args.model, attempt=attempt, reason=reason))
        self.stats.failures[s.id] = {"id": s.id, "status": "error", "reason": reason}
        return "error"

    async def ask(self, s: Sample, state: SampleState | None) -> str:
        """Drive one sample to a final state (or an error); returns ``done``, ``rejected`` or ``error``."""
        assert self.client is not None
        a = self.args
        max_attempts = 1 + a.retries
        history = list(state.attempts) if state is not None else []
        if close_if_exhausted(self.cache, s, history, max_attempts, a.model):
            self.stats.rejected_new += 1
            self.stats.failures[s.id] = {"id": s.id, "status": "rejected", "attempts": len(history),
                                         "reason": history[-1].get("reason", "")}
            return "rejected"
        while True:
            attempt = len(history) + 1
            try:
                body = build_request_body(s, history, model=a.model, prompts=self.prompts, params=self.params)
            except OSError as err:  # the image went away (or became unreadable) after the check
                return self._error(s, attempt, f"{a.dataset}: {row_label({'id': s.id}, s.index)}: cannot read its "
                                               f"image: {err}")
            try:
                comp = await self.client.complete(body)
            except SampleRequestError as err:
                return self._error(s, attempt, self.redact(err))
            except TeacherError as err:
                self.cache.append(record(s, "error", a.model, attempt=attempt, reason=self.redact(err)))
                raise
            outcome = record_reply(
                self.cache, self.stats, s, model=a.model, match=a.match, attempt=attempt, max_attempts=max_attempts,
                text=comp.text, finish_reason=comp.finish_reason, prompt_tokens=comp.prompt_tokens,
                completion_tokens=comp.completion_tokens,
            )
            if outcome != "attempt":
                return outcome
            history.append(self.cache.states[s.id].attempts[-1])

    async def _one(self, s: Sample, state: SampleState | None) -> None:
        outcome = await self.ask(s, state)
        st = self.stats
        if outcome in ("done", "rejected"):
            self._consecutive_errors = 0
        else:
            st.failed += 1
            self._consecutive_errors += 1
            limit = self.args.max_consecutive_errors
            if limit and self._consecutive_errors >= limit:
                raise TeacherError(
                    f"{self._consecutive_errors} samples in a row failed with request errors "
                    f"(last: {st.failures[s.id]['reason']}); stopping"
                )
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(
                done=st.done_new,
                rejected=st.rejected_new,
                failed=st.failed,
                tokens=st.prompt_tokens + st.completion_tokens,
                refresh=False,
            )

    async def ask_all(self, pending: list[Sample]) -> None:
        a = self.args
        self.client = TeacherClient(
            a.base_url,
            self.api_key,
            a.model,
            timeout=a.timeout,
            max_retries=a.max_retries,
            backoff=a.backoff,
            backoff_max=a.backoff_max,
            redact=self.redact,
            key_hint=f"${a.api_key_env}",
        )
        try:
            await self.client.probe()
            queue: asyncio.Queue[Sample] = asyncio.Queue()
            for s in pending:
                queue.put_nowait(s)
            states = self.cache.states

            async def worker() -> None:
                while True:
                    try:
                        s = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    await self._one(s, states.get(s.id))

            tasks = [asyncio.create_task(worker()) for _ in range(max(1, min(a.concurrency, len(pending))))]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    if t.exception() is not None:
                        raise t.exception()
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.client.aclose()

    def counts_into_stats(self) -> None:
        if self.client is not None:
            self.stats.requests = self.client.chat_requests
            self.stats.transport_retries = self.client.transport_retries
            self.stats.probe_requests = self.client.probe_requests


def run_online(asker: OnlineAsker, pending: list[Sample]) -> str | None:
    """Ask about ``pending``; returns why the run stopped early, or None. SIGTERM stops it like Ctrl-C, so the
    finished samples are written out."""
    from tqdm import tqdm

    asker._bar = tqdm(
        total=len(pending),
        unit="sample",
        desc="gen-cot",
        disable=asker.args.no_progress,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None

    def _on_term(signum, frame):
        raise KeyboardInterrupt

    if in_main:
        signal.signal(signal.SIGTERM, _on_term)
    try:
        asyncio.run(asker.ask_all(pending))
    except TeacherError as err:  # EndpointError included
        return asker.redact(err)
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        asker._bar.close()
    return None
