"""Offline builders for tiny, randomly initialised vision-language checkpoints of several model families.

``build_tiny_model(out_dir, family)`` writes, in a few seconds and without network access, a folder that
``AutoProcessor.from_pretrained``, ``AutoModelForImageTextToText.from_pretrained`` and LLaMA-Factory
(``model_name_or_path: <dir>``, ``template: FAMILIES[family].template``) load like a real checkpoint of that family.

``FAMILIES`` maps a family name to a :class:`Family`, the recipe for one checkpoint:

* ``model_type``: the ``config.model_type`` the saved ``config.json`` has;
* ``template``: the LLaMA-Factory template to train it with;
* ``special_tokens``: special tokens added to the shared tokenizer (image markers, turn markers, bos/eos/pad);
* ``named_tokens``: tokenizer attributes set to those tokens: ``bos_token`` / ``eos_token`` / ``pad_token`` and the
  model-specific ones the family's processor reads (``image_token``, ``boi_token``, ``context_image_token``, ...);
* ``stop_tokens``: the ``generation_config.json`` eos ids (the first one is also the config's ``eos_token_id``);
* ``chat_template``: the (simplified) chat template of the real instruct checkpoint;
* ``build``: a function ``(tokenizer, model_vocab, token_id) -> (config, model class, processor)`` with the tiny
  sizes (2 text layers of hidden size 64, a 1-2 layer vision tower of width 32, images resized so that a 64x64
  PNG gives 4 image tokens; an 80x80 one gives 9 with the patch-14 Qwen2/2.5-VL processors, 4 with the others).
  ``None`` for ``qwen2_vl``, which delegates to :func:`~dyncot_plugin.testing.tiny_model.build_tiny_qwen2vl`.

The families (``family``: model class, vision tower -> LLaMA-Factory template):

* ``qwen2_vl``: ``Qwen2VLForConditionalGeneration`` (built by ``build_tiny_qwen2vl``) -> ``qwen2_vl``;
* ``qwen2_5_vl``: ``Qwen2_5_VLForConditionalGeneration``, windowed + full-attention ViT blocks -> ``qwen2_vl``;
* ``qwen3_vl``: ``Qwen3VLForConditionalGeneration``, ViT with deepstack features, interleaved M-RoPE
  -> ``qwen3_vl_nothink``;
* ``llava``: ``LlavaForConditionalGeneration`` (LLaVA-1.5 layout), CLIP vision tower + Llama decoder -> ``llava``;
* ``gemma3``: ``Gemma3ForConditionalGeneration``, SigLIP vision tower + Gemma3 decoder -> ``gemma3``;
* ``internvl``: ``InternVLForConditionalGeneration`` (the transformers-native port, no remote code), InternViT +
  Qwen2 decoder -> ``intern_vl``;
* ``qwen2``: ``Qwen2ForCausalLM``, text only (no processor: LLaMA-Factory then normalises the loss by token
  counts) -> ``qwen``.

``model_type`` equals the family name for every row.

Every family shares the tokenizer of :mod:`~dyncot_plugin.testing.tiny_model` (a byte-level BPE trained on the
spot, with Qwen's special tokens and ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` as non-special added
tokens, so they survive ``skip_special_tokens=True``); non-Qwen families add their own special tokens on top and
point bos/eos/pad at them. Same ``seed`` -> same tokenizer and weights.

The Qwen families (:data:`QWEN_SIZED`) can instead take their real tokenizer (``tokenizer="qwen"``: Qwen's BPE ranks
and the family's added tokens at their published ids, from :mod:`~dyncot_plugin.testing.qwen_vocab`) and a text
decoder of another ``hidden_size`` / ``num_layers``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyncot_plugin.compat import add_special_tokens, rope_kwargs, set_model_specific_tokens
from dyncot_plugin.testing.qwen_vocab import QWEN_MODEL_VOCAB, qwen_tokenizer
from dyncot_plugin.testing.tiny_model import (
    QWEN2_VL_CHAT_TEMPLATE,
    _train_tokenizer,
    build_tiny_qwen2vl,
    seeded_model,
)

__all__ = ["FAMILIES", "QWEN_SIZED", "Family", "build_tiny_model"]

HIDDEN = 64  # text hidden size (4 heads of 16)
VISION = 32  # vision tower width (2 heads of 16)

# (tokenizer, model vocab size, token -> id) -> (config, model class, processor); the Qwen families' and LLaVA's
# builders also take hidden_size= and num_layers= (SIZED).
Builder = Callable[..., tuple[Any, type, Any]]


@dataclass(frozen=True)
class Family:
    """How to build one tiny checkpoint; see the module docstring."""

    model_type: str
    template: str
    build: Builder | None
    special_tokens: tuple[str, ...] = ()
    named_tokens: Mapping[str, str] = field(default_factory=dict)
    stop_tokens: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")
    chat_template: str | None = None


def _text_sizes(model_vocab: int, hidden_size: int = HIDDEN, num_layers: int = 2, **extra: Any) -> dict[str, Any]:
    """Tiny decoder sizes shared by every family (by default 2 layers, hidden 64, 4 query heads, 2 kv heads); heads
    of 16 whatever the hidden size, so the Qwen families' M-RoPE sections stay valid."""
    heads = hidden_size // 16
    return {
        "vocab_size": model_vocab,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        **extra,
    }


def _qwen_token_ids(token_id: Callable[[str], int]) -> dict[str, int]:
    return {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }


def _qwen_text_ids(token_id: Callable[[str], int]) -> dict[str, int]:
    return {
        "bos_token_id": token_id("<|endoftext|>"),
        "eos_token_id": token_id("<|im_end|>"),
        "pad_token_id": token_id("<|endoftext|>"),
    }


# Pixel limits of the Qwen image processors: 56x56..112x112, so a 64x64 image becomes 56x56 (patch 14) or 64x64
# (patch 16): a 4x4 patch grid, merged 2x2 -> 4 image tokens (80x80: 84x84 -> 9 tokens at patch 14, 4 at patch 16).
_QWEN_MIN_PIXELS, _QWEN_MAX_PIXELS = 56 * 56, 112 * 112


def _build_qwen2_5_vl(
    tokenizer: Any, model_vocab: int, token_id: Callable[[str], int], hidden_size: int = HIDDEN, num_layers: int = 2
) -> tuple[Any, type, Any]:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2_5_VLTextConfig,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    # head_dim 16 -> mrope_section sums to 8 (t, h, w), like Qwen's 16/24/24 of 64.
    text = _text_sizes(
        model_vocab,
        hidden_size,
        num_layers,
        **rope_kwargs(Qwen2_5_VLTextConfig, 1000000.0, mrope_section=[2, 3, 3]),
        use_sliding_window=False,
        max_window_layers=num_layers,
        **_qwen_text_ids(token_id),
    )
    vision = {
        "depth": 2,
        "hidden_size": VISION,
        "intermediate_size": VISION * 2,
        "num_heads": 2,
        "out_hidden_size": hidden_size,  # merger output = LM hidden size
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,  # 4x4 merged tokens per window
        "fullatt_block_indexes": [1],  # block 0 windowed, block 1 full attention (as in the real 7/15/23/31 pattern)
    }
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False, **_qwen_token_ids(token_id)
    )
    kwargs = {"min_pixels": _QWEN_MIN_PIXELS, "max_pixels": _QWEN_MAX_PIXELS}
    kwargs.update(patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**kwargs),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**kwargs),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    return config, Qwen2_5_VLForConditionalGeneration, processor


# Qwen3-VL-Instruct's chat template, without tools: no default system prompt.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_qwen3_vl(
    tokenizer: Any, model_vocab: int, token_id: Callable[[str], int], hidden_size: int = HIDDEN, num_layers: int = 2
) -> tuple[Any, type, Any]:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLTextConfig,
        Qwen3VLVideoProcessor,
    )

    # Interleaved M-RoPE over head_dim // 2 = 8 frequencies (the real model: 24/20/20 of 64).
    rope = rope_kwargs(Qwen3VLTextConfig, 5000000.0, mrope_section=[4, 2, 2], mrope_interleaved=True)
    text = _text_sizes(model_vocab, hidden_size, num_layers, head_dim=16, **rope, **_qwen_text_ids(token_id))
    vision = {
        "depth": 2,
        "hidden_size": VISION,
        "intermediate_size": VISION * 2,
        "num_heads": 2,
        "out_hidden_size": hidden_size,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 16,  # a 4x4 learned grid, interpolated to the image's patch grid
        "deepstack_visual_indexes": [0],  # block 0's features are also added to the first decoder layer
    }
    config = Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False, **_qwen_token_ids(token_id)
    )
    size = {"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_MAX_PIXELS}
    kwargs = {"size": size, "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**kwargs),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**kwargs),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    return config, Qwen3VLForConditionalGeneration, processor


# llava-hf/llava-1.5-*-hf's chat template ("USER: <image>\n... ASSISTANT:"), also accepting plain-string contents.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ message['content'] if message['content'] is string else message['content'][0]['text'] }}{{ ' ' }}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_CLIP_IMAGE_SIZE, _CLIP_PATCH = 32, 16  # 2x2 patches + CLS; "default" strategy drops CLS -> 4 image tokens


def _build_llava(tokenizer: Any, model_vocab: int, token_id: Callable[[str], int], hidden_size: int = HIDDEN,
                 num_layers: int = 2) -> tuple[Any, type, Any]:
    """LLaVA-1.5 layout; 4 query heads whatever ``hidden_size`` (64: heads of 16, as the other families; 128: heads
    of 32, the least vLLM's CPU attention takes)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    text = LlamaConfig(
        **_text_sizes(
            model_vocab,
            hidden_size,
            num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            **rope_kwargs(LlamaConfig, 10000.0),
            bos_token_id=token_id("<s>"),
            eos_token_id=token_id("</s>"),
            pad_token_id=token_id("<pad>"),
        )
    )
    vision = CLIPVisionConfig(
        hidden_size=VISION,
        intermediate_size=VISION * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=_CLIP_IMAGE_SIZE,
        patch_size=_CLIP_PATCH,
        projection_dim=VISION,
    )
    num_tokens = (_CLIP_IMAGE_SIZE // _CLIP_PATCH) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=token_id("<image>"),
        image_seq_length=num_tokens,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": _CLIP_IMAGE_SIZE}, crop_size={"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_CLIP_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        image_token="<image>",
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return config, LlavaForConditionalGeneration, processor


# google/gemma-3-*-it's chat template, simplified: the system prompt is prepended to the first user turn.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set first_user_prefix = namespace(value='') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set first_user_prefix.value = (message['content'] if message['content'] is string "
    "else message['content'][0]['text']) + '\n\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{% if message['role'] == 'user' %}{{ first_user_prefix.value }}{% set first_user_prefix.value = '' %}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_SIGLIP_IMAGE_SIZE, _SIGLIP_PATCH, _GEMMA3_IMAGE_TOKENS = 32, 8, 4  # 4x4 patches, avg-pooled 2x2 -> 4 tokens


def _build_gemma3(tokenizer: Any, model_vocab: int, token_id: Callable[[str], int]) -> tuple[Any, type, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    text = Gemma3TextConfig(
        **_text_sizes(
            model_vocab,
            head_dim=HIDDEN // 4,
            query_pre_attn_scalar=HIDDEN // 4,
            sliding_window=64,
            layer_types=["sliding_attention", "full_attention"],
            bos_token_id=token_id("<bos>"),
            eos_token_id=token_id("<eos>"),
            pad_token_id=token_id("<pad>"),
        )
    )
    vision = SiglipVisionConfig(
        hidden_size=VISION,
        intermediate_size=VISION * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=_SIGLIP_IMAGE_SIZE,
        patch_size=_SIGLIP_PATCH,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=_GEMMA3_IMAGE_TOKENS,
        boi_token_index=token_id("<start_of_image>"),
        eoi_token_index=token_id("<end_of_image>"),
        image_token_index=token_id("<image_soft_token>"),
        tie_word_embeddings=False,
    )
    image_processor = Gemma3ImageProcessor(
        size={"height": _SIGLIP_IMAGE_SIZE, "width": _SIGLIP_IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=_GEMMA3_IMAGE_TOKENS,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    return config, Gemma3ForConditionalGeneration, processor


# OpenGVLab/InternVL3-*-hf's chat template, simplified (no default system prompt): an image is `<IMG_CONTEXT>\n`,
# which InternVLProcessor expands to `<img><IMG_CONTEXT>*N</img>`.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_INTERNVIT_IMAGE_SIZE, _INTERNVIT_PATCH = 32, 8  # 4x4 patches, pixel-shuffled (ratio 0.5) -> 4 tokens


def _build_internvl(tokenizer: Any, model_vocab: int, token_id: Callable[[str], int]) -> tuple[Any, type, Any]:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        Qwen2Config,
    )

    text = _text_sizes(
        model_vocab,
        model_type="qwen2",
        **rope_kwargs(Qwen2Config, 1000000.0),
        use_sliding_window=False,
        max_window_layers=2,
        **_qwen_text_ids(token_id),
    )
    vision = {
        "hidden_size": VISION,
        "intermediate_size": VISION * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": _INTERNVIT_IMAGE_SIZE,
        "patch_size": _INTERNVIT_PATCH,
    }
    downsample_ratio = 0.5
    num_tokens = int((_INTERNVIT_IMAGE_SIZE // _INTERNVIT_PATCH) ** 2 * downsample_ratio**2)
    config = InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_id("<IMG_CONTEXT>"),
        image_seq_length=num_tokens,
        downsample_ratio=downsample_ratio,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    size = {"height": _INTERNVIT_IMAGE_SIZE, "width": _INTERNVIT_IMAGE_SIZE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False, min_patches=1, max_patches=1),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=num_tokens,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    return config, InternVLForConditionalGeneration, processor


def _build_qwen2_text(tokenizer: Any, model_vocab: int, token_id: Callable[[str], int]) -> tuple[Any, type, Any]:
    """A text-only decoder (no processor): the case where LLaMA-Factory normalises the loss by token counts."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**_text_sizes(model_vocab), **_qwen_text_ids(token_id))
    return config, Qwen2ForCausalLM, None


FAMILIES: dict[str, Family] = {
    "qwen2_vl": Family(model_type="qwen2_vl", template="qwen2_vl", build=None, chat_template=QWEN2_VL_CHAT_TEMPLATE),
    "qwen2_5_vl": Family(
        model_type="qwen2_5_vl", template="qwen2_vl", build=_build_qwen2_5_vl, chat_template=QWEN2_VL_CHAT_TEMPLATE
    ),
    "qwen3_vl": Family(
        model_type="qwen3_vl", template="qwen3_vl_nothink", build=_build_qwen3_vl, chat_template=QWEN3_VL_CHAT_TEMPLATE
    ),
    "llava": Family(
        model_type="llava",
        template="llava",
        build=_build_llava,
        special_tokens=("<s>", "</s>", "<unk>", "<pad>", "<image>"),
        named_tokens={
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "image_token": "<image>",
        },
        stop_tokens=("</s>",),
        chat_template=LLAVA_CHAT_TEMPLATE,
    ),
    "gemma3": Family(
        model_type="gemma3",
        template="gemma3",
        build=_build_gemma3,
        special_tokens=(
            "<bos>",
            "<eos>",
            "<pad>",
            "<unk>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ),
        named_tokens={
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
        stop_tokens=("<eos>", "<end_of_turn>"),
        chat_template=GEMMA3_CHAT_TEMPLATE,
    ),
    "internvl": Family(
        model_type="internvl",
        template="intern_vl",
        build=_build_internvl,
        special_tokens=("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
        named_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        chat_template=INTERNVL_CHAT_TEMPLATE,
    ),
    "qwen2": Family(model_type="qwen2", template="qwen", build=_build_qwen2_text, chat_template=QWEN2_VL_CHAT_TEMPLATE),
}


def _family_tokenizer(spec: Family, vocab_size: int, seed: int, cot_tokens: bool = True) -> Any:
    """The shared tiny tokenizer plus the family's special tokens, named tokens and chat template."""
    from transformers import AddedToken

    tokenizer = _train_tokenizer(vocab_size, seed, cot_tokens=cot_tokens)
    if spec.special_tokens:
        add_special_tokens(tokenizer, [AddedToken(t, special=True, normalized=False) for t in spec.special_tokens])
    standard = {k: v for k, v in spec.named_tokens.items() if k in tokenizer.SPECIAL_TOKENS_ATTRIBUTES}
    specific = {k: v for k, v in spec.named_tokens.items() if k not in standard}
    if specific:
        # What from_pretrained does with `image_token`-like keys of tokenizer_config.json; saved back the same way.
        set_model_specific_tokens(tokenizer, specific)
    for key, value in standard.items():
        setattr(tokenizer, key, value)
    tokenizer.chat_template = spec.chat_template
    return tokenizer


# Families whose builders take hidden_size / num_layers, and that tokenizer="qwen" (their real vocabulary) is for.
QWEN_SIZED = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
SIZED = (*QWEN_SIZED, "llava")  # builders that take hidden_size / num_layers (llava: for vLLM's CPU attention)


def build_tiny_model(
    out_dir: str | Path,
    family: str,
    seed: int = 0,
    vocab_size: int = 1024,
    tokenizer: str = "tiny",
    hidden_size: int | None = None,
    num_layers: int | None = None,
    cot_tokens: bool = True,
) -> Path:
    """Write a tiny random checkpoint of ``family`` (a key of :data:`FAMILIES`) to ``out_dir``; return its path.

    The folder holds ``config.json`` / ``model.safetensors`` (fp32, weights seeded by ``seed``), the tokenizer
    files with ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` and the family's image tokens, the processor
    files (``processor_config.json``, ``preprocessor_config.json``, ``video_preprocessor_config.json`` where the
    family has a video processor, ``chat_template.jinja``) and ``generation_config.json``. Train it with
    LLaMA-Factory's ``template: FAMILIES[family].template``. Existing files with the same names are overwritten.

    ``tokenizer="qwen"`` (Qwen families only) uses the family's real tokenizer instead of the tiny one: Qwen's
    151,643 BPE ranks and the family's added tokens at their published ids, model vocab 151,936
    (:mod:`~dyncot_plugin.testing.qwen_vocab`); on qwen2_vl and qwen2_5_vl ``<think>`` is then three tokens, and
    there is no ``<answer>`` token. ``hidden_size`` (a multiple of 16; default 64) and ``num_layers`` (default 2)
    size the text decoder of the Qwen families and LLaVA (:data:`SIZED`; LLaVA keeps 4 heads).

    ``cot_tokens=False`` (the tiny tokenizer, families other than qwen2_vl) adds no ``<think>`` / ``</think>`` /
    ``<answer>`` / ``</answer>`` tokens: ``<think>`` is then the two tokens ``<think`` ``>``, as multi-token as on
    Qwen2's real vocabulary, for families whose real vocabulary is not vendored here (Gemma 3).
    """
    import torch
    from transformers import GenerationConfig

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if tokenizer not in ("tiny", "qwen"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}; known: tiny, qwen")
    sizes = {k: v for k, v in (("hidden_size", hidden_size), ("num_layers", num_layers)) if v is not None}
    if tokenizer == "qwen" and family not in QWEN_SIZED:
        raise ValueError(f"tokenizer='qwen' is for the families {', '.join(QWEN_SIZED)}, not {family!r}")
    if sizes and family not in SIZED:
        raise ValueError(f"hidden_size / num_layers is for the families {', '.join(SIZED)}, not {family!r}")
    if hidden_size is not None and (hidden_size < 16 or hidden_size % 16):
        raise ValueError(f"hidden_size must be a positive multiple of 16 (heads of 16), got {hidden_size}")
    if num_layers is not None and num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    spec = FAMILIES[family]
    if not cot_tokens and (tokenizer != "tiny" or spec.build is None):
        raise ValueError("cot_tokens=False is for the tiny tokenizer of families other than qwen2_vl (for a "
                         "multi-token <think> on qwen2_vl use tokenizer='qwen')")
    if spec.build is None:
        return build_tiny_qwen2vl(out_dir, seed=seed, vocab_size=vocab_size, tokenizer=tokenizer, **sizes)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer == "qwen":
        if vocab_size != 1024:
            raise ValueError("vocab_size is for the tiny tokenizer, not tokenizer='qwen'")
        tokenizer = qwen_tokenizer(family, spec.chat_template)
        model_vocab = QWEN_MODEL_VOCAB
    else:
        tokenizer = _family_tokenizer(spec, vocab_size, seed, cot_tokens)
        model_vocab = ((len(tokenizer) + 63) // 64) * 64

    def token_id(token: str) -> int:
        ids = tokenizer.convert_tokens_to_ids([token])
        if ids[0] is None or tokenizer.convert_ids_to_tokens(ids)[0] != token:
            raise KeyError(f"{token!r} is not a single token of the {family} tokenizer")
        return ids[0]

    config, model_class, processor = spec.build(tokenizer, model_vocab, token_id, **sizes)
    stop_ids = [token_id(t) for t in spec.stop_tokens]
    pad_id = tokenizer.pad_token_id
    bos_id = config.get_text_config().bos_token_id  # Qwen tokenizers have no bos token; their configs name one
    config.eos_token_id, config.pad_token_id, config.bos_token_id = stop_ids[0], pad_id, bos_id
    config.dtype = torch.float32

    model = seeded_model(model_class, config, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=stop_ids, pad_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(out, safe_serialization=True)

    if processor is None:  # text-only
        tokenizer.save_pretrained(out)
        return out
    processor.save_pretrained(out)  # processor_config.json (+ tokenizer files, chat_template.jinja)
    # Standalone configs too, for loaders that read them directly.
    processor.image_processor.save_pretrained(out)  # preprocessor_config.json
    if getattr(processor, "video_processor", None) is not None:
        processor.video_processor.save_pretrained(out)  # video_preprocessor_config.json
    return out
