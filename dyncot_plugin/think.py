"""The think decision as the model reads it: the tag's tokens, the two-way rule, and a text-level ban.

One place defines what "thinking" is in tokens, for training, Hugging Face generation and vLLM alike:

* **The tag.** A reply thinks when it starts with ``<think>``. On a tokenizer where ``<think>`` is one token
  (Qwen3's vocabulary, the tiny test tokenizer) that is one id; on Qwen2/Qwen2.5's real vocabulary it is three
  (``<th`` ``ink`` ``>``), and Qwen's pre-tokenizer would glue the tag's ``>`` to the next word (``>The``) if a CoT
  target were tokenised as one string. :func:`encode_segments` therefore tokenises text with the tag as a segment
  of its own, and CoT targets are tokenised that way (``train/views.py``), so that the tag's tokens in every
  trained target are exactly :func:`think_tag_ids`: the tokens ``always`` forces and whose probability the
  decision scores.

  Why segments, not new tokens: adding ``<think>`` to the vocabulary would make LLaMA-Factory train the whole
  embedding and LM head under LoRA (``resize_vocab``; an adapter of hundreds of MB for a 7B model) and vLLM refuses
  LoRA adapters that carry embeddings; segments change nothing in the model. What it costs: on a multi-token tag
  the think probability needs the tag's own tokens after the prompt (a look-ahead of ``len(tag) - 1`` tokens on the
  prompt's KV cache, never a second pass over the prompt).

* **The decision** (:func:`decide`): ``think_prob`` is the probability of the whole tag sequence at the start of
  the reply, given the prompt. ``auto`` thinks when ``think_prob >= threshold`` (``dyncot_think_threshold``,
  default 0.5; above 1 it never thinks), and the reply is then generated exactly as ``always`` generates it (the
  tag forced), otherwise exactly as ``never`` does. ``greedy`` is the old rule, kept for comparison: no control,
  the tag wins when its first token beats every plain first token.

* **Never** (:class:`TagTextBan`): no decoded reply may contain ``<think>``, however it is spelled in tokens. The
  ban works on text: a small automaton tracks the longest tail of the reply that is a proper prefix of ``<think>``
  and bans every token whose text would complete the tag from that tail (or contains it).

Import-light (no torch): the vLLM extension and the evaluation tools use it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from dyncot_plugin.cot_format import THINK_OPEN

__all__ = [
    "DEFAULT_THRESHOLD",
    "THINK_MODES",
    "THINK_SETTINGS_FILE",
    "TagTextBan",
    "decide",
    "encode_segments",
    "prob_for_file",
    "think_tag_ids",
]

THINK_MODES = ("auto", "always", "never", "greedy")
"""``dyncot_think``: ``auto`` (the two-way rule), ``always``, ``never``, ``greedy`` (no control; for comparison)."""
DEFAULT_THRESHOLD = 0.5
THINK_SETTINGS_FILE = "dyncot_think.json"
"""Written next to a trained model and a prediction run: ``{"think", "threshold", "tag", "tag_ids"}``."""


def prob_for_file(p: float) -> float:
    """A ``think_prob`` as prediction files store it: 8 significant digits (not 8 decimals, which turn a weakly
    trained model's 1e-11 into 0 and lose the order the frontier sorts by)."""
    return float(f"{float(p):.8g}")


def encode_segments(tokenizer: Any, text: str, tag: str = THINK_OPEN) -> list[int]:
    """``tokenizer.encode(text)`` with every occurrence of ``tag`` tokenised as a segment of its own, so the tag's
    tokens never merge with the text around it (Qwen's ``>The``)."""
    parts = text.split(tag)
    ids: list[int] = []
    for i, part in enumerate(parts):
        if i:
            ids += tokenizer.encode(tag, add_special_tokens=False)
        if part:
            ids += tokenizer.encode(part, add_special_tokens=False)
    return ids


def think_tag_ids(tokenizer: Any) -> list[int]:
    """The token ids of ``<think>`` as a segment of its own: what CoT targets start with, what ``always`` forces."""
    ids = list(tokenizer.encode(THINK_OPEN, add_special_tokens=False))
    if not ids:
        raise ValueError(f"the tokenizer encodes {THINK_OPEN!r} to no tokens")
    return ids


def decide(mode: str, think_prob: float, threshold: float = DEFAULT_THRESHOLD) -> bool | None:
    """Whether a reply thinks: True / False, or None for ``greedy`` (the model's free choice)."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if mode == "auto":
        return think_prob >= threshold
    if mode == "greedy":
        return None
    raise ValueError(f"unknown think mode {mode!r}; expected one of {', '.join(THINK_MODES)}")


def check_threshold(value: Any, key: str = "dyncot_think_threshold") -> float:
    """A finite number >= 0 (above 1: never thinks), or a ValueError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key}: got {value!r}; expected a finite number >= 0 (above 1 never thinks).")
    return float(value)


_TEXTS_CACHE: dict[int, tuple[Any, int, list[str]]] = {}


def token_texts(tokenizer: Any, vocab_size: int | None = None) -> list[str]:
    """The text of every token id as a decoded reply shows it (``skip_special_tokens=True``: special tokens are
    empty); ids past the tokenizer (a model vocabulary padded to a multiple) decode to nothing. Decoding a real
    vocabulary takes seconds, so the texts are kept per tokenizer object."""
    n = len(tokenizer)
    cached = _TEXTS_CACHE.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer and cached[1] == n:
        texts = cached[2]
        return texts + [""] * (max(n, vocab_size or 0) - len(texts))
    texts = _decode_each(tokenizer)
    _TEXTS_CACHE[id(tokenizer)] = (tokenizer, n, texts)
    return texts + [""] * (max(n, vocab_size or 0) - len(texts))


def _decode_each(tokenizer: Any) -> list[str]:
    n = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    return ["" if i in special else t for i, t in enumerate(texts)]


@dataclass
class TagTextBan:
    """Keeps ``tag`` out of decoded text, whatever tokens spell it.

    State of a reply: the longest tail of its text that is a proper prefix of ``tag`` (``""`` .. ``"<think"``).
    ``banned[state]``: token ids whose text, appended to that tail, contains ``tag``. ``<think>`` has no border
    (no proper prefix that is also a suffix), so the tail alone decides.
    """

    texts: Sequence[str]
    tag: str = THINK_OPEN

    def __post_init__(self) -> None:
        self.states = [self.tag[:i] for i in range(len(self.tag))]
        self.banned: dict[str, list[int]] = {}
        for state in self.states:
            rest = self.tag[len(state):]
            self.banned[state] = [
                i for i, text in enumerate(self.texts)
                if self.tag in text or (state and text.startswith(rest))
            ]

    def next_state(self, state: str, token_id: int) -> str:
        text = state + (self.texts[token_id] if 0 <= token_id < len(self.texts) else "")
        start = text.rfind(self.tag[0])
        if start < 0:
            return ""
        tail = text[start:]
        return tail if len(tail) < len(self.tag) and self.tag.startswith(tail) else ""

    def state_of(self, token_ids: Sequence[int]) -> str:
        state = ""
        for token_id in token_ids:
            state = self.next_state(state, int(token_id))
        return state

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, vocab_size: int | None = None) -> "TagTextBan":
        return cls(token_texts(tokenizer, vocab_size))
