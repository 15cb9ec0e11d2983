"""Parse and check a teacher's reply: ``<think>rationale</think><answer>kp1; kp2</answer>``.

A reply is accepted when

1. its *format* is right: after stripping surrounding white space it is exactly one ``<think>…</think>`` block
   followed by exactly one ``<answer>…</answer>`` block (white space between them allowed), the rationale is not
   empty, and the answer holds at least one keyphrase (keyphrases are separated by ``;``);
2. its *keyphrases* match the gold ones after the evaluator's normalisation
   (:func:`dyncot_plugin.tasks.mmkp.normalize.stem_phrase`: lower-case, white-space tokenise, Porter-stem each word),
   compared as sets:

   - ``exact`` (the default): the answer's set equals the gold set (order and duplicates do not matter);
   - ``superset``: every gold keyphrase is in the answer; extra ones are allowed and reported.

The stored CoT target is always re-assembled as ``<think>{rationale}</think><answer>{gold joined by "; "}</answer>``:
its answer is the gold answer word for word, so the CoT target and the plain target agree and a teacher's extra
keyphrases (``superset``) never become training labels.

Every rejection carries a short, teacher-readable reason; :mod:`dyncot_plugin.teacher.prompts` sends it back to the
teacher when the sample is retried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dyncot_plugin.cot_format import ANSWER_SEP, build_cot
from dyncot_plugin.tasks.mmkp.normalize import split_keyphrases, stem_phrase

MATCH_RULES = ("exact", "superset")
DEFAULT_MATCH = "exact"

_TAG_RE = re.compile(r"</?(think|answer)>", re.IGNORECASE)
_REPLY_RE = re.compile(r"\A<think>(?P<think>.*)</think>\s*<answer>(?P<answer>.*)</answer>\Z", re.DOTALL)


@dataclass
class ParsedReply:
    rationale: str
    answer: str
    keyphrases: list[str]


@dataclass
class Verdict:
    """Outcome of :func:`validate_reply`. ``cot`` is the target to store (``None`` when rejected)."""

    ok: bool
    reason: str = ""
    kind: str = ""  # "", "empty", "format", "keyphrases"
    cot: str | None = None
    parsed: ParsedReply | None = None
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


class ReplyFormatError(ValueError):
    def __init__(self, reason: str, kind: str = "format") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_reply(reply: str | None) -> ParsedReply:
    """Split a reply into rationale and keyphrases; raise :class:`ReplyFormatError` with the reason if malformed."""
    if reply is None or not reply.strip():
        raise ReplyFormatError("the reply was empty", kind="empty")
    text = reply.strip()
    tags = [m.group(0).lower() for m in _TAG_RE.finditer(text)]
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        count = tags.count(tag)
        if count == 0:
            raise ReplyFormatError(f"the reply has no {tag} tag")
        if count > 1:
            raise ReplyFormatError(f"the reply has {count} {tag} tags; exactly one is expected")
    if tags != ["<think>", "</think>", "<answer>", "</answer>"]:
        raise ReplyFormatError(
            "the tags are out of order (found " + " ".join(tags) + "); expected <think>…</think><answer>…</answer>"
        )
    match = _REPLY_RE.match(text)
    if match is None:
        # Tags are right and in order, so something sits outside them (or a tag is in the wrong case).
        head = text[: text.lower().index("<think>")]
        tail = text[text.lower().rindex("</answer>") + len("</answer>") :]
        if head.strip():
            raise ReplyFormatError(f"there is text before <think>: {_short(head)!r}")
        if tail.strip():
            raise ReplyFormatError(f"there is text after </answer>: {_short(tail)!r}")
        between = text[text.lower().index("</think>") + len("</think>") : text.lower().index("<answer>")]
        if between.strip():
            raise ReplyFormatError(f"there is text between </think> and <answer>: {_short(between)!r}")
        raise ReplyFormatError("the tags must be lower-case: <think>…</think><answer>…</answer>")
    rationale = match.group("think").strip()
    answer = match.group("answer").strip()
    if not rationale:
        raise ReplyFormatError("the <think> block is empty; it must explain the keyphrases")
    keyphrases = split_keyphrases(answer, ";")
    if not keyphrases:
        raise ReplyFormatError("the <answer> block holds no keyphrase")
    return ParsedReply(rationale=rationale, answer=answer, keyphrases=keyphrases)


def _stem_map(phrases: list[str]) -> dict[tuple[str, ...], str]:
    out: dict[tuple[str, ...], str] = {}
    for p in phrases:
        out.setdefault(stem_phrase(p), p)
    return out


def build_target(rationale: str, gold: list[str], sep: str = ANSWER_SEP) -> str:
    """The stored CoT target: the teacher's rationale and the gold answer word for word."""
    return build_cot(rationale, sep.join(gold))


def validate_reply(
    reply: str | None,
    gold: list[str],
    match: str = DEFAULT_MATCH,
    sep: str = ANSWER_SEP,
    finish_reason: str | None = None,
) -> Verdict:
    """Check a teacher reply against the gold keyphrases. Never raises on bad replies: returns a :class:`Verdict`."""
    if match not in MATCH_RULES:
        raise ValueError(f"match must be one of {MATCH_RULES}, got {match!r}")
    if not gold:
        raise ValueError("a sample without gold keyphrases cannot be validated")
    try:
        parsed = parse_reply(reply)
    except ReplyFormatError as err:
        reason = err.reason
        if finish_reason == "length":
            reason += " (the reply was cut off at the token limit)"
        return Verdict(ok=False, reason=reason, kind=err.kind)

    gold_map = _stem_map(gold)
    got_map = _stem_map(parsed.keyphrases)
    missing = [p for s, p in gold_map.items() if s not in got_map]
    extra = [p for s, p in got_map.items() if s not in gold_map]
    ok = not missing and (match == "superset" or not extra)
    if not ok:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(repr(p) for p in missing))
        if extra:
            parts.append("unexpected " + ", ".join(repr(p) for p in extra))
        reason = "the answer's keyphrases do not match the given ones: " + "; ".join(parts)
        return Verdict(ok=False, reason=reason, kind="keyphrases", parsed=parsed, missing=missing, extra=extra)
    return Verdict(ok=True, cot=build_target(parsed.rationale, gold, sep), parsed=parsed, extra=extra)
