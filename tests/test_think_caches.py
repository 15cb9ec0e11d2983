"""The think look-ahead on caches that cannot be cropped: a tiny Gemma 3 whose ``<think>`` is two tokens (``<think``
``>``: its tiny tokenizer built without the tag tokens) and whose sliding window (8 tokens) is shorter than every
prompt + tag, generated with the default dynamic cache (sliding-window layers that drop their oldest tokens, and
refuse ``crop``) and with a static cache (written in place). Random weights: ``think_prob`` is about 1e-6 here, and
it is compared with a relative tolerance.

On the old code the dynamic case raised "Cannot `crop` a `DynamicSlidingWindowLayer` after it has seen more tokens
than its sliding window", and the static one "'StaticCache' ... crop".
"""

from __future__ import annotations

import json

import pytest
import torch

from dyncot_plugin.testing.no_think import violates
from dyncot_plugin.think import think_tag_ids

pytestmark = pytest.mark.slow
IGNORE = -100
WINDOW = 8
ROWS = 6


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """(assembled run, prompt features, the prompt batch, think_prob of each row by an unpadded forward)."""
    from dyncot_plugin.testing.assemble import assemble_sft
    from dyncot_plugin.testing.lf_runner import tiny_sft_config
    from dyncot_plugin.testing.plugin_data import write_plugin_dataset
    from dyncot_plugin.testing.tiny_families import build_tiny_model
    from dyncot_plugin.train.generation import generation_inputs
    from dyncot_plugin.train.generation_eval import _prompt_feature

    root = tmp_path_factory.mktemp("gemma_window")
    model_dir = build_tiny_model(root / "model", "gemma3", cot_tokens=False)
    config = json.loads((model_dir / "config.json").read_text())
    config["text_config"]["sliding_window"] = WINDOW
    (model_dir / "config.json").write_text(json.dumps(config))
    write_plugin_dataset(root / "data", "toy", n=ROWS, image_size=(32, 32))
    built = assemble_sft(tiny_sft_config(model_dir, root / "data", "toy", root / "out", template="gemma3",
                                         dyncot_strategy="cot"))
    model, tokenizer = built.model.eval(), built.tokenizer
    tag = think_tag_ids(tokenizer)
    features = [_prompt_feature(built.train_dataset[i])[0] for i in range(ROWS)]
    tokenizer.padding_side = "left"
    try:
        inputs = generation_inputs(model, built.collator([dict(f) for f in features]), built.trainer.family)
    finally:
        tokenizer.padding_side = "right"
    expected = []
    for feature in features:  # the tag's probability from one forward over prompt + tag, no cache, no padding
        ids = list(feature["input_ids"]) + tag
        one = dict(feature, input_ids=ids, attention_mask=[1] * len(ids), labels=[IGNORE] * len(ids))
        batch = {k: v for k, v in built.collator([one]).items() if k != "labels" and not k.startswith(("cot_", "dyncot_"))}
        with torch.no_grad():
            logprobs = torch.log_softmax(model(**batch).logits[0].to(torch.float64), dim=-1)
        start = len(feature["input_ids"]) - 1
        expected.append(float(sum(logprobs[start + j, t] for j, t in enumerate(tag)).exp()))
    return built, features, inputs, expected


def _generate(built, inputs, mode, threshold=0.5, cache=None, max_new_tokens=6):
    from dyncot_plugin.train.generation import ThinkControl, generate_with_think

    control = ThinkControl(mode, built.tokenizer, threshold)
    extra = {"cache_implementation": cache} if cache else {}
    with torch.no_grad():
        out = generate_with_think(built.model, dict(inputs), control, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=built.tokenizer.pad_token_id, **extra)
    return out[:, inputs["input_ids"].size(1):].tolist(), control


def test_the_premise_a_two_token_tag_and_prompts_longer_than_the_window(gemma):
    built, features, _, _ = gemma
    tag = think_tag_ids(built.tokenizer)
    assert built.tokenizer.convert_ids_to_tokens(tag) == ["<think", ">"]
    config = built.model.config.get_text_config()
    assert config.sliding_window == WINDOW and "sliding_attention" in config.layer_types
    assert all(len(f["input_ids"]) + len(tag) > WINDOW for f in features)


@pytest.mark.parametrize("cache", [None, "static"], ids=["dynamic_sliding", "static"])
def test_think_prob_and_the_decision_where_the_cache_cannot_be_cropped(gemma, cache):
    built, _, inputs, expected = gemma
    tokenizer, tag = built.tokenizer, think_tag_ids(built.tokenizer)
    plain, probe = _generate(built, inputs, "greedy", cache=cache)
    assert probe.think_prob.tolist() == pytest.approx(expected, rel=1e-4, abs=0)
    assert len(set(expected)) == ROWS
    # the look-ahead leaves the cache as the prefill made it: greedy under the control = generate without it
    with torch.no_grad():
        bare = built.model.generate(**dict(inputs), max_new_tokens=6, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id,
                                    **({"cache_implementation": cache} if cache else {}))
    assert plain == bare[:, inputs["input_ids"].size(1):].tolist()
    # auto at the median: thinking rows open with the tag, the others keep never's property
    threshold = sorted(expected)[ROWS // 2]
    replies, control = _generate(built, inputs, "auto", threshold, cache=cache)
    assert control.thinks.tolist() == [p >= threshold for p in control.think_prob.tolist()]
    assert 0 < sum(control.thinks.tolist()) < ROWS
    for reply, thinks in zip(replies, control.thinks.tolist()):
        if thinks:
            assert reply[: len(tag)] == tag
        else:
            assert not violates(tokenizer.decode(reply, skip_special_tokens=True))
    if cache == "static":  # and the same replies as the dynamic cache
        assert replies == _generate(built, inputs, "auto", threshold)[0]


def test_a_static_cache_too_short_for_the_look_ahead_is_one_clear_error(gemma):
    """A static cache sized for the prompt and one new token has no room for the tag's second token: one error
    naming the cache and the fix, before any token is generated (the cache given itself is left untouched)."""
    from transformers import StaticCache

    from dyncot_plugin.train.generation import ThinkControl, generate_with_think

    built, _, inputs, _ = gemma
    model, tokenizer = built.model, built.tokenizer
    cache = StaticCache(config=model.config, max_cache_len=inputs["input_ids"].size(1))
    control = ThinkControl("greedy", tokenizer)
    with pytest.raises(RuntimeError, match=r"look-ahead of the think tag .* does not fit this StaticCache.*"
                                           r"max_new_tokens >= 2"), torch.no_grad():
        generate_with_think(model, dict(inputs), control, past_key_values=cache, max_new_tokens=1, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
