"""Write the CoT column of a dataset with a teacher model behind any OpenAI-compatible chat endpoint.

For every sample without a CoT, the teacher gets the post text, the image (base64 data URL) and the gold
keyphrases, and is asked for ``<think>rationale</think><answer>kp1; kp2</answer>``. Each reply is validated
(format, and keyphrases equal to the gold ones after the evaluator's stemming); a rejected reply is sent back with
the reason, up to --retries times. Every received reply is appended to a fsync'd JSONL cache keyed by sample id,
so a rerun after a crash (even kill -9) neither loses a finished sample nor asks the teacher about it again.
The API key is read from the environment (--api-key-env) and never written anywhere.

Online (one request per sample), or in batches at about half the price: --batch-write FILE writes the requests
for any batch runner (OpenAI's Batch API, vllm run-batch) and --batch-read FILE... reads their results;
--batch openai does the whole round trip through OpenAI's Files and Batches API, resumable. See docs/teacher.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from dyncot_plugin.io.datasets import DatasetError, load_rows, read_dataset_info
from dyncot_plugin.io.files import atomic_write_text
from dyncot_plugin.io.read import inside_dir
from dyncot_plugin.teacher.arguments import DEFAULTS, add_arguments, check_arguments, mode
from dyncot_plugin.teacher.asker import OnlineAsker, run_online
from dyncot_plugin.teacher.batch_files import URL, Ledger, ingest, read_results, write_requests
from dyncot_plugin.teacher.batch_openai import OpenAIBatches
from dyncot_plugin.teacher.cache import CacheLockedError, JsonlCache
from dyncot_plugin.teacher.client import RedactingFormatter, Redactor
from dyncot_plugin.teacher.cost import Estimate
from dyncot_plugin.teacher.dataset_writer import write_dataset
from dyncot_plugin.teacher.prompts import PromptSet, describe_messages
from dyncot_plugin.teacher.report import Stats, print_summary, summary
from dyncot_plugin.teacher.request_body import build_request_body, request_params
from dyncot_plugin.teacher.samples import (
    IMAGE_FORMATS,
    CheckedImage,
    ImageChangedError,
    Sample,
    bad_images_message,
    build_samples,
    check_image,
    check_images,
    image_problem,
    read_checked,
    select_pending,
)

# Re-exported: the names this module had before it was split (tests and callers import them from here).
__all__ = [
    "DEFAULTS", "IMAGE_FORMATS", "CheckedImage", "ImageChangedError", "Sample", "add_arguments", "build_samples",
    "check_image", "check_images", "image_problem", "read_checked", "run",
]

logger = logging.getLogger("dyncot_plugin.teacher")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


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


def run(args: argparse.Namespace) -> int:
    api_key = os.environ.get(args.api_key_env) or None
    redact = Redactor(api_key)
    _setup_logging(redact)
    try:
        return _run(args, api_key, redact)
    except (DatasetError, CacheLockedError, ValueError, OSError) as err:
        print(f"dyncot-data gen-cot: error: {redact(err)}", file=sys.stderr)
        return 2


class _Paths:
    """Where the run reads and writes, all checked before anything is read or sent."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dataset_dir = dataset_dir = Path(args.dataset_dir)
        info_path = dataset_dir / "dataset_info.json"
        info = read_dataset_info(dataset_dir)
        if args.dataset not in info:
            known = ", ".join(sorted(info)) or "none"
            raise DatasetError(f"{info_path}: no entry {args.dataset!r} (entries: {known})")
        entry = info[args.dataset]
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            raise DatasetError(f"{info_path}: entry {args.dataset!r} has no 'file_name'")
        self.entry = entry
        self.src = dataset_dir / entry["file_name"]
        self.out_name = args.output_dataset or args.dataset
        if args.output_dataset is not None and not _NAME_RE.match(args.output_dataset):
            raise DatasetError(
                f"--output-dataset {args.output_dataset!r}: a dataset name, written to <dataset-dir>/<name>.json; "
                f"use letters, digits, '_', '-' and '.' only (no folders)"
            )
        self.in_place = self.out_name == args.dataset
        self.out = self.src if self.in_place else dataset_dir / f"{self.out_name}.json"
        inside_dir(
            self.out,
            dataset_dir,
            f"{info_path}: dataset {args.dataset!r}: the file to write," if self.in_place else "--output-dataset file",
            allow=args.allow_outside_dataset_dir,
            flag="--allow-outside-dataset-dir (or write a new entry with --output-dataset NAME)",
        )
        self.media_dir = Path(args.media_dir) if args.media_dir else dataset_dir
        self.roots = [self.media_dir] + [Path(d) for d in args.allow_images_in]
        self.cache = Path(args.cache) if args.cache else dataset_dir / "gen_cot" / f"{args.dataset}.cache.jsonl"
        self.report = (
            Path(args.report)
            if args.report
            else self.cache.with_name(self.cache.name.removesuffix(".jsonl").removesuffix(".cache") + ".report.json")
        )


def _run(args: argparse.Namespace, api_key: str | None, redact: Redactor) -> int:
    check_arguments(args)
    how = mode(args)
    paths = _Paths(args)
    rows = load_rows(paths.src)
    samples, unusable = build_samples(rows, paths.media_dir)
    if not samples:
        reasons = sorted({r for _, r in unusable})
        raise DatasetError(
            f"{paths.src}: none of its {len(rows)} rows can be asked about ({'; '.join(reasons)}); nothing to do"
        )
    if not api_key and not args.dry_run and how in ("online", "batch-openai"):
        logger.warning("$%s is not set: sending requests without an API key", args.api_key_env)
    prompts = PromptSet.from_files(
        args.system_prompt_file, args.user_prompt_file, args.retry_prompt_file, args.image_detail
    )

    st = Stats(total=len(rows), unusable=len(unusable))
    for i, reason in unusable:
        sid = str(rows[i].get("id") or f"row {i}")
        st.failures[sid] = {"id": sid, "status": "skipped", "reason": reason}

    with JsonlCache(paths.cache, redact=redact) as cache:
        pending = select_pending(samples, rows, cache, args, st)
        if how == "batch-read":
            return _batch_read(args, paths, samples, cache, st, redact)

        def check(selected: list[Sample]) -> str | None:
            # Every image of every selected sample is checked before anything is sent (the probe included): a file
            # outside the media folder is never read, and a missing or broken image costs no request.
            bad = check_images(selected, paths.src, paths.roots, args.allow_images_outside_media_dir)
            for b in bad:
                st.failures.setdefault(b["id"], b)
            return bad_images_message(bad, len(selected)) if bad else None

        # --batch openai checks each round's samples when it writes the round (a batch in flight was checked then)
        bad_images = check(pending) if how != "batch-openai" or args.dry_run else None
        if args.dry_run:
            if bad_images:
                raise DatasetError(bad_images)
            return _dry_run(args, samples, pending, cache, st, prompts, how)

        aborted: str | None = None
        asker = None
        try:
            if bad_images:
                aborted = bad_images
                raise DatasetError(aborted)
            if how == "online" and pending:
                asker = OnlineAsker(args, redact, api_key, prompts, cache, st)
                aborted = run_online(asker, pending)
            elif how == "batch-write":
                est = Estimate(args, _cache_replies(cache))
                parts = write_requests(Path(args.batch_write), pending, cache, Ledger(cache.path), args, prompts, st, est)
                st.batch["written"] = [{k: v for k, v in p.items() if k != "ids"} for p in parts]
                st.batch["estimate"] = est.as_dict()
                st.batch_lines += [f"  written    {p['requests']:>7}  requests to {p['path']} ({p['bytes'] / 1e6:.2f} MB)"
                                   for p in parts] + est.lines()
            elif how == "batch-openai":
                by_id = {s.id: s for s in samples}
                aborted = OpenAIBatches(args, api_key, redact, cache, st, by_id, prompts, check).run(pending)
            if aborted:
                logger.error("stopped: %s", aborted)
        except BaseException as err:
            if aborted is None:
                aborted = redact(err) or type(err).__name__
            raise
        finally:
            # Everything finished so far goes into the dataset and the report, however the run ends.
            if asker is not None:
                asker.counts_into_stats()
            if how in ("online", "batch-openai") and not bad_images:
                st.not_reached = max(0, len(pending) - (st.done_new + st.rejected_new + st.failed + st.open_attempts))
            s = _finish(args, paths, st, cache, aborted, redact, write_rows=how != "batch-write")

    print_summary(args, st, s, paths.out if how != "batch-write" else None, paths.report, aborted, st.batch_lines)
    if aborted or st.failed or st.not_reached or (how == "batch-openai" and st.open_attempts):
        return 1
    return 0


def _cache_replies(cache: JsonlCache) -> tuple[int, int]:
    """(replies in the cache, their completion tokens): the typical reply length for the estimate."""
    return sum(s.replies for s in cache.states.values()), cache.tokens["completion_tokens"]


def _finish(args, paths: _Paths, st: Stats, cache: JsonlCache, aborted: str | None, redact: Redactor,
            write_rows: bool = True) -> dict:
    """Write the dataset (with every accepted CoT of the cache) and the report; returns the summary."""
    written = 0
    try:
        if write_rows:
            written = write_dataset(paths.src, paths.out, paths.in_place, paths.entry, paths.out_name,
                                    paths.dataset_dir, paths.media_dir, cache, args)
    finally:
        s = summary(args, st, dict(cache.tokens), written)
        _write_report(args, paths, st, s, aborted, redact)
    return s


def _dry_run(args, samples: list[Sample], pending: list[Sample], cache: JsonlCache, st: Stats, prompts: PromptSet,
             how: str) -> int:
    print(
        f"{len(samples)} samples; {st.done_cached} done in cache, {st.rejected_cached} rejected in cache, "
        f"{st.skipped_has_cot} already have a CoT; {len(pending)} would be asked."
    )
    params = request_params(args)
    bodies = []
    for s in pending if how != "online" else pending[:1]:
        state = cache.states.get(s.id)
        bodies.append(build_request_body(s, list(state.attempts) if state else [], model=args.model,
                                         prompts=prompts, params=params))
    if how != "online":
        est = Estimate(args, _cache_replies(cache))
        for s, body in zip(pending, bodies):
            est.add(body, len(json.dumps({"custom_id": s.id, "method": "POST", "url": URL, "body": body},
                                         ensure_ascii=False).encode("utf-8")) + 1)
        print("\n".join(est.lines()))
    if pending:
        req = dict(bodies[0], messages=describe_messages(bodies[0]["messages"]))
        print(f"first request ({pending[0].id}) to {args.base_url}/chat/completions:")
        print(json.dumps(req, indent=2, ensure_ascii=False))
    return 0


def _batch_read(args, paths: _Paths, samples: list[Sample], cache: JsonlCache, st: Stats, redact: Redactor) -> int:
    """Check every line of the result files (refused whole on any problem: nothing written), then read them in."""
    by_id = {s.id: s for s in samples}
    ledger = Ledger(cache.path)
    files = [Path(f) for f in args.batch_read]
    lines, before = read_results(files, by_id, cache, ledger)
    unanswered = [sid for sid in ledger.requests if ledger.unanswered(sid, cache) and sid in by_id]
    if args.dry_run:
        print(f"{len(lines)} result line(s) to read, {before} read before; nothing read (--dry-run)")
        return 0
    aborted = None
    outcomes: dict[str, str] = {}
    try:
        outcomes = ingest(lines, by_id, cache, ledger, args, st)
    except BaseException as err:
        aborted = redact(err) or type(err).__name__
        raise
    finally:
        # a request error is a result too (the request is written again by the next --batch-write)
        still = [sid for sid in unanswered if ledger.unanswered(sid, cache) and sid not in outcomes]
        st.batch["read"] = {"files": [str(f) for f in files], "lines": len(lines) + before, "read_before": before,
                            "replies": st.batch_replies, "errors": st.failed, "requests_without_result": still}
        st.batch_lines.append(
            f"  read       {len(lines) + before:>7}  result lines from {len(files)} file(s): {st.batch_replies} "
            f"replies ({st.done_new} accepted, {st.open_attempts} to ask again, {st.rejected_new} rejected for good), "
            f"{st.failed} request errors, {before} read before (skipped)"
        )
        if still:
            st.batch_lines.append(f"  no result  {len(still):>7}  requests written earlier have no result in these "
                                  f"files yet ({', '.join(still[:5])}{', ...' if len(still) > 5 else ''})")
        s = _finish(args, paths, st, cache, aborted, redact)
    print_summary(args, st, s, paths.out, paths.report, aborted, st.batch_lines)
    return 1 if st.failed or st.open_attempts else 0


def _write_report(args, paths: _Paths, st: Stats, s: dict, aborted: str | None, redact: Redactor) -> None:
    report = {
        "dataset": args.dataset,
        "output_dataset": paths.out_name,
        "output_file": str(paths.out),
        "cache": str(paths.cache),
        "model": args.model,
        "base_url": args.base_url,
        "match": args.match,
        "mode": mode(args),
        "stopped": aborted,
        "summary": s,
        "failures": sorted(st.failures.values(), key=lambda f: f["id"]),
    }
    if st.batch:
        report["batch"] = st.batch
    atomic_write_text(paths.report, redact(json.dumps(report, indent=2, ensure_ascii=False)) + "\n")
