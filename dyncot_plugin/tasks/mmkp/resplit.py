"""Re-split a pool of posts into train/test so that the train->test keyphrase overlap hits a target (MMKP-V2).

Inputs are the pool files: CMKP source files (X_src.txt) or converted datasets (.json/.jsonl), not mixed,
written PATH or SPLIT=PATH (a test= input sets the default --test-size). The test split gets exactly
--test-size posts; every other post goes to train; no post is in both. Posts with the same text or the same
image are kept on the same side. Overlap = share of the test split's unique keyphrases that occur in train
(exact string). The search starts from a seeded random split and swaps as few posts as needed, so the result
is deterministic for a seed. CMKP input gives <out>/train_src.txt and test_src.txt (and the side files with
--side-files); JSON input gives <out>/<name>_{train,test}.json and dataset_info.json entries. A report
<out>/<name>_resplit.json records the overlap achieved and where every post came from.
"""

from __future__ import annotations

import argparse
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyncot_plugin.io.datasets import DatasetError, check_dataset_name, load_rows, update_dataset_info
from dyncot_plugin.io.files import StagedWrites, locked_files, paused_gc
from dyncot_plugin.io.splits import parse_split_spec, sample_id

JSON_SUFFIXES = (".json", ".jsonl")
DEFAULT_TARGET = 0.45
DEFAULT_TOLERANCE = 0.01


# ------------------------------------------------------------------------------------------------ the algorithm


@dataclass
class ResplitResult:
    """The selected test posts (pool indices, ascending) and what the search achieved."""

    test: list[int]
    train: list[int]
    overlap: float
    target: float
    seen: int  # unique test keyphrases that occur in train
    unseen: int  # unique test keyphrases that occur only in test
    initial_overlap: float  # of the seeded random start
    swaps: int
    attempts: int
    units: int  # groups of duplicate posts moved together
    info: dict[str, Any] = field(default_factory=dict)


def _duplicate_groups(keys: list[list[str]]) -> list[list[int]]:
    """Union-find: posts sharing any key (their text, their image) end up in one group; groups by first index."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, ks in enumerate(keys):
        for k in ks:
            j = owner.setdefault(k, i)
            if j != i:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def select_split(
    keyphrases: list[list[str]],
    test_size: int,
    target: float,
    *,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    group_keys: list[list[str]] | None = None,
    candidates: int = 64,
    patience: int = 3000,
    max_attempts: int = 1_000_000,
) -> ResplitResult:
    """Choose ``test_size`` test posts out of the pool so that the train->test overlap is ``target`` ± ``tolerance``.

    ``keyphrases[i]`` are the keyphrases of pool post ``i``; ``group_keys[i]`` (optional) are strings such as the
    post's text and image: posts sharing one are moved as a unit. A test keyphrase with ``t`` of its ``c`` pool
    occurrences in test is *seen* (occurs in train) iff ``t < c``, so the overlap ``seen / (seen + unseen)`` is
    kept up to date from per-keyphrase counts in O(keyphrases of the moved posts).

    Search: a seeded random test set of the right size, then local search: each attempt samples ``candidates``
    train units and adds the one that brings the overlap closest to the target, then samples ``candidates`` test
    units of the same size and removes the best one; the swap is kept only if it reduces the distance to the
    target. It stops ``tolerance / 10`` from the target, or after ``patience`` fruitless attempts. Raises
    :class:`DatasetError` when the final overlap is further than ``tolerance`` from the target.
    """
    n = len(keyphrases)
    if not 0.0 <= target <= 1.0:
        raise DatasetError(f"target overlap {target} is not between 0 and 1.")
    if not 0 < test_size < n:
        raise DatasetError(f"test size {test_size} must be between 1 and the pool size minus 1 ({n - 1}).")
    # keyphrase ids in order of first appearance (deterministic, independent of hash seeds)
    kp_id: dict[str, int] = {}
    post_kps = [[kp_id.setdefault(kp, len(kp_id)) for kp in dict.fromkeys(kps)] for kps in keyphrases]
    count = [0] * len(kp_id)
    for ks in post_kps:
        for k in ks:
            count[k] += 1
    units = _duplicate_groups(group_keys) if group_keys is not None else [[i] for i in range(n)]
    unit_size = [len(u) for u in units]
    unit_kps: list[list[tuple[int, int]]] = []
    for u in units:
        c: Counter[int] = Counter()
        for i in u:
            c.update(post_kps[i])
        unit_kps.append(list(c.items()))

    t = [0] * len(kp_id)  # occurrences in test, per keyphrase
    seen = unseen = 0

    def delta(u: int, sign: int) -> tuple[int, int]:
        ds = du = 0
        for k, m in unit_kps[u]:
            ck, a = count[k], t[k]
            b = a + sign * m
            sa = 0 if a == 0 else (2 if a == ck else 1)
            sb = 0 if b == 0 else (2 if b == ck else 1)
            if sa != sb:
                ds += (sb == 1) - (sa == 1)
                du += (sb == 2) - (sa == 2)
        return ds, du

    def apply(u: int, sign: int) -> None:
        nonlocal seen, unseen
        ds, du = delta(u, sign)
        seen += ds
        unseen += du
        for k, m in unit_kps[u]:
            t[k] += sign * m

    def dist(s: int, un: int) -> float:
        return abs((s / (s + un) if s + un else 0.0) - target)

    rng = random.Random(seed)
    order = list(range(len(units)))
    rng.shuffle(order)
    in_test: list[int] = []  # unit ids, with pos[] for O(1) removal
    in_train: list[int] = []
    pos = [0] * len(units)
    size = 0
    for u in order:
        if size + unit_size[u] <= test_size:
            size += unit_size[u]
            pos[u] = len(in_test)
            in_test.append(u)
            apply(u, +1)
        else:
            pos[u] = len(in_train)
            in_train.append(u)
    if size != test_size:
        raise DatasetError(
            f"cannot make a test split of exactly {test_size} posts from groups of duplicate posts; "
            f"try another size or --no-group-duplicates."
        )

    def move(u: int, src: list[int], dst: list[int]) -> None:
        last = src.pop()
        if last != u:
            src[pos[u]] = last
            pos[last] = pos[u]
        pos[u] = len(dst)
        dst.append(u)

    initial = seen / (seen + unseen) if seen + unseen else 0.0
    goal = tolerance / 10
    current = dist(seen, unseen)
    swaps = attempts = fruitless = 0
    while current > goal and fruitless < patience and attempts < max_attempts:
        attempts += 1
        best_b, best_d = -1, float("inf")
        for _ in range(candidates):
            b = in_train[rng.randrange(len(in_train))]
            ds, du = delta(b, +1)
            d = dist(seen + ds, unseen + du)
            if d < best_d:
                best_b, best_d = b, d
        apply(best_b, +1)
        best_a, best_d = -1, float("inf")
        for _ in range(candidates):
            a = in_test[rng.randrange(len(in_test))]
            if unit_size[a] != unit_size[best_b] or a == best_b:
                continue
            ds, du = delta(a, -1)
            d = dist(seen + ds, unseen + du)
            if d < best_d:
                best_a, best_d = a, d
        if best_a >= 0 and best_d < current:
            apply(best_a, -1)
            move(best_b, in_train, in_test)
            move(best_a, in_test, in_train)
            current = best_d
            swaps += 1
            fruitless = 0
        else:
            apply(best_b, -1)
            fruitless += 1

    overlap = seen / (seen + unseen) if seen + unseen else 0.0
    test = sorted(i for u in in_test for i in units[u])
    train = sorted(i for u in in_train for i in units[u])
    result = ResplitResult(test, train, overlap, target, seen, unseen, initial, swaps, attempts, len(units))
    if abs(overlap - target) > tolerance:
        raise DatasetError(
            f"could not reach a train->test overlap of {target:.4f} ± {tolerance:.4f} with {test_size} test posts out "
            f"of {n}: the closest split found has {overlap:.4f} (random split: {initial:.4f}; {swaps} swaps). Try a "
            f"larger pool, another --test-size or a target nearer the random split's."
        )
    return result


# ------------------------------------------------------------------------------------------------------ I/O


@dataclass
class _Pool:
    fmt: str  # "cmkp" or "json"
    keyphrases: list[list[str]]
    group_keys: list[list[str]]
    sources: list[str]  # "file:line" or source ids
    items: list[Any]  # CmkpPost or (row, input path)
    sides: list[tuple[str, str] | None]  # (attributes, ocr) per post with --side-files
    test_sizes: list[int]
    files: list[Path] = field(default_factory=list)  # every input file (sources and side files)


def _load_pool(specs: list[str], kp_sep: str, side_files: bool) -> _Pool:
    from dyncot_plugin.tasks.mmkp.convert import ATTRIBUTE_SUFFIX, OCR_SUFFIX, read_cmkp_file, read_side_file

    paths: list[tuple[str | None, Path]] = []
    for spec in specs:
        if "=" in spec:
            split, path = parse_split_spec(spec)
            paths.append((split, path))
        else:
            paths.append((None, Path(spec)))
    fmts = {"json" if p.suffix in JSON_SUFFIXES else "cmkp" for _, p in paths}
    if len(fmts) > 1:
        raise DatasetError("the pool mixes converted .json files and CMKP source files; give one kind.")
    fmt = fmts.pop()
    if side_files and fmt != "cmkp":
        raise DatasetError("--side-files applies to CMKP source files only (converted rows already hold their prompt).")
    pool = _Pool(fmt, [], [], [], [], [], [])
    for split, path in paths:
        before = len(pool.items)
        pool.files.append(path)
        if fmt == "cmkp":
            posts = read_cmkp_file(path, kp_sep=kp_sep)
            sides: list[tuple[str, str] | None] = [None] * len(posts)
            if side_files:
                if not path.name.endswith("_src.txt"):
                    raise DatasetError(
                        f"--side-files: {path} is not named X_src.txt, so its side files cannot be found."
                    )
                stem = path.name[: -len("_src.txt")]
                side_paths = [path.with_name(stem + ATTRIBUTE_SUFFIX), path.with_name(stem + OCR_SUFFIX)]
                pool.files.extend(side_paths)
                for side in side_paths:
                    if not side.is_file():
                        raise DatasetError(f"--side-files: {path} has no side file {side}.")
                attrs = read_side_file(side_paths[0], path, len(posts))
                ocrs = read_side_file(side_paths[1], path, len(posts))
                sides = list(zip(attrs, ocrs))
            for p in posts:
                pool.keyphrases.append(p.keyphrases)
                pool.group_keys.append(["t:" + p.text] + (["i:" + p.image] if p.image else []))
                pool.sources.append(p.where)
            pool.items.extend(posts)
            pool.sides.extend(sides)
        else:
            rows = load_rows(path)
            for i, row in enumerate(rows):
                text, kps = row.get("text"), row.get("keyphrases")
                if not isinstance(text, str) or not isinstance(kps, list) or not kps:
                    raise DatasetError(
                        f"{path}: row {i} ({row.get('id', 'no id')}) lacks 'text' or a non-empty 'keyphrases' list."
                    )
                images = row.get("images") or []
                pool.keyphrases.append(kps)
                pool.group_keys.append(["t:" + text] + ["i:" + os.path.basename(str(im)) for im in images])
                pool.sources.append(str(row.get("id") or f"{path}#{i}"))
                pool.items.append((row, path))
                pool.sides.append(None)
        if split == "test":
            pool.test_sizes.append(len(pool.items) - before)
    return pool


def _rebase_image(image: str, src_dir: Path, out_dir: Path) -> str:
    if os.path.isabs(image) or "://" in image:
        return image
    return Path(os.path.relpath((src_dir / image).resolve(), out_dir.resolve())).as_posix()


def write_outputs(
    pool: _Pool, result: ResplitResult, out_dir: Path, name: str, kp_sep: str, report: dict[str, Any]
) -> list[Path]:
    """Stage every output file, then rename them all (nothing is written when anything fails), under the write lock
    of every output file (:func:`~dyncot_plugin.io.files.locked_files`)."""
    from dyncot_plugin.tasks.mmkp.convert import ATTRIBUTE_SUFFIX, OCR_SUFFIX

    check_dataset_name(name, "--name")
    json_files: list[tuple[str, Path, bool]] = []
    outputs = [out_dir / f"{name}_resplit.json"]
    for split in ("train", "test"):
        if pool.fmt == "cmkp":
            sides = (ATTRIBUTE_SUFFIX, OCR_SUFFIX) if pool.sides and pool.sides[0] is not None else ()
            outputs += [out_dir / f"{split}{suffix}" for suffix in ("_src.txt", *sides)]
        else:
            outputs.append(out_dir / f"{name}_{split}.json")
    inputs = {p.resolve() for p in pool.files}
    clash = [str(p) for p in outputs if p.resolve() in inputs]
    if clash:
        raise DatasetError(
            f"the output would overwrite the input file(s) {', '.join(clash)}; choose another --output-dir."
        )
    with locked_files(outputs):
        written = _stage_outputs(pool, result, out_dir, name, kp_sep, report, json_files)
        for split, file, has_images in json_files:  # the folder's own lock; safe inside the file locks
            update_dataset_info(out_dir, f"{name}_{split}", file.name, has_images=has_images)
    return written


def _stage_outputs(
    pool: _Pool, result: ResplitResult, out_dir: Path, name: str, kp_sep: str, report: dict[str, Any],
    json_files: list[tuple[str, Path, bool]],
) -> list[Path]:
    from dyncot_plugin.tasks.mmkp.convert import ATTRIBUTE_SUFFIX, OCR_SUFFIX

    with StagedWrites() as staged:
        for split, idx in (("train", result.train), ("test", result.test)):
            if pool.fmt == "cmkp":
                staged.write_text(
                    out_dir / f"{split}_src.txt", "".join(pool.items[i].to_line(kp_sep) + "\n" for i in idx)
                )
                if pool.sides[0] is not None:
                    staged.write_text(
                        out_dir / f"{split}{ATTRIBUTE_SUFFIX}", "".join(pool.sides[i][0] + "\n" for i in idx)
                    )
                    staged.write_text(out_dir / f"{split}{OCR_SUFFIX}", "".join(pool.sides[i][1] + "\n" for i in idx))
            else:
                rows = []
                has_images = False
                for j, i in enumerate(idx):
                    row, path = pool.items[i]
                    row = dict(row)
                    row["source_id"] = pool.sources[i]
                    row["id"] = sample_id(name, split, j)
                    if row.get("images"):
                        has_images = True
                        row["images"] = [_rebase_image(str(im), path.parent, out_dir) for im in row["images"]]
                    rows.append(row)
                file = out_dir / f"{name}_{split}.json"
                staged.write_json(file, rows)
                json_files.append((split, file, has_images))
        staged.write_json(out_dir / f"{name}_resplit.json", report, indent=2)
        written = staged.targets
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="[SPLIT=]PATH", help="pool files: CMKP X_src.txt or converted .json"
    )
    parser.add_argument("-o", "--output-dir", required=True, help="folder for the new splits")
    parser.add_argument(
        "--target-overlap",
        type=float,
        default=DEFAULT_TARGET,
        help="train->test overlap to reach (default: 0.45, MMKP-V2)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="allowed distance to the target (default: 0.01 = 1 point)",
    )
    parser.add_argument(
        "--test-size", help="test posts: a count, or a fraction of the pool (default: the size of the test= input)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed: same inputs + seed = same split (default: 0)")
    parser.add_argument(
        "--name", default="mmkp_v2", help="dataset name of JSON outputs and of the report (default: mmkp_v2)"
    )
    parser.add_argument(
        "--side-files", action="store_true", help="carry the CMKP side files (X_attribute_cleaned.txt, X_ocr_final.txt)"
    )
    parser.add_argument(
        "--no-group-duplicates", action="store_true", help="do not keep posts with the same text or image together"
    )
    parser.add_argument("--kp-sep", default=";", help="keyphrase separator of CMKP files (default: ';')")


def _test_size(value: str | None, pool: _Pool) -> int:
    n = len(pool.items)
    if value is None:
        if len(pool.test_sizes) != 1:
            raise DatasetError(
                "give --test-size, or exactly one input as test=PATH whose size the new test split keeps."
            )
        return pool.test_sizes[0]
    try:
        if "." in value:
            frac = float(value)
            if not 0 < frac < 1:
                raise ValueError
            return max(1, round(frac * n))
        return int(value)
    except ValueError:
        raise DatasetError(
            f"--test-size {value!r}: give a count (e.g. 5372) or a fraction between 0 and 1 (e.g. 0.2)."
        ) from None


def run(args: argparse.Namespace) -> int:
    check_dataset_name(args.name, "--name")
    with paused_gc():
        pool = _load_pool(args.inputs, args.kp_sep, args.side_files)
    size = _test_size(args.test_size, pool)
    result = select_split(
        pool.keyphrases,
        size,
        args.target_overlap,
        seed=args.seed,
        tolerance=args.tolerance,
        group_keys=None if args.no_group_duplicates else pool.group_keys,
    )
    report = {
        "target_overlap": args.target_overlap,
        "tolerance": args.tolerance,
        "overlap": result.overlap,
        "random_split_overlap": result.initial_overlap,
        "unique_test_keyphrases": result.seen + result.unseen,
        "seen_in_train": result.seen,
        "seed": args.seed,
        "pool": len(pool.items),
        "train_posts": len(result.train),
        "test_posts": len(result.test),
        "swaps": result.swaps,
        "inputs": list(args.inputs),
        "train_sources": [pool.sources[i] for i in result.train],
        "test_sources": [pool.sources[i] for i in result.test],
    }
    out_dir = Path(args.output_dir)
    written = write_outputs(pool, result, out_dir, args.name, args.kp_sep, report)
    print(
        f"train->test overlap {100 * result.overlap:.2f}% (target {100 * args.target_overlap:.2f}% ± "
        f"{100 * args.tolerance:.2f}; random split {100 * result.initial_overlap:.2f}%; {result.swaps} swaps)\n"
        f"train: {len(result.train)} posts, test: {len(result.test)} posts, "
        f"{result.seen + result.unseen} unique test keyphrases ({result.seen} in train)"
    )
    for path in written:
        print(f"wrote {path}")
    return 0


__all__ = ["ResplitResult", "select_split"]
