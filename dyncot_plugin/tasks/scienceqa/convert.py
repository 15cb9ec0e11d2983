"""Convert ScienceQA (problems.json + pid_splits.json [+ captions.json] + images) into LLaMA-Factory datasets.

For every requested split ``S`` this writes, into ``--out`` (a LLaMA-Factory ``dataset_dir``), and declares in its
``dataset_info.json``:

* ``<prefix>_<S>_answer``   QCM -> A: ``The answer is (X).``, with a ``cot`` column holding the CoT form
  ``<think>LE</think><answer>The answer is (X).</answer>`` (so ``sft``/``cot``/``multitask``/``dynamic`` all train on it);
* ``<prefix>_<S>_rationale`` QCM -> LE: MM-CoT stage 1 (rationale generation; L = lecture, E = solution);
* ``<prefix>_<S>_stage2_gold`` QCM + ``Solution: LE`` -> A: MM-CoT stage 2 with the gold rationale
  (``dyncot-data build-stage2`` builds the same rows from stage-1 *predictions*).

The input follows MM-CoT's ``QCM`` layout (``utils_prompt.py`` of amazon-science/mm-cot)::

    Question: <question>
    Context: <hint> <caption>      (or N/A when both are empty)
    Options: (A) <choice 0> (B) <choice 1> ...

prefixed with ``<image>`` when the problem has an image (copied to ``<out>/images/<pid>.png``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path
from typing import Any

from dyncot_plugin.cot_format import build_cot
from dyncot_plugin.io.datasets import DatasetError, check_dataset_name, update_dataset_info
from dyncot_plugin.io.files import atomic_write_json, locked_files
from dyncot_plugin.io.read import InputError, read_json

# MM-CoT's option letters (``--options`` default in its main.py). ScienceQA has 2..5 choices per problem.
OPTIONS = ("A", "B", "C", "D", "E")
KINDS = ("answer", "rationale", "stage2_gold")
DEFAULT_PREFIX = "sqa"
REQUIRED_KEYS = {
    "question": str,
    "choices": list,
    "answer": int,
    "hint": str,
    "lecture": str,
    "solution": str,
    "grade": str,
    "subject": str,
}


class ScienceQAError(DatasetError):
    """ScienceQA input that does not fit the expected schema; the message names the file, the problem and the key."""


# ----------------------------------------------------------------------------------------------------------------
# Text layout (MM-CoT / ScienceQA conventions)
# ----------------------------------------------------------------------------------------------------------------


def clean(text: str | None) -> str:
    """Collapse every run of white space (new lines included) into one space, as MM-CoT's data loader does."""
    return " ".join((text or "").split())


def answer_letter(index: int) -> str:
    return OPTIONS[index]


def answer_text(letter: str) -> str:
    """MM-CoT's answer target (``QCM-A``): ``The answer is (X).``"""
    return f"The answer is ({letter})."


def context_text(problem: dict[str, Any], caption: str = "") -> str:
    """MM-CoT's ``get_context_text``: hint and caption joined by a space, ``N/A`` when both are empty."""
    return " ".join([clean(problem.get("hint")), clean(caption)]).strip() or "N/A"


def choice_text(problem: dict[str, Any]) -> str:
    """``(A) first (B) second ...`` (MM-CoT's ``get_choice_text``)."""
    return " ".join(f"({OPTIONS[i]}) {clean(c)}" for i, c in enumerate(problem["choices"]))


def qcm_text(problem: dict[str, Any], caption: str = "") -> str:
    """The ``QCM`` input: ``Question: …\\nContext: …\\nOptions: …``."""
    return (
        f"Question: {clean(problem['question'])}\n"
        f"Context: {context_text(problem, caption)}\n"
        f"Options: {choice_text(problem)}"
    )


def rationale_text(problem: dict[str, Any]) -> str:
    """``LE``: the lecture, then the solution (empty parts skipped; white space collapsed)."""
    return " ".join(part for part in (clean(problem.get("lecture")), clean(problem.get("solution"))) if part)


def cot_text(rationale: str, letter: str) -> str | None:
    """The plugin's CoT target; ``None`` (no CoT for this sample) when the problem has no lecture nor solution."""
    if not rationale:
        return None
    return build_cot(rationale, answer_text(letter))


SOLUTION_PREFIX_RE = re.compile(r"^\s*solution\s*:\s*", re.IGNORECASE)


def clean_rationale(text: str | None) -> str:
    """A generated rationale as stage 2 reads it: white space collapsed, a leading ``Solution:`` dropped."""
    return SOLUTION_PREFIX_RE.sub("", clean(text))


def stage2_user_text(qcm_user_text: str, rationale: str) -> str:
    """MM-CoT's stage-2 input (``QCMG``): the QCM input followed by ``Solution: <rationale>``."""
    return f"{qcm_user_text}\nSolution: {clean_rationale(rationale)}"


# ----------------------------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------------------------


def _load_json(path: Path, what: str) -> Any:
    """Through the one input reader: a missing, non-UTF-8, empty or non-JSON file names the file (and line)."""
    if not path.is_file():
        raise ScienceQAError(f"{what} not found: {path}")
    try:
        return read_json(path, what)
    except InputError as exc:
        raise ScienceQAError(f"{exc} Expected the {what}.") from None


def validate_problem(pid: str, problem: Any, source: str = "problems.json") -> None:
    """Raise :class:`ScienceQAError` naming ``source``, ``pid`` and the key when the problem breaks the schema."""
    where = f"{source}: problem {pid!r}"
    if not isinstance(problem, dict):
        raise ScienceQAError(f"{where}: expected an object, got {type(problem).__name__}.")
    for key, kind in REQUIRED_KEYS.items():
        if key not in problem:
            raise ScienceQAError(f"{where}: missing key {key!r} (expected {kind.__name__}).")
        value = problem[key]
        if key == "hint" and value is None:
            continue  # treated as ""
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ScienceQAError(f"{where}: key {key!r} is {value!r}; expected {kind.__name__}.")
    choices = problem["choices"]
    if not 2 <= len(choices) <= len(OPTIONS):
        raise ScienceQAError(
            f"{where}: key 'choices' has {len(choices)} entries; expected 2..{len(OPTIONS)} (options {''.join(OPTIONS)})."
        )
    for i, choice in enumerate(choices):
        if not isinstance(choice, str):
            raise ScienceQAError(f"{where}: choices[{i}] is {choice!r}; expected a string.")
    if not 0 <= problem["answer"] < len(choices):
        raise ScienceQAError(
            f"{where}: key 'answer' is {problem['answer']!r}; expected an index into 'choices' (0..{len(choices) - 1})."
        )
    image = problem.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise ScienceQAError(f"{where}: key 'image' is {image!r}; expected a file name such as 'image.png', or null.")
    if image and not isinstance(problem.get("split"), str):
        raise ScienceQAError(
            f"{where}: key 'split' is {problem.get('split')!r}; expected 'train', 'val' or 'test' (the image folder)."
        )


def load_problems(path: str | Path) -> dict[str, dict[str, Any]]:
    """``problems.json`` (``{pid: problem}``), every problem validated."""
    path = Path(path)
    problems = _load_json(path, "ScienceQA problems file (problems.json)")
    if not isinstance(problems, dict):
        raise ScienceQAError(f"{path}: expected an object {{pid: problem}}, got {type(problems).__name__}.")
    for pid, problem in problems.items():
        validate_problem(pid, problem, str(path))
    return problems


def load_splits(path: str | Path) -> dict[str, list[str]]:
    """``pid_splits.json`` (``{"train": [pid, ...], "val": [...], "test": [...], ...}``)."""
    path = Path(path)
    splits = _load_json(path, "ScienceQA split file (pid_splits.json)")
    if not isinstance(splits, dict):
        raise ScienceQAError(f"{path}: expected an object {{split: [pid, ...]}}, got {type(splits).__name__}.")
    for name, pids in splits.items():
        if not isinstance(pids, list) or not all(isinstance(p, (str, int)) for p in pids):
            raise ScienceQAError(f"{path}: split {name!r} must be a list of problem ids.")
        splits[name] = [str(p) for p in pids]
    return splits


def load_captions(path: str | Path | None) -> dict[str, str]:
    """``captions.json`` as MM-CoT reads it (``{"captions": {pid: caption}}``); ``{}`` when ``path`` is None."""
    if path is None:
        return {}
    path = Path(path)
    data = _load_json(path, "caption file (captions.json)")
    if not isinstance(data, dict) or not isinstance(data.get("captions"), dict):
        raise ScienceQAError(f'{path}: expected {{"captions": {{pid: caption}}}} (MM-CoT\'s captions.json layout).')
    captions = data["captions"]
    for pid, caption in captions.items():
        if not isinstance(caption, str):
            raise ScienceQAError(f"{path}: caption of problem {pid!r} is {caption!r}; expected a string.")
    return captions


def image_source(image_dir: Path, problem: dict[str, Any], pid: str) -> Path:
    """ScienceQA's image layout: ``<image_dir>/<split>/<pid>/<image>``."""
    return image_dir / str(problem.get("split", "")) / pid / problem["image"]


# ----------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------


def build_rows(pid: str, problem: dict[str, Any], caption: str, image_rel: str | None) -> dict[str, dict[str, Any]]:
    """The three rows (``answer``, ``rationale``, ``stage2_gold``) of one problem."""
    letter = answer_letter(problem["answer"])
    user = ("<image>" if image_rel else "") + qcm_text(problem, caption)
    images = [image_rel] if image_rel else []
    rationale = rationale_text(problem)

    def row(user_text: str, target: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": pid,
            "messages": [{"role": "user", "content": user_text}, {"role": "assistant", "content": target}],
            "images": list(images),
            **extra,
        }

    return {
        "answer": row(user, answer_text(letter), cot=cot_text(rationale, letter)),
        "rationale": row(user, rationale),
        "stage2_gold": row(stage2_user_text(user, rationale), answer_text(letter)),
    }


def dataset_name(prefix: str, split: str, kind: str) -> str:
    return f"{prefix}_{split}_{kind}"


def convert(
    problems_path: str | Path,
    splits_path: str | Path,
    out_dir: str | Path,
    image_dir: str | Path | None = None,
    captions_path: str | Path | None = None,
    splits: list[str] | tuple[str, ...] = ("train", "val", "test"),
    prefix: str = DEFAULT_PREFIX,
    limit: int | None = None,
    image_mode: str = "copy",
) -> dict[str, Any]:
    """Build the datasets; return a summary ``{"datasets": {name: n_rows}, "images": n, "no_cot": {split: n}}``."""
    problems = load_problems(problems_path)
    split_pids = load_splits(splits_path)
    captions = load_captions(captions_path)
    out = Path(out_dir)
    image_root = Path(image_dir) if image_dir is not None else None
    if image_mode not in ("copy", "symlink"):
        raise ScienceQAError(f"image_mode: got {image_mode!r}; expected 'copy' or 'symlink'.")

    for split in splits:
        if split not in split_pids:
            raise ScienceQAError(
                f"{splits_path}: no split {split!r}; the file has {', '.join(sorted(split_pids)) or 'no splits'}."
            )
    # Check everything before writing anything.
    plan: dict[str, list[str]] = {}
    for split in splits:
        pids = split_pids[split][:limit] if limit is not None else list(split_pids[split])
        seen: set[str] = set()
        for pid in pids:
            if pid in seen:
                raise ScienceQAError(f"{splits_path}: split {split!r} lists problem {pid!r} twice.")
            seen.add(pid)
            if pid not in problems:
                raise ScienceQAError(
                    f"{splits_path}: split {split!r} lists problem {pid!r}, which is not in {problems_path}."
                )
            problem = problems[pid]
            if problem.get("image"):
                if image_root is None:
                    raise ScienceQAError(
                        f"{problems_path}: problem {pid!r} has image {problem['image']!r} but no --image-dir was given."
                    )
                src = image_source(image_root, problem, pid)
                if not src.is_file():
                    raise ScienceQAError(
                        f"{problems_path}: problem {pid!r}: image not found at {src} "
                        f"(expected <image_dir>/<split>/<pid>/{problem['image']})."
                    )
        plan[split] = pids

    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"datasets": {}, "images": 0, "no_cot": {}}
    image_rel_of: dict[str, str | None] = {}
    for split, pids in plan.items():
        per_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        no_cot = 0
        for pid in pids:
            problem = problems[pid]
            if pid not in image_rel_of:
                image_rel_of[pid] = (
                    _place_image(out, image_root, problem, pid, image_mode) if problem.get("image") else None
                )
                summary["images"] += image_rel_of[pid] is not None
            rows = build_rows(pid, problem, captions.get(pid, ""), image_rel_of[pid])
            no_cot += rows["answer"]["cot"] is None
            for kind in KINDS:
                per_kind[kind].append(rows[kind])
        summary["no_cot"][split] = no_cot
        for kind in KINDS:
            name = check_dataset_name(dataset_name(prefix, split, kind), "dataset name (--prefix, split)")
            file_name = f"{name}.json"
            with locked_files(out / file_name):
                atomic_write_json(out / file_name, per_kind[kind])
                update_dataset_info(
                    out,
                    name,
                    file_name,
                    has_images=any(r["images"] for r in per_kind[kind]),
                    cot_column="cot" if kind == "answer" else None,
                )
            summary["datasets"][name] = len(per_kind[kind])
    return summary


def _place_image(out: Path, image_root: Path | None, problem: dict[str, Any], pid: str, mode: str) -> str:
    assert image_root is not None
    src = image_source(image_root, problem, pid)
    suffix = Path(problem["image"]).suffix or ".png"
    rel = f"images/{pid}{suffix}"
    dst = out / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if mode == "symlink":
        os.symlink(src.resolve(), tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return rel


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--problems", required=True, help="ScienceQA problems.json ({pid: problem}).")
    parser.add_argument("--splits-file", required=True, help="ScienceQA pid_splits.json ({split: [pid, ...]}).")
    parser.add_argument(
        "--image-dir", default=None, help="Folder holding <split>/<pid>/image.png (required when a problem has one)."
    )
    parser.add_argument(
        "--captions",
        default=None,
        help='Optional MM-CoT captions.json ({"captions": {pid: caption}}); appended to the hint in Context.',
    )
    parser.add_argument(
        "-o", "--output-dir", "--out", dest="output_dir", required=True,
        help="Output LLaMA-Factory dataset_dir (created; dataset_info.json updated). (--out: old spelling)"
    )
    parser.add_argument(
        "--split",
        dest="splits",
        action="append",
        default=None,
        help="Split to convert (repeatable; default: train, val, test). Any key of pid_splits.json works (minival, ...).",
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="Dataset name prefix: <prefix>_<split>_<kind> (default: sqa)."
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="Keep only the first N problems of each split (smoke runs)."
    )
    parser.add_argument(
        "--image-mode",
        choices=("copy", "symlink"),
        default="copy",
        help="Copy images into <out>/images (default) or symlink them.",
    )


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise ScienceQAError("--limit must be >= 0")
    summary = convert(
        args.problems,
        args.splits_file,
        args.output_dir,
        image_dir=args.image_dir,
        captions_path=args.captions,
        splits=args.splits or ["train", "val", "test"],
        prefix=args.prefix,
        limit=args.limit,
        image_mode=args.image_mode,
    )
    for name, n in summary["datasets"].items():
        print(f"{name}: {n} rows")
    print(f"images: {summary['images']} placed under {Path(args.output_dir) / 'images'}")
    for split, n in summary["no_cot"].items():
        if n:
            print(
                f"note: {n} problem(s) of split {split!r} have neither lecture nor solution: their `cot` is null "
                f"(set dyncot_missing_cot: sft to train them on the plain answer)."
            )
    return 0
