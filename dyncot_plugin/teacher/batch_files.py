"""Batch request files for any runner, and their result files.

Writing (``--batch-write FILE``): one line per pending sample, ``{"custom_id": <sample id>, "method": "POST",
"url": "/v1/chat/completions", "body": <the online request>}`` (the body is
:func:`~dyncot_plugin.teacher.request_body.build_request_body`'s), split into ``FILE-001``, ``FILE-002``, ... where
``--batch-max-requests`` or ``--batch-max-mb`` would be passed. Each request written is entered in the cache folder's
request ledger (``<dataset>.batch-requests.json``): its attempt, the sample's gold keyphrases and how many replies
the cache held for it then. A result answers a request while that count is unchanged.

Reading (``--batch-read FILE...``, and ``--batch openai`` after its download): OpenAI's output and error lines
(``response.status_code``/``body``, or ``error: {code, message}``) and ``vllm run-batch``'s (``error`` a string or an
error object) alike. Every line of every file is checked first; a malformed line, a custom_id that is no sample of
the dataset, one that comes twice, or one with no unanswered request (never written, answered already, or a sample
whose rationale was accepted) is named and the files are refused whole: nothing goes into the cache or the dataset.
Then every reply is validated like an online one (:func:`~dyncot_plugin.teacher.replies.record_reply`). A line
read before (its ``id`` is in the cache) is skipped, so reading a file again, or again after ``kill -9``, is safe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyncot_plugin.io.datasets import DatasetError
from dyncot_plugin.io.files import atomic_write_json
from dyncot_plugin.io.read import read_json
from dyncot_plugin.teacher.cache import JsonlCache
from dyncot_plugin.teacher.cost import Estimate
from dyncot_plugin.teacher.prompts import PromptSet
from dyncot_plugin.teacher.replies import close_if_exhausted, record, record_reply
from dyncot_plugin.teacher.report import Stats
from dyncot_plugin.teacher.request_body import build_request_body, request_params
from dyncot_plugin.teacher.samples import Sample, same_gold

URL = "/v1/chat/completions"
_MAX_NAMED = 20


# ------------------------------------------------------------------------------------------------- the ledger


class Ledger:
    """The requests written to batch files: ``{sample id: {attempt, keyphrases, replies_before, file}}``."""

    def __init__(self, cache_path: Path) -> None:
        name = cache_path.name.removesuffix(".jsonl").removesuffix(".cache")
        self.path = cache_path.with_name(f"{name}.batch-requests.json")
        self.requests: dict[str, dict] = {}
        if self.path.is_file():
            data = read_json(self.path, "batch request ledger")
            self.requests = dict(data.get("requests") or {}) if isinstance(data, dict) else {}

    def save(self) -> None:
        atomic_write_json(self.path, {"requests": self.requests}, indent=1)

    def unanswered(self, sid: str, cache: JsonlCache) -> dict | None:
        """The ledger entry of ``sid`` while no reply came for it since it was written, else None."""
        entry = self.requests.get(sid)
        state = cache.states.get(sid)
        if entry is None or entry.get("replies_before") != (state.replies if state is not None else 0):
            return None
        return entry


# ------------------------------------------------------------------------------------------------------ writing


def part_paths(path: Path, n: int) -> list[Path]:
    """``FILE`` itself for one part, else ``FILE-001``, ``FILE-002``, ... (before the suffix)."""
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i:03d}{path.suffix}") for i in range(1, n + 1)]


def write_requests(path: Path, pending: list[Sample], cache: JsonlCache, ledger: Ledger, args: argparse.Namespace,
                   prompts: PromptSet, st: Stats, estimate: Estimate) -> list[dict[str, Any]]:
    """Write the request files for ``pending`` and enter each request in the ledger; returns one
    ``{"path", "requests", "bytes", "ids"}`` per file. A sample whose attempts are used up is recorded as rejected
    instead; one whose image cannot be read any more fails alone (``error``)."""
    max_bytes = int(args.batch_max_mb * 1_000_000)
    params = request_params(args)
    parts: list[dict[str, Any]] = []
    tmp_paths: list[Path] = []
    fh = None
    entries: dict[str, dict] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        for s in pending:
            state = cache.states.get(s.id)
            history = list(state.attempts) if state is not None else []
            if close_if_exhausted(cache, s, history, 1 + args.retries, args.model):
                st.rejected_new += 1
                st.failures[s.id] = {"id": s.id, "status": "rejected", "attempts": len(history),
                                     "reason": history[-1].get("reason", "")}
                continue
            try:
                body = build_request_body(s, history, model=args.model, prompts=prompts, params=params)
            except OSError as err:
                reason = f"cannot read its image: {err}"
                cache.append(record(s, "error", args.model, attempt=len(history) + 1, reason=reason))
                st.failed += 1
                st.failures[s.id] = {"id": s.id, "status": "error", "reason": reason}
                continue
            line = (json.dumps({"custom_id": s.id, "method": "POST", "url": URL, "body": body},
                               ensure_ascii=False) + "\n").encode("utf-8")
            if len(line) > max_bytes:
                raise DatasetError(
                    f"{s.id}: its request is {len(line) / 1e6:.2f} MB, more than --batch-max-mb "
                    f"{args.batch_max_mb:g}; no batch file can hold it (smaller images, or send it online)"
                )
            if fh is None or parts[-1]["requests"] >= args.batch_max_requests or \
                    parts[-1]["bytes"] + len(line) > max_bytes:
                if fh is not None:
                    fh.close()
                tmp = path.with_name(f".{path.name}.part{len(parts) + 1}.tmp")
                tmp_paths.append(tmp)
                fh = open(tmp, "wb")  # noqa: SIM115 (closed when the next part starts, or below)
                parts.append({"requests": 0, "bytes": 0, "ids": []})
            fh.write(line)
            parts[-1]["requests"] += 1
            parts[-1]["bytes"] += len(line)
            parts[-1]["ids"].append(s.id)
            estimate.add(body, len(line))
            entries[s.id] = {"attempt": len(history) + 1, "keyphrases": s.keyphrases,
                             "replies_before": state.replies if state is not None else 0, "part": len(parts)}
        if fh is not None:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            fh = None
        finals = part_paths(path, len(parts))
        for entry in entries.values():
            entry["file"] = str(finals[entry.pop("part") - 1])
        # The ledger first: a result can only be read for a request the ledger holds, and an entry without its file
        # (a kill between the two) only allows a reply that never comes.
        ledger.requests.update(entries)
        ledger.save()
        for tmp, final, part in zip(tmp_paths, finals, parts):
            os.replace(tmp, final)
            part["path"] = str(final)
    finally:
        if fh is not None:
            fh.close()
        for tmp in tmp_paths:
            if tmp.exists():
                tmp.unlink()
    st.batch_written += sum(p["requests"] for p in parts)
    return parts


# ------------------------------------------------------------------------------------------------------ reading


@dataclass
class ResultLine:
    where: str  # FILE:LINE
    custom_id: str
    key: str  # the line's id (OpenAI batch_req_..., vLLM vllm-...), else a hash of the line
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # the request failed: why


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        inner = error.get("error") if isinstance(error.get("error"), dict) else error  # vLLM's ErrorResponse
        message = str(inner.get("message") or "").strip()
        # OpenAI's codes are names (batch_expired); vLLM's are the HTTP status, its type names the error
        code = inner.get("code") if isinstance(inner.get("code"), str) else inner.get("type")
        return f"{code}: {message}" if code and message else message or json.dumps(error)[:300]
    return str(error).strip()[:300]


def parse_line(raw: str, where: str) -> ResultLine | str:
    """One result line, or why it is malformed."""
    try:
        obj = json.loads(raw)
    except ValueError as err:
        return f"{where}: not JSON ({err})"
    if not isinstance(obj, dict):
        return f"{where}: not a JSON object"
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return f"{where}: no custom_id"
    key = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else \
        "sha1:" + hashlib.sha1(raw.encode("utf-8")).hexdigest()
    line = ResultLine(where, cid, key)
    response, error = obj.get("response"), obj.get("error")
    if response is not None and not isinstance(response, dict):
        return f"{where} (custom_id {cid!r}): 'response' is not an object"
    status = response.get("status_code") if response else None
    if response is not None and not isinstance(status, int):
        return f"{where} (custom_id {cid!r}): the response has no status_code"
    body = response.get("body") if response else None
    if error is not None or (response is not None and status != 200):
        detail = _error_text(error) if error is not None else _error_text(body) if body else ""
        http = f"HTTP {status}" if status not in (None, 200) else ""
        line.error = ": ".join(p for p in (http, detail) if p) or "an error without details"
        return line
    if response is None:
        return f"{where} (custom_id {cid!r}): neither a response nor an error"
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return f"{where} (custom_id {cid!r}): a 200 response without a chat completion (no 'choices')"
    choice = body["choices"][0] if body["choices"] and isinstance(body["choices"][0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    line.text = content if isinstance(content, str) else None
    line.finish_reason = choice.get("finish_reason")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    line.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    line.completion_tokens = int(usage.get("completion_tokens") or 0)
    return line


def read_results(files: list[Path], by_id: dict[str, Sample], cache: JsonlCache,
                 ledger: Ledger) -> tuple[list[ResultLine], int]:
    """Every line of ``files``, checked; returns the lines to ingest and how many were read before. Raises
    :class:`DatasetError` naming every problem (files refused whole)."""
    problems: list[str] = []
    lines: list[ResultLine] = []
    first: dict[str, str] = {}
    seen_before = 0
    for f in files:
        if not f.is_file():
            problems.append(f"{f}: no such file")
            continue
        with open(f, encoding="utf-8", errors="replace") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                got = parse_line(raw.strip(), f"{f}:{lineno}")
                if isinstance(got, str):
                    problems.append(got)
                    continue
                cid = got.custom_id
                if cid in first:
                    problems.append(f"{got.where}: custom_id {cid!r} again (first at {first[cid]})")
                    continue
                first[cid] = got.where
                if cid not in by_id:
                    problems.append(f"{got.where}: custom_id {cid!r} is no sample of this dataset")
                    continue
                if got.key in cache.batch_lines:
                    seen_before += 1
                    continue
                entry = ledger.unanswered(cid, cache)
                state = cache.states.get(cid)
                if entry is None:
                    if state is not None and state.final is not None and state.final["status"] == "done":
                        why = "its rationale was accepted already; an accepted rationale is never replaced"
                    elif cid not in ledger.requests:
                        why = f"no request for it was written (--batch-write) with this cache ({cache.path})"
                    else:
                        why = "its request was answered already (a reply was read or asked since it was written)"
                    problems.append(f"{got.where}: custom_id {cid!r}: {why}")
                elif not same_gold(entry.get("keyphrases") or [], by_id[cid].keyphrases):
                    problems.append(f"{got.where}: custom_id {cid!r}: the sample's keyphrases changed since its "
                                    "request was written; write the requests again")
                else:
                    lines.append(got)
    if problems:
        shown = "\n  ".join(problems[:_MAX_NAMED])
        more = f"\n  ... and {len(problems) - _MAX_NAMED} more" if len(problems) > _MAX_NAMED else ""
        raise DatasetError(
            f"{len(problems)} problem(s) in the result file(s) {', '.join(str(f) for f in files)}; they are refused "
            f"whole, nothing was read into the cache or the dataset:\n  {shown}{more}"
        )
    return lines, seen_before


def ingest(lines: list[ResultLine], by_id: dict[str, Sample], cache: JsonlCache, ledger: Ledger,
           args: argparse.Namespace, st: Stats, batch_id: str | None = None) -> dict[str, str]:
    """Put checked result lines into the cache; returns ``{sample id: outcome}`` (``done``, ``attempt``,
    ``rejected`` or ``error``)."""
    outcomes: dict[str, str] = {}
    for line in lines:
        s = by_id[line.custom_id]
        entry = ledger.requests[line.custom_id]
        where = {"line": line.key, "source": line.where}
        if batch_id:
            where["batch_id"] = batch_id
        if line.error is not None:
            reason = f"batch request failed: {line.error}"
            cache.append(record(s, "error", args.model, attempt=entry["attempt"], reason=reason, batch=where))
            st.failed += 1
            st.failures[s.id] = {"id": s.id, "status": "error", "reason": reason}
            st.reask.discard(s.id)
            outcomes[s.id] = "error"
            continue
        outcome = record_reply(
            cache, st, s, model=args.model, match=args.match, attempt=entry["attempt"],
            max_attempts=1 + args.retries, text=line.text, finish_reason=line.finish_reason,
            prompt_tokens=line.prompt_tokens, completion_tokens=line.completion_tokens, batch=where,
        )
        if outcome == "attempt":
            st.reask.add(s.id)
            st.failures[s.id] = {"id": s.id, "status": "attempt", "attempts": entry["attempt"],
                                 "reason": cache.states[s.id].attempts[-1].get("reason", ""),
                                 "next": "asked again with the feedback by the next --batch-write or round"}
        else:
            st.reask.discard(s.id)
        outcomes[s.id] = outcome
    return outcomes
