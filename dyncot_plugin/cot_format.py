"""The reasoning format, in one place: build and parse ``<think>rationale</think><answer>A</answer>``, and
summarise how a set of outputs thinks.

:func:`build_cot` writes a CoT target (the teacher, the demo data and the ScienceQA converter all call it);
:data:`ANSWER_SEP` joins keyphrases in an answer (``kp1; kp2``). :func:`parse_output` reads any model output back.

:func:`parse_output` never raises: every string maps to one :class:`ParsedOutput` whose ``kind`` says which form
it had. Well-formed kinds:

* ``cot``: ``<think>R</think><answer>A</answer>`` with a non-empty answer (white space between the blocks is fine);
* ``bare``: a plain answer, no tags (``kp1; kp2``, the Dynamic-CoT "no thinking" reply);
* ``answer_only``: ``<answer>A</answer>`` without a think block.

Broken kinds (counted and reported, and still scored with whatever answer could be recovered):

* ``unclosed_think``: ``<think>`` without ``</think>`` (generation stopped while thinking); the answer is an
  ``<answer>`` block inside it if there is one, else empty;
* ``unopened_think``: ``</think>`` without ``<think>`` (the opening tag was in the prompt or lost);
* ``untagged_answer``: ``</think>`` followed by an answer without ``<answer>`` tags;
* ``unclosed_answer``: ``<answer>`` without ``</answer>``; the answer runs to the end of the text;
* ``empty_answer``: the answer (tagged or bare) is empty or white space, e.g. ``<think>R</think><answer></answer>``
  or an empty output.

"Thinking" (``has_think``) means a ``<think>`` or ``</think>`` tag occurs; the CoT trigger rate is the fraction of
outputs that think. Text after ``</answer>`` is ignored. Tags are matched exactly (lower case).

:func:`summarize_outputs` adds the CoT rate and the mean generated length, over all outputs and separately over
those with and without thinking. Length is counted in tokenizer tokens when a tokenizer (or its path) is given --
``len(tokenizer(text, add_special_tokens=False).input_ids)`` of the decoded output, i.e. the generated tokens
without the end-of-sequence token -- and otherwise in white-space separated words (``len(text.split())``).

Import-light: no torch; transformers is imported only when a tokenizer path is given.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

__all__ = [
    "ANSWER_SEP",
    "KINDS",
    "WELL_FORMED",
    "ParsedOutput",
    "build_cot",
    "count_tokens",
    "has_answer_block",
    "parse_output",
    "summarize_outputs",
]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
ANSWER_SEP = "; "
"""Separator of the keyphrases in an answer (``kp1; kp2``); evaluation splits on ``;``."""


def build_cot(rationale: str, answer: str) -> str:
    """The CoT target ``<think>rationale</think><answer>answer</answer>`` (both parts stripped)."""
    return f"{THINK_OPEN}{rationale.strip()}{THINK_CLOSE}{ANSWER_OPEN}{answer.strip()}{ANSWER_CLOSE}"


def has_answer_block(text: str) -> bool:
    """Whether ``text`` holds a closed ``<answer>…</answer>`` block (what a CoT target must have)."""
    i = text.find(ANSWER_OPEN)
    return i >= 0 and text.find(ANSWER_CLOSE, i + len(ANSWER_OPEN)) >= 0

KINDS = (
    "cot",
    "bare",
    "answer_only",
    "unclosed_think",
    "unopened_think",
    "untagged_answer",
    "unclosed_answer",
    "empty_answer",
)
WELL_FORMED = frozenset({"cot", "bare", "answer_only"})


class ParsedOutput(NamedTuple):
    """One parsed output (immutable). ``kind``: see the module docstring."""

    kind: str
    think: str | None  # the rationale (stripped); None when the output has no think block
    answer: str  # the answer text (stripped); "" when none could be recovered
    has_think: bool

    @property
    def well_formed(self) -> bool:
        return self.kind in WELL_FORMED


def _answer_block(text: str) -> tuple[str, bool] | None:
    """The content of the first ``<answer>`` block and whether it was closed; None without ``<answer>``."""
    i = text.find(ANSWER_OPEN)
    if i < 0:
        return None
    start = i + len(ANSWER_OPEN)
    j = text.find(ANSWER_CLOSE, start)
    if j < 0:
        return text[start:].strip(), False
    return text[start:j].strip(), True


def parse_output(text: str | None) -> ParsedOutput:
    """Split one generated output into its kind, rationale and answer (see the module docstring)."""
    s = (text or "").strip()
    if "<" not in s or (THINK_OPEN not in s and THINK_CLOSE not in s and ANSWER_OPEN not in s):
        return ParsedOutput("bare" if s else "empty_answer", None, s, False)

    i = s.find(THINK_OPEN)
    if i < 0:
        j = s.find(THINK_CLOSE)
        if j < 0:  # <answer> without any think tag
            ans, closed = _answer_block(s)
            kind = "empty_answer" if not ans else ("answer_only" if closed else "unclosed_answer")
            return ParsedOutput(kind, None, ans, False)
        think = s[:j].strip()
        rest = s[j + len(THINK_CLOSE) :]
        block = _answer_block(rest)
        ans = block[0] if block is not None else rest.strip()
        return ParsedOutput("unopened_think" if ans else "empty_answer", think, ans, True)

    start = i + len(THINK_OPEN)
    j = s.find(THINK_CLOSE, start)
    if j < 0:
        inner = s[start:]
        block = _answer_block(inner)
        if block is not None:
            think = inner[: inner.find(ANSWER_OPEN)].strip()
            return ParsedOutput("unclosed_think", think, block[0], True)
        return ParsedOutput("unclosed_think", inner.strip(), "", True)

    think = s[start:j].strip()
    rest = s[j + len(THINK_CLOSE) :]
    block = _answer_block(rest)
    if block is None:
        ans = rest.strip()
        return ParsedOutput("untagged_answer" if ans else "empty_answer", think, ans, True)
    ans, closed = block
    if not ans:
        return ParsedOutput("empty_answer", think, "", True)
    return ParsedOutput("cot" if closed else "unclosed_answer", think, ans, True)


def _load_tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer  # lazy: only when lengths are asked in model tokens

        return AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)
    return tokenizer


def count_tokens(texts: Sequence[str], tokenizer: Any = None) -> list[int]:
    """Length of each text: tokenizer tokens (no special tokens added) if a tokenizer is given, else words."""
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    tok = _load_tokenizer(tokenizer)
    if not texts:
        return []
    enc = tok(list(texts), add_special_tokens=False)
    ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
    return [len(x) for x in ids]


def _mean(xs: list[int]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_outputs(
    texts: Sequence[str], tokenizer: Any = None, parsed: Sequence[ParsedOutput] | None = None
) -> dict:
    """CoT trigger rate, output kinds and mean generated length (all / with thinking / without).

    ``tokenizer``: None (count white-space words), a tokenizer object, or a path/name for ``AutoTokenizer``.
    ``parsed``: the :func:`parse_output` results of ``texts`` when the caller already has them.
    Returns ``{"num_outputs", "cot_rate", "well_formed_rate", "kinds": {kind: count}, "gen_len": {"all",
    "with_think", "without_think", "unit"}}``; a mean over no output is None.
    """
    if parsed is None:
        parsed = [parse_output(t) for t in texts]
    if len(parsed) != len(texts):
        raise ValueError(f"{len(parsed)} parsed outputs for {len(texts)} texts")
    n = len(texts)
    kinds = {k: 0 for k in KINDS}
    for p in parsed:
        kinds[p.kind] += 1
    lengths = count_tokens([t or "" for t in texts], tokenizer)
    with_think = [n_tok for n_tok, p in zip(lengths, parsed) if p.has_think]
    without = [n_tok for n_tok, p in zip(lengths, parsed) if not p.has_think]
    if tokenizer is None:
        unit = "whitespace_words"
    elif isinstance(tokenizer, str):
        unit = f"tokenizer:{tokenizer}"
    else:
        unit = f"tokenizer:{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}"
    return {
        "num_outputs": n,
        "cot_rate": len(with_think) / n if n else 0.0,
        "num_think": len(with_think),
        "well_formed_rate": sum(1 for p in parsed if p.kind in WELL_FORMED) / n if n else 0.0,
        "kinds": kinds,
        "gen_len": {
            "all": _mean(lengths),
            "with_think": _mean(with_think),
            "without_think": _mean(without),
            "unit": unit,
        },
    }
