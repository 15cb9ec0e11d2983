"""``never`` means no think block, on every tokenizer: the ban (``think.NoThinkBan``) and both logits processors that
use it (Hugging Face ``ThinkControl``, vLLM ``DyncotThinkLogitsProcessor``) held against a brute-force reading of the
property (``testing/no_think.py``) on every state and every token of Qwen2's and Qwen3's real vocabularies.

The property (README "Thinking at inference"): the decoded reply does not begin, after leading white space, with a
prefix of ``<think>`` of two or more characters, and contains neither ``<think>`` nor ``</think>``; the ban sets to
-inf exactly the tokens that would break it and leaves every other logit unchanged. On Qwen2's vocabulary
``<think>`` is ``<th`` ``ink`` ``>``: the old ban (tokens that *complete* ``<think>``) let ``never`` write
``<thinkink>`` and ``<think</think>``.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from dyncot_plugin.testing.no_think import check_vocabulary, class_of, violates
from dyncot_plugin.think import NoThinkBan

QWEN_MODEL_VOCAB = 151_936


# ------------------------------------------------------------------------------------------------ a toy vocabulary
class _CharTokenizer:
    """A toy vocabulary in which the tags can be spelled many ways; ``|`` ends a reply (special)."""

    vocab = ["<", "t", "h", "i", "n", "k", ">", "/", "<th", "ink", ">The", "nk>", "a", " ", "\n", "<think>", "x<think>y",
             "|", "<answer>", "</", "hink", " <t", "ab</think>"]
    all_special_ids = [17]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.index(text)] if text in self.vocab else []

    def decode(self, ids, skip_special_tokens=True, **kwargs):
        return "".join(self.vocab[i] for i in ids if not (skip_special_tokens and i in self.all_special_ids))

    def batch_decode(self, batch, **kwargs):
        return [self.decode(ids, **kwargs) for ids in batch]


def _text(ban, ids):
    return "".join(ban.texts[i] for i in ids)


def test_on_a_toy_vocabulary_every_allowed_reply_keeps_the_property_and_nothing_more_is_banned():
    tok = _CharTokenizer()
    ban = NoThinkBan.for_tokenizer(tok)
    assert ban.texts[17] == "" and ban.texts[13] == " "  # special tokens add nothing; spaces are kept
    V = range(len(tok))
    # exhaustive to 4 tokens: what the ban allows step by step never breaks the property, and each banned token
    # would break it right away (so the ban is exactly the property)
    replies = [([], ban.initial)]
    for _ in range(4):
        grown = []
        for ids, state in replies:
            banned = set(ban.banned[state])
            for t in V:
                assert (t in banned) == violates(_text(ban, ids + [t])), (_text(ban, ids), tok.vocab[t])
                if t not in banned:
                    grown.append((ids + [t], ban.next_state(state, t)))
                    assert ban.names[grown[-1][1]] == class_of(_text(ban, ids + [t]))
        replies = grown[:: max(1, len(grown) // 3000)]
    # the replies: <th ink > at the start (any of them), </think> anywhere; <answer> and a later <th are fine
    s = ban.initial
    assert {8, 15, 16, 21, 22} <= set(ban.banned[s]) and 18 not in ban.banned[s] and 0 not in ban.banned[s]
    assert 1 in ban.banned[ban.state_of([0])]  # "<" then "t"
    assert 8 in ban.banned[ban.state_of([13, 14])]  # after white space
    assert 9 not in ban.banned[ban.state_of([12, 8])] and 10 in ban.banned[ban.state_of([12, 8, 9])]
    assert 6 in ban.banned[ban.state_of([12, 19, 1, 20])]  # a</think... then ">"
    assert ban.state_of([12, 8, 17, 9]) == ban.state_of([12, 8, 9])  # a special token between pieces changes nothing


def test_the_ban_on_a_sentencepiece_style_decode_keeps_the_space_of_a_word():
    """A token's text is what it adds inside a reply: a tokenizer that drops a decode's first space must not make
    " <th" look like "<th" (which a reply that already has text may hold)."""

    class _Piece(_CharTokenizer):
        vocab = ["a", "▁<th", "ink>", "▁ink>", "|"]
        all_special_ids = [4]

        def decode(self, ids, skip_special_tokens=True, **kwargs):
            text = "".join(self.vocab[i] for i in ids if i not in self.all_special_ids).replace("▁", " ")
            return text.removeprefix(" ")  # SentencePiece: no space before the first word

    ban = NoThinkBan.for_tokenizer(_Piece())
    assert ban.texts[:4] == ["a", " <th", "ink>", " ink>"]
    after = ban.state_of([0, 1])  # "a <th"
    assert ban.banned[after] == [2] and ban.banned[ban.initial] == [1]  # " <th" opens a reply, after leading space


# ------------------------------------------------------------------------------------------------ real vocabularies
@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl"])
def qwen(request):
    from dyncot_plugin.testing.qwen_vocab import qwen_tokenizer

    tokenizer = qwen_tokenizer(request.param)
    return request.param, tokenizer, NoThinkBan.for_tokenizer(tokenizer, QWEN_MODEL_VOCAB)


def _hf_processors(tokenizer) -> dict:
    """``ThinkControl`` (never, and auto on a row below its threshold) driven through a reply one token at a time,
    after the prefill: what the prefill hook sets (a think_prob) is set by hand, no model runs."""
    from dyncot_plugin.train.generation import ThinkControl

    prompt = tokenizer.encode("Post: a cat", add_special_tokens=False)

    def driver(mode: str, threshold: float):
        control = ThinkControl(mode, tokenizer, threshold, vocab_size=QWEN_MODEL_VOCAB)

        def run(ids, logits):
            control.reset()
            control._prompt_len, control.think_logprob = -1, torch.zeros(1, dtype=torch.float64)  # the hook's part
            for k in range(len(ids)):
                control(torch.tensor([prompt + ids[:k]]), torch.zeros(1, len(logits)))
            out = control(torch.tensor([prompt + ids]), logits.unsqueeze(0))
            assert control.thinks.tolist() == [False]
            return out[0]

        return run

    return {"hf never": driver("never", 0.5), "hf auto below its threshold": driver("auto", 1.5)}


def test_the_ban_is_exactly_the_property_on_every_state_and_token(qwen):
    """Acceptance: every state x every token of the real vocabulary, the automaton and the Hugging Face processor."""
    family, tokenizer, ban = qwen
    checked = check_vocabulary(ban, tokenizer, _hf_processors(tokenizer))
    assert checked == {"states": 16, "tokens": QWEN_MODEL_VOCAB, "processor_rows": 32}
    tag = tokenizer.encode("<think>", add_special_tokens=False)
    assert len(tag) == (3 if family == "qwen2_vl" else 1)
    # the replies, as tokens: the old ban allowed the first token of both
    for reply in ("<thinkink>The picture", "<think</think><answer>"):
        ids = tokenizer.encode(reply, add_special_tokens=False)
        states = [ban.state_of(ids[:k]) for k in range(len(ids))]
        assert any(t in ban.banned[s] for t, s in zip(ids, states)), reply
    assert tag[0] in ban.banned[ban.initial]
    answer = tokenizer.encode("<answer>red</answer>", add_special_tokens=False)
    assert all(t not in ban.banned[ban.state_of(answer[:k])] for k, t in enumerate(answer))


@pytest.mark.slow
def test_the_vllm_processor_bans_exactly_the_same(real_vocab_model):
    """Acceptance, vLLM side: the same check of ``DyncotThinkLogitsProcessor`` (built from a ``VllmConfig`` of the
    model, as vLLM builds it) in the vLLM venv, on both vocabularies."""
    from test_serve_vllm import _vllm_python, predict_env  # tests/ is on sys.path (rootdir)

    python = _vllm_python()
    models = [real_vocab_model("qwen2_vl"), real_vocab_model("qwen3_vl")]
    proc = subprocess.run([python, "-m", "dyncot_plugin.testing.no_think", *models], env=predict_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["model"] for r in reports] == models
    for r in reports:
        assert (r["states"], r["tokens"], r["processor_rows"]) == (16, QWEN_MODEL_VOCAB, 32)
