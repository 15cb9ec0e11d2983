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

* **Never** (:class:`NoThinkBan`): no think block in the reply, however it would be spelled in tokens: the decoded
  reply does not begin (after leading white space) with a prefix of ``<think>`` of two or more characters, and
  contains neither ``<think>`` nor ``</think>``. The ban works on text: a small automaton follows the reply's text
  and bans exactly the tokens that would break that, nothing else.

* **In files** (:func:`prob_for_file`): a ``think_prob`` is written as the float the decision compared (its
  shortest round-tripping decimal), so a written value typed in as a threshold decides as the run did.

Import-light (no torch): the vLLM extension and the evaluation tools use it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dyncot_plugin.cot_format import THINK_CLOSE, THINK_OPEN

__all__ = [
    "DEFAULT_THRESHOLD",
    "THINK_MODES",
    "THINK_SETTINGS_FILE",
    "NoThinkBan",
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
    """A ``think_prob`` as prediction files store it: the float itself, which JSON writes as its shortest
    round-tripping decimal, so the value read back is exactly the float the run's decision compared: a threshold
    equal to a written value thinks on that row, and one between two written values splits the posts as the run
    did. (Rounding, as to 8 digits before, moved rows across: 0.0804280186 was written 0.080428019, and ``auto`` at
    0.080428019 did not think on it.)"""
    return float(p)


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
    """The text every token id adds to a decoded reply (``skip_special_tokens=True``, as prediction files, chat
    replies and vLLM show replies): special tokens add nothing, and ids past the tokenizer (a model vocabulary
    padded to a multiple) decode to nothing. Each id is decoded after an anchor token (``a``) and the anchor's text
    cut off, because a SentencePiece tokenizer drops the leading space of a decode's first token only: alone, a
    token would lose the space it shows inside a reply. (``clean_up_tokenization_spaces`` only removes spaces before
    ``.,!?'``, none of them a character of the tags, so it cannot make or break a tag.) Decoding a real vocabulary
    takes seconds, so the texts are kept per tokenizer object."""
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
    options = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    anchor = tokenizer.encode("a", add_special_tokens=False)
    if len(anchor) == 1:
        lead = tokenizer.decode(anchor, **options)
        pairs = tokenizer.batch_decode([[anchor[0], i] for i in range(n)], **options)
        if lead and all(p.startswith(lead) for p in pairs):
            return [p[len(lead):] for p in pairs]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    texts = tokenizer.batch_decode([[i] for i in range(n)], **options)
    return ["" if i in special else t for i, t in enumerate(texts)]


_TAGS = (THINK_OPEN, THINK_CLOSE)
_OPENING = THINK_OPEN[:2]  # "<t": every prefix of "<think>" of two or more characters starts with it


class NoThinkBan:
    """``never``'s ban: the automaton that keeps a reply free of any think block, whatever tokens would spell it.

    **The property** (what ``never``, and ``auto`` on a row below its threshold, guarantee): the decoded reply does
    not begin, after leading white space, with a prefix of ``<think>`` of two or more characters (``<t``, ``<th``,
    ... ``<think>``), and contains neither ``<think>`` nor ``</think>``. The ban sets to -inf exactly the tokens whose
    text, appended to the reply so far, would break it, and leaves every other logit unchanged: a reply may begin
    with ``<answer>`` or ``<`` and contain ``<thin``. Since breaking the property cannot be undone by more text, a
    reply that never takes a banned token keeps it to the end; and no state bans everything (special tokens, the end
    of the reply among them, add no text).

    **States** (:attr:`names`, small ints; :attr:`initial` for an empty reply): ``(at_start, tail)``. ``at_start``:
    the reply so far is white space, with at most a ``<`` after it (``tail`` ``""`` or ``"<"``); there a token whose
    text would continue it to ``<t`` is banned. ``tail``: the longest end of the reply that is a proper prefix of
    ``<think>`` or ``</think>``; both tags hold one ``<``, at their start, so the tail starts at the reply's last
    ``<``, and from a tail a token is banned when it holds a tag or its text completes one from the tail. 15 states;
    :attr:`banned` lists the banned ids of each, computed once per vocabulary (a fraction of a second on Qwen's).
    ``tests/test_think_ban.py`` holds all of it against a brute-force reading of the property
    (:mod:`dyncot_plugin.testing.no_think`) on every state and every token of Qwen2's and Qwen3's real vocabularies.
    """

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = texts
        tails = sorted({t[:k] for t in _TAGS for k in range(1, len(t))}, key=lambda s: (len(s), s))
        self.names: list[tuple[bool, str]] = [(True, ""), (True, "<"), (False, "")] + [(False, t) for t in tails]
        self._index = {name: i for i, name in enumerate(self.names)}
        self.initial = 0
        self._empty = self._index[(False, "")]
        holds = {i for i, text in enumerate(texts) if "<" in text and any(tag in text for tag in _TAGS)}
        first = set("".join(_TAGS))
        tagged = [i for i, text in enumerate(texts) if text and text[0] in first]  # may continue a tail
        opening = {i for i, text in enumerate(texts) if _OPENING in text and text.lstrip().startswith(_OPENING)}
        self.banned: list[list[int]] = []
        for at_start, tail in self.names:
            rests = tuple(tag[len(tail):] for tag in _TAGS if tail and tag.startswith(tail))
            banned = set(holds)
            if rests:
                banned.update(i for i in tagged if texts[i].startswith(rests))
            if at_start:  # the reply would open with "<t" (the text of "<" + token, or the token's after white space)
                banned.update(opening if not tail else (i for i in tagged if texts[i].startswith(_OPENING[1:])))
            self.banned.append(sorted(banned))
        self._tensors: dict[tuple[int, Any], Any] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, vocab_size: int | None = None) -> "NoThinkBan":
        return cls(token_texts(tokenizer, vocab_size))

    def next_state(self, state: int, token_id: int) -> int:
        """The state after the reply in ``state`` takes ``token_id``."""
        text = self.texts[token_id] if 0 <= token_id < len(self.texts) else ""
        at_start, tail = self.names[state]
        if at_start:
            text = (tail + text).lstrip()
            if text in ("", "<"):
                return self._index[(True, text)]
            tail = ""
        i = text.rfind("<")  # the new tail starts at the last "<": in this token's text, else in the old tail
        return self._index.get((False, text[i:] if i >= 0 else tail + text), self._empty)

    def advance(self, state: int, token_ids: Sequence[int]) -> int:
        """The state after the reply in ``state`` takes ``token_ids`` one by one."""
        for token_id in token_ids:
            state = self.next_state(state, int(token_id))
        return state

    def state_of(self, token_ids: Sequence[int]) -> int:
        """The state of a reply made of ``token_ids``."""
        return self.advance(self.initial, token_ids)

    def apply(self, state: int, logits: Any) -> Any:
        """Set the logits of the tokens banned in ``state`` to -inf in ``logits`` (one row: a 1-D torch tensor, or a
        view of a batch's row), in place, and return it; every other logit is left as it was. What the Hugging Face
        and the vLLM logits processors call for a row that does not think."""
        key = (state, logits.device)
        index = self._tensors.get(key)
        if index is None:
            import torch  # lazily: this module stays import-light for the evaluation tools

            index = self._tensors[key] = torch.tensor(self.banned[state], dtype=torch.long, device=logits.device)
        if index.numel():
            logits[index] = float("-inf")
        return logits
