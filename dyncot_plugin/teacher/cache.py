"""Append-only JSONL cache of teacher calls, keyed by sample id, that survives ``kill -9``.

One JSON object per line, written with a single ``write`` of the whole line, flushed and ``fsync``'d before the
call returns. Records are never rewritten; for a sample id the *last* record with a final status wins.

Record kinds (``status``):

- ``attempt``: one received teacher reply that was rejected, with its reason and token usage. On resume the
  conversation is rebuilt from these, so a reply already paid for is never asked for again, and the retry
  count carries on where it stopped.
- ``done``: the accepted reply and the CoT target built from it (final).
- ``rejected``: the sample was rejected on every allowed attempt; the last reason is kept (final, unless the
  user asks for ``--retry-rejected``).
- ``error``: a transport/endpoint error ended the sample's attempt; not final, the next run asks again.

A crash can leave a torn last line (no newline, or half a JSON object). Loading ignores it and the next append
first cuts the file back to the last complete line, so the file stays valid JSONL. A corrupt line in the middle
(only possible from outside edits) is skipped with a warning. An advisory ``flock`` keeps two runs from writing
the same cache at once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FINAL_STATUSES = ("done", "rejected")
STATUSES = ("attempt", "done", "rejected", "error")

try:  # POSIX only; elsewhere the lock is skipped
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class CacheLockedError(RuntimeError):
    pass


class SampleState:
    """Everything the cache knows about one sample."""

    __slots__ = ("attempts", "errors", "final", "replies")

    def __init__(self) -> None:
        self.attempts: list[dict] = []  # rejected replies since the last final record, in order
        self.final: dict | None = None
        self.errors: int = 0
        # attempt/done/rejected records ever: a batch request written when this was n is still unanswered while it
        # is n (the batch path's check that a result answers a request it wrote)
        self.replies: int = 0

    @property
    def status(self) -> str | None:
        return self.final["status"] if self.final else None


def iter_records(path: str | Path, end: list[int] | None = None) -> Iterator[dict]:
    """Stream the complete, valid records of a cache file. ``end``, if given, receives the byte length of the
    valid prefix (everything up to the last newline) as ``end[0]`` once the stream is exhausted."""
    path = Path(path)
    good_end = 0
    if path.exists():
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    # Bytes after the final newline are a torn write.
                    if raw.strip():
                        logger.warning(
                            "cache %s: ignoring a torn last line (%d bytes) left by an interrupted run", path, len(raw)
                        )
                    break
                good_end += len(raw)
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                    if not isinstance(rec, dict) or "id" not in rec or rec.get("status") not in STATUSES:
                        raise ValueError("not a cache record")
                except ValueError:
                    logger.warning("cache %s: skipping unreadable line %d", path, lineno)
                    continue
                yield rec
    if end is not None:
        end[:] = [good_end]


def read_records(path: str | Path) -> tuple[list[dict], int]:
    """All complete, valid records of a cache file and the byte length of its valid prefix."""
    end = [0]
    records = list(iter_records(path, end))
    return records, end[0]


def fold(records: Iterable[dict]) -> dict[str, SampleState]:
    states: dict[str, SampleState] = {}
    for rec in records:
        fold_one(states, rec)
    return states


def fold_one(states: dict[str, SampleState], record: dict) -> None:
    """Apply one record. A final record closes the sample's conversation; later attempts start a new one."""
    st = states.setdefault(str(record["id"]), SampleState())
    status = record["status"]
    if status != "error":
        st.replies += 1
    if status == "attempt":
        st.attempts.append(record)
    elif status == "error":
        st.errors += 1
    else:
        st.final = record
        st.attempts = []


class JsonlCache:
    """Open with ``with JsonlCache(path) as cache:``; ``cache.states`` maps sample id -> :class:`SampleState`."""

    def __init__(self, path: str | Path, redact=None) -> None:
        self.path = Path(path)
        self._redact = redact or (lambda s: s)
        self._lock = threading.Lock()
        self._fh = None
        # over every record, all runs; the batch_* share came from batch results (priced at the batch discount)
        self.tokens = {"prompt_tokens": 0, "completion_tokens": 0, "batch_prompt_tokens": 0,
                       "batch_completion_tokens": 0}
        self.states: dict[str, SampleState] = {}
        self.batch_lines: set[str] = set()  # the result lines already read (``batch.line`` of the records)

    def __enter__(self) -> JsonlCache:  # noqa: PYI034
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "ab+")  # noqa: SIM115 (held open until close())
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # EWOULDBLOCK: held by another process
                fh.close()
                raise CacheLockedError(f"another gen-cot run is using the cache {self.path}; wait for it to end")
            except OSError as err:  # the file system refuses locks: two runs could interleave records unseen
                fh.close()
                raise CacheLockedError(
                    f"{self.path}: cannot take the cache's lock ({err.strerror or err}); this file system does not "
                    "support flock. Put the cache (--cache) on a local folder."
                ) from None
        end = [0]
        self.states = {}
        for rec in iter_records(self.path, end):
            self._fold(rec)
        good_end = end[0]
        size = os.fstat(fh.fileno()).st_size
        if size != good_end:
            fh.truncate(good_end)  # drop a torn last line so the next record starts on its own line
            fh.flush()
            os.fsync(fh.fileno())
        self._fh = fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the flock
            self._fh = None

    def append(self, record: dict[str, Any]) -> None:
        if record.get("status") not in STATUSES or "id" not in record:
            raise ValueError(f"bad cache record: {record!r}")
        line = self._redact(json.dumps(record, ensure_ascii=False, sort_keys=True)) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            if self._fh is None:
                raise RuntimeError("cache is not open")
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fold(record)

    def _fold(self, record: dict) -> None:
        usage = record.get("usage") or {}
        batch = record.get("batch")
        for k in ("prompt_tokens", "completion_tokens"):
            n = int(usage.get(k) or 0)
            self.tokens[k] += n
            if batch:
                self.tokens["batch_" + k] += n
        if isinstance(batch, dict) and batch.get("line"):
            self.batch_lines.add(str(batch["line"]))
        if record["status"] == "done" and "reply" in record:
            record = {k: v for k, v in record.items() if k != "reply"}  # the file keeps it; memory need not
        fold_one(self.states, record)
