"""The think decision on real tokenizers: Qwen2-VL (``<think>`` is three tokens, and Qwen's pre-tokenizer glues
``>`` to the next word) and Qwen3-VL (one token). One tiny model per family, trained with ``cot`` on rationales that
start with "The" (some after a new line); every mode is generated in this process from the same prompt batch."""

from __future__ import annotations

import statistics

import pytest
import torch

from dyncot_plugin.cot_format import THINK_OPEN
from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import write_plugin_dataset
from dyncot_plugin.think import decide, encode_segments, think_tag_ids

IGNORE = -100
TEMPLATES = {"qwen2_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl_nothink"}


# ------------------------------------------------------------------------------------------------ fast, no model
def test_decide_is_the_threshold_rule():
    assert decide("auto", 0.5, 0.5) is True and decide("auto", 0.4999, 0.5) is False
    assert decide("auto", 0.0, 0.0) is True and decide("auto", 1.0, 1.5) is False
    assert decide("always", 0.0) is True and decide("never", 1.0) is False and decide("greedy", 0.9) is None


# ------------------------------------------------------------------------------------------------ real vocabularies
def _cot_rows(rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        answer = row["messages"][1]["content"]
        lead = "\n" if i % 4 == 3 else ""
        row["cot"] = f"<think>{lead}The picture and the post are about {answer}.</think><answer>{answer}</answer>"


@pytest.fixture(scope="module", params=[pytest.param("qwen2_vl", marks=pytest.mark.low_end), "qwen3_vl"])
def trained(request, tmp_path_factory):
    """(family, assembled run on the cot-trained model): its trainer, collator, datasets and tokenizer."""
    from dyncot_plugin.testing.assemble import assemble_sft
    from dyncot_plugin.testing.tiny_families import build_tiny_model

    family = request.param
    root = tmp_path_factory.mktemp(f"think_{family}")
    model_dir = build_tiny_model(root / "model", family, tokenizer="qwen")
    write_plugin_dataset(root / "data", "toy", n=16, mutate=_cot_rows)
    common = dict(template=TEMPLATES[family], dyncot_strategy="cot", per_device_train_batch_size=4)
    run_llamafactory("train", tiny_sft_config(model_dir, root / "data", "toy", root / "cot", learning_rate=3e-3,
                                              max_steps=12, **common), root)
    built = assemble_sft(tiny_sft_config(root / "cot", root / "data", "toy", root / "assembled", **common))
    return family, built


def _prompts(built, n: int = 8):
    from dyncot_plugin.train.generation import generation_inputs
    from dyncot_plugin.train.generation_eval import _prompt_feature

    features = [_prompt_feature(built.train_dataset[i])[0] for i in range(n)]
    tokenizer = built.tokenizer
    tokenizer.padding_side = "left"
    try:
        batch = built.collator([dict(f) for f in features])
    finally:
        tokenizer.padding_side = "right"
    return features, generation_inputs(built.model, batch, built.trainer.family)


@pytest.fixture(scope="module")
def generations(trained):
    """Every mode on the same 8-prompt batch: {name: (new token ids per row, think_prob, thinks)}."""
    from dyncot_plugin.train.generation import ThinkControl, generate_with_think

    family, built = trained
    tokenizer, model = built.tokenizer, built.model.eval()
    features, inputs = _prompts(built)
    runs = {}
    with torch.no_grad():
        probe = ThinkControl("greedy", tokenizer)
        generate_with_think(model, inputs, probe, max_new_tokens=1, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
        middle = statistics.median(probe.think_prob.tolist())
        for name, mode, threshold in (("always", "always", 0.5), ("never", "never", 0.5), ("greedy", "greedy", 0.5),
                                      ("auto_mid", "auto", middle), ("auto_0", "auto", 0.0),
                                      ("auto_1.5", "auto", 1.5)):
            control = ThinkControl(mode, tokenizer, threshold)
            out = generate_with_think(model, inputs, control, max_new_tokens=14, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id)
            # generate pads a finished row until the batch ends: compare replies without that padding
            new = [[t for t in row if t != tokenizer.pad_token_id] for row in out[:, inputs["input_ids"].size(1):].tolist()]
            runs[name] = (new, control.think_prob.tolist(), control.thinks.tolist(), threshold)
    return family, built, features, runs


def _text(tokenizer, ids):
    return tokenizer.decode([t for t in ids if t != tokenizer.pad_token_id], skip_special_tokens=True)


@pytest.mark.slow
def test_cot_targets_carry_exactly_the_tag_tokens_that_always_forces(trained):
    family, built = trained
    tokenizer = built.tokenizer
    tag = think_tag_ids(tokenizer)
    assert len(tag) == (3 if family == "qwen2_vl" else 1)
    if family == "qwen3_vl":
        assert tag == [151667]
    # what the old one-string tokenisation did on Qwen's vocabulary: the tag's ">" glued to the next word
    glued = tokenizer.encode("<think>The picture", add_special_tokens=False)
    assert (glued[: len(tag)] != tag) == (family == "qwen2_vl")
    from dyncot_plugin.train.views import COT_LABELS

    for row in built.train_dataset:
        target = [t for t in row[COT_LABELS] if t != IGNORE]
        assert target[: len(tag)] == tag, _text(tokenizer, target)
        assert tokenizer.decode(target, skip_special_tokens=True).startswith("<think>")
        assert THINK_OPEN not in tokenizer.decode(target[len(tag):])  # the tag occurs once, at the start
    assert encode_segments(tokenizer, "<think>The picture")[: len(tag)] == tag


@pytest.mark.slow
def test_never_always_and_auto_follow_the_rule_on_the_real_vocabulary(generations):
    family, built, _, runs = generations
    tokenizer = built.tokenizer
    tag = think_tag_ids(tokenizer)
    never, always, greedy = runs["never"][0], runs["always"][0], runs["greedy"][0]
    # the trained model does want to think: left alone it writes the tag on most posts
    assert sum(_text(tokenizer, ids).startswith("<think>") for ids in greedy) >= 4
    assert not any(THINK_OPEN in _text(tokenizer, ids) for ids in never)
    assert all(ids[: len(tag)] == tag and _text(tokenizer, ids).startswith("<think>") for ids in always)
    # one think_prob per post, the same in every mode (same prefill)
    probs = runs["always"][1]
    for name, (_, other, _, _) in runs.items():
        assert other == pytest.approx(probs, abs=1e-9), name
    # auto: exactly always's reply where think_prob >= threshold, exactly never's elsewhere
    for name in ("auto_mid", "auto_0", "auto_1.5"):
        new, prob, thinks, threshold = runs[name]
        assert thinks == [p >= threshold for p in prob]
        for row, think in enumerate(thinks):
            assert new[row] == (always if think else never)[row], (name, row)
    assert 0 < sum(runs["auto_mid"][2]) < len(probs)
    assert runs["auto_0"][0] == always and runs["auto_1.5"][0] == never


@pytest.mark.slow
def test_think_prob_is_the_tag_probability_of_an_unpadded_forward(generations):
    family, built, features, runs = generations
    tokenizer, model = built.tokenizer, built.model
    tag = think_tag_ids(tokenizer)
    probs = runs["always"][1]
    for row, feature in enumerate(features):
        prompt = list(feature["input_ids"])
        one = dict(feature, input_ids=prompt + tag, attention_mask=[1] * (len(prompt) + len(tag)),
                   labels=[IGNORE] * (len(prompt) + len(tag)))
        batch = built.collator([one])  # the training collator: right padding (none here), the model's positions
        batch = {k: v for k, v in batch.items() if k != "labels" and not k.startswith(("cot_", "dyncot_"))}
        with torch.no_grad():
            logits = model(**batch).logits[0].to(torch.float64)
        logprobs = torch.log_softmax(logits, dim=-1)
        expected = sum(float(logprobs[len(prompt) - 1 + j, t]) for j, t in enumerate(tag))
        assert probs[row] == pytest.approx(torch.tensor(expected).exp().item(), abs=1e-4), row
