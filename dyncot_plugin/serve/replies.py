"""A reply's text split into rationale and answer, the same whether it arrives whole or streamed (vLLM-free: the
reasoning parser in :mod:`~dyncot_plugin.serve.reasoning` uses it inside vLLM, the tests without vLLM).

A reply ``<think>R</think><answer>A</answer>`` gives reasoning ``R`` and content ``A``; a reply without ``<think>``
at its start is all content (its ``<answer>`` tags removed); a malformed one (``<think>`` never closed) is all
reasoning, content ``None``. The content's leading and trailing line breaks are dropped.

:func:`split_reply` with ``final=False`` holds back what more text could still change (a partial tag at the end, the
content's trailing line breaks, a reply that is still a prefix of ``<think>``), so that its result is, part by part,
a prefix of the split of any longer text, final or not. :class:`StreamSplit` streams the differences and, at the
end, the rest of the final split: its deltas add up to ``split_reply(text)`` whatever the cut.
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"


def _cut_partial(s: str, tag: str) -> str:
    """``s`` without a trailing proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(s)), 0, -1):
        if s.endswith(tag[:k]):
            return s[: len(s) - k]
    return s


def _answer(s: str, final: bool) -> str:
    s = s.lstrip("\n")
    if final:
        s = s.rstrip("\n")
    if s.startswith(ANSWER_OPEN):
        s = s[len(ANSWER_OPEN):]
    elif not final and ANSWER_OPEN.startswith(s):
        return ""  # could still become <answer>
    end = s.find(ANSWER_CLOSE)
    if end >= 0:
        return s[:end]
    if final:
        return s
    while True:  # trailing line breaks (the final text drops them) and a partial </answer> wait for more text
        held = _cut_partial(s.rstrip("\n"), ANSWER_CLOSE)
        if held == s:
            return s
        s = held


def split_reply(text: str, final: bool = True) -> tuple[str | None, str | None]:
    """(reasoning, content) of a reply's text. With ``final=False`` (a stream so far) what more text could change
    is held back: the result is then a prefix, part by part, of the split of any text that extends ``text``."""
    if not text.startswith(THINK_OPEN):
        if not final and THINK_OPEN.startswith(text):
            return None, None  # "", "<", ... "<think": still undecided
        return None, _answer(text, final)
    body = text[len(THINK_OPEN):]
    end = body.find(THINK_CLOSE)
    if end < 0:
        return (body if final else _cut_partial(body, THINK_CLOSE)), None
    return body[:end], _answer(body[end + len(THINK_CLOSE):], final)


class StreamSplit:
    """A streamed reply's (reasoning, content) deltas: :meth:`feed` each piece of text, :meth:`finish` at the end;
    the deltas add up to :func:`split_reply` of the whole text."""

    def __init__(self) -> None:
        self.text = ""
        self.sent = ["", ""]

    def _delta(self, parts: tuple[str | None, str | None]) -> tuple[str, str]:
        out = []
        for k, part in enumerate(parts):
            part = part or ""
            out.append(part[len(self.sent[k]):])
            self.sent[k] = part
        return out[0], out[1]

    def feed(self, delta: str) -> tuple[str, str]:
        self.text += delta
        return self._delta(split_reply(self.text, final=False))

    def finish(self) -> tuple[str, str]:
        return self._delta(split_reply(self.text, final=True))


__all__ = ["ANSWER_CLOSE", "ANSWER_OPEN", "THINK_CLOSE", "THINK_OPEN", "StreamSplit", "split_reply"]
