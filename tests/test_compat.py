"""dyncot_plugin.compat: each decision agrees with what the installed transformers does (the same tests pass on the
pinned stack, transformers 5.5, and on the low end, 4.57: ``.ci/run`` runs them on both)."""

from __future__ import annotations

import pytest
import torch

from dyncot_plugin import compat
from dyncot_plugin.train.families import IGNORE_INDEX
from dyncot_plugin.train.selection import answer_nll, answer_positions


@pytest.fixture(scope="module")
def model_and_batch(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = torch.tensor([tokenizer.encode("Hello world! The beach at sunset #summer #beach")] * 2)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 6:] = ids[0, 6:]
    labels[1, 9:] = ids[1, 9:]
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels


@torch.no_grad()
def test_logits_to_keep_is_passed_only_where_forward_computes_logits_there_alone(model_and_batch):
    model, batch, labels = model_and_batch
    positions = answer_positions(labels)
    kwargs = compat.logits_to_keep_kwargs(model, positions)
    logits = model(**batch, **kwargs).logits
    full = model(**batch).logits
    assert logits.size(1) == (positions.numel() if kwargs else batch["input_ids"].size(1))
    # the selection loss is the same either way, and it is the loss of the full-length logits
    expected = answer_nll(full, labels)
    assert torch.equal(answer_nll(logits, labels, positions), expected)
    assert torch.equal(answer_nll(full, labels, positions), expected)
    assert torch.isfinite(expected).all()


@torch.no_grad()
def test_generate_accepts_agrees_with_generates_own_validation(model_and_batch):
    model, batch, _ = model_and_batch
    for key in ("mm_token_type_ids", "token_type_ids", "image_grid_thw", "not_a_model_input"):
        extra = {key: torch.zeros_like(batch["input_ids"])}
        try:
            model.generate(**batch, **extra, max_new_tokens=1, do_sample=False)
            accepted = True
        except ValueError as error:
            assert "model_kwargs" in str(error) and key in str(error)
            accepted = False
        assert compat.generate_accepts(model, key) == accepted, key
    assert not compat.generate_accepts(model, "not_a_model_input")


def test_unwrap_model_reaches_the_transformers_model_under_peft(model_and_batch):
    from peft import LoraConfig, get_peft_model

    model, _, _ = model_and_batch
    import copy

    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"]))
    assert type(compat.unwrap_model(wrapped)) is type(model)
    assert compat.forward_accepts(wrapped, "pixel_values") and not compat.forward_accepts(wrapped, "no_such_input")


def test_rope_kwargs_configure_the_rope_base_and_sections(tmp_path):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLTextConfig

    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1,
            **compat.rope_kwargs(Qwen2VLTextConfig, 1234.0, mrope_section=[2, 3, 3])}
    config = Qwen2VLConfig(text_config=text, vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32,
                                                            "num_heads": 2})
    config.save_pretrained(tmp_path)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_pretrained(tmp_path))
    rotary = model.model.language_model.rotary_emb
    head_dim = 16
    expected = 1.0 / (1234.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    assert torch.allclose(rotary.inv_freq, expected)
    attention = model.model.language_model.layers[0].self_attn
    sections = getattr(attention, "rope_scaling", None) or getattr(attention.config, "rope_parameters", {})
    assert list(sections["mrope_section"]) == [2, 3, 3]


def test_bpe_tokenizer_and_model_specific_tokens_survive_save_and_load(tmp_path):
    from transformers import AddedToken, AutoTokenizer

    from dyncot_plugin.testing.tiny_model import _train_tokenizer

    tokenizer = _train_tokenizer(300, seed=0)
    before = list(tokenizer.all_special_tokens)
    compat.add_special_tokens(tokenizer, [AddedToken("<image_x>", special=True, normalized=False)])
    compat.set_model_specific_tokens(tokenizer, {"image_token": "<image_x>"})
    text = "Hello <image_x> world <think>a</think>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.encode(text, add_special_tokens=False) == ids
    assert loaded.decode(ids) == text
    assert loaded.image_token == "<image_x>"
    assert loaded.image_token_id == tokenizer.convert_tokens_to_ids("<image_x>") and loaded.image_token_id in ids
    assert set(before) | {"<image_x>"} <= set(loaded.all_special_tokens)  # added beside, nothing replaced


def test_a_saved_checkpoints_keys_rename_to_the_modules_own(model_and_batch, tmp_path):
    """What full fine-tuning resume loads (``train/checkpoint.py``): save_pretrained writes Qwen2-VL under its legacy
    names on both series, and the renaming brings every key back to the module's."""
    import safetensors.torch

    from dyncot_plugin.train.checkpoint import to_model_keys

    model, _, _ = model_and_batch
    model.save_pretrained(tmp_path)
    saved = safetensors.torch.load_file(str(tmp_path / "model.safetensors"))
    own = model.state_dict()
    assert set(saved) != set(own)  # the file's names are not the module's: a plain load_state_dict would miss them
    renamed = to_model_keys(model, saved)
    assert set(renamed) == set(own)
    assert all(torch.equal(renamed[k], own[k]) for k in own)
