"""Offline builder for a tiny, randomly initialised Qwen2-VL checkpoint (for tests and smoke runs).

``build_tiny_qwen2vl(out_dir)`` writes, in a few seconds and without network access, a folder that
``AutoModelForImageTextToText.from_pretrained``, ``AutoProcessor.from_pretrained`` and LLaMA-Factory
(``model_name_or_path: <dir>``, ``template: qwen2_vl``) load like a real Qwen2-VL checkpoint:

* ``config.json`` / ``model.safetensors``: a ``Qwen2VLConfig`` with tiny sizes and seeded random weights;
* ``tokenizer.json`` / ``tokenizer_config.json``: a byte-level BPE (Qwen2 pre-tokenizer) trained on the spot
  on a small built-in English corpus (or on the given ``corpus`` lines), with Qwen's special tokens and ``<think>``, ``</think>``,
  ``<answer>``, ``</answer>`` as (non-special) added tokens, so they survive ``skip_special_tokens=True``; or, with
  ``tokenizer="qwen"``, Qwen2-VL's real tokenizer (:mod:`~dyncot_plugin.testing.qwen_vocab`), where ``<think>`` is
  three tokens;
* ``preprocessor_config.json`` / ``video_preprocessor_config.json`` / ``processor_config.json`` (transformers 5;
  4.57 writes it only for a processor with settings of its own) / ``chat_template.jinja``: ``Qwen2VLProcessor``
  with small pixel limits (a 64x64 image -> 4 image tokens);
* ``generation_config.json``: eos = ``<|im_end|>`` (and ``<|endoftext|>``), pad = ``<|endoftext|>``.

Same ``seed`` -> same tokenizer and weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["COT_TOKENS", "QWEN2_VL_CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_qwen2vl"]

# Qwen2-VL's special tokens, in Qwen's id order (they get ids 0..N-1 here).
SPECIAL_TOKENS: list[str] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Dynamic-CoT markers: added as normal (non-special) tokens so decoding keeps them.
COT_TOKENS: list[str] = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL-Instruct's chat template.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """\
Just landed in Tokyo! The cherry blossoms are unreal this year #travel #japan #sakura
Can't believe the game last night, what a comeback!!! #nba #playoffs @lakers
New phone, who dis? Battery life is amazing so far. #tech #smartphone #review
Morning coffee and a good book. Perfect Sunday. #coffee #weekend #reading
Breaking: heavy rain expected across the city tonight, stay safe everyone #weather #storm
So proud of my little sister for graduating today! #graduation #family #proud
This pizza is the best thing I have eaten all week #food #foodie #pizza
Our team just shipped the new release, check it out https://example.com #startup #launch
Watching the sunset at the beach with friends #sunset #beach #summer #friends
Traffic is terrible on the highway again, working from home tomorrow #commute #traffic
The concert was incredible, the band played for three hours #music #live #concert
Vote today! Every voice matters in this election #election #vote #democracy
My cat refuses to leave the keyboard while I work #cats #pets #wfh
Training for the marathon: 20 km done this morning #running #marathon #fitness
Climate change is real, and we need action now #climate #environment #sustainability
Keyphrases: machine learning, deep learning, neural network, image classification, social media.
Keyphrases: chain of thought, reasoning, vision language model, multimodal, keyphrase prediction.
Keywords: travel, food, sports, music, politics, technology, weather, health, fashion, movies.
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
What keyphrases describe this post and its image? Think step by step, then answer.
<think>The image shows a beach at sunset and the text mentions friends.</think><answer>sunset; beach; friends</answer>
<think>The post talks about a basketball game.</think><answer>nba; playoffs; basketball</answer>
<answer>coffee; reading; weekend</answer>
The image is red, green, blue, yellow, a circle, a square, a triangle, a rectangle, a line.
Hello world! How are you today? I am fine, thank you. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024.
"""


def _train_tokenizer(vocab_size: int, seed: int, corpus: list[str] | None = None, cot_tokens: bool = True):
    """Train a Qwen2-style byte-level BPE on ``corpus`` lines (default: the built-in corpus) and wrap it as a
    transformers ``Qwen2Tokenizer``. ``cot_tokens=False`` leaves :data:`COT_TOKENS` to the BPE (``<think>`` is then
    ``<think`` ``>``, and ``>`` glues to the next word, as on Qwen2's real vocabulary)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from dyncot_plugin.compat import bpe_tokenizer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _CORPUS.splitlines() if corpus is None else [line for line in corpus if line]
    if not lines:
        raise ValueError("tokenizer corpus is empty")
    # BPE training is deterministic given the input; the seed only rotates the corpus order.
    k = seed % len(lines)
    tok.train_from_iterator(lines[k:] + lines[:k], trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    vocab = state["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]

    tokenizer = bpe_tokenizer(
        tok,
        vocab,
        merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",  # like Qwen2-VL-Instruct
        pad_token="<|endoftext|>",
        model_max_length=32768,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]}
    )
    if cot_tokens:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in COT_TOKENS])
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def seeded_model(model_class: type, config: Any, seed: int) -> Any:
    """``model_class(config)`` in fp32, eval mode, its random weights drawn from ``seed`` (the caller's torch RNG
    state is left as it was)."""
    import torch

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return model_class(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(state)


def build_tiny_qwen2vl(
    out_dir: str | Path,
    seed: int = 0,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vision_depth: int = 1,
    vision_embed_dim: int = 32,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    corpus: list[str] | None = None,
    tokenizer: str = "tiny",
) -> Path:
    """Write a tiny random Qwen2-VL checkpoint (model + tokenizer + processor) to ``out_dir``; return its path.

    Args:
        out_dir: target folder (created; existing files with the same names are overwritten).
        seed: torch seed for the weights (and corpus rotation for the tokenizer); same seed -> same files.
        vocab_size: BPE vocab size to train (the model's vocab is this + added tokens, rounded up to 64).
        hidden_size / num_layers / num_heads: text decoder sizes (head_dim = hidden_size // num_heads, must be
            a multiple of 4 for M-RoPE).
        vision_depth / vision_embed_dim: vision tower sizes (embed_dim / 2 heads).
        min_pixels / max_pixels: image-processor pixel limits; each 28x28 area is one image token.
        corpus: lines to train the tokenizer on instead of the built-in corpus (e.g. a demo dataset's text, so a
            small vocab holds its words as single tokens).
        tokenizer: ``"tiny"`` (the BPE trained here) or ``"qwen"`` (Qwen2-VL's real vocabulary and special tokens
            at their published ids, model vocab 151,936, no ``<think>`` token: see
            :mod:`~dyncot_plugin.testing.qwen_vocab`; ``vocab_size`` and ``corpus`` must then be left unset).
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLTextConfig,
        Qwen2VLVideoProcessor,
    )

    from dyncot_plugin.compat import rope_kwargs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if tokenizer == "qwen":
        from dyncot_plugin.testing.qwen_vocab import QWEN_MODEL_VOCAB, qwen_tokenizer

        if corpus is not None or vocab_size != 1024:
            raise ValueError("vocab_size and corpus are for the tiny tokenizer, not tokenizer='qwen'")
        tok, model_vocab = qwen_tokenizer("qwen2_vl", QWEN2_VL_CHAT_TEMPLATE), QWEN_MODEL_VOCAB
    elif tokenizer == "tiny":
        tok = _train_tokenizer(vocab_size, seed, corpus)
        model_vocab = ((len(tok) + 63) // 64) * 64
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; known: tiny, qwen")
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    head_dim = hidden_size // num_heads
    if head_dim % 4:
        raise ValueError(f"head_dim={head_dim} must be a multiple of 4 for M-RoPE")
    half = head_dim // 2  # mrope_section sums to head_dim // 2 (t, h, w); Qwen uses 16/24/24 of 64
    hw = (half - max(1, half // 4)) // 2
    mrope_section = [half - 2 * hw, hw, hw]

    text_config = {
        "vocab_size": model_vocab,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": max(1, num_heads // 2),
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        **rope_kwargs(Qwen2VLTextConfig, 1000000.0, mrope_section=mrope_section),
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "use_sliding_window": False,
        "max_window_layers": num_layers,
        "tie_word_embeddings": False,
    }
    vision_config = {
        "depth": vision_depth,
        "embed_dim": vision_embed_dim,
        "hidden_size": hidden_size,  # merger output = LM hidden size
        "num_heads": 2,
        "mlp_ratio": 2,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    config.dtype = torch.float32

    model = seeded_model(Qwen2VLForConditionalGeneration, config, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)

    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)  # processor_config.json (+ tokenizer files, chat_template.jinja)
    # Standalone configs too, for loaders that read them directly (AutoImageProcessor on older stacks, etc.).
    image_processor.save_pretrained(out)  # preprocessor_config.json
    video_processor.save_pretrained(out)  # video_preprocessor_config.json
    return out
