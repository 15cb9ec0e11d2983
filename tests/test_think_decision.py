"""The think decision on real tokenizers: Qwen2-VL (``<think>`` is three tokens, and Qwen's pre-tokenizer glues
``>`` to the next word) and Qwen3-VL (one token). One tiny model per family, trained with ``cot`` on rationales that
start with "The" (some after a new line; the shared ``cot_real_vocab_model`` fixture); every mode is generated in
this process from the same prompt batch."""

from __future__ import annotations

import statistics

import pytest
import torch

from dyncot_plugin.cot_format import THINK_OPEN
from dyncot_plugin.testing.lf_runner import tiny_sft_config
from dyncot_plugin.testing.no_think import violates
from dyncot_plugin.think import decide, encode_segments, think_tag_ids

IGNORE = -100
TEMPLATES = {"qwen2_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl_nothink"}


# ------------------------------------------------------------------------------------------------ fast, no model
def test_decide_is_the_threshold_rule():
    assert decide("auto", 0.5, 0.5) is True and decide("auto", 0.4999, 0.5) is False
    assert decide("auto", 0.0, 0.0) is True and decide("auto", 1.0, 1.5) is False
    assert decide("always", 0.0) is True and decide("never", 1.0) is False and decide("greedy", 0.9) is None


# ------------------------------------------------------------------------------------------------ real vocabularies
@pytest.fixture(scope="module", params=[pytest.param("qwen2_vl", marks=pytest.mark.low_end), "qwen3_vl"])
def trained(request, cot_real_vocab_model, tmp_path_factory):
    """(family, assembled run on the shared cot-trained model): its trainer, collator, datasets and tokenizer."""
    from dyncot_plugin.testing.assemble import assemble_sft

    family = request.param
    root = cot_real_vocab_model(family)
    out = tmp_path_factory.mktemp(f"think_{family}")
    built = assemble_sft(tiny_sft_config(root / "cot", root / "data", "toy", out / "assembled",
                                         template=TEMPLATES[family], dyncot_strategy="cot",
                                         per_device_train_batch_size=4))
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
    # the trained model does want to think: left alone it writes the tag on at least 90 % of the posts
    assert sum(_text(tokenizer, ids).startswith("<think>") for ids in greedy) >= 0.9 * len(greedy) == 7.2
    # never's property (README "Thinking at inference"), not only the literal tag: on Qwen2's vocabulary the old
    # ban let these replies open with "<th" "ink" and close a think block
    assert not any(violates(_text(tokenizer, ids)) for ids in never), [_text(tokenizer, ids) for ids in never]
    assert all(ids[: len(tag)] == tag and _text(tokenizer, ids).startswith("<think>") for ids in always)
    # one think_prob per post, the same float in every mode (same prefill)
    probs = runs["always"][1]
    for name, (_, other, _, _) in runs.items():
        assert other == probs, name
    # auto: exactly always's reply where think_prob >= threshold, exactly never's elsewhere
    for name in ("auto_mid", "auto_0", "auto_1.5"):
        new, prob, thinks, threshold = runs[name]
        assert thinks == [p >= threshold for p in prob]
        for row, think in enumerate(thinks):
            assert new[row] == (always if think else never)[row], (name, row)
    assert 0 < sum(runs["auto_mid"][2]) < len(probs)
    assert runs["auto_0"][0] == always and runs["auto_1.5"][0] == never


def _forward_tag_logprobs(built, model, features, tag) -> torch.Tensor:
    """log P(tag[j] | prompt, tag[:j]) per row and tag position (float64), from one forward per post over prompt +
    tag: no batch, no padding, no cache, no look-ahead (the training collator builds the inputs and positions)."""
    rows = []
    for feature in features:
        prompt = list(feature["input_ids"])
        one = dict(feature, input_ids=prompt + tag, attention_mask=[1] * (len(prompt) + len(tag)),
                   labels=[IGNORE] * (len(prompt) + len(tag)))
        batch = built.collator([one])  # right padding (none here), the model's positions
        batch = {k: v for k, v in batch.items() if k != "labels" and not k.startswith(("cot_", "dyncot_"))}
        with torch.no_grad():
            logprobs = torch.log_softmax(model(**batch).logits[0].to(torch.float64), dim=-1)
        rows.append([logprobs[len(prompt) - 1 + j, t] for j, t in enumerate(tag)])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture(scope="module")
def uncertain(trained):
    """(family, built, a copy of the trained model whose ``think_prob`` is between 0.01 and 0.99 on most posts).

    The cot-trained tiny model gives the tag a probability near 0 or near 1, where an absolute tolerance cannot
    fail and a relative one hardly sees the tag's later tokens. The copy's output layer gets a bias on the tag's
    tokens only (the same bias at every position, as a real ``Linear`` with ``bias``), raised in a few rounds toward
    a median probability of 0.8 per tag token at its own position (the tag's tokens also compete with each other at
    every position, so a 3-token tag ends lower; on a random model about 0.03): a model like any other to both
    sides of the comparison, on which a wrong look-ahead position, a missed look-ahead token or a padded row shows
    (each of those three breaks fails the test below; the old ``abs=1e-4`` on ~3e-11 passed them all)."""
    import copy

    family, built = trained
    tag = think_tag_ids(built.tokenizer)
    features, _ = _prompts(built)
    model = copy.deepcopy(built.model).eval()
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=head.weight.dtype)
    biased.weight = head.weight
    biased.bias = torch.nn.Parameter(torch.zeros(head.out_features, dtype=head.weight.dtype), requires_grad=False)
    model.set_output_embeddings(biased)
    target = 0.8
    for _ in range(3):  # each tag token's bias moves the others' probabilities a little: settle in a few rounds
        p = _forward_tag_logprobs(built, model, features, tag).median(dim=0).values.exp().clamp(1e-12, 1 - 1e-12)
        # p' = p e^c / (1 - p + p e^c) = target  <=>  c = log(target (1 - p) / (p (1 - target)))
        lift = torch.log(target * (1 - p)) - torch.log(p * (1 - target))
        with torch.no_grad():
            for token, c in zip(tag, lift.tolist()):
                biased.bias[token] += c
    return family, built, model, features


@pytest.mark.slow
def test_think_prob_is_the_tag_probability_of_an_unpadded_forward(uncertain):
    """Acceptance: relative 1e-4 against an independent forward on every post, at least half of them with a
    think_prob in [0.01, 0.99] (a 3-token tag on Qwen2-VL, one token on Qwen3-VL)."""
    from dyncot_plugin.train.generation import ThinkControl, generate_with_think, generation_inputs

    family, built, model, features = uncertain
    tokenizer = built.tokenizer
    tag = think_tag_ids(tokenizer)
    assert len(tag) == (3 if family == "qwen2_vl" else 1)
    expected = _forward_tag_logprobs(built, model, features, tag).sum(dim=1).exp().tolist()
    assert len(set(expected)) == len(features)  # the posts differ: a row mix-up shows
    assert sum(0.01 <= p <= 0.99 for p in expected) >= len(expected) / 2, expected
    tokenizer.padding_side = "left"
    try:  # the batch generate sees: left-padded, the family's positions
        inputs = generation_inputs(model, built.collator([dict(f) for f in features]), built.trainer.family)
    finally:
        tokenizer.padding_side = "right"
    assert (inputs["attention_mask"] == 0).any()  # some rows are padded
    probs = {}
    for mode in ("greedy", "never", "always"):
        control = ThinkControl(mode, tokenizer, 0.5)
        with torch.no_grad():
            generate_with_think(model, dict(inputs), control, max_new_tokens=2, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        probs[mode] = control.think_prob.tolist()
        assert probs[mode] == pytest.approx(expected, rel=1e-4, abs=0), mode
    # one prefill, one think_prob: the same float in every mode
    assert probs["greedy"] == probs["never"] == probs["always"]


@pytest.mark.slow
def test_the_training_time_evaluation_keeps_never_and_auto_above_every_row_equals_never(trained, tmp_path, monkeypatch):
    """Acceptance: the training-time evaluation (``generate_and_score``, what ``dyncot_eval_samples`` runs at each
    evaluation, with the run's ``dyncot_think`` from the trainer's recipe), on the cot-trained model that opens with
    the tag on most posts: with ``never``, no reply in its ``dyncot_eval/step<N>.jsonl`` breaks never's property;
    ``auto`` at a threshold one ulp above every post's ``think_prob`` writes never's file row for row; at the top
    post's own value only that post thinks."""
    import json
    import math

    from dyncot_plugin.train.generation_eval import generate_and_score

    _, built = trained
    trainer = built.trainer
    dataset = built.train_dataset  # the 16 posts the model was trained on: where it wants the tag most

    def evaluate(mode: str, threshold: float) -> tuple[dict, list[dict]]:
        monkeypatch.setattr(trainer.dyncot_args, "dyncot_think", mode)
        monkeypatch.setattr(trainer.dyncot_args, "dyncot_think_threshold", threshold)
        monkeypatch.setattr(trainer, "_think_control", None)  # built from the recipe's keys on first use
        monkeypatch.setattr(trainer.args, "output_dir", str(tmp_path / mode))
        metrics = generate_and_score(trainer, dataset, len(dataset), 16)
        path = tmp_path / mode / "dyncot_eval" / f"step{trainer.state.global_step}.jsonl"
        return metrics, [json.loads(line) for line in path.read_text().splitlines()]

    greedy, greedy_rows = evaluate("greedy", 0.5)
    assert len(greedy_rows) == len(dataset) == 16
    # the model wants the tag: left alone it opens with it on at least 90 % of the posts (each tag token is the
    # argmax, though the tiny model's distribution is flat), and the evaluation counts those as thinking
    opens = sum(r["predict"].startswith("<think>") for r in greedy_rows)
    assert opens >= 0.9 * 16 and greedy["cot_rate"] == pytest.approx(100 * opens / 16), [r["predict"] for r in greedy_rows]
    never, never_rows = evaluate("never", 0.5)
    assert not [r["predict"] for r in never_rows if violates(r["predict"])]
    probs = [r["think_prob"] for r in never_rows]
    assert probs == [r["think_prob"] for r in greedy_rows]  # one prefill: the same floats in every mode
    assert never["cot_rate"] == 0
    above = math.nextafter(max(probs), math.inf)  # the file's value is the decision's float (issue 24, item 3)
    auto, auto_rows = evaluate("auto", above)
    assert auto_rows == never_rows and auto == never
    # and the rule is sharp: at the top post's own think_prob, that post (only) thinks
    top = max(probs)
    _, top_rows = evaluate("auto", top)
    assert [r["predict"].startswith("<think>") for r in top_rows] == [p == top for p in probs]
    assert [r for r in top_rows if r["think_prob"] != top] == [r for r in never_rows if r["think_prob"] != top]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_a_prediction_run_holds_never_on_a_model_that_opens_every_reply_with_the_tag(family, cot_lora_adapter,
                                                                                     cot_real_vocab_model,
                                                                                     tmp_path_factory):
    """Acceptance: ``llamafactory-cli train`` prediction runs on Qwen's real vocabularies, of a model that left alone
    (``greedy``) opens at least 90 % of its replies with the tag: on Qwen2-VL (``<think>`` three tokens) the shared
    cot-trained LoRA adapter of the served tiny model (the model tests/test_serve_vllm.py runs on vLLM), on Qwen3-VL
    (one token) the shared ``cot_real_vocab_model``. With ``never`` no reply breaks never's property; ``auto`` one ulp
    above every post's think_prob writes never's replies row for row."""
    import json
    import math

    from dyncot_plugin.testing.lf_runner import run_llamafactory

    if family == "qwen2_vl":
        lora = cot_lora_adapter()
        model, data = lora["base"], lora["data"]
        keys = {"adapter_name_or_path": lora["adapter"], "finetuning_type": "lora"}
    else:
        root = cot_real_vocab_model(family)
        model, data, keys = root / "cot", root / "data", {}

    def predict(**overrides) -> list[dict]:
        work = tmp_path_factory.mktemp("never_predict")
        run_llamafactory("train", tiny_sft_config(
            model, data, None, work / "out", do_train=False, do_predict=True, predict_with_generate=True,
            eval_dataset="toy", per_device_eval_batch_size=4, max_new_tokens=24, do_sample=False,
            template=TEMPLATES[family], **keys, **overrides), work)
        path = work / "out" / "generated_predictions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    greedy, never = predict(dyncot_think="greedy"), predict(dyncot_think="never")
    assert len(greedy) == len(never) == 16
    assert sum(r["predict"].startswith("<think>") for r in greedy) >= 0.9 * 16, [r["predict"] for r in greedy]
    assert not [r["predict"] for r in never if violates(r["predict"])]
    probs = [r["think_prob"] for r in never]
    assert probs == [r["think_prob"] for r in greedy]  # one prefill: the same floats in every mode
    above = predict(dyncot_think="auto", dyncot_think_threshold=math.nextafter(max(probs), math.inf))
    assert [r["predict"] for r in above] == [r["predict"] for r in never]
    assert [r["think_prob"] for r in above] == probs
