"""Statistics of MMKP splits: posts, keyphrases per post, unique keyphrases, present share, train->test overlap.

Inputs are SPLIT=PATH (SPLIT one of train, valid, test; PATH a converted .json/.jsonl dataset or a CMKP
source file). "Present" is the evaluator's rule (dyncot_plugin.tasks.mmkp.normalize): the lower-cased, Porter-stemmed
keyphrase tokens occur contiguously in the stemmed post text; shares are over keyphrase occurrences.
Overlap A->B is the share of B's unique keyphrases that also occur in A, by exact string (the definition of
MMKP's 97.32%). Prints a table; --json PATH also writes the numbers as JSON (--json - prints only JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dyncot_plugin.io.datasets import DatasetError, load_rows
from dyncot_plugin.io.files import atomic_write_json, paused_gc
from dyncot_plugin.io.splits import SPLITS, parse_split_specs
from dyncot_plugin.tasks.mmkp.normalize import is_present, stem_keyphrase, stem_phrase

JSON_SUFFIXES = (".json", ".jsonl")
OVERLAP_PAIRS = (("train", "valid"), ("train", "test"), ("valid", "test"))

Post = tuple[str, Sequence[str]]  # (text, keyphrases)


def load_posts(path: str | os.PathLike, *, kp_sep: str = ";") -> list[Post]:
    """``(text, keyphrases)`` of every post of a converted dataset (``.json``/``.jsonl``) or a CMKP source file."""
    path = Path(path)
    if path.suffix in JSON_SUFFIXES:
        posts = []
        for i, row in enumerate(load_rows(path)):
            text, kps = row.get("text"), row.get("keyphrases")
            if not isinstance(text, str) or not isinstance(kps, list) or not all(isinstance(k, str) for k in kps):
                raise DatasetError(
                    f"{path}: row {i} ({row.get('id', 'no id')}) lacks a 'text' string or a 'keyphrases' list of "
                    f"strings; stats reads those fields of the converted rows (see dyncot-data convert-cmkp)."
                )
            if not kps:
                raise DatasetError(f"{path}: row {i} ({row.get('id', 'no id')}): empty keyphrase list.")
            posts.append((text, kps))
        return posts
    from dyncot_plugin.tasks.mmkp.convert import read_cmkp_file

    return [(p.text, p.keyphrases) for p in read_cmkp_file(path, kp_sep=kp_sep)]


def split_stats(posts: Iterable[Post], *, progress: str | None = None) -> dict[str, Any]:
    """Counts of one split: posts, keyphrases (occurrences), keyphrases per post, unique keyphrases, present share.

    The evaluator's rule: keyphrases through :func:`stem_keyphrase` (each distinct one once), post texts through
    :func:`stem_phrase` (per-word stem cache: 10^5 posts take seconds), then :func:`is_present`.
    """
    kp_stems: dict[str, tuple[str, ...]] = {}
    n_posts = n_kps = n_present = 0
    if progress:
        from tqdm import tqdm

        posts = tqdm(posts, desc=progress, unit="post", file=sys.stderr)
    for text, kps in posts:
        n_posts += 1
        n_kps += len(kps)
        src = stem_phrase(text)
        for kp in kps:
            stemmed = kp_stems.get(kp)
            if stemmed is None:
                stemmed = kp_stems[kp] = stem_keyphrase(kp)
            if is_present(stemmed, src):
                n_present += 1
    return {
        "posts": n_posts,
        "keyphrases": n_kps,
        "keyphrases_per_post": n_kps / n_posts if n_posts else 0.0,
        "unique_keyphrases": len(kp_stems),
        "present": n_present,
        "absent": n_kps - n_present,
        "present_share": n_present / n_kps if n_kps else 0.0,
        "absent_share": (n_kps - n_present) / n_kps if n_kps else 0.0,
    }


def keyphrase_overlap(source: Iterable[Post], target: Iterable[Post]) -> dict[str, Any]:
    """Share of ``target``'s unique keyphrases that occur in ``source`` (exact string); also by occurrence."""
    seen = {kp for _, kps in source for kp in kps}
    target_kps = [kp for _, kps in target for kp in kps]
    unique = set(target_kps)
    n_seen = len(unique & seen)
    occ_seen = sum(kp in seen for kp in target_kps)
    return {
        "unique_target_keyphrases": len(unique),
        "seen_in_source": n_seen,
        "overlap": n_seen / len(unique) if unique else 0.0,
        "occurrence_overlap": occ_seen / len(target_kps) if target_kps else 0.0,
    }


def compute_stats(
    splits: dict[str, Sequence[Post]], *, files: dict[str, str] | None = None, progress: bool = False
) -> dict[str, Any]:
    """Statistics of named splits (``{"train": posts, "test": posts}``) and the overlap of every ordered pair
    train->valid, train->test, valid->test that is present."""
    for split in splits:
        if split not in SPLITS:
            raise DatasetError(f"unknown split name {split!r}; use one of {', '.join(SPLITS)}.")
    out: dict[str, Any] = {"splits": {}, "overlap": {}}
    for split in SPLITS:
        if split in splits:
            entry = {"file": (files or {}).get(split)} if files else {}
            entry.update(split_stats(splits[split], progress=split if progress else None))
            out["splits"][split] = entry
    for a, b in OVERLAP_PAIRS:
        if a in splits and b in splits:
            out["overlap"][f"{a}->{b}"] = keyphrase_overlap(splits[a], splits[b])
    return out


def format_table(stats: dict[str, Any]) -> str:
    """The human-readable table printed by ``dyncot-data stats``."""
    head = f"{'split':<6} {'posts':>8} {'kps/post':>8} {'unique kps':>10} {'present':>8} {'absent':>8}"
    lines = [head, "-" * len(head)]
    for split, s in stats["splits"].items():
        lines.append(
            f"{split:<6} {s['posts']:>8} {s['keyphrases_per_post']:>8.3f} {s['unique_keyphrases']:>10} "
            f"{100 * s['present_share']:>7.2f}% {100 * s['absent_share']:>7.2f}%"
        )
    if stats["overlap"]:
        lines.append("")
        lines.append("overlap A->B: share of B's unique keyphrases that occur in A (exact string)")
        for pair, o in stats["overlap"].items():
            lines.append(
                f"  {pair:<12} {100 * o['overlap']:6.2f}%  ({o['seen_in_source']} / {o['unique_target_keyphrases']}; "
                f"{100 * o['occurrence_overlap']:.2f}% of keyphrase occurrences)"
            )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="SPLIT=PATH", help="e.g. train=data/mmkp_train.json test=test_src.txt"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write the statistics as JSON to PATH ('-': print JSON only)"
    )
    parser.add_argument("--kp-sep", default=";", help="keyphrase separator of CMKP source files (default: ';')")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    files = {split: str(path) for split, path in parse_split_specs(args.inputs).items()}
    with paused_gc():
        splits = {split: load_posts(path, kp_sep=args.kp_sep) for split, path in files.items()}
        stats = compute_stats(splits, files=files, progress=not args.quiet)
    if args.json == "-":
        print(json.dumps(stats, indent=2))
        return 0
    print(format_table(stats))
    if args.json:
        atomic_write_json(args.json, stats, indent=2)
        print(f"\nwrote {args.json}")
    return 0


__all__ = ["compute_stats", "format_table", "keyphrase_overlap", "load_posts", "split_stats"]
