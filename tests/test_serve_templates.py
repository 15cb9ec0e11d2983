"""dyncot_plugin.serve.templates (the torch-free copy of LLaMA-Factory's prompt slots that dyncot-predict uses) gives
LLaMA-Factory's own token ids: every row of TEMPLATES against ``Template.encode_oneturn`` and the Qwen-VL mm plugin,
on the tiny tokenizer and Qwen's real vocabulary. Fast (no model forward)."""

from __future__ import annotations

import copy

import pytest
from PIL import Image

from dyncot_plugin.serve import templates as T

MESSAGES = [
    [{"role": "user", "content": "<image>Post: sunny day at the beach\nImage: (none)"}, {"role": "assistant", "content": "beach; sun"}],
    [{"role": "user", "content": "no image here <think> odd"}, {"role": "assistant", "content": "<think>The x</think>"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "<image>c<image>"},
     {"role": "assistant", "content": ""}],
]


def _lf(template_name: str, tokenizer, default_system=None):
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    return get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template_name, default_system=default_system))


def _image(w, h, seed):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 7 + seed) % 256, (y * 13) % 256, (x * y + seed) % 256) for y in range(h) for x in range(w)])
    return img


@pytest.mark.slow  # builds the tiny models (the Qwen-vocabulary ones take ~30 s each)
@pytest.mark.parametrize("vocab", ["tiny", "qwen"])
@pytest.mark.parametrize("name", sorted(T.TEMPLATES))
def test_every_template_row_encodes_as_llamafactory(name, vocab, tiny_model_dir, real_vocab_model):
    from transformers import AutoProcessor

    model_dir = tiny_model_dir if vocab == "tiny" else real_vocab_model("qwen3_vl" if "qwen3" in name else "qwen2_vl")
    processor = AutoProcessor.from_pretrained(model_dir)
    ours_tok = AutoProcessor.from_pretrained(model_dir).tokenizer
    lf_template = _lf(name, processor.tokenizer)
    processor.image_max_pixels, processor.image_min_pixels = 64 * 64, 32 * 32
    images = [_image(90, 50, 1), _image(20, 300, 2)]
    for system in (None, "You tag posts."):
        for messages in MESSAGES:
            n_img = sum(m["content"].count("<image>") for m in messages)
            if n_img and lf_template.mm_plugin.image_token is None:
                continue
            imgs = images[:n_img]
            lf_messages = lf_template.mm_plugin.process_messages(copy.deepcopy(messages), imgs, [], [], processor)
            lf_prompt, lf_response = lf_template.encode_oneturn(processor.tokenizer, lf_messages, system)
            template = T.get_template(name)
            pre = [T.preprocess_image(i, template.mm_plugin, 64 * 64, 32 * 32) for i in imgs]
            ours = T.expand_images(template, messages, T.image_seqlens(processor.image_processor, pre))
            prompt, response = T.encode_oneturn(template, ours_tok, ours, system)
            assert (prompt, response) == (lf_prompt, lf_response), (name, system, messages)
    assert T.stop_token_ids(T.get_template(name), ours_tok)[0] == processor.tokenizer.eos_token_id


def test_default_system_override_and_truncation_match_llamafactory(tiny_model_dir):
    from llamafactory.data.processor.processor_utils import infer_seqlen
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lf = _lf("qwen2_vl", tok, default_system="Be brief.")
    messages = MESSAGES[1]
    assert T.encode_oneturn(T.get_template("qwen2_vl", "Be brief."), tok, messages) == lf.encode_oneturn(tok, messages)
    for s in range(0, 40, 3):
        for t in range(0, 40, 5):
            for cutoff in (1, 7, 16, 33, 64):
                assert T.infer_seqlen(s, t, cutoff) == infer_seqlen(s, t, cutoff)


def test_preprocess_image_is_llamafactorys():
    from llamafactory.data.mm_plugin import get_mm_plugin

    plugin = get_mm_plugin("qwen2_vl", image_token="<|image_pad|>")
    for size in ((300, 200), (10, 900), (3000, 12), (5, 5)):
        img = _image(*size, 3)
        ours = T.preprocess_image(img, "qwen2_vl", 128 * 128, 32 * 32)
        theirs = plugin._preprocess_image(img, image_max_pixels=128 * 128, image_min_pixels=32 * 32)
        assert ours.size == theirs.size and ours.tobytes() == theirs.tobytes()


def test_unknown_template_is_refused_by_name():
    with pytest.raises(KeyError, match="llava"):
        T.get_template("llava")
