"""Reply parsing and validation of teacher CoT replies, on hand-written replies (no model, no network)."""

from __future__ import annotations

import pytest

from dyncot_plugin.teacher.prompts import PromptSet, fill, image_data_url
from dyncot_plugin.teacher.validate import ReplyFormatError, parse_reply, validate_reply

GOLD = ["save hakeem", "football"]


# --------------------------------------------------------------------------------------------------------- good


def test_good_reply_is_accepted_and_cot_uses_gold_answer():
    reply = (
        "<think>The image shows a player; the post asks to save Hakeem.</think><answer>save hakeem; football</answer>"
    )
    v = validate_reply(reply, GOLD)
    assert v.ok, v.reason
    assert v.cot == (
        "<think>The image shows a player; the post asks to save Hakeem.</think><answer>save hakeem; football</answer>"
    )


def test_good_reply_tolerates_white_space_order_case_and_stemming():
    reply = "\n  <think>\n because \n</think>\n\n<answer> Football ;Saving Hakeem </answer>  \n"
    v = validate_reply(reply, GOLD)
    assert v.ok, v.reason
    # The stored answer is the gold answer, word for word and in gold order.
    assert v.cot == "<think>because</think><answer>save hakeem; football</answer>"
    assert v.parsed.keyphrases == ["Football", "Saving Hakeem"]


def test_duplicate_keyphrases_in_answer_count_once():
    v = validate_reply("<think>r</think><answer>football; football; save hakeem</answer>", GOLD)
    assert v.ok


# ------------------------------------------------------------------------------------------------- wrong format


@pytest.mark.parametrize(
    "reply, fragment",
    [
        ("save hakeem; football", "no <think> tag"),
        ("<think>r</think>save hakeem; football", "no <answer> tag"),
        ("<think>r<answer>save hakeem; football</answer>", "no </think> tag"),
        ("<think>r</think><answer>save hakeem; football", "no </answer> tag"),
        ("Sure! <think>r</think><answer>save hakeem; football</answer>", "text before <think>"),
        ("<think>r</think><answer>save hakeem; football</answer> Hope this helps.", "text after </answer>"),
        ("<think>r</think> so: <answer>save hakeem; football</answer>", "between </think> and <answer>"),
        ("<answer>save hakeem; football</answer><think>r</think>", "out of order"),
        ("<think>a</think><think>b</think><answer>save hakeem; football</answer>", "2 <think> tags"),
        ("<think>   </think><answer>save hakeem; football</answer>", "<think> block is empty"),
        ("<think>r</think><answer> ; ; </answer>", "holds no keyphrase"),
        ("<THINK>r</THINK><ANSWER>save hakeem; football</ANSWER>", "lower-case"),
    ],
)
def test_wrong_format_is_rejected_with_reason(reply, fragment):
    v = validate_reply(reply, GOLD)
    assert not v.ok
    assert v.kind == "format"
    assert fragment in v.reason
    assert v.cot is None


def test_cut_off_reply_says_so():
    v = validate_reply("<think>the image shows", GOLD, finish_reason="length")
    assert not v.ok and "cut off" in v.reason


# --------------------------------------------------------------------------------------------- wrong keyphrases


def test_wrong_keyphrases_are_rejected_naming_missing_and_unexpected():
    v = validate_reply("<think>r</think><answer>save hakeem; soccer</answer>", GOLD)
    assert not v.ok and v.kind == "keyphrases"
    assert v.missing == ["football"] and v.extra == ["soccer"]
    assert "missing 'football'" in v.reason and "unexpected 'soccer'" in v.reason


def test_wrong_separator_is_a_keyphrase_mismatch():
    v = validate_reply("<think>r</think><answer>save hakeem, football</answer>", GOLD)
    assert not v.ok and v.kind == "keyphrases"
    assert "unexpected 'save hakeem, football'" in v.reason


def test_subset_is_rejected_under_both_rules():
    for match in ("exact", "superset"):
        v = validate_reply("<think>r</think><answer>football</answer>", GOLD, match=match)
        assert not v.ok and v.missing == ["save hakeem"]


# ------------------------------------------------------------------------------------------------------ superset


def test_superset_rejected_by_exact_accepted_by_superset():
    reply = "<think>r</think><answer>save hakeem; football; refugees</answer>"
    exact = validate_reply(reply, GOLD)  # the default rule
    assert not exact.ok and exact.extra == ["refugees"]
    sup = validate_reply(reply, GOLD, match="superset")
    assert sup.ok and sup.extra == ["refugees"]
    assert sup.cot == "<think>r</think><answer>save hakeem; football</answer>"  # extras never become labels


# --------------------------------------------------------------------------------------------------------- empty


@pytest.mark.parametrize("reply", ["", "   \n ", None])
def test_empty_reply_is_rejected(reply):
    v = validate_reply(reply, GOLD)
    assert not v.ok and v.kind == "empty" and v.reason == "the reply was empty"
    with pytest.raises(ReplyFormatError):
        parse_reply(reply)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        validate_reply("<think>r</think><answer>a</answer>", ["a"], match="fuzzy")
    with pytest.raises(ValueError):
        validate_reply("<think>r</think><answer>a</answer>", [])


# ------------------------------------------------------------------------------------------------------- prompts


def test_prompt_fill_leaves_unknown_braces_alone():
    assert fill('{"k": 1} {text} {nope}', {"text": "T"}) == '{"k": 1} T {nope}'


def test_first_and_retry_messages(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"\x89PNG fake")
    url = image_data_url(img)
    assert url.startswith("data:image/png;base64,")
    ps = PromptSet(image_detail="low")
    msgs = ps.first_messages("id1", "the post", GOLD, url)
    assert [m["role"] for m in msgs] == ["system", "user"]
    parts = msgs[1]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": url, "detail": "low"}}
    assert "the post" in parts[1]["text"] and "- save hakeem\n- football" in parts[1]["text"]
    assert "<answer>save hakeem; football</answer>" in parts[1]["text"]
    retry = ps.retry_messages("id1", "the post", GOLD, "bad", "the reply has no <think> tag", 2)
    assert retry[0] == {"role": "assistant", "content": "bad"}
    assert "rejected: the reply has no <think> tag." in retry[1]["content"] and "attempt 2" in retry[1]["content"]
    text_only = ps.first_messages("id1", "the post", GOLD, None)
    assert isinstance(text_only[1]["content"], str)
