"""What a gen-cot run counts, and the summary it prints and keeps in its report (``<dataset>.report.json``).

Every number comes from one :class:`Stats` filled by whichever path asked the teacher (online or batch), so the
summary reads the same for both; the batch lines (files, batches, cost at the batch discount) are added where a
batch path ran.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    # batch paths: requests written to files, replies read back (their tokens are also in the counts above)
    batch_written: int = 0
    batch_replies: int = 0
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    reask: set[str] = field(default_factory=set)  # batch: samples whose last reply was rejected with re-asks left
    failures: dict[str, dict] = field(default_factory=dict)
    batch: dict[str, Any] = field(default_factory=dict)  # what the batch path did: files, batches, estimate
    batch_lines: list[str] = field(default_factory=list)  # the summary's lines about it

    @property
    def open_attempts(self) -> int:
        return len(self.reask)


def cost(prompt: int, completion: int, price_prompt: float | None, price_completion: float | None,
         discount: float = 0.0) -> float | None:
    """USD for the tokens at the prices per 1M tokens, less ``discount`` (the batch share); None without prices."""
    if price_prompt is None and price_completion is None:
        return None
    return (prompt * (price_prompt or 0.0) + completion * (price_completion or 0.0)) * (1.0 - discount) / 1_000_000


def summary(args: argparse.Namespace, st: Stats, totals: dict[str, int], written: int) -> dict[str, Any]:
    """``totals``: the cache's token counts over all runs (``prompt_tokens``, ``completion_tokens``, and the
    ``batch_*`` share of them, priced at the batch discount)."""
    pp, pc, disc = args.price_prompt, args.price_completion, args.batch_discount
    online_p, online_c = st.prompt_tokens - st.batch_prompt_tokens, st.completion_tokens - st.batch_completion_tokens
    this_run = cost(online_p, online_c, pp, pc)
    if this_run is not None:
        this_run += cost(st.batch_prompt_tokens, st.batch_completion_tokens, pp, pc, disc)
    all_p, all_c = totals["prompt_tokens"], totals["completion_tokens"]
    bp, bc = totals.get("batch_prompt_tokens", 0), totals.get("batch_completion_tokens", 0)
    all_runs = cost(all_p - bp, all_c - bc, pp, pc)
    if all_runs is not None:
        all_runs += cost(bp, bc, pp, pc, disc)
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
        "unanswered_requests": st.requests - (st.replies - st.batch_replies),
        "probe_requests": st.probe_requests,
        "prompt_tokens": st.prompt_tokens,
        "completion_tokens": st.completion_tokens,
        "estimated_cost_usd": this_run,
        # what the same tokens cost at the online price: the batch paths' saving at a glance
        "estimated_cost_online_usd": cost(st.prompt_tokens, st.completion_tokens, pp, pc),
        "all_runs_prompt_tokens": all_p,
        "all_runs_completion_tokens": all_c,
        "all_runs_estimated_cost_usd": all_runs,
        "rows_with_teacher_cot": written,
        "batch_requests_written": st.batch_written,
        "batch_replies_read": st.batch_replies,
        "batch_prompt_tokens": st.batch_prompt_tokens,
        "batch_completion_tokens": st.batch_completion_tokens,
        "open_attempts": st.open_attempts,
    }


def print_summary(args, st: Stats, s: dict[str, Any], out_path: Path | None, report_path: Path,
                  aborted: str | None, batch_lines: list[str] = ()) -> None:
    where = f"at {args.base_url}" if not (args.batch_write or args.batch_read) else "(batch files)"
    lines = [
        f"gen-cot summary: {args.dataset} ({s['samples']} rows) with {args.model} {where}"
        + (f"  [STOPPED: {aborted}]" if aborted else ""),
        f"  done       {s['done']:>7}  ({s['done_from_cache']} from cache, {s['done_this_run']} this run)",
        (
            f"  rejected   {s['rejected']:>7}  (failed validation on every attempt; {s['rejected_this_run']} this run;"
            " reasons in the report)"
        ),
        f"  failed     {s['failed']:>7}  (request errors this run; asked again on the next run)",
    ]
    if s["open_attempts"]:
        lines.append(
            f"  re-ask     {s['open_attempts']:>7}  (replies rejected this run with re-asks left: the next "
            "--batch-write or round asks again, with the feedback)"
        )
    if s["not_reached"]:
        lines.append(f"  not asked  {s['not_reached']:>7}  (the run stopped first; asked on the next run)")
    if s["skipped_has_cot"] or s["unusable"]:
        lines.append(
            f"  skipped    {s['skipped_has_cot'] + s['unusable']:>7}  ({s['skipped_has_cot']} already had a "
            f"CoT, {s['unusable']} without text or keyphrases)"
        )
    lines.append(
        f"  retried    {s['retried']:>7}  (re-asks after a rejected reply; plus {s['transport_retries']} transport "
        "retries on 429/5xx/time-outs)"
    )
    if s["requests"] or not (args.batch_write or args.batch_read or args.batch):
        lines.append(
            f"  requests   {s['requests']:>7}  chat requests sent this run ({s['replies']} answered, "
            f"{s['unanswered_requests']} failed: 429/5xx/time-outs/4xx; plus {s['probe_requests']} endpoint probe)"
        )
    lines += list(batch_lines)
    lines.append(
        f"  tokens     prompt {s['prompt_tokens']:,} / completion {s['completion_tokens']:,} this run "
        f"(all runs in the cache: {s['all_runs_prompt_tokens']:,} / {s['all_runs_completion_tokens']:,})"
    )
    if args.batch_write:
        pass  # nothing was asked: the estimate above is the cost
    elif s["estimated_cost_usd"] is not None:
        at = f"at ${args.price_prompt or 0:g} / ${args.price_completion or 0:g} per 1M prompt / completion tokens"
        online = ""
        if s["batch_prompt_tokens"] or s["batch_completion_tokens"] or args.batch_read or args.batch:
            at += f"; batch replies at {args.batch_discount:.0%} off"
            online = f" (online: ${s['estimated_cost_online_usd']:.4f})"
        lines.append(
            f"  est. cost  ${s['estimated_cost_usd']:.4f} this run{online}, ${s['all_runs_estimated_cost_usd']:.4f} "
            f"all runs ({at})"
        )
        if s["unanswered_requests"]:
            lines.append(
                f"             for {s['requests']} requests; the {s['unanswered_requests']} failed ones returned no token "
                "usage (an endpoint that bills failed requests costs more)"
            )
    else:
        lines.append("  est. cost  n/a (pass --price-prompt and --price-completion, USD per 1M tokens)")
    if out_path is not None:
        lines.append(f"  dataset    {out_path} ({s['rows_with_teacher_cot']} rows with a teacher CoT)")
    lines.append(f"  report     {report_path}")
    print("\n".join(lines))
