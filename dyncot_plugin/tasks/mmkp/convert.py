"""Convert CMKP-format files (post<sep>kp1;kp2<sep>image-url) into LLaMA-Factory sharegpt datasets.

Each input is SPLIT=SRC (or just SRC when the file name says the split, e.g. test_src.txt); SPLIT is one of
train, valid, test. Every split becomes <output-dir>/<name>_<split>.json (one row per post: id, messages,
images, text, keyphrases, cot=null) and gets an entry <name>_<split> in <output-dir>/dataset_info.json.
The image of a post is <image-dir>/<basename of its URL>; --missing-images says what happens when it is not
there (error: stop, the default; skip: drop the post; text-only: keep it without image). Missing images are
listed in <output-dir>/<name>_missing_images.txt. The optional line-aligned CMKP side files (image attributes,
OCR text) fill the {attributes} and {ocr} slots of the prompt template. See docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import string
import sys
from pathlib import Path
from typing import Any, NamedTuple

from dyncot_plugin.cot_format import ANSWER_SEP
from dyncot_plugin.io.datasets import DatasetError, load_rows, update_dataset_info
from dyncot_plugin.io.files import StagedWrites, atomic_write_text, locked_files, paused_gc
from dyncot_plugin.io.read import read_text
from dyncot_plugin.io.splits import parse_split_spec, parse_split_specs, sample_id
from dyncot_plugin.tasks.mmkp.normalize import split_keyphrases

# ------------------------------------------------------------------------------------- templates (one place only)

SEP = "<sep>"
"""Field separator of a CMKP line: ``post text<sep>kp1;kp2<sep>image-url``."""
DEFAULT_KP_SEP = ";"
"""Keyphrase separator inside the CMKP keyphrase field (``--kp-sep``)."""
DEFAULT_ANSWER_SEP = ANSWER_SEP
"""Separator of the keyphrases in the plain answer ``kp1; kp2`` (``--answer-sep``; the evaluator splits on ``;``)."""
IMAGE_PLACEHOLDER = "<image>"
"""LLaMA-Factory's image token; removed from the prompt of text-only rows."""

PROMPT_INSTRUCTION = (
    'Generate hashtag-style keyphrases for this social-media post and its image. Separate keyphrases with "{sep}".'
)
DEFAULT_PROMPT_TEMPLATE = IMAGE_PLACEHOLDER + PROMPT_INSTRUCTION + "\nPost: {text}"
"""The default user prompt. Slots: ``{text}`` (post text), ``{sep}`` (the answer separator)."""
PROMPT_ATTRIBUTES_LINE = "\nImage attributes: {attributes}"
"""Appended to the default template when an attribute side file is given."""
PROMPT_OCR_LINE = "\nText in the image: {ocr}"
"""Appended to the default template when an OCR side file is given."""
EMPTY_SIDE_VALUE = "(none)"
"""What an empty side-file line (no attributes, no OCR text) renders as in the prompt."""
TEMPLATE_SLOTS = ("text", "attributes", "ocr", "sep")

ATTRIBUTE_SUFFIX = "_attribute_cleaned.txt"
OCR_SUFFIX = "_ocr_final.txt"
MISSING_IMAGE_POLICIES = ("error", "skip", "text-only")
DEFAULT_MAX_POST_CHARS = 10_000
"""Posts with a longer text are skipped and counted (``--max-post-chars``; 0: no limit). CMKP's longest post has
411 characters, a tweet at most 280 (plus entities); a far longer "post" is a broken line (a whole file glued
into one field), and a 50 MB prompt would only stall the tokenizer."""
_dumps = json.JSONEncoder(ensure_ascii=False).encode
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def default_prompt_template(attributes: bool = False, ocr: bool = False) -> str:
    """:data:`DEFAULT_PROMPT_TEMPLATE` plus the attribute and OCR lines for the side files that are given."""
    return DEFAULT_PROMPT_TEMPLATE + (PROMPT_ATTRIBUTES_LINE if attributes else "") + (PROMPT_OCR_LINE if ocr else "")


class PromptTemplate:
    """A user-prompt template in ``str.format`` syntax with the slots ``{text}``, ``{attributes}``, ``{ocr}``,
    ``{sep}`` (``{{``/``}}`` are literal braces). ``{text}`` is required. Parsed once, rendered fast."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.with_image = self._compile(template)
        self.text_only = self._compile(template.replace(IMAGE_PLACEHOLDER, ""))
        self.slots = frozenset(field for _, field in self.with_image if field)
        if "text" not in self.slots:
            raise DatasetError(f"prompt template {template!r} has no {{text}} slot.")
        self.image_tokens = template.count(IMAGE_PLACEHOLDER)

    @staticmethod
    def _compile(template: str) -> list[tuple[str, str | None]]:
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise DatasetError(f"prompt template {template!r}: {e} (write {{{{ and }}}} for literal braces).") from None
        for literal, field, spec, conversion in parsed:
            if field is not None and (field not in TEMPLATE_SLOTS or spec or conversion):
                raise DatasetError(
                    f"prompt template {template!r}: unknown slot {{{field}}}; the slots are "
                    + ", ".join("{" + s + "}" for s in TEMPLATE_SLOTS)
                    + " (write {{ and }} for literal braces)."
                )
            parts.append((literal, field))
        return parts

    def render(
        self,
        text: str,
        *,
        attributes: str | None = None,
        ocr: str | None = None,
        sep: str = DEFAULT_ANSWER_SEP,
        with_image: bool = True,
    ) -> str:
        values = {
            "text": text,
            "attributes": attributes or EMPTY_SIDE_VALUE,
            "ocr": ocr or EMPTY_SIDE_VALUE,
            "sep": sep,
        }
        parts = self.with_image if with_image else self.text_only
        return "".join([literal + values[field] if field else literal for literal, field in parts])


def make_row(
    row_id: str,
    text: str,
    keyphrases: list[str],
    prompt: str,
    images: list[str] | None = None,
    answer_sep: str = DEFAULT_ANSWER_SEP,
) -> dict[str, Any]:
    """One dataset row in the project's format (see :mod:`dyncot_plugin.io.datasets`); ``cot`` is None."""
    return {
        "id": row_id,
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer_sep.join(keyphrases)},
        ],
        "images": list(images or []),
        "text": text,
        "keyphrases": list(keyphrases),
        "cot": None,
    }


# ---------------------------------------------------------------------------------------------------- parsing


class CmkpFormatError(DatasetError):
    """A CMKP file is malformed; the message starts with ``file:line``."""


class CmkpPost(NamedTuple):
    """One parsed CMKP line. ``index`` is the 0-based line index, ``lineno`` = ``index + 1``."""

    text: str
    keyphrases: list[str]
    image_url: str
    image: str  # the URL's basename ("" when the URL field is empty)
    path: str
    index: int

    @property
    def lineno(self) -> int:
        return self.index + 1

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"

    def to_line(self, kp_sep: str = DEFAULT_KP_SEP) -> str:
        """The post back as a CMKP line (without newline)."""
        return f"{self.text}{SEP}{kp_sep.join(self.keyphrases)}{SEP}{self.image_url}"


def image_basename(url: str) -> str:
    """``https://pbs.twimg.com/media/D0wn9.jpg?name=small`` -> ``D0wn9.jpg``."""
    return url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def parse_cmkp_line(line: str, *, path: str = "<string>", lineno: int = 1, kp_sep: str = DEFAULT_KP_SEP) -> CmkpPost:
    """Parse ``post text<sep>kp1;kp2<sep>image-url``; errors raise :class:`CmkpFormatError` naming ``path:lineno``."""
    fields = line.rstrip("\r\n").split(SEP)
    if len(fields) != 3:
        raise CmkpFormatError(
            f"{path}:{lineno}: expected 3 fields separated by {SEP} (post text{SEP}kp1;kp2{SEP}image-url), "
            f"found {len(fields)}: {_clip(line)!r}"
        )
    text, kp_field, url = fields
    keyphrases = split_keyphrases(kp_field, kp_sep)
    if not keyphrases:
        raise CmkpFormatError(
            f"{path}:{lineno}: empty keyphrase list (keyphrase field {kp_field!r}); every post needs at least one "
            f"keyphrase separated by {kp_sep!r}."
        )
    url = url.strip()
    return CmkpPost(text.strip(), keyphrases, url, image_basename(url) if url else "", path, lineno - 1)


def _clip(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[:n] + "..."


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file, split on ``\\n`` only (tweets may hold other line-break characters), with
    ``\\r`` stripped and the final newline not counted as an extra empty line. Read through the one input reader
    (:func:`dyncot_plugin.io.read.read_text`), so a missing or non-UTF-8 file names the file and line."""
    text = read_text(path, "source file", universal_newlines=False)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if "\r" in text:
        lines = [line.rstrip("\r") for line in lines]
    return lines


def read_cmkp_file(
    path: str | os.PathLike, *, kp_sep: str = DEFAULT_KP_SEP, empty_pieces: list[int] | None = None
) -> list[CmkpPost]:
    """All posts of a CMKP source file; the first malformed line raises :class:`CmkpFormatError` (``file:line``).

    Empty keyphrase pieces (``kp1;;kp2``, a trailing ``;``) are dropped; ``empty_pieces``, if given, receives the
    0-based index of every post that had one."""
    name = str(path)
    lines = read_lines(path)
    if not lines:
        raise CmkpFormatError(f"{name}: the file has no posts.")
    with paused_gc():
        return _parse_lines(lines, name, kp_sep, empty_pieces)


def _parse_lines(lines: list[str], name: str, kp_sep: str, empty_pieces: list[int] | None = None) -> list[CmkpPost]:
    posts = []
    append = posts.append
    for i, line in enumerate(lines):
        fields = line.split(SEP)
        if len(fields) != 3:
            parse_cmkp_line(line, path=name, lineno=i + 1, kp_sep=kp_sep)  # raises with the full message
        text, kp_field, url = fields
        keyphrases = split_keyphrases(kp_field, kp_sep)
        if not keyphrases:
            parse_cmkp_line(line, path=name, lineno=i + 1, kp_sep=kp_sep)
        if empty_pieces is not None and len(keyphrases) != kp_field.count(kp_sep) + 1:
            empty_pieces.append(i)
        url = url.strip()
        append(CmkpPost(text.strip(), keyphrases, url, image_basename(url) if url else "", name, i))
    return posts


def read_side_file(path: str | os.PathLike, src_path: str | os.PathLike, expected_lines: int) -> list[str]:
    """A line-aligned side file (attributes, OCR); its line count must equal the source's post count."""
    lines = read_lines(path)
    if len(lines) != expected_lines:
        raise DatasetError(
            f"{path}: has {len(lines)} lines but {src_path} has {expected_lines} posts; side files must be "
            f"line-aligned with their source file."
        )
    return [line.strip() for line in lines]


# -------------------------------------------------------------------------------------------------- conversion


class SplitResult(NamedTuple):
    split: str
    path: Path
    posts: int
    written: int
    skipped: int  # missing image, --missing-images skip
    text_only: int
    too_long: int = 0  # text over max_post_chars: skipped
    empty_text: int = 0  # written, with an empty post text
    empty_kp_pieces: int = 0  # posts whose keyphrase field had empty pieces (dropped)
    cot_kept: int = 0  # CoTs of the previous file kept (same id, same text and keyphrases)
    cot_dropped: int = 0  # CoTs of the previous file dropped (overwrite_cot)
    examples: tuple[str, ...] = ()  # file:line of the first posts counted above (too long, empty text, ;;)


def _previous_cots(path: Path, overwrite_cot: bool) -> dict[str, dict[str, Any]]:
    """``{id: row}`` of the rows of an earlier conversion that carry a CoT (``gen-cot`` filled them)."""
    if not path.is_file():
        return {}
    try:
        rows = load_rows(path, allow_empty=True)
    except DatasetError as e:
        if overwrite_cot:
            return {}
        raise DatasetError(
            f"{e} It is the output of an earlier conversion, read to keep its CoTs; fix or remove it, or pass "
            f"--overwrite-cot."
        ) from None
    return {str(r["id"]): r for r in rows if r.get("cot") not in (None, "") and r.get("id") is not None}


def _side_specs(values: list[str] | None, splits: list[str], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in values or []:
        if "=" not in spec and len(splits) == 1:
            split, path = splits[0], Path(spec)
        else:
            split, path = parse_split_spec(spec, infer=True)
        if split not in splits:
            raise DatasetError(f"--{what} {spec}: there is no {split} source among the inputs ({', '.join(splits)}).")
        if split in out:
            raise DatasetError(f"--{what}: two files for split {split}.")
        out[split] = path
    return out


def convert(
    sources: dict[str, str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    name: str = "mmkp",
    image_dir: str | os.PathLike | None = None,
    use_images: bool = True,
    attributes: dict[str, str | os.PathLike] | None = None,
    ocr: dict[str, str | os.PathLike] | None = None,
    prompt_template: str | None = None,
    kp_sep: str = DEFAULT_KP_SEP,
    answer_sep: str = DEFAULT_ANSWER_SEP,
    missing_images: str = "error",
    missing_report: str | os.PathLike | None = None,
    write_dataset_info: bool = True,
    progress: bool = False,
    max_post_chars: int = DEFAULT_MAX_POST_CHARS,
    overwrite_cot: bool = False,
) -> list[SplitResult]:
    """Convert CMKP source files (``{split: path}``) into ``<output_dir>/<name>_<split>.json``.

    All inputs are read and checked before anything is written; the split files are then written through
    temporary files and renamed together, under the write lock of each output file
    (:func:`~dyncot_plugin.io.files.locked_files`). Raises :class:`DatasetError` on bad input (nothing written).

    Posts whose text is longer than ``max_post_chars`` (0: no limit) are skipped and counted; posts with an empty
    text and keyphrase fields with empty pieces (dropped) are counted. When an output file already exists, the
    CoT of each of its rows (written by ``gen-cot``) is carried over to the new row with the same id, as long as
    that row has the same text and keyphrases. A CoT that would be lost (its post changed or is no longer
    written) stops the conversion, with the count, unless ``overwrite_cot`` (then every old CoT is dropped and
    counted).
    """
    output_dir = Path(output_dir)
    attributes = {k: Path(v) for k, v in (attributes or {}).items()}
    ocr = {k: Path(v) for k, v in (ocr or {}).items()}
    if not _NAME_RE.match(name):
        raise DatasetError(f"dataset name {name!r}: use letters, digits, '_', '-' and '.' only.")
    if missing_images not in MISSING_IMAGE_POLICIES:
        raise DatasetError(f"--missing-images {missing_images!r}: use one of {', '.join(MISSING_IMAGE_POLICIES)}.")
    if not sources:
        raise DatasetError("no input files.")
    if max_post_chars < 0:
        raise DatasetError(f"--max-post-chars {max_post_chars}: use a number of characters >= 0 (0: no limit).")
    for split in list(sources) + list(attributes) + list(ocr):
        parse_split_spec(f"{split}=x")  # checks the split name
    for what, side in (("attributes", attributes), ("ocr", ocr)):
        extra = sorted(set(side) - set(sources))
        if extra:
            raise DatasetError(f"{what} file(s) given for split(s) {', '.join(extra)} without a source file.")
        if side and set(side) != set(sources):
            lacking = sorted(set(sources) - set(side))
            raise DatasetError(f"{what} files are given for some splits but not for {', '.join(lacking)}.")

    template = PromptTemplate(prompt_template or default_prompt_template(bool(attributes), bool(ocr)))
    for slot, side, flag in (("attributes", attributes, "--attributes"), ("ocr", ocr, "--ocr")):
        if slot in template.slots and not side:
            raise DatasetError(f"the prompt template has an {{{slot}}} slot but no {flag} side file is given.")
        if side and slot not in template.slots:
            raise DatasetError(f"{flag} files are given but the prompt template has no {{{slot}}} slot to put them in.")
    if use_images and template.image_tokens != 1:
        raise DatasetError(
            f"the prompt template must hold exactly one {IMAGE_PLACEHOLDER} (it has {template.image_tokens}); "
            f"use --no-images for a text-only dataset."
        )

    # ---- read and check everything first
    parsed: dict[str, tuple[list[CmkpPost], list[str] | None, list[str] | None]] = {}
    empty_pieces: dict[str, set[int]] = {}
    for split, src in sources.items():
        pieces: list[int] = []
        posts = read_cmkp_file(src, kp_sep=kp_sep, empty_pieces=pieces)
        empty_pieces[split] = set(pieces)
        too_long_posts = [p for p in posts if max_post_chars and len(p.text) > max_post_chars]
        if len(too_long_posts) == len(posts):
            raise DatasetError(
                f"every post of {src} is longer than --max-post-chars {max_post_chars} (first: "
                f"{too_long_posts[0].where}, {len(too_long_posts[0].text):,} characters); nothing would be written. "
                f"Check the file (a line break lost?) or raise --max-post-chars."
            )
        attrs = read_side_file(attributes[split], src, len(posts)) if split in attributes else None
        ocrs = read_side_file(ocr[split], src, len(posts)) if split in ocr else None
        parsed[split] = (posts, attrs, ocrs)

    image_prefix = ""
    missing: list[tuple[str, CmkpPost]] = []
    available: set[str] = set()
    if use_images:
        image_dir = Path(image_dir) if image_dir is not None else output_dir / "images"
        if image_dir.is_dir():
            with os.scandir(image_dir) as it:
                available = {entry.name for entry in it}
        elif missing_images == "error":
            raise DatasetError(
                f"image folder {image_dir} does not exist; give --image-dir, or --missing-images skip|text-only, "
                f"or --no-images for a text-only dataset."
            )
        rel = Path(os.path.relpath(image_dir.resolve(), output_dir.resolve())).as_posix()
        image_prefix = "" if rel == "." else rel + "/"
        for split, (posts, _, _) in parsed.items():
            missing.extend((split, p) for p in posts if p.image not in available)

    report_path = Path(missing_report) if missing_report else output_dir / f"{name}_missing_images.txt"
    if missing:
        atomic_write_text(
            report_path,
            "# split\tfile:line\timage\turl\n"
            + "".join(f"{s}\t{p.where}\t{p.image or '-'}\t{p.image_url or '-'}\n" for s, p in missing),
        )
        if missing_images == "error":
            total = sum(len(v[0]) for v in parsed.values())
            first = ", ".join(f"{p.where} ({p.image or 'no image URL'})" for _, p in missing[:3])
            raise DatasetError(
                f"{len(missing)} of {total} posts have no image in {image_dir}: {first}"
                f"{', ...' if len(missing) > 3 else ''}. The full list is in {report_path}. Nothing was converted; "
                f"use --missing-images skip (drop those posts) or text-only (keep them without image)."
            )
        if missing_images == "skip":
            for split, (posts, _, _) in parsed.items():
                if sum(s == split for s, _ in missing) == len(posts):
                    raise DatasetError(
                        f"every post of {sources[split]} lacks its image in {image_dir}, so --missing-images skip "
                        f"would write an empty {split} split; check --image-dir (missing images: {report_path})."
                    )
    elif report_path.exists() and missing_report is None:
        report_path.unlink()  # a stale report from an earlier run would mislead

    # ---- write, under the lock of every output file: re-read the previous files (their CoTs), merge, write
    results = []
    missing_ids = {(s, p.index) for s, p in missing}
    out_paths = {split: output_dir / f"{name}_{split}.json" for split in parsed}
    with locked_files(out_paths.values()):
        previous = {split: _previous_cots(path, overwrite_cot) for split, path in out_paths.items()}
        lost: list[str] = []
        with StagedWrites() as staged:
            for split, (posts, attrs, ocrs) in parsed.items():
                out_path = out_paths[split]
                prev = previous[split]
                written = skipped = text_only = too_long = empty_text = cot_kept = cot_dropped = 0
                examples: list[str] = []
                n_pieces = len(empty_pieces[split])
                examples += [posts[i].where + " (empty keyphrase piece)" for i in sorted(empty_pieces[split])[:3]]
                with staged.open(out_path) as f:
                    f.write("[")
                    first_row = True
                    iterator = posts
                    if progress:
                        from tqdm import tqdm

                        iterator = tqdm(posts, desc=f"{name}_{split}", unit="post", file=sys.stderr)
                    render = template.render
                    for post in iterator:
                        if max_post_chars and len(post.text) > max_post_chars:
                            too_long += 1
                            if len(examples) < 6:
                                examples.append(f"{post.where} ({len(post.text):,} characters)")
                            continue
                        has_image = use_images
                        if use_images and (split, post.index) in missing_ids:
                            if missing_images == "skip":
                                skipped += 1
                                continue
                            has_image = False
                            text_only += 1
                        if not post.text:
                            empty_text += 1
                            if len(examples) < 6:
                                examples.append(f"{post.where} (empty post text)")
                        i = post.index
                        prompt = render(
                            post.text,
                            attributes=attrs[i] if attrs is not None else None,
                            ocr=ocrs[i] if ocrs is not None else None,
                            sep=answer_sep,
                            with_image=has_image,
                        )
                        row = make_row(
                            sample_id(name, split, i),
                            post.text,
                            post.keyphrases,
                            prompt,
                            [image_prefix + post.image] if has_image else None,
                            answer_sep,
                        )
                        old = prev.pop(row["id"], None) if prev else None
                        if old is not None:
                            if overwrite_cot:
                                cot_dropped += 1
                            elif old.get("text") == row["text"] and old.get("keyphrases") == row["keyphrases"]:
                                row["cot"] = old["cot"]
                                if "cot_source" in old:
                                    row["cot_source"] = old["cot_source"]
                                cot_kept += 1
                            else:
                                lost.append(f"{out_path}: {row['id']} (its post changed)")
                        f.write("\n" if first_row else ",\n")
                        f.write(_dumps(row))
                        first_row = False
                        written += 1
                    f.write("\n]\n" if written else "]\n")
                if overwrite_cot:
                    cot_dropped += len(prev)
                else:
                    lost += [f"{out_path}: {rid} (no longer written)" for rid in prev]
                results.append(
                    SplitResult(
                        split, out_path, len(posts), written, skipped, text_only, too_long, empty_text, n_pieces,
                        cot_kept, cot_dropped, tuple(examples),
                    )
                )
            if lost:
                raise DatasetError(
                    f"{len(lost)} row(s) of the existing output would lose their CoT (written by gen-cot): "
                    + "; ".join(lost[:5]) + ("; ..." if len(lost) > 5 else "")
                    + ". Nothing was written; pass --overwrite-cot to drop them, or write to another --output-dir."
                )
        if write_dataset_info:  # takes the folder's own lock; safe while the file locks are held
            for r in results:
                update_dataset_info(output_dir, f"{name}_{r.split}", r.path.name, has_images=use_images)
    return results


# ---------------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "inputs", nargs="+", metavar="SPLIT=SRC", help="CMKP source file(s), e.g. test=tw_mm_s1/test_src.txt"
    )
    parser.add_argument("-o", "--output-dir", required=True, help="LLaMA-Factory dataset_dir to write into")
    parser.add_argument("--name", default="mmkp", help="dataset name: files <name>_<split>.json (default: mmkp)")
    parser.add_argument("--image-dir", help="folder holding the images (default: <output-dir>/images)")
    parser.add_argument("--no-images", action="store_true", help="text-only dataset: no images, no <image> token")
    parser.add_argument(
        "--missing-images",
        choices=MISSING_IMAGE_POLICIES,
        default="error",
        help="what to do with posts whose image is missing",
    )
    parser.add_argument(
        "--missing-report", help="where to list missing images (default: <output-dir>/<name>_missing_images.txt)"
    )
    parser.add_argument("--attributes", nargs="+", metavar="SPLIT=PATH", help="line-aligned image-attribute side files")
    parser.add_argument("--ocr", nargs="+", metavar="SPLIT=PATH", help="line-aligned OCR side files")
    parser.add_argument(
        "--side-files",
        action="store_true",
        help=f"use the CMKP side files next to each SRC (X_src.txt -> X{ATTRIBUTE_SUFFIX}, X{OCR_SUFFIX})",
    )
    parser.add_argument(
        "--prompt-template",
        help="user prompt, str.format syntax with {text} and optional {attributes} {ocr} {sep}; @FILE reads it from "
        "a file (default: see docs/data.md)",
    )
    parser.add_argument(
        "--kp-sep", default=DEFAULT_KP_SEP, help=f"keyphrase separator in the CMKP files (default: {DEFAULT_KP_SEP!r})"
    )
    parser.add_argument(
        "--answer-sep",
        default=DEFAULT_ANSWER_SEP,
        help=f"separator of the keyphrases in the answer (default: {DEFAULT_ANSWER_SEP!r})",
    )
    parser.add_argument(
        "--max-post-chars",
        type=int,
        default=DEFAULT_MAX_POST_CHARS,
        help="skip (and count) posts whose text is longer (default: %(default)s characters; 0: no limit)",
    )
    parser.add_argument(
        "--overwrite-cot",
        action="store_true",
        help="drop the CoTs that gen-cot wrote into an existing output (default: keep them, by id, where the post "
        "is unchanged, and refuse to lose any)",
    )
    parser.add_argument("--no-dataset-info", action="store_true", help="do not write <output-dir>/dataset_info.json")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _side_file(src: Path, suffix: str) -> Path:
    if not src.name.endswith("_src.txt"):
        raise DatasetError(
            f"--side-files: {src} is not named X_src.txt, so its side files cannot be found; use --attributes/--ocr."
        )
    return src.with_name(src.name[: -len("_src.txt")] + suffix)


def run(args: argparse.Namespace) -> int:
    sources = parse_split_specs(args.inputs, what="source files")
    splits = list(sources)
    attributes = _side_specs(args.attributes, splits, "attributes")
    ocr = _side_specs(args.ocr, splits, "ocr")
    if args.side_files:
        if attributes or ocr:
            raise DatasetError(
                "--side-files finds the side files itself; do not combine it with --attributes/--ocr."
            )
        attributes = {s: _side_file(p, ATTRIBUTE_SUFFIX) for s, p in sources.items()}
        ocr = {s: _side_file(p, OCR_SUFFIX) for s, p in sources.items()}
    template = args.prompt_template
    if template and template.startswith("@"):
        try:
            template = Path(template[1:]).read_text(encoding="utf-8").rstrip("\n")
        except OSError as e:
            raise DatasetError(f"--prompt-template {args.prompt_template}: {e.strerror}.") from None
    with paused_gc():
        results = _convert_cli(args, sources, attributes, ocr, template)
    _print_results(args, results)
    return 0


def _convert_cli(
    args: argparse.Namespace,
    sources: dict[str, Path],
    attributes: dict[str, Path],
    ocr: dict[str, Path],
    template: str | None,
) -> list[SplitResult]:
    return convert(
        sources,
        args.output_dir,
        name=args.name,
        image_dir=args.image_dir,
        use_images=not args.no_images,
        attributes=attributes,
        ocr=ocr,
        prompt_template=template,
        kp_sep=args.kp_sep,
        answer_sep=args.answer_sep,
        missing_images=args.missing_images,
        missing_report=args.missing_report,
        write_dataset_info=not args.no_dataset_info,
        progress=not args.quiet,
        max_post_chars=args.max_post_chars,
        overwrite_cot=args.overwrite_cot,
    )


def _print_results(args: argparse.Namespace, results: list[SplitResult]) -> None:
    for r in results:
        extra = []
        if r.skipped:
            extra.append(f"{r.skipped} skipped (missing image)")
        if r.text_only:
            extra.append(f"{r.text_only} text-only (missing image)")
        if r.too_long:
            extra.append(f"{r.too_long} skipped (text over --max-post-chars {args.max_post_chars})")
        if r.empty_text:
            extra.append(f"{r.empty_text} with an empty post text")
        if r.empty_kp_pieces:
            extra.append(f"{r.empty_kp_pieces} with empty keyphrase pieces (';;', dropped)")
        if r.cot_kept:
            extra.append(f"{r.cot_kept} CoTs kept from the previous file")
        if r.cot_dropped:
            extra.append(f"{r.cot_dropped} CoTs dropped (--overwrite-cot)")
        note = f" ({', '.join(extra)})" if extra else ""
        print(f"{r.split}: {r.written} of {r.posts} posts -> {r.path}{note}")
        if r.examples:
            print(f"  e.g. {'; '.join(r.examples)}")
    if not args.no_dataset_info:
        print(
            f"dataset_info: {Path(args.output_dir) / 'dataset_info.json'} ({', '.join(f'{args.name}_{r.split}' for r in results)})"
        )


__all__ = [
    "DEFAULT_ANSWER_SEP",
    "DEFAULT_KP_SEP",
    "DEFAULT_MAX_POST_CHARS",
    "DEFAULT_PROMPT_TEMPLATE",
    "EMPTY_SIDE_VALUE",
    "IMAGE_PLACEHOLDER",
    "PROMPT_ATTRIBUTES_LINE",
    "PROMPT_INSTRUCTION",
    "PROMPT_OCR_LINE",
    "SEP",
    "CmkpFormatError",
    "CmkpPost",
    "PromptTemplate",
    "convert",
    "default_prompt_template",
    "image_basename",
    "make_row",
    "parse_cmkp_line",
    "read_cmkp_file",
    "read_lines",
    "read_side_file",
]
