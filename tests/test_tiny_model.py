"""The offline tiny Qwen2-VL checkpoint: tokenizer/processor/model sanity, CLI, and a real LLaMA-Factory run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from dyncot_plugin.testing.lf_runner import (
    make_image,
    run_llamafactory,
    tiny_sft_config,
    toy_rows,
    write_sharegpt_dataset,
)
from dyncot_plugin.testing.tiny_model import COT_TOKENS, SPECIAL_TOKENS, build_tiny_qwen2vl

QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]  # fmt: skip


def test_tokenizer_special_tokens_and_roundtrip(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert 300 <= len(tok) <= 2100
    assert config.text_config.vocab_size >= len(tok)
    ids = {}
    for t in QWEN_TOKENS + COT_TOKENS:
        enc = tok.encode(t, add_special_tokens=False)
        assert len(enc) == 1, (t, enc)
        ids[t] = enc[0]
    assert len(set(ids.values())) == len(ids)
    assert set(SPECIAL_TOKENS) >= set(QWEN_TOKENS)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert config.image_token_id == ids["<|image_pad|>"]
    assert config.video_token_id == ids["<|video_pad|>"]
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    assert config.vision_end_token_id == ids["<|vision_end|>"]

    text = "Sunset at the beach 🌅 #summer <think>red circle</think><answer>sunset; beach</answer>"
    enc = tok.encode(text, add_special_tokens=False)
    assert tok.decode(enc) == text
    # CoT markers are plain added tokens: they survive skip_special_tokens, Qwen's specials do not.
    assert tok.decode(enc + [ids["<|im_end|>"]], skip_special_tokens=True) == text

    gen = json.loads((Path(tiny_model_dir) / "generation_config.json").read_text())
    assert ids["<|im_end|>"] in gen["eos_token_id"] and gen["pad_token_id"] == ids["<|endoftext|>"]


def test_processor_and_forward(tiny_model_dir, tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    image = Image.open(make_image(tmp_path / "a.png", seed=1))
    assert image.size == (64, 64)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Keyphrases?"}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in prompt
    batch = proc(images=[image], text=[prompt], return_tensors="pt")
    n_image_tokens = int((batch["input_ids"] == proc.image_token_id).sum())
    assert 1 <= n_image_tokens <= 16
    assert n_image_tokens == int(batch["image_grid_thw"].prod()) // 4

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.logits).all()
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert batch["input_ids"].shape[1] < generated.shape[1] <= batch["input_ids"].shape[1] + 3


def test_build_is_deterministic_and_cli(tmp_path, tiny_model_dir):
    from dyncot_plugin.cli.tiny_model import main

    assert main([str(tmp_path / "cli"), "--seed", "0"]) == 0
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (Path(tiny_model_dir) / name).read_bytes(), name
    other = build_tiny_qwen2vl(tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tmp_path / "cli" / "model.safetensors").read_bytes()
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        assert (other / name).exists(), name
    # processor_config.json: transformers 5 writes one; 4.57 only for a processor with settings of its own
    from transformers import AutoProcessor

    assert type(AutoProcessor.from_pretrained(other)).__name__ == "Qwen2VLProcessor"


@pytest.mark.slow
def test_llamafactory_sft_then_predict(tiny_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    write_sharegpt_dataset(data_dir, "toy", toy_rows(data_dir, n=8))
    info = json.loads((data_dir / "dataset_info.json").read_text())
    assert info["toy"]["columns"] == {"messages": "messages", "images": "images"}

    sft_dir = tmp_path / "sft"
    run_llamafactory("train", tiny_sft_config(tiny_model_dir, data_dir, "toy", sft_dir), workdir=tmp_path)
    logs = [json.loads(line) for line in (sft_dir / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    losses = [row["loss"] for row in logs if "loss" in row]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses), losses
    assert (sft_dir / "model.safetensors").exists()  # the final model is saved even with save_strategy: no

    # LLaMA-Factory's predict_with_generate hard-requires its `metrics` extra (jieba, nltk, rouge_chinese).
    for mod in ("jieba", "nltk", "rouge_chinese"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"predict_with_generate needs `{mod}` (LLaMA-Factory metrics extra); not installed")
    pred_dir = tmp_path / "pred"
    predict_cfg = tiny_sft_config(
        sft_dir, data_dir, None, pred_dir,
        do_train=False, do_predict=True, predict_with_generate=True, eval_dataset="toy",
        max_new_tokens=8, per_device_eval_batch_size=4, max_samples=4,
    )  # fmt: skip
    run_llamafactory("train", predict_cfg, workdir=tmp_path, config_name="predict.yaml")
    preds = [json.loads(line) for line in (pred_dir / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4
    assert all({"prompt", "predict", "label"} <= set(p) for p in preds)
    assert preds[0]["prompt"].count("<|image_pad|>") >= 1
    assert "<answer>" in preds[0]["label"]
