"""Generation sees the positions the model was trained with, and the thinking control works on any plain template."""

from __future__ import annotations

import json

import pytest
import torch

from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import write_plugin_dataset
from dyncot_plugin.train.families import family_of
from dyncot_plugin.train.generation import generation_inputs


@pytest.fixture(scope="module")
def lf_parts(tiny_model_dir, tmp_path_factory):
    """The tiny Qwen2-VL, its tokenizer/template and one tokenised training row, through LLaMA-Factory's own code."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer

    data = tmp_path_factory.mktemp("gen_data")
    write_plugin_dataset(data, "toy", n=2)
    args = tiny_sft_config(tiny_model_dir, data, "toy", tmp_path_factory.mktemp("gen_out"), do_train=True)
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)["train_dataset"]
    model = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=False).eval()
    return model, template, tokenizer_module, dataset


def _collator(template, tokenizer_module, model):
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask

    return SFTDataCollatorWith4DAttentionMask(
        template=template, model=model, label_pad_token_id=-100, compute_dtype=torch.float32, **tokenizer_module
    )


@torch.no_grad()
def test_first_generated_token_sees_the_training_forwards_logits(lf_parts):
    model, template, tokenizer_module, dataset = lf_parts
    tokenizer = tokenizer_module["tokenizer"]
    row = dict(dataset[0])
    start = next(i for i, t in enumerate(row["labels"]) if t != -100)  # first answer token

    # The training forward (LLaMA-Factory's collator with the model: M-RoPE position_ids) at the last prompt token.
    train_batch = _collator(template, tokenizer_module, model)([dict(row)])
    assert train_batch["position_ids"].dim() == 3  # [text + 3 M-RoPE axes, batch, seq]
    logits = model(**{k: v for k, v in train_batch.items() if k != "labels"}).logits[0, start - 1]

    prompt = {"input_ids": row["input_ids"][:start], "attention_mask": [1] * start, "labels": [-100] * start,
              "images": row["images"], "videos": row["videos"], "audios": row["audios"]}
    tokenizer.padding_side = "left"
    try:
        def first_logits(collator_model, add_family_inputs):
            batch = _collator(template, tokenizer_module, collator_model)([dict(prompt)])
            if add_family_inputs:
                inputs = generation_inputs(model, batch, family_of(model))
            else:  # what LLaMA-Factory's predict hands generate: its collator was built without the model
                inputs = {k: v for k, v in batch.items() if k != "labels"}
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
            return out.logits[0][0]

        ours = first_logits(model, True)
        vanilla_predict = first_logits(None, False)
    finally:
        tokenizer.padding_side = "right"
    assert (ours - logits).abs().max().item() < 1e-4
    from dyncot_plugin.compat import generate_accepts

    if generate_accepts(model, "mm_token_type_ids"):
        # transformers 5, the gap this closes: without the family's inputs generate falls back to 1-D text positions
        assert (vanilla_predict - logits).abs().max().item() > 10 * (ours - logits).abs().max().item()
    else:  # transformers 4.57: generate computes M-RoPE positions from the ids and image grids alone
        assert (vanilla_predict - logits).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------ prediction runs (dyncot_think)
@pytest.fixture(scope="module")
def predict(tiny_model_dir, tmp_path_factory):
    """Predict on 6 rows of the toy set with the tiny model after 8 Fine-tune-CoT steps (so that it does write
    <think> when left alone); returns its generated_predictions rows and the process."""
    data = tmp_path_factory.mktemp("predict_data")
    write_plugin_dataset(data, "toy", n=6)
    trained = tmp_path_factory.mktemp("cot_model")
    run_llamafactory("train", tiny_sft_config(tiny_model_dir, data, "toy", trained / "out", dyncot_strategy="cot",
                                              learning_rate=3e-3), trained)
    cache = {}

    def _predict(**overrides):
        key = json.dumps(overrides, sort_keys=True)
        if key not in cache:
            work = tmp_path_factory.mktemp("predict")
            config = tiny_sft_config(
                trained / "out", data, None, work / "out", do_train=False, do_predict=True, predict_with_generate=True,
                eval_dataset="toy", per_device_eval_batch_size=3, max_new_tokens=10, do_sample=False, **overrides,
            )
            proc = run_llamafactory("train", config, work)
            rows = [json.loads(x) for x in (work / "out" / "generated_predictions.jsonl").read_text().splitlines()]
            proc.out_dir, proc.config = work / "out", config
            cache[key] = (rows, proc)
        return cache[key]

    return _predict


def _thinks(row: dict) -> bool:
    return row["predict"].startswith("<think>")


@pytest.mark.slow
@pytest.mark.low_end  # also on the low-end stack (.ci/run)
def test_every_prediction_row_carries_think_prob_and_the_run_saves_its_threshold(predict, tmp_path):
    rows, _ = predict(dyncot_think="always")
    assert len(rows) == 6 and all(_thinks(r) for r in rows)
    assert all(isinstance(r["think_prob"], float) and 0.0 <= r["think_prob"] <= 1.0 for r in rows)
    never, _ = predict(dyncot_think="never")
    assert not any("<think>" in r["predict"] for r in never)
    # the prefill is the same whatever the mode: so is think_prob (rows stay aligned to their posts)
    assert [r["think_prob"] for r in never] == pytest.approx([r["think_prob"] for r in rows], abs=1e-6)
    assert [r["prompt"] for r in never] == [r["prompt"] for r in rows]


@pytest.mark.slow
@pytest.mark.low_end  # also on the low-end stack (.ci/run)
def test_auto_thinks_exactly_where_think_prob_reaches_the_threshold(predict):
    always, _ = predict(dyncot_think="always")
    never, _ = predict(dyncot_think="never")
    probs = sorted(r["think_prob"] for r in always)
    threshold = (probs[2] + probs[3]) / 2  # half the posts on each side
    auto, proc = predict(dyncot_think="auto", dyncot_think_threshold=threshold)
    for a, yes, no in zip(auto, always, never):
        assert a["predict"] == (yes if a["think_prob"] >= threshold else no)["predict"]
    assert sum(_thinks(r) for r in auto) == 3
    settings = json.loads((proc.out_dir / "dyncot_think.json").read_text())
    assert settings["think"] == "auto" and settings["threshold"] == pytest.approx(threshold)
    assert settings["tag"] == "<think>" and settings["tag_ids"]


@pytest.mark.slow
@pytest.mark.low_end  # also on the low-end stack (.ci/run)
def test_a_plugin_routed_prediction_without_the_key_decides_at_the_default_threshold(predict):
    always, _ = predict(dyncot_think="always")
    never, _ = predict(dyncot_think="never")
    default, proc = predict(dyncot_strategy="sft")  # routed through the plugin, no dyncot_think key
    assert "[dyncot-plugin] active" in proc.stderr
    for row, yes, no in zip(default, always, never):
        assert row["predict"] == (yes if row["think_prob"] >= 0.5 else no)["predict"]
    assert json.loads((proc.out_dir / "dyncot_think.json").read_text())["threshold"] == 0.5


@pytest.mark.slow
@pytest.mark.distributed
def test_think_prob_stays_with_its_row_under_two_process_prediction(predict, tmp_path):
    """Two torchrun workers predict 5 posts (the sampler pads the odd one out); every row keeps its own think_prob."""
    import os
    import sys
    from pathlib import Path

    single, proc = predict(dyncot_think="always")
    recipe = dict(proc.config, output_dir=str(tmp_path / "out"), max_samples=5, per_device_eval_batch_size=2)
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run_llamafactory("train", recipe, tmp_path, env=env, timeout=900)
    rows = [json.loads(x) for x in (tmp_path / "out" / "generated_predictions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in single[:5]]
    assert [r["think_prob"] for r in rows] == pytest.approx([r["think_prob"] for r in single[:5]], abs=1e-5)
