"""The samples a gen-cot run asks about: built from the dataset rows, their images checked before anything is sent,
and the ones still to ask (pending) chosen from the cache.

What is sent is what was checked: :func:`check_images` records the real path each image resolved to and the device
and inode of the file it decoded; :func:`read_checked` later opens that real path and sends the bytes only if the
open file is still that file (docs/teacher.md, "What is checked before anything is sent").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyncot_plugin.io.datasets import DatasetError, row_label
from dyncot_plugin.tasks.mmkp.normalize import stem_phrase
from dyncot_plugin.tasks.mmkp.rows import post_text, row_keyphrases
from dyncot_plugin.teacher.cache import JsonlCache
from dyncot_plugin.teacher.report import Stats

logger = logging.getLogger("dyncot_plugin.teacher")

_MAX_LISTED = 10


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


def same_gold(a: list[str], b: list[str]) -> bool:
    return {stem_phrase(x) for x in a} == {stem_phrase(x) for x in b}


def bad_images_message(bad: list[dict[str, Any]], n_pending: int) -> str:
    shown = "\n  ".join(b["reason"] for b in bad[:_MAX_LISTED])
    more = f"\n  ... and {len(bad) - _MAX_LISTED} more (all in the report)" if len(bad) > _MAX_LISTED else ""
    return (
        f"{len(bad)} image(s) of the {n_pending} selected samples cannot be sent; nothing was sent to the teacher:"
        f"\n  {shown}{more}"
    )


def select_pending(samples: list[Sample], rows: list[dict], cache: JsonlCache, args: argparse.Namespace,
                   st: Stats) -> list[Sample]:
    """The samples to ask about (at most ``--limit``), counting the others in ``st``: done in the cache (for the
    same gold keyphrases), rows that already have a CoT (unless ``--overwrite``), rejected in the cache (unless
    ``--retry-rejected``). An interrupted conversation (attempt records after the last final one) is pending: it
    resumes at its next attempt."""
    pending: list[Sample] = []
    for s in samples:
        has_cot = rows[s.index].get("cot") not in (None, "")
        state = cache.states.get(s.id)
        final = state.final if state is not None else None
        if final is not None and final["status"] == "done":
            if same_gold(final.get("keyphrases") or [], s.keyphrases):
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
        pending.append(s)
    if args.limit is not None:
        pending = pending[: args.limit]
    st.pending = len(pending)
    return pending
