"""Write the CoT column of a dataset with a teacher model behind any OpenAI-compatible chat endpoint.

For every sample without a CoT, the teacher gets the post text, the image (base64 data URL) and the gold
keyphrases, and is asked for ``<think>rationale</think><answer>kp1; kp2</answer>``. Each reply is validated
(format, and keyphrases equal to the gold ones after the evaluator's stemming); a rejected reply is sent back with
the reason, up to --retries times. Every received reply is appended to a fsync'd JSONL cache keyed by sample id,
so a rerun after a crash (even kill -9) neither loses a finished sample nor asks the teacher about it again.
The API key is read from the environment (--api-key-env) and never written anywhere. See docs/teacher.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyncot_plugin.io.datasets import (
    DatasetError,
    load_rows,
    read_dataset_info,
    row_label,
    update_dataset_info,
)
from dyncot_plugin.io.files import atomic_write_json, atomic_write_text, locked_files
from dyncot_plugin.io.read import inside_dir
from dyncot_plugin.tasks.mmkp.normalize import stem_phrase
from dyncot_plugin.tasks.mmkp.rows import post_text, row_keyphrases
from dyncot_plugin.teacher.cache import CacheLockedError, JsonlCache, SampleState
from dyncot_plugin.teacher.client import (
    RedactingFormatter,
    Redactor,
    SampleRequestError,
    TeacherClient,
    TeacherError,
)
from dyncot_plugin.teacher.prompts import PromptSet, bytes_data_url, describe_messages
from dyncot_plugin.teacher.validate import DEFAULT_MATCH, MATCH_RULES, validate_reply

logger = logging.getLogger("dyncot_plugin.teacher")

DEFAULTS = {
    "match": DEFAULT_MATCH,  # the CoT answer must be the gold answer; superset only accepts extras
    "retries": 2,  # up to 3 requests per sample: most fixable replies are fixed by one or two re-asks
    "concurrency": 8,  # below the request-per-minute tiers of hosted APIs; raise it for a local server
    "timeout": 120.0,  # a multimodal reply of ~500 tokens from a hosted model can take a minute
    "max_retries": 5,  # transport retries (429/5xx/time-out) per request: ~1+2+4+8+16 s of back-off
    "backoff": 1.0,
    "backoff_max": 60.0,
    "max_tokens": 1024,  # a rationale is a few sentences; the cap bounds the cost of a runaway reply
    "max_consecutive_errors": 5,
}


# ------------------------------------------------------------------------------------------------------ samples


@dataclass
class Sample:
    index: int
    id: str
    text: str
    keyphrases: list[str]
    images: list[Path]
    raw_images: list[Any] = field(default_factory=list)  # the row's ``images`` entries, as written
    mimes: list[str] = field(default_factory=list)  # the media type of each image, from check_images
    checked: list[CheckedImage] = field(default_factory=list)  # each image as check_images opened it


IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}
"""The image types sent to the teacher (PIL format name -> media type of the data URL): what OpenAI-compatible
servers accept as data URLs (LLaMA-Factory's API takes png/jpeg/gif/bmp, OpenAI also webp)."""
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_MAX_LISTED = 10


@dataclass(frozen=True)
class CheckedImage:
    """The file an image path resolved to when it was checked: its real path and its (device, inode)."""

    real: str
    device: int
    inode: int


class ImageChangedError(OSError):
    """The file at a checked image's real path is no longer the file that was checked."""


def read_checked(image: CheckedImage) -> bytes:
    """The bytes of exactly the file that was checked: the real path is opened and the open file's device and inode
    compared with the checked ones, so a link swapped since (at the file or at any parent folder) is never
    followed to another file; the bytes come from that same open file."""
    fd = os.open(image.real, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if (st.st_dev, st.st_ino) != (image.device, image.inode):
            raise ImageChangedError(
                f"{image.real} is no longer the file that was checked (a link or folder on its path was changed "
                "since); not sent"
            )
        return f.read()


def image_problem(path: Path, roots: list[Path], allow_outside: bool) -> tuple[str | None, str | None]:
    """``(mime, None)`` for an image that may be sent, else ``(None, reason)``. The location is checked first, so
    a file outside the allowed folders is never opened."""
    mime, reason, _ = check_image(path, roots, allow_outside)
    return mime, reason


def check_image(
    path: Path, roots: list[Path], allow_outside: bool
) -> tuple[str | None, str | None, CheckedImage | None]:
    """:func:`image_problem` plus, for an image that may be sent, the identity of the file that was decoded."""
    real = os.path.realpath(path)
    if not allow_outside:
        inside = False
        for root in roots:
            r = os.path.realpath(root)
            if real == r or real.startswith(r.rstrip(os.sep) + os.sep):
                inside = True
                break
        if not inside:
            where = f" (resolves to {real})" if os.path.abspath(path) != real else ""
            return None, (
                f"{path}{where} lies outside the media folder {', '.join(str(r) for r in roots)}; not sent "
                f"(widen it with --allow-images-in DIR, or pass --allow-images-outside-media-dir)"
            ), None
    if not os.path.isfile(real):
        return None, f"{path}: " + ("not a file" if os.path.exists(real) else "no such file"), None
    from PIL import Image, UnidentifiedImageError

    try:
        with open(real, "rb") as f:  # one open file: what is decoded is what is identified
            st = os.fstat(f.fileno())
            with Image.open(f) as img:
                fmt = img.format
                img.verify()
    except UnidentifiedImageError:
        return None, f"{path}: not an image PIL can decode", None
    except Exception as exc:  # noqa: BLE001 (PIL raises many kinds on a broken file)
        return None, f"{path}: broken image ({type(exc).__name__}: {exc})", None
    if fmt not in IMAGE_FORMATS:
        return None, f"{path}: {fmt} image; send one of {', '.join(IMAGE_FORMATS)}", None
    return IMAGE_FORMATS[fmt], None, CheckedImage(real, st.st_dev, st.st_ino)


def check_images(
    samples: list[Sample], src_path: Path, roots: list[Path], allow_outside: bool
) -> list[dict[str, Any]]:
    """Check every image of ``samples`` (location, decodes with PIL, allowed type) and set each sample's
    ``mimes`` and ``checked`` (the files later read and sent, :func:`read_checked`); returns one failure record per
    bad image (empty when all are fine)."""
    bad: list[dict[str, Any]] = []
    for s in samples:
        s.mimes, s.checked = [], []
        for raw, path in zip(s.raw_images, s.images):
            if not isinstance(raw, str) or not raw:
                mime, reason, checked = None, f"{raw!r} is not a file path", None
            else:
                mime, reason, checked = check_image(path, roots, allow_outside)
            if reason is not None:
                bad.append(
                    {
                        "id": s.id,
                        "status": "bad_image",
                        "row": s.index,
                        "image": raw,
                        "reason": f"{src_path}: {row_label({'id': s.id}, s.index)}: image {raw!r}: {reason}",
                    }
                )
            else:
                s.mimes.append(mime)
                s.checked.append(checked)
    return bad


def _fallback_id(row: dict) -> str:
    blob = json.dumps(
        [row.get("text"), row.get("images"), row.get("keyphrases"), row.get("messages")],
        ensure_ascii=False,
        sort_keys=True,
    )
    return "row-" + hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def build_samples(rows: list[dict], media_dir: Path) -> tuple[list[Sample], list[tuple[int, str]]]:
    """Samples to ask about, and (row index, reason) for rows that cannot be asked about."""
    samples: list[Sample] = []
    unusable: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        sid = str(row["id"]) if row.get("id") not in (None, "") else _fallback_id(row)
        if sid in seen:
            raise DatasetError(
                f"rows {seen[sid]} and {i} share the id {sid!r}; ids must be unique (the cache is keyed by id)"
            )
        seen[sid] = i
        text = post_text(row)
        kps = [k for k in row_keyphrases(row) or [] if k]
        if text is None:
            unusable.append((i, "no post text"))
            continue
        if not kps:
            unusable.append((i, "no gold keyphrases"))
            continue
        raw = row.get("images") or []
        if not isinstance(raw, list):
            raw = [raw]
        images = []
        for p in raw:
            path = Path(p) if isinstance(p, str) else Path("")
            images.append(path if path.is_absolute() else media_dir / path)
        samples.append(Sample(i, sid, text, kps, images, list(raw)))
    return samples, unusable


def _same_gold(a: list[str], b: list[str]) -> bool:
    return {stem_phrase(x) for x in a} == {stem_phrase(x) for x in b}


# -------------------------------------------------------------------------------------------------------- stats


@dataclass
class Stats:
    total: int = 0
    skipped_has_cot: int = 0
    unusable: int = 0
    done_cached: int = 0
    rejected_cached: int = 0
    stale: int = 0
    done_new: int = 0
    rejected_new: int = 0
    failed: int = 0
    retried: int = 0
    transport_retries: int = 0
    requests: int = 0  # chat requests sent, answered or not (first tries, re-asks, transport re-sends)
    replies: int = 0  # chat requests answered
    probe_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    pending: int = 0
    not_reached: int = 0
    failures: dict[str, dict] = field(default_factory=dict)


def _cost(prompt: int, completion: int, price_prompt: float | None, price_completion: float | None) -> float | None:
    if price_prompt is None and price_completion is None:
        return None
    return (prompt * (price_prompt or 0.0) + completion * (price_completion or 0.0)) / 1_000_000


# ------------------------------------------------------------------------------------------------------- runner


class GenCot:
    def __init__(self, args: argparse.Namespace, redact: Redactor, api_key: str | None) -> None:
        self.args = args
        self.redact = redact
        self.api_key = api_key
        self.stats = Stats()
        self.prompts = PromptSet.from_files(
            args.system_prompt_file, args.user_prompt_file, args.retry_prompt_file, args.image_detail
        )
        self.cache: JsonlCache | None = None
        self.client: TeacherClient | None = None
        self._consecutive_errors = 0
        self._bar = None

    # ---- requests
    def request_params(self) -> dict[str, Any]:
        a = self.args
        params: dict[str, Any] = {"max_tokens": a.max_tokens}
        if a.temperature is not None:
            params["temperature"] = a.temperature
        if a.extra_body:
            params["extra_body"] = a.extra_body
        return params

    def first_messages(self, s: Sample) -> list[dict]:
        if s.images and len(s.checked) != len(s.images):
            raise RuntimeError(f"{s.id}: images not checked (check_images) before they are sent")
        urls = [bytes_data_url(read_checked(c), m) for c, m in zip(s.checked, s.mimes)]
        messages = self.prompts.first_messages(s.id, s.text, s.keyphrases, urls[0] if urls else None)
        if len(s.images) > 1:  # several images: all go before the text, in order
            user = messages[-1]
            extra = [{"type": "image_url", "image_url": {"url": url}} for url in urls[1:]]
            if self.prompts.image_detail:
                for part in extra:
                    part["image_url"]["detail"] = self.prompts.image_detail
            user["content"] = user["content"][:1] + extra + user["content"][1:]
        return messages

    def _record(self, s: Sample, status: str, **fields: Any) -> dict:
        rec = {
            "id": s.id,
            "status": status,
            "model": self.args.model,
            "keyphrases": s.keyphrases,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        rec.update(fields)
        return rec

    async def ask(self, s: Sample, state: SampleState | None) -> str:
        """Drive one sample to a final state (or an error); returns ``done``, ``rejected`` or ``error``."""
        assert self.cache is not None and self.client is not None
        a = self.args
        max_attempts = 1 + a.retries
        history = list(state.attempts) if state is not None else []
        if history and len(history) >= max_attempts:
            last = history[-1]
            self.cache.append(
                self._record(
                    s,
                    "rejected",
                    attempt=len(history),
                    reason=last.get("reason", ""),
                    reply=last.get("reply"),
                    usage={"prompt_tokens": 0, "completion_tokens": 0},
                )
            )
            return "rejected"
        try:
            messages = self.first_messages(s)
        except OSError as err:  # the image went away (or became unreadable) after the check
            reason = f"{self.args.dataset}: {row_label({'id': s.id}, s.index)}: cannot read its image: {err}"
            self.cache.append(self._record(s, "error", attempt=len(history) + 1, reason=reason))
            self.stats.failures[s.id] = {"id": s.id, "status": "error", "reason": reason}
            return "error"
        for rec in history:  # resume the conversation where the last run stopped
            messages += self.prompts.retry_messages(
                s.id, s.text, s.keyphrases, rec.get("reply") or "", rec.get("reason", ""), rec["attempt"] + 1
            )
        attempt = len(history) + 1
        while True:
            try:
                comp = await self.client.complete(messages)
            except SampleRequestError as err:
                reason = self.redact(err)
                self.cache.append(self._record(s, "error", attempt=attempt, reason=reason))
                self.stats.failures[s.id] = {"id": s.id, "status": "error", "reason": reason}
                return "error"
            except TeacherError as err:
                self.cache.append(self._record(s, "error", attempt=attempt, reason=self.redact(err)))
                raise
            self.stats.replies += 1
            self.stats.prompt_tokens += comp.prompt_tokens
            self.stats.completion_tokens += comp.completion_tokens
            if attempt > 1:
                self.stats.retried += 1
            usage = {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens}
            verdict = validate_reply(comp.text, s.keyphrases, match=a.match, finish_reason=comp.finish_reason)
            common = {
                "attempt": attempt,
                "reply": comp.text,
                "finish_reason": comp.finish_reason,
                "usage": usage,
                "match": a.match,
            }
            if verdict.ok:
                self.cache.append(self._record(s, "done", cot=verdict.cot, extra_keyphrases=verdict.extra, **common))
                return "done"
            if attempt >= max_attempts:
                self.cache.append(self._record(s, "rejected", reason=verdict.reason, **common))
                self.stats.failures[s.id] = {
                    "id": s.id,
                    "status": "rejected",
                    "attempts": attempt,
                    "reason": verdict.reason,
                }
                return "rejected"
            self.cache.append(self._record(s, "attempt", reason=verdict.reason, **common))
            attempt += 1
            messages = messages + self.prompts.retry_messages(
                s.id, s.text, s.keyphrases, comp.text or "", verdict.reason, attempt
            )

    async def _one(self, s: Sample, state: SampleState | None) -> None:
        outcome = await self.ask(s, state)
        st = self.stats
        if outcome == "done":
            st.done_new += 1
            self._consecutive_errors = 0
        elif outcome == "rejected":
            st.rejected_new += 1
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
            request_params=self.request_params(),
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


# ------------------------------------------------------------------------------------------------------ the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    g = parser.add_argument_group("data")
    g.add_argument("--dataset-dir", required=True, help="LLaMA-Factory dataset_dir holding dataset_info.json")
    g.add_argument("--dataset", required=True, help="name of the dataset_info.json entry to add the CoT column to")
    g.add_argument(
        "--output-dataset",
        default=None,
        help="write to a new entry (file <name>.json in --dataset-dir) instead of in place",
    )
    g.add_argument(
        "--media-dir",
        default=None,
        help="folder relative image paths start from; every image must lie inside it, links resolved "
        "(default: dataset-dir)",
    )
    g.add_argument(
        "--allow-images-in",
        action="append",
        default=[],
        metavar="DIR",
        help="also allow images inside DIR (repeatable), e.g. the --image-dir convert-cmkp was given",
    )
    g.add_argument(
        "--allow-images-outside-media-dir",
        action="store_true",
        help="send images from anywhere (only for a dataset you trust: any file a row names would be uploaded)",
    )
    g.add_argument(
        "--allow-outside-dataset-dir",
        action="store_true",
        help="allow writing a dataset file that lies outside --dataset-dir (a dataset_info file_name such as "
        "'../x.json')",
    )
    g.add_argument("--overwrite", action="store_true", help="also ask about rows that already have a CoT")
    g.add_argument("--limit", type=int, default=None, help="ask about at most N not-yet-finished samples")

    g = parser.add_argument_group("teacher endpoint")
    g.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL"),
        help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 "
        "(default: $OPENAI_BASE_URL)",
    )
    g.add_argument("--model", required=True, help="teacher model name sent in each request, e.g. gpt-4o")
    g.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="name of the environment variable holding the API key (default: %(default)s); the key "
        "itself is never accepted on the command line",
    )
    g.add_argument(
        "--concurrency", type=int, default=d["concurrency"], help="samples in flight at once (default: %(default)s)"
    )
    g.add_argument(
        "--timeout", type=float, default=d["timeout"], help="seconds to wait for one reply (default: %(default)s)"
    )
    g.add_argument(
        "--max-retries",
        type=int,
        default=d["max_retries"],
        help="transport retries per request on HTTP 429/5xx, time-outs and connection errors, with "
        "exponential back-off (default: %(default)s)",
    )
    g.add_argument(
        "--backoff",
        type=float,
        default=d["backoff"],
        help="first back-off delay in seconds, doubled each retry (default: %(default)s)",
    )
    g.add_argument(
        "--backoff-max",
        type=float,
        default=d["backoff_max"],
        help="longest back-off delay in seconds (default: %(default)s)",
    )
    g.add_argument(
        "--max-consecutive-errors",
        type=int,
        default=d["max_consecutive_errors"],
        help="stop after this many samples in a row end in a request error; 0: never (default: %(default)s)",
    )

    g = parser.add_argument_group("request and validation")
    g.add_argument(
        "--match",
        choices=MATCH_RULES,
        default=d["match"],
        help="exact: the answer's keyphrases equal the gold ones (after stemming); superset: they "
        "include them (default: %(default)s)",
    )
    g.add_argument(
        "--retries",
        type=int,
        default=d["retries"],
        help="re-asks after a rejected reply, each telling the teacher what was wrong (default: %(default)s)",
    )
    g.add_argument(
        "--retry-rejected",
        action="store_true",
        help="ask again about samples an earlier run recorded as rejected (costs tokens again)",
    )
    g.add_argument(
        "--max-tokens", type=int, default=d["max_tokens"], help="completion token cap per reply (default: %(default)s)"
    )
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the endpoint's)")
    g.add_argument(
        "--image-detail",
        choices=("auto", "low", "high"),
        default=None,
        help="OpenAI image detail; 'low' is much cheaper (default: not sent)",
    )
    g.add_argument(
        "--extra-body",
        type=json.loads,
        default=None,
        help="JSON object merged into each request body (vendor-specific parameters)",
    )
    g.add_argument("--system-prompt-file", default=None, help="system prompt template (empty file: none)")
    g.add_argument("--user-prompt-file", default=None, help="user prompt template; see docs/teacher.md")
    g.add_argument("--retry-prompt-file", default=None, help="feedback template used on a re-ask")

    g = parser.add_argument_group("bookkeeping")
    g.add_argument(
        "--cache", default=None, help="append-only JSONL cache (default: <dataset-dir>/gen_cot/<dataset>.cache.jsonl)"
    )
    g.add_argument(
        "--report",
        default=None,
        help="JSON report with the summary and every failed sample (default: next to the cache)",
    )
    g.add_argument("--price-prompt", type=float, default=None, help="USD per 1M prompt tokens, for the estimate")
    g.add_argument(
        "--price-completion", type=float, default=None, help="USD per 1M completion tokens, for the estimate"
    )
    g.add_argument("--dry-run", action="store_true", help="show what would be asked (first request) and exit")
    g.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bar")


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except (OSError, ValueError):  # pragma: no cover
            self.handleError(record)


def _setup_logging(redact: Redactor) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(RedactingFormatter(redact, "[gen-cot] %(levelname)s %(message)s"))
    for name in ("dyncot_plugin.teacher",):
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.setLevel(logging.INFO)
        lg.propagate = False
    for noisy in ("openai", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _write_rows(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        atomic_write_json(path, rows)


def run(args: argparse.Namespace) -> int:
    api_key = os.environ.get(args.api_key_env) or None
    redact = Redactor(api_key)
    _setup_logging(redact)
    try:
        return _run(args, api_key, redact)
    except (DatasetError, CacheLockedError, ValueError, OSError) as err:
        print(f"dyncot-data gen-cot: error: {redact(err)}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, api_key: str | None, redact: Redactor) -> int:
    for name, low in (("retries", 0), ("max_retries", 0), ("concurrency", 1), ("max_tokens", 1)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}")
    if args.timeout <= 0:
        raise ValueError("--timeout must be > 0")
    if not args.base_url:
        raise ValueError("no endpoint: pass --base-url (or set OPENAI_BASE_URL)")
    if args.extra_body is not None and not isinstance(args.extra_body, dict):
        raise ValueError("--extra-body must be a JSON object")

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: ask about at least 1 sample (leave --limit out for all)")
    dataset_dir = Path(args.dataset_dir)
    info_path = dataset_dir / "dataset_info.json"
    info = read_dataset_info(dataset_dir)
    if args.dataset not in info:
        known = ", ".join(sorted(info)) or "none"
        raise DatasetError(f"{info_path}: no entry {args.dataset!r} (entries: {known})")
    entry = info[args.dataset]
    if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
        raise DatasetError(f"{info_path}: entry {args.dataset!r} has no 'file_name'")
    src_path = dataset_dir / entry["file_name"]
    out_name = args.output_dataset or args.dataset
    if args.output_dataset is not None and not _NAME_RE.match(args.output_dataset):
        raise DatasetError(
            f"--output-dataset {args.output_dataset!r}: a dataset name, written to <dataset-dir>/<name>.json; use "
            f"letters, digits, '_', '-' and '.' only (no folders)"
        )
    in_place = out_name == args.dataset
    out_path = src_path if in_place else dataset_dir / f"{out_name}.json"
    inside_dir(
        out_path,
        dataset_dir,
        f"{info_path}: dataset {args.dataset!r}: the file to write," if in_place else "--output-dataset file",
        allow=args.allow_outside_dataset_dir,
        flag="--allow-outside-dataset-dir (or write a new entry with --output-dataset NAME)",
    )
    rows = load_rows(src_path)
    media_dir = Path(args.media_dir) if args.media_dir else dataset_dir
    roots = [media_dir] + [Path(d) for d in args.allow_images_in]
    samples, unusable = build_samples(rows, media_dir)
    if not samples:
        reasons = sorted({r for _, r in unusable})
        raise DatasetError(
            f"{src_path}: none of its {len(rows)} rows can be asked about ({'; '.join(reasons)}); nothing to do"
        )

    cache_path = Path(args.cache) if args.cache else dataset_dir / "gen_cot" / f"{args.dataset}.cache.jsonl"
    report_path = (
        Path(args.report)
        if args.report
        else cache_path.with_name(cache_path.name.removesuffix(".jsonl").removesuffix(".cache") + ".report.json")
    )

    if not api_key and not args.dry_run:
        logger.warning("$%s is not set: sending requests without an API key", args.api_key_env)

    st = Stats(total=len(rows), unusable=len(unusable))
    for i, reason in unusable:
        sid = str(rows[i].get("id") or f"row {i}")
        st.failures[sid] = {"id": sid, "status": "skipped", "reason": reason}

    with JsonlCache(cache_path, redact=redact) as cache:
        pending: list[Sample] = []
        for s in samples:
            has_cot = rows[s.index].get("cot") not in (None, "")
            state = cache.states.get(s.id)
            final = state.final if state is not None else None
            if final is not None and final["status"] == "done":
                if _same_gold(final.get("keyphrases") or [], s.keyphrases):
                    st.done_cached += 1
                    continue
                st.stale += 1
                logger.warning(
                    "%s: the cached CoT was made for other keyphrases (%s); asking again",
                    s.id,
                    "; ".join(final.get("keyphrases") or []),
                )
            elif has_cot and not args.overwrite:
                st.skipped_has_cot += 1
                continue
            elif final is not None and final["status"] == "rejected" and not args.retry_rejected:
                st.rejected_cached += 1
                st.failures[s.id] = {
                    "id": s.id,
                    "status": "rejected",
                    "attempts": final.get("attempt"),
                    "reason": final.get("reason", ""),
                    "from_cache": True,
                }
                continue
            # An interrupted earlier conversation (attempt records after the last final one) resumes in ask().
            pending.append(s)
        if args.limit is not None:
            pending = pending[: args.limit]
        st.pending = len(pending)

        # Every image of every selected sample is checked before anything is sent (the probe included): a file
        # outside the media folder is never read, and a missing or broken image costs no request.
        bad_images = check_images(pending, src_path, roots, args.allow_images_outside_media_dir)
        if args.dry_run:
            if bad_images:
                raise DatasetError(_bad_images_message(bad_images, len(pending)))
            print(
                f"{len(samples)} samples; {st.done_cached} done in cache, {st.rejected_cached} rejected in cache, "
                f"{st.skipped_has_cot} already have a CoT; {len(pending)} would be asked."
            )
            if pending:
                gen = GenCot(args, redact, api_key)
                req = {
                    "model": args.model,
                    "messages": describe_messages(gen.first_messages(pending[0])),
                    **gen.request_params(),
                }
                print(f"first request ({pending[0].id}) to {args.base_url}/chat/completions:")
                print(json.dumps(req, indent=2, ensure_ascii=False))
            return 0

        gen = GenCot(args, redact, api_key)
        gen.stats = st
        gen.cache = cache
        aborted: str | None = None
        written = 0
        try:
            if bad_images:
                for b in bad_images:
                    st.failures.setdefault(b["id"], b)
                aborted = _bad_images_message(bad_images, len(pending))
                raise DatasetError(aborted)
            if pending:
                aborted = _ask(gen, pending, redact)
            if aborted:
                logger.error("stopped: %s", aborted)
        except BaseException as err:
            if aborted is None:
                aborted = redact(err) or type(err).__name__
            raise
        finally:
            # Everything finished so far goes into the dataset and the report, however the run ends.
            if gen.client is not None:
                st.requests = gen.client.chat_requests
                st.transport_retries = gen.client.transport_retries
                st.probe_requests = gen.client.probe_requests
            st.not_reached = len(pending) - (st.done_new + st.rejected_new + st.failed) if not bad_images else 0
            try:
                written = _write_dataset(src_path, out_path, in_place, entry, out_name, dataset_dir, media_dir,
                                         cache, args)
            finally:
                summary = _summary(args, st, dict(cache.tokens), written)
                report = {
                    "dataset": args.dataset,
                    "output_dataset": out_name,
                    "output_file": str(out_path),
                    "cache": str(cache_path),
                    "model": args.model,
                    "base_url": args.base_url,
                    "match": args.match,
                    "stopped": aborted,
                    "summary": summary,
                    "failures": sorted(st.failures.values(), key=lambda f: f["id"]),
                }
                atomic_write_text(report_path, redact(json.dumps(report, indent=2, ensure_ascii=False)) + "\n")

    _print_summary(args, st, summary, out_path, report_path, aborted)
    if aborted or st.failed or st.not_reached:
        return 1
    return 0


def _bad_images_message(bad: list[dict[str, Any]], n_pending: int) -> str:
    shown = "\n  ".join(b["reason"] for b in bad[:_MAX_LISTED])
    more = f"\n  ... and {len(bad) - _MAX_LISTED} more (all in the report)" if len(bad) > _MAX_LISTED else ""
    return (
        f"{len(bad)} image(s) of the {n_pending} selected samples cannot be sent; nothing was sent to the teacher:"
        f"\n  {shown}{more}"
    )


def _ask(gen: GenCot, pending: list[Sample], redact: Redactor) -> str | None:
    """Run the requests; returns why the run stopped early, or None."""
    from tqdm import tqdm

    gen._bar = tqdm(
        total=len(pending),
        unit="sample",
        desc="gen-cot",
        disable=gen.args.no_progress,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None

    def _on_term(signum, frame):
        raise KeyboardInterrupt

    if in_main:  # SIGTERM: stop like Ctrl-C, so the finished samples are written out
        signal.signal(signal.SIGTERM, _on_term)
    try:
        asyncio.run(gen.ask_all(pending))
    except TeacherError as err:  # EndpointError included
        return redact(err)
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        gen._bar.close()
    return None


def _merge_cots(rows: list[dict], other: list[dict]) -> int:
    """Give each row without a CoT the CoT of the row of ``other`` with the same id, text and keyphrases; returns
    how many were taken."""
    by_id = {str(r["id"]): r for r in other if r.get("id") is not None and r.get("cot") not in (None, "")}
    n = 0
    for row in rows:
        o = by_id.get(str(row.get("id")))
        if o is None or row.get("cot") not in (None, ""):
            continue
        if o.get("text") != row.get("text") or row_keyphrases(o) != row_keyphrases(row):
            continue
        row["cot"] = o["cot"]
        if "cot_source" in o:
            row["cot_source"] = o["cot_source"]
        n += 1
    return n


def _write_dataset(
    src_path: Path,
    out_path: Path,
    in_place: bool,
    entry: dict,
    out_name: str,
    dataset_dir: Path,
    media_dir: Path,
    cache: JsonlCache,
    args: argparse.Namespace,
) -> int:
    """Under the dataset file's write lock: re-read it (another run may have written CoTs meanwhile: they are
    kept), put in every accepted CoT of the cache, write it, update dataset_info.json. Returns how many rows got a
    teacher CoT."""
    with locked_files(out_path):
        rows = load_rows(src_path)
        if not in_place and out_path.is_file():
            _merge_cots(rows, load_rows(out_path, allow_empty=True))
        samples, _ = build_samples(rows, media_dir)
        written = _apply(rows, samples, cache, args)
        _write_rows(out_path, rows)
        new_entry = json.loads(json.dumps(entry))
        new_entry["file_name"] = Path(os.path.relpath(out_path, dataset_dir)).as_posix()
        new_entry.setdefault("columns", {})["cot"] = "cot"
        update_dataset_info(dataset_dir, out_name, new_entry["file_name"], entry=new_entry)
    return written


def _apply(rows: list[dict], samples: list[Sample], cache: JsonlCache, args: argparse.Namespace) -> int:
    """Put every accepted CoT from the cache into its row; returns how many rows got a teacher CoT."""
    n = 0
    for s in samples:
        row = rows[s.index]
        row.setdefault("cot", None)
        state = cache.states.get(s.id)
        final = state.final if state is not None else None
        if final is None or final["status"] != "done":
            continue
        if not _same_gold(final.get("keyphrases") or [], s.keyphrases):
            if row.get("cot") == final.get("cot"):  # a teacher CoT for keyphrases the row no longer has
                row["cot"] = None
                row.pop("cot_source", None)
            continue
        if row.get("cot") not in (None, "") and not args.overwrite and row.get("cot") != final["cot"]:
            continue
        row["cot"] = final["cot"]
        row["cot_source"] = f"teacher:{final.get('model', args.model)}"
        n += 1
    return n


def _summary(args, st: Stats, totals: dict[str, int], written: int) -> dict[str, Any]:
    return {
        "samples": st.total,
        "done": st.done_cached + st.done_new,
        "done_from_cache": st.done_cached,
        "done_this_run": st.done_new,
        "rejected": st.rejected_cached + st.rejected_new,
        "rejected_this_run": st.rejected_new,
        "failed": st.failed,
        "not_reached": st.not_reached,
        "skipped_has_cot": st.skipped_has_cot,
        "unusable": st.unusable,
        "stale_cache_entries": st.stale,
        "retried": st.retried,
        "transport_retries": st.transport_retries,
        "requests": st.requests,
        "replies": st.replies,
        "unanswered_requests": st.requests - st.replies,
        "probe_requests": st.probe_requests,
        "prompt_tokens": st.prompt_tokens,
        "completion_tokens": st.completion_tokens,
        "estimated_cost_usd": _cost(st.prompt_tokens, st.completion_tokens, args.price_prompt, args.price_completion),
        "all_runs_prompt_tokens": totals["prompt_tokens"],
        "all_runs_completion_tokens": totals["completion_tokens"],
        "all_runs_estimated_cost_usd": _cost(
            totals["prompt_tokens"], totals["completion_tokens"], args.price_prompt, args.price_completion
        ),
        "rows_with_teacher_cot": written,
    }


def _print_summary(args, st: Stats, s: dict[str, Any], out_path: Path, report_path: Path, aborted: str | None) -> None:
    lines = [
        f"gen-cot summary: {args.dataset} ({s['samples']} rows) with {args.model} at {args.base_url}"
        + (f"  [STOPPED: {aborted}]" if aborted else ""),
        f"  done       {s['done']:>7}  ({s['done_from_cache']} from cache, {s['done_this_run']} this run)",
        (
            f"  rejected   {s['rejected']:>7}  (failed validation on every attempt; {s['rejected_this_run']} this run;"
            " reasons in the report)"
        ),
        f"  failed     {s['failed']:>7}  (request errors this run; asked again on the next run)",
    ]
    if s["not_reached"]:
        lines.append(f"  not asked  {s['not_reached']:>7}  (the run stopped first; asked on the next run)")
    if s["skipped_has_cot"] or s["unusable"]:
        lines.append(
            f"  skipped    {s['skipped_has_cot'] + s['unusable']:>7}  ({s['skipped_has_cot']} already had a "
            f"CoT, {s['unusable']} without text or keyphrases)"
        )
    lines += [
        (
            f"  retried    {s['retried']:>7}  (re-asks after a rejected reply; plus {s['transport_retries']} transport "
            "retries on 429/5xx/time-outs)"
        ),
        (
            f"  requests   {s['requests']:>7}  chat requests sent this run ({s['replies']} answered, "
            f"{s['unanswered_requests']} failed: 429/5xx/time-outs/4xx; plus {s['probe_requests']} endpoint probe)"
        ),
        (
            f"  tokens     prompt {s['prompt_tokens']:,} / completion {s['completion_tokens']:,} this run "
            f"(all runs in the cache: {s['all_runs_prompt_tokens']:,} / {s['all_runs_completion_tokens']:,})"
        ),
    ]
    if s["estimated_cost_usd"] is not None:
        lines.append(
            f"  est. cost  ${s['estimated_cost_usd']:.4f} this run, ${s['all_runs_estimated_cost_usd']:.4f} all runs "
            f"(at ${args.price_prompt or 0:g} / ${args.price_completion or 0:g} per 1M prompt / completion tokens)"
        )
        if s["unanswered_requests"]:
            lines.append(
                f"             for {s['requests']} requests; the {s['unanswered_requests']} failed ones returned no token "
                "usage (an endpoint that bills failed requests costs more)"
            )
    else:
        lines.append("  est. cost  n/a (pass --price-prompt and --price-completion, USD per 1M tokens)")
    lines += [
        f"  dataset    {out_path} ({s['rows_with_teacher_cot']} rows with a teacher CoT)",
        f"  report     {report_path}",
    ]
    print("\n".join(lines))
