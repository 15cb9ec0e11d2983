"""Model output parsing (think/answer forms) and the CoT-rate / generated-length summary."""

from __future__ import annotations

import pytest

from dyncot_plugin.cot_format import parse_output, summarize_outputs


@pytest.mark.parametrize(
    "text, kind, think, answer, has_think",
    [
        ("<think>a cat photo</think><answer>cat; pets</answer>", "cot", "a cat photo", "cat; pets", True),
        ("  <think> r </think>\n <answer> cat </answer>\n", "cot", "r", "cat", True),
        ("cat; pets", "bare", None, "cat; pets", False),
        ("kp <unk>; x", "bare", None, "kp <unk>; x", False),
        ("<answer>cat</answer>", "answer_only", None, "cat", False),
        ("<think>the post shows", "unclosed_think", "the post shows", "", True),
        ("<think>r <answer>cat</answer>", "unclosed_think", "r", "cat", True),
        ("<think>r</think><answer></answer>", "empty_answer", "r", "", True),
        ("<think>r</think>", "empty_answer", "r", "", True),
        ("", "empty_answer", None, "", False),
        (None, "empty_answer", None, "", False),
        ("<think>r</think> cat; dog", "untagged_answer", "r", "cat; dog", True),
        ("<think>r</think><answer>cat; dog", "unclosed_answer", "r", "cat; dog", True),
        ("<answer>cat", "unclosed_answer", None, "cat", False),
        ("r</think><answer>cat</answer>", "unopened_think", "r", "cat", True),
        ("<think>r</think><answer>cat</answer> trailing", "cot", "r", "cat", True),
    ],
)
def test_parse_output(text, kind, think, answer, has_think):
    p = parse_output(text)
    assert (p.kind, p.think, p.answer, p.has_think) == (kind, think, answer, has_think)
    assert p.well_formed == (kind in ("cot", "bare", "answer_only"))


def test_summary_whitespace_lengths():
    texts = [
        "<think>one two three</think><answer>a; b</answer>",  # 4 words: <think>one, two, three</think><answer>a;, b</answer>
        "a; b",  # 2
        "<think>x y",  # 2, unclosed
        "c",  # 1
    ]
    s = summarize_outputs(texts)
    assert s["num_outputs"] == 4 and s["num_think"] == 2 and s["cot_rate"] == 0.5
    assert s["kinds"]["cot"] == 1 and s["kinds"]["bare"] == 2 and s["kinds"]["unclosed_think"] == 1
    assert s["well_formed_rate"] == 0.75
    g = s["gen_len"]
    assert g["unit"] == "whitespace_words"
    assert g["with_think"] == 3.0 and g["without_think"] == 1.5 and g["all"] == 2.25


def test_summary_with_tokenizer_object_and_empty():
    class CharTok:  # any callable returning input_ids works; here one id per character
        name_or_path = "chars"

        def __call__(self, texts, add_special_tokens=False):
            assert add_special_tokens is False
            return {"input_ids": [list(t) for t in texts]}

    s = summarize_outputs(["<think>ab</think>x", "xyz"], tokenizer=CharTok())
    assert s["gen_len"]["unit"] == "tokenizer:chars"
    assert s["gen_len"]["with_think"] == 18 and s["gen_len"]["without_think"] == 3
    e = summarize_outputs([])
    assert e["cot_rate"] == 0.0 and e["gen_len"]["all"] is None
