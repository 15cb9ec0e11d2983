"""An independent oracle for ``never``'s property, for checking the ban over a whole vocabulary at once.

The property (README "Thinking at inference"): a reply does not begin, after leading white space, with a prefix of
``<think>`` of two or more characters, and contains neither ``<think>`` nor ``</think>``. :func:`violates` is that
sentence in code. :func:`class_of` is the class of a text for the property's future: whether only white space (and
at most one ``<``) came so far, and the longest tail of the text that is a proper prefix of ``<think>`` or
``</think>``; two texts of the same class violate the property after the same continuations. Both are written
without the automaton of :mod:`dyncot_plugin.think`, by brute force, so that a test can hold the automaton (and the
logits processors that use it) against them on every state and every token of a real vocabulary.

:func:`violations` and :func:`classes` evaluate them for ``prefix + text`` over a whole vocabulary in a few regular
expression passes over one joined string (about a tenth of a second for Qwen's 151,936 ids), not 151,936 calls.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

from dyncot_plugin.cot_format import THINK_CLOSE, THINK_OPEN

__all__ = ["PATTERNS", "check_vocabulary", "class_of", "classes", "violates", "violations", "witnesses"]

PATTERNS = (THINK_OPEN, THINK_CLOSE)
_OPENING = THINK_OPEN[:2]  # "<t": every prefix of "<think>" of two or more characters starts with it
_PREFIXES = sorted({p[:k] for p in PATTERNS for k in range(1, len(p))}, key=len, reverse=True)
_SEP = "\uffff"  # a noncharacter: no token text holds it (checked)


def violates(text: str) -> bool:
    """Whether ``text`` as a whole reply breaks the property."""
    return text.lstrip().startswith(_OPENING) or any(p in text for p in PATTERNS)


def class_of(text: str) -> tuple[bool, str]:
    """``(at_start, tail)``: ``at_start`` when the text is white space with at most a ``<`` after it, ``tail`` the
    longest suffix of the text that is a proper prefix of ``<think>`` or ``</think>`` (``""`` if none)."""
    at_start = text.lstrip() in ("", "<")
    tail = next((p for p in _PREFIXES if text.endswith(p)), "")
    return at_start, tail


def _joined(prefix: str, texts: Sequence[str]) -> tuple[str, list[int]]:
    """``SEP prefix+t0 SEP prefix+t1 SEP ... SEP`` and where each segment starts."""
    if _SEP in prefix or _SEP in "".join(texts):
        raise ValueError("a token text holds U+FFFF, the separator of the vectorised oracle")
    step = len(prefix) + 1
    starts = [1 + step * i + n for i, n in enumerate(itertools.accumulate((len(t) for t in texts), initial=0))]
    return _SEP + prefix + (_SEP + prefix).join(texts) + _SEP, starts[: len(texts)]


def violations(prefix: str, texts: Sequence[str]) -> list[bool]:
    """``[violates(prefix + t) for t in texts]``, vectorised."""
    joined, starts = _joined(prefix, texts)
    out = [False] * len(texts)
    pattern = "|".join(re.escape(p) for p in PATTERNS)
    opening = re.compile(_SEP + r"\s*" + re.escape(_OPENING))
    for m in re.finditer(pattern, joined):
        out[bisect.bisect_right(starts, m.start()) - 1] = True
    for m in opening.finditer(joined):
        out[bisect.bisect_right(starts, m.start() + 1) - 1] = True
    return out


def classes(prefix: str, texts: Sequence[str]) -> list[tuple[bool, str]]:
    """``[class_of(prefix + t) for t in texts]``, vectorised."""
    joined, starts = _joined(prefix, texts)
    out: list[tuple[bool, str]] = [(False, "")] * len(texts)
    at_start = re.compile(r"(?<=" + _SEP + r")\s*<?(?=" + _SEP + ")")
    tail = re.compile("(?:" + "|".join(re.escape(p) for p in _PREFIXES) + ")(?=" + _SEP + ")")
    starting = set()
    for m in at_start.finditer(joined):
        starting.add(bisect.bisect_right(starts, m.start()) - 1)
    tails: dict[int, str] = {}
    for m in tail.finditer(joined):
        i = bisect.bisect_right(starts, m.start()) - 1
        if len(m.group()) > len(tails.get(i, "")):
            tails[i] = m.group()
    for i in range(len(texts)):
        if i in starting or i in tails:
            out[i] = (i in starting, tails.get(i, ""))
    return out


# ------------------------------------------------------------------------------------------------------------------
# The whole check: every state of the ban x every token of a vocabulary, for the automaton and the processors
# ------------------------------------------------------------------------------------------------------------------


def witnesses(ban: Any) -> list[tuple[int, str]]:
    """``(state, text)``: a reply text for every state of ``ban`` (a :class:`~dyncot_plugin.think.NoThinkBan`), and
    a second one for the empty reply's (white space only); non-start tails follow an earlier ``<`` and a word."""
    out = []
    for state, (at_start, tail) in enumerate(ban.names):
        out.append((state, (" " + tail if tail else "") if at_start else "<a x" + tail))
    out.append((ban.initial, "\n "))
    return out


def check_vocabulary(ban: Any, tokenizer: Any, processors: dict[str, Callable[[list[int], Any], Any]],
                     seed: int = 0, transitions: bool = True) -> dict[str, Any]:
    """Hold ``ban`` and each logits processor against the oracle on every state and every token; raise an
    AssertionError naming the state, the token and what differs. Returns counts for the caller's report.

    For every state, a reply text that reaches it (:func:`witnesses`), tokenised by ``tokenizer``:

    * the ban's state of those tokens is that state;
    * its banned ids are exactly the tokens ``t`` with ``violates(reply + text(t))``, and from every other token it
      goes to the state whose class is ``class_of(reply + text(t))`` (``transitions=False`` skips this part, where
      another run checked the same automaton);
    * ``processors[name](reply_ids, logits)`` (a processor driven step by step through the reply, then given one
      row of random logits, returning the row it produced) returns -inf exactly at those tokens and every other
      logit unchanged, bit for bit.

    ``text(t)`` is the ban's text of token ``t``; that it is what ``t`` adds to a decoded reply is checked too: the
    decode of a reply followed by each token, over the whole vocabulary, equals the reply plus that text.
    """
    import torch

    texts = ban.texts
    n = len(texts)
    generator = torch.Generator().manual_seed(seed)
    checked = {"states": 0, "tokens": n, "processor_rows": 0}
    options = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    for state, reply in witnesses(ban):
        ids = tokenizer.encode(reply, add_special_tokens=False) if reply else []
        assert tokenizer.decode(ids, **options) == reply, (reply, ids)
        assert ban.state_of(ids) == state, (reply, ids, ban.names[ban.state_of(ids)], ban.names[state])
        bad = violations(reply, texts)
        want = [i for i in range(n) if bad[i]]
        assert ban.banned[state] == want, (
            f"state {ban.names[state]} (reply {reply!r}): banned but harmless "
            f"{[texts[i] for i in sorted(set(ban.banned[state]) - set(want))][:8]}, allowed but breaking "
            f"{[texts[i] for i in sorted(set(want) - set(ban.banned[state]))][:8]}")
        names = ban.names
        goes, wrong = [], []
        if transitions:
            goes = [names[ban.next_state(state, i)] for i in range(n)]
            wrong = [i for i, (b, g, a) in enumerate(zip(bad, goes, classes(reply, texts))) if not b and g != a]
        if wrong:
            i = wrong[0]
            raise AssertionError(f"state {names[state]} (reply {reply!r}) + token {i} {texts[i]!r}: the ban goes to "
                                 f"{goes[i]}, the text's class is {class_of(reply + texts[i])} ({len(wrong)} such)")
        mask = torch.tensor(bad)
        for name, processor in processors.items():
            logits = torch.randn(n, generator=generator)
            out = processor(list(ids), logits.clone())
            banned = torch.isneginf(out)
            assert torch.equal(banned, mask), (
                f"{name}, state {names[state]} (reply {reply!r}): -inf at {int(banned.sum())} tokens, the property "
                f"bans {int(mask.sum())}; e.g. {[texts[i] for i in (banned ^ mask).nonzero().flatten()[:8].tolist()]}")
            assert torch.equal(out[~mask], logits[~mask]), f"{name}, state {names[state]}: other logits changed"
            checked["processor_rows"] += 1
        checked["states"] += 1
    assert checked["states"] == len(ban.names) + 1
    # the texts are what each token adds to a reply: decode(reply + [t]) == reply + text(t), whole vocabulary
    reply = "<a x"
    ids = tokenizer.encode(reply, add_special_tokens=False)
    decoded = tokenizer.batch_decode([ids + [i] for i in range(min(n, len(tokenizer)))], **options)
    wrong = [i for i, d in enumerate(decoded) if d != reply + texts[i]]
    assert not wrong, [(i, texts[i], decoded[i]) for i in wrong[:8]]
    return checked


def vllm_processors(model_dir: str) -> tuple[Any, Any, dict[str, Callable[[list[int], Any], Any]]]:
    """(ban, tokenizer, processors) of vLLM's :class:`~dyncot_plugin.serve.logits.DyncotThinkLogitsProcessor` for
    ``model_dir``, built as vLLM builds it (a ``VllmConfig`` of the model; no engine): a ``never`` request and an
    ``auto`` one below its threshold, each driven through the reply one output token at a time."""
    import torch
    from vllm import SamplingParams
    from vllm.config import ModelConfig, VllmConfig

    from dyncot_plugin.serve.logits import DyncotThinkLogitsProcessor

    config = VllmConfig(model_config=ModelConfig(model=model_dir, tokenizer=model_dir))
    processor = DyncotThinkLogitsProcessor(config, torch.device("cpu"), False)
    requests = {"vllm never": {"dyncot_think": "never"},
                "vllm auto below its threshold": {"dyncot_think": "auto", "dyncot_think_threshold": 1.5,
                                                  "dyncot_think_prob": 1.0}}

    def driver(extra: dict[str, Any]) -> Callable[[list[int], Any], Any]:
        def run(ids: list[int], logits: Any) -> Any:
            request = processor.new_req_logits_processor(SamplingParams(extra_args=dict(extra)))
            output: list[int] = []  # vLLM hands the request the same list, grown by one token per step
            for token in ids:
                request(output, torch.zeros_like(logits))
                output.append(token)
            return request(output, logits)
        return run

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return processor.ban, tokenizer, {name: driver(extra) for name, extra in requests.items()}


def main(argv: list[str] | None = None) -> None:
    """``python -m dyncot_plugin.testing.no_think MODEL_DIR...`` in the vLLM venv: :func:`check_vocabulary` of the
    vLLM processor on each model's vocabulary (the automaton's transitions are the fast test's); prints one JSON
    line per model."""
    import json
    import sys

    for model_dir in (argv if argv is not None else sys.argv[1:]):
        ban, tokenizer, processors = vllm_processors(model_dir)
        print(json.dumps({"model": model_dir, **check_vocabulary(ban, tokenizer, processors, transitions=False)}),
              flush=True)


if __name__ == "__main__":
    main()
