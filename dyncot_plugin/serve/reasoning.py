"""vLLM reasoning parser ``dyncot``: the rationale in ``reasoning_content``, the keyphrases in ``content``.

Works on text, not token ids: on Qwen's vocabulary ``</think><answer>`` shares a ``><`` token, so no token id marks
the end of the rationale. A reply ``<think>R</think><answer>A</answer>`` gives reasoning ``R`` and content ``A``; a
reply without ``<think>`` at its start is all content (its ``<answer>`` tags removed); a malformed one (``<think>``
never closed) is all reasoning, content ``None``. Streaming emits, per delta, what the text so far adds to each
part (a partial tag at the end of the text is held back until it is decided).

Load: ``--reasoning-parser-plugin <path of this file> --reasoning-parser dyncot`` (``dyncot-serve`` passes both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.reasoning import ReasoningParser, ReasoningParserManager

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"


def split_reply(text: str, final: bool = True) -> tuple[str | None, str | None]:
    """(reasoning, content) of a reply's text; with ``final=False`` a trailing partial tag is held back."""
    def hold(s: str) -> str:
        if final:
            return s
        for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
            for k in range(len(tag) - 1, 0, -1):
                if s.endswith(tag[:k]):
                    return s[: len(s) - k]
        return s

    def answer(s: str) -> str:
        s = s.strip("\n") if final else s.lstrip("\n")
        if s.startswith(ANSWER_OPEN):
            s = s[len(ANSWER_OPEN):]
        end = s.find(ANSWER_CLOSE)
        return s[:end] if end >= 0 else hold(s)

    if not text.startswith(THINK_OPEN):
        if not final and THINK_OPEN.startswith(text):
            return None, None
        return None, answer(text)
    body = text[len(THINK_OPEN):]
    end = body.find(THINK_CLOSE)
    if end < 0:
        return hold(body), None
    return body[:end], answer(body[end + len(THINK_CLOSE):])


@ReasoningParserManager.register_module("dyncot")
class DyncotReasoningParser(ReasoningParser):
    """See the module docstring."""

    def __init__(self, tokenizer: Any, *args: Any, **kwargs: Any):
        super().__init__(tokenizer, *args, **kwargs)

    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
        # True only once a rationale is closed. vLLM also asks this of the prompt before streaming (True there would
        # make the whole reply content), and a reply without <think> is content anyway (extract_* handle it).
        return THINK_CLOSE in self.model_tokenizer.decode(list(input_ids))

    def is_reasoning_end_streaming(self, input_ids: Sequence[int], delta_ids: Any) -> bool:
        # Never hand the stream over to vLLM's plain-content path: after </think> the <answer> tags still need
        # stripping, which extract_reasoning_streaming does on the text so far.
        return False

    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        return input_ids

    def extract_reasoning(self, model_output: str, request: Any) -> tuple[str | None, str | None]:
        return split_reply(model_output, final=True)

    def extract_reasoning_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                    previous_token_ids: Sequence[int], current_token_ids: Sequence[int],
                                    delta_token_ids: Sequence[int]) -> DeltaMessage | None:
        before = split_reply(previous_text, final=False)
        after = split_reply(current_text, final=False)
        parts = [(a or "")[len(b or ""):] for a, b in zip(after, before)]
        if not any(parts):
            return None
        return DeltaMessage(reasoning=parts[0] or None, content=parts[1] or None)


__all__ = ["DyncotReasoningParser", "split_reply"]
