"""vLLM reasoning parser ``dyncot``: the rationale in ``reasoning_content``, the keyphrases in ``content``.

Works on text, not token ids: on Qwen's vocabulary ``</think><answer>`` shares a ``><`` token, so no token id marks
the end of the rationale. The split is :func:`dyncot_plugin.serve.replies.split_reply` (``<think>R</think><answer>A
</answer>`` gives reasoning ``R`` and content ``A``; a reply without ``<think>`` at its start is all content; an
unclosed ``<think>`` is all reasoning). Only the reply's own text counts: a prompt that contains ``</think>`` (user
text, an earlier turn's rationale, a template's empty think block) changes nothing.

**Streaming equals non-streaming.** A stream sends what :class:`~dyncot_plugin.serve.replies.StreamSplit` releases
(it holds back what later text could still change) and, when it ends, the rest of the final split
(:meth:`DyncotReasoningParser.finish_streaming`), so the streamed deltas add up to the non-streamed ``reasoning`` and
``content`` whatever the cut (``max_tokens`` 1, a reply cut inside ``</answer>``). The parser keeps its own text
(vLLM makes one parser per streamed choice) and declares itself engine-based (``engine_based_streaming``) so that
vLLM calls ``finish_streaming`` at the end of a stream; it never reports the end of the reasoning, so vLLM never
switches the stream to its plain-content path (after ``</think>`` the ``<answer>`` tags still need stripping).

Load: ``--reasoning-parser-plugin <path of this file> --reasoning-parser dyncot`` (``dyncot-serve`` passes both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.reasoning import ReasoningParser, ReasoningParserManager

from dyncot_plugin.serve.replies import StreamSplit, split_reply


@ReasoningParserManager.register_module("dyncot")
class DyncotReasoningParser(ReasoningParser):
    """See the module docstring."""

    engine_based_streaming = True  # so that vLLM calls finish_streaming() when a stream ends

    def __init__(self, tokenizer: Any, *args: Any, **kwargs: Any):
        super().__init__(tokenizer, *args, **kwargs)
        self._stream = StreamSplit()

    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
        # vLLM asks this of the prompt before streaming (True would make the whole reply content) and, for
        # structured outputs, of the reply (refused with dyncot_think): a rationale is the reply's own, and its end
        # is found in the text by extract_reasoning*.
        return False

    def is_reasoning_end_streaming(self, input_ids: Sequence[int], delta_ids: Any) -> bool:
        return False

    def has_engine_confirmed_reasoning_end(self) -> bool:
        return False  # never hand the stream over to vLLM's plain-content path

    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        return input_ids

    def extract_reasoning(self, model_output: str, request: Any) -> tuple[str | None, str | None]:
        return split_reply(model_output, final=True)

    @staticmethod
    def _message(parts: tuple[str, str]) -> DeltaMessage | None:
        return DeltaMessage(reasoning=parts[0] or None, content=parts[1] or None) if any(parts) else None

    def extract_reasoning_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                    previous_token_ids: Sequence[int], current_token_ids: Sequence[int],
                                    delta_token_ids: Sequence[int]) -> DeltaMessage | None:
        # The parser's own text: vLLM passes only the delta as current_text to engine-based parsers.
        return self._message(self._stream.feed(delta_text))

    def finish_streaming(self) -> DeltaMessage | None:
        """What the stream held back: the rest of the final split."""
        return self._message(self._stream.finish())


__all__ = ["DyncotReasoningParser", "split_reply"]
