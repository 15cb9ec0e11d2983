"""The options of ``dyncot-data gen-cot``, their defaults (and why), and the checks run before anything is read.

Three ways to ask the teacher share every option about the data, the request and the validation:

- online (the default): one chat request per sample to ``--base-url``, ``--concurrency`` at once;
- ``--batch-write FILE`` / ``--batch-read FILE...``: request files for any batch runner (OpenAI's Batch API,
  ``vllm run-batch``) and their result files;
- ``--batch openai``: the whole round trip through OpenAI's Files and Batches API.
"""

from __future__ import annotations

import argparse
import json
import os

from dyncot_plugin.teacher.validate import DEFAULT_MATCH, MATCH_RULES

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
    "batch_max_requests": 50_000,  # OpenAI's Batch API: at most 50,000 requests per input file
    "batch_max_mb": 200.0,  # ... and at most 200 MB per input file (base64 images fill it fast)
    "batch_discount": 0.5,  # OpenAI's Batch API costs half the online price
    "batch_poll": 60.0,  # a batch takes minutes to hours; one status call a minute is plenty
}

BATCH_SERVICES = ("openai",)


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
        "(default: $OPENAI_BASE_URL; with --batch openai: https://api.openai.com/v1)",
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
        help="re-asks after a rejected reply, each telling the teacher what was wrong; with --batch openai, "
        "the rounds after the first (default: %(default)s)",
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

    g = parser.add_argument_group("batch (instead of online requests; see docs/teacher.md)")
    ways = g.add_mutually_exclusive_group()
    ways.add_argument(
        "--batch-write",
        metavar="FILE",
        default=None,
        help="write one request line per pending sample (custom_id = sample id) to FILE, split into FILE-001, "
        "FILE-002, ... where a limit below is reached; send nothing",
    )
    ways.add_argument(
        "--batch-read",
        metavar="FILE",
        nargs="+",
        default=None,
        help="read result files (OpenAI's output and error files, or vllm run-batch's output), validate every "
        "reply and write the dataset; a file with an unknown, duplicate or unasked custom_id or a malformed "
        "line is refused whole",
    )
    ways.add_argument(
        "--batch",
        choices=BATCH_SERVICES,
        default=None,
        help="openai: write, upload, create the batch, poll it, download and read its results (resumable)",
    )
    g.add_argument(
        "--batch-max-requests",
        type=int,
        default=d["batch_max_requests"],
        help="requests per batch file at most (default: %(default)s, OpenAI's limit)",
    )
    g.add_argument(
        "--batch-max-mb",
        type=float,
        default=d["batch_max_mb"],
        help="size of a batch file at most, in MB of 10^6 bytes (default: %(default)s, OpenAI's limit)",
    )
    g.add_argument(
        "--batch-discount",
        type=float,
        default=d["batch_discount"],
        help="share of the online price a batch request saves, for the cost (default: %(default)s)",
    )
    g.add_argument(
        "--batch-poll",
        type=float,
        default=d["batch_poll"],
        help="seconds between two status calls of a running batch (default: %(default)s)",
    )

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


def mode(args: argparse.Namespace) -> str:
    """``online``, ``batch-write``, ``batch-read`` or ``batch-openai``."""
    if args.batch_write:
        return "batch-write"
    if args.batch_read:
        return "batch-read"
    if args.batch:
        return f"batch-{args.batch}"
    return "online"


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad values by name (a ValueError, printed as one error line) before any file is read."""
    for name, low in (("retries", 0), ("max_retries", 0), ("concurrency", 1), ("max_tokens", 1),
                      ("batch_max_requests", 1)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}")
    if args.timeout <= 0:
        raise ValueError("--timeout must be > 0")
    if args.batch_max_mb <= 0:
        raise ValueError("--batch-max-mb must be > 0")
    if args.batch_poll < 0:
        raise ValueError("--batch-poll must be >= 0")
    if not 0 <= args.batch_discount < 1:
        raise ValueError("--batch-discount must be >= 0 and < 1 (0.5: half the online price)")
    m = mode(args)
    if m == "batch-openai" and not args.base_url:
        args.base_url = "https://api.openai.com/v1"
    if m in ("online", "batch-openai") and not args.base_url:
        raise ValueError("no endpoint: pass --base-url (or set OPENAI_BASE_URL)")
    if args.extra_body is not None and not isinstance(args.extra_body, dict):
        raise ValueError("--extra-body must be a JSON object")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: ask about at least 1 sample (leave --limit out for all)")
