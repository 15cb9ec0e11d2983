"""``--batch openai``: the round trip through OpenAI's Files and Batches API, resumable at every step.

A round writes the pending samples' requests into the cache folder (:func:`~.batch_files.write_requests`, split at
OpenAI's limits), uploads each file (``files.create(purpose="batch")``), creates one batch per file
(``batches.create``, ``metadata`` naming this run and the file), polls ``batches.retrieve`` (a progress line from
``request_counts``), downloads the output and error files (``files.content``, kept in the cache folder) and reads
them like ``--batch-read``. Replies rejected with re-asks left go into the next round, with the feedback turn.

Every id is saved in ``<dataset>.openai-batch.json`` (cache folder) as soon as it is known, and each step is
entered there before it starts, so a rerun after ``kill -9`` at any point goes on where it stopped: an upload that
may have reached the server is looked up by its file name (``files.list``), a ``batches.create`` that may have
reached it by its metadata (``batches.list``), a running batch is polled again, and result lines read already are
skipped. A batch is never created twice for one file: no second paid copy.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

from dyncot_plugin.io.datasets import DatasetError
from dyncot_plugin.io.files import atomic_open, atomic_write_json
from dyncot_plugin.io.read import read_json
from dyncot_plugin.teacher.batch_files import URL, Ledger, ingest, read_results, write_requests
from dyncot_plugin.teacher.cache import JsonlCache
from dyncot_plugin.teacher.client import Redactor
from dyncot_plugin.teacher.cost import Estimate
from dyncot_plugin.teacher.prompts import PromptSet
from dyncot_plugin.teacher.report import Stats
from dyncot_plugin.teacher.samples import Sample

logger = logging.getLogger("dyncot_plugin.teacher")

TERMINAL = ("completed", "expired", "cancelled", "failed")


class BatchState:
    """``{"run": id, "rounds": [{"round", "closed", "parts": [{path, filename, bytes, requests, file_id, batch_id,
    status, ...}]}]}``, saved atomically after every step."""

    def __init__(self, cache_path: Path) -> None:
        name = cache_path.name.removesuffix(".jsonl").removesuffix(".cache")
        self.name = name
        self.folder = cache_path.parent
        self.path = cache_path.with_name(f"{name}.openai-batch.json")
        data = read_json(self.path, "batch state") if self.path.is_file() else None
        self.data: dict[str, Any] = data if isinstance(data, dict) else {"run": uuid.uuid4().hex[:12], "rounds": []}

    def save(self) -> None:
        atomic_write_json(self.path, self.data, indent=1)

    def open_round(self) -> dict | None:
        rounds = self.data["rounds"]
        return rounds[-1] if rounds and not rounds[-1].get("closed") else None


def has_open_round(cache_path: Path) -> bool:
    return BatchState(cache_path).open_round() is not None


def _counts(b: Any) -> dict[str, int]:
    c = b.request_counts
    return {"total": c.total, "completed": c.completed, "failed": c.failed} if c is not None else {}


class OpenAIBatches:
    def __init__(self, args: argparse.Namespace, api_key: str | None, redact: Redactor, cache: JsonlCache,
                 st: Stats, by_id: dict[str, Sample], prompts: PromptSet,
                 check: Callable[[list[Sample]], str | None]) -> None:
        self.args, self.redact, self.cache, self.st, self.by_id = args, redact, cache, st, by_id
        self.prompts, self.check = prompts, check
        self.state = BatchState(cache.path)
        self.ledger = Ledger(cache.path)
        self.client = openai.OpenAI(base_url=args.base_url, api_key=api_key or "EMPTY", timeout=args.timeout,
                                    max_retries=args.max_retries)
        self.st.batch.setdefault("batches", [])

    # ---- the rounds
    def run(self, pending: list[Sample]) -> str | None:
        """Run (or resume) rounds until no reply waits for a re-ask; returns why the run stopped early, or None."""
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if in_main else None

        def _on_term(signum, frame):
            raise KeyboardInterrupt

        if in_main:  # SIGTERM: stop like Ctrl-C; the ids are saved, a rerun resumes
            signal.signal(signal.SIGTERM, _on_term)
        try:
            return self._rounds(pending)
        except KeyboardInterrupt:
            return f"interrupted; the batch ids are kept in {self.state.path}: rerun to go on"
        except openai.APIError as err:
            what = f"HTTP {err.status_code}: " if isinstance(err, openai.APIStatusError) else ""
            return (f"{self.args.base_url}: {what}{self.redact(err) or type(err).__name__}; the batch ids are kept in "
                    f"{self.state.path}: rerun to go on")
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
            self.client.close()

    def _rounds(self, pending: list[Sample]) -> str | None:
        rnd = self.state.open_round()
        if rnd is not None:
            logger.info("resuming round %d of %s (%s)", rnd["round"], self.state.path, self._ids(rnd))
        todo = pending
        while True:
            if rnd is None:
                if not todo:
                    return None
                bad = self.check(todo)
                if bad:
                    raise DatasetError(bad)
                rnd = self._new_round(todo)
                if rnd is None:
                    return None
            stopped = self._finish_round(rnd)
            if stopped:
                return stopped
            todo = self._to_ask_again(rnd)
            rnd = None

    def _to_ask_again(self, rnd: dict) -> list[Sample]:
        """The round's samples whose reply was rejected with re-asks left (also when that reply was read by a run
        killed before the round ended): a reply came since the request was written, and no final record."""
        files = {p["path"] for p in rnd["parts"]}
        out = []
        for sid, entry in self.ledger.requests.items():
            state = self.cache.states.get(sid)
            if entry.get("file") in files and sid in self.by_id and state is not None and state.final is None \
                    and state.replies > entry["replies_before"]:
                out.append(self.by_id[sid])
        return out

    def _ids(self, rnd: dict) -> str:
        return ", ".join(p.get("batch_id") or p.get("file_id") or p["filename"] for p in rnd["parts"])

    def _new_round(self, todo: list[Sample]) -> dict | None:
        k = len(self.state.data["rounds"]) + 1
        base = self.state.folder / f"{self.state.name}.round-{k}.requests.jsonl"
        totals = self.cache.tokens
        replies = sum(s.replies for s in self.cache.states.values())
        estimate = Estimate(self.args, (replies, totals["completion_tokens"]))
        parts = write_requests(base, todo, self.cache, self.ledger, self.args, self.prompts, self.st, estimate)
        if not parts:
            return None
        run = self.state.data["run"]
        for i, part in enumerate(parts, 1):
            part.update(key=f"{k}.{i}", filename=f"{self.state.name}.{run}.{k}.{i}.jsonl", file_id=None, batch_id=None)
            del part["ids"]
        rnd = {"round": k, "closed": False, "parts": parts, "estimate": estimate.as_dict()}
        self.state.data["rounds"].append(rnd)
        self.state.save()
        for line in estimate.lines():
            logger.info("round %d: %s", k, line.strip())
        first, *rest = estimate.lines()
        self.st.batch_lines.append(f"  {f'round {k}':<11}{first.strip()}")
        self.st.batch_lines.extend(" " * 13 + line.strip() for line in rest)
        return rnd

    def _finish_round(self, rnd: dict) -> str | None:
        for part in rnd["parts"]:
            if part.get("batch_id") is None:
                self._submit(part, rnd["round"])
        self._poll(rnd)
        stopped: list[str] = []
        for part in rnd["parts"]:
            b = part.get("result") or {}
            entry = {"round": rnd["round"], "file": part["path"], "batch_id": part["batch_id"],
                     "status": b.get("status"), "request_counts": b.get("request_counts")}
            self.st.batch["batches"].append(entry)
            counts = b.get("request_counts") or {}
            self.st.batch_lines.append(
                f"  batch      {part['batch_id']} (round {rnd['round']}, {Path(part['path']).name}): {b.get('status')}, "
                f"{counts.get('completed', 0)}/{counts.get('total', part['requests'])} done, "
                f"{counts.get('failed', 0)} failed"
            )
            if not part.get("ingested"):
                self._download_and_read(part)
                part["ingested"] = True
                self.state.save()
            status = b.get("status")
            if status == "failed":
                errors = "; ".join(b.get("errors") or []) or "no reason given"
                stopped.append(f"batch {part['batch_id']} failed: {errors}")
            elif status in ("expired", "cancelled"):
                left = counts.get("total", part["requests"]) - counts.get("completed", 0)
                stopped.append(f"batch {part['batch_id']} {status} with {counts.get('completed', 0)} of "
                               f"{counts.get('total', part['requests'])} requests done; the results that came back "
                               f"are kept, the {left} others are asked again on the next run")
        rnd["closed"] = True
        self.state.save()
        return "; ".join(stopped) or None

    # ---- one file: upload, create, poll, download
    def _submit(self, part: dict, k: int) -> None:
        if part.get("file_id") is None:
            found = self._find_upload(part) if part.get("upload_started") else None
            if found is None:
                part["upload_started"] = time.time()
                self.state.save()
                with open(part["path"], "rb") as fh:
                    found = self.client.files.create(file=(part["filename"], fh), purpose="batch").id
            part["file_id"] = found
            self.state.save()
            logger.info("uploaded %s as %s", part["path"], found)
        metadata = {"dyncot_run": self.state.data["run"], "dyncot_file": part["key"],
                    "dyncot_dataset": self.args.dataset[:500]}
        found = self._find_batch(metadata, part) if part.get("create_started") else None
        if found is not None:
            logger.info("found batch %s, created by a run stopped before it saved the id", found)
        else:
            part["create_started"] = time.time()
            self.state.save()
            found = self.client.batches.create(input_file_id=part["file_id"], endpoint=URL, completion_window="24h",
                                               metadata=metadata).id
            logger.info("created batch %s (round %d, %s requests)", found, k, part["requests"])
        part["batch_id"] = found
        self.state.save()

    def _find_upload(self, part: dict) -> str | None:
        for f in self.client.files.list(purpose="batch"):
            if f.filename == part["filename"] and f.bytes == part["bytes"]:
                return f.id
            if f.created_at < part["upload_started"] - 3600:
                break  # newest first: older files cannot be this upload
        return None

    def _find_batch(self, metadata: dict[str, str], part: dict) -> str | None:
        for b in self.client.batches.list(limit=100):
            meta = b.metadata or {}
            if meta.get("dyncot_run") == metadata["dyncot_run"] and meta.get("dyncot_file") == metadata["dyncot_file"]:
                return b.id
            if b.created_at < part["create_started"] - 3600:
                break  # newest first: older batches cannot be this one
        return None

    def _poll(self, rnd: dict) -> None:
        last: dict[str, str] = {}
        while True:
            running = False
            for part in rnd["parts"]:
                if part.get("result"):
                    continue
                b = self.client.batches.retrieve(part["batch_id"])
                counts = _counts(b)
                line = (f"batch {b.id} (round {rnd['round']}, {Path(part['path']).name}): {b.status}, "
                        f"{counts.get('completed', 0)}/{counts.get('total', part['requests'])} done, "
                        f"{counts.get('failed', 0)} failed")
                if last.get(b.id) != line:
                    logger.info("%s", line)
                    last[b.id] = line
                if b.status in TERMINAL:
                    errors = [f"line {e.line}: {e.code}: {e.message}" if e.line is not None else f"{e.code}: {e.message}"
                              for e in ((b.errors.data or []) if b.errors is not None else [])]
                    part["result"] = {"status": b.status, "request_counts": counts, "errors": errors,
                                      "output_file_id": b.output_file_id, "error_file_id": b.error_file_id}
                    self.state.save()
                else:
                    running = True
            if not running:
                return
            time.sleep(self.args.batch_poll)

    def _download_and_read(self, part: dict) -> None:
        for kind in ("output", "error"):
            file_id = part["result"].get(f"{kind}_file_id")
            if not file_id:
                continue
            local = self.state.folder / f"{self.state.name}.{part['batch_id']}.{kind}.jsonl"
            if not local.is_file():  # kept: what came back is never fetched (or lost) twice
                data = self.client.files.content(file_id).content
                with atomic_open(local, "wb", encoding=None) as fh:
                    fh.write(data)
            lines, before = read_results([local], self.by_id, self.cache, self.ledger)
            if before:
                logger.info("%s: %d line(s) read before are skipped", local, before)
            ingest(lines, self.by_id, self.cache, self.ledger, self.args, self.st, batch_id=part["batch_id"])
            self.st.batch.setdefault("results", []).append({"file": str(local), "lines": len(lines) + before,
                                                            "read_before": before})
