"""Qwen's real tokenizer offline (testing/qwen_vocab.py) and the tiny models built on it (`--tokenizer qwen`)."""

from __future__ import annotations

import json
import lzma
import math
from pathlib import Path

import pytest

from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config, toy_rows, write_sharegpt_dataset
from dyncot_plugin.testing.qwen_vocab import (
    ADDED_TOKENS,
    NUM_RANKS,
    PRETOKENIZE_REGEX,
    QWEN_MODEL_VOCAB,
    RANKS_FILE,
    _backend,
    _vocab_and_merges,
    load_ranks,
    qwen_tokenizer,
    qwen_tokenizer_dir,
)

REPO = Path(__file__).resolve().parents[1]

# The published ids (Qwen2-VL's 14 specials; Qwen2.5-VL adds 8; Qwen3-VL adds 4 more).
QWEN2_VL_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
    "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}  # fmt: skip
QWEN2_5_VL_IDS = QWEN2_VL_IDS | {
    "<tool_call>": 151657, "</tool_call>": 151658, "<|fim_prefix|>": 151659, "<|fim_middle|>": 151660,
    "<|fim_suffix|>": 151661, "<|fim_pad|>": 151662, "<|repo_name|>": 151663, "<|file_sep|>": 151664,
}  # fmt: skip
QWEN3_VL_IDS = QWEN2_5_VL_IDS | {"<tool_response>": 151665, "</tool_response>": 151666, "<think>": 151667,
                                 "</think>": 151668}  # fmt: skip
IDS = {"qwen2_vl": QWEN2_VL_IDS, "qwen2_5_vl": QWEN2_5_VL_IDS, "qwen3_vl": QWEN3_VL_IDS}

ROUND_TRIP = (
    "Sunset at the beach 🌅 #summer  with\tfriends\n\nCafé naïve 東京の桜 🇯🇵 Ελληνικά — “quotes” 12345 x²"
    "<think>The image shows a red circle.</think><answer>sunset; beach</answer>"
)


def test_ranks_are_the_pinned_file_and_the_tokenizer_encodes_as_tiktoken_does(tmp_path):
    """The vendored ranks load (sha256 checked) and the derived vocab + merges encode exactly as tiktoken with the
    same ranks and Qwen's regex does, on this repository's sources and docs plus non-Latin text."""
    import tiktoken  # a dependency of LLaMA-Factory

    ranks = load_ranks()
    assert len(ranks) == NUM_RANKS and sorted(ranks.values()) == list(range(NUM_RANKS))
    vocab, merges = _vocab_and_merges()  # bpe_vocab_and_merges(load_ranks()), once per process (the cache test too)
    assert len(vocab) == NUM_RANKS and len(merges) == NUM_RANKS - 256  # one merge per multi-byte token
    assert vocab["Hello"] == 9707 and vocab["Ġworld"] == 1879

    enc = tiktoken.Encoding("qwen", pat_str=PRETOKENIZE_REGEX, mergeable_ranks=ranks, special_tokens={})
    plain = _backend(vocab, merges, ())  # no added tokens: the text below names some of them
    files = sorted((REPO / "dyncot_plugin").rglob("*.py")) + sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
    text = "".join(f.read_text(encoding="utf-8") for f in files) + ROUND_TRIP * 3
    text += "한국어 텍스트, русский текст, العربية, हिन्दी, ñandú, 👍🏽👩‍👩‍👧, \r\n\u00a0\u3000 ''' 's 'LL 99999999"
    expected = enc.encode_ordinary(text)  # the text is NFC already, so the NFC normaliser changes nothing
    got = plain.encode(text, add_special_tokens=False).ids
    assert len(expected) > 100_000
    assert got == expected

    bad = tmp_path / "qwen.tiktoken.xz"
    raw = lzma.decompress(RANKS_FILE.read_bytes())
    bad.write_bytes(lzma.compress(raw.replace(b"IQ== 0", b"Ig== 0", 1), preset=0))
    with pytest.raises(ValueError, match=r"qwen\.tiktoken\.xz: sha256 of the uncompressed ranks is .* expected b2b1b8"):
        load_ranks(bad)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_each_family_has_its_added_tokens_at_the_published_ids(family):
    tok = qwen_tokenizer(family)
    assert type(tok).__name__.startswith("Qwen2Tokenizer")
    assert len(tok) == NUM_RANKS + len(IDS[family]) <= QWEN_MODEL_VOCAB
    assert tok.get_added_vocab() == IDS[family]
    assert {t: tok.encode(t, add_special_tokens=False) for t in IDS[family]} == {t: [i] for t, i in IDS[family].items()}
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert set(tok.all_special_tokens) == {t for t, special in ADDED_TOKENS[family] if special}
    assert tok.encode("Hello, world", add_special_tokens=False) == [9707, 11, 1879]

    # <think> is the three tokens <th ink > before Qwen3, and Qwen's pre-tokenizer glues ">" to the next word.
    cot = tok.tokenize("<think>The image")
    if family == "qwen3_vl":
        assert cot == ["<think>", "The", "Ġimage"]
    else:
        assert tok.tokenize("<think>") == ["<th", "ink", ">"]
        assert tok.encode("<think>", add_special_tokens=False) == [13708, 766, 29]
        assert cot == ["<th", "ink", ">The", "Ġimage"]

    # Round trip; the special=True tokens go with skip_special_tokens, the special=False ones (<tool_call>, Qwen3's
    # <think>) stay, as on the real checkpoints.
    ids = tok.encode(ROUND_TRIP, add_special_tokens=False)
    assert tok.decode(ids) == ROUND_TRIP
    kept = [t for t, special in ADDED_TOKENS[family] if not special]
    wrapped = [IDS[family]["<|im_start|>"]] + ids + [tok.convert_tokens_to_ids(t) for t in kept]
    wrapped += [IDS[family]["<|im_end|>"], IDS[family]["<|endoftext|>"]]
    assert tok.decode(wrapped, skip_special_tokens=True) == ROUND_TRIP + "".join(kept)
    assert tok.decode(wrapped) == "<|im_start|>" + ROUND_TRIP + "".join(kept) + "<|im_end|><|endoftext|>"


def test_the_built_tokenizer_is_cached_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNCOT_CACHE_DIR", str(tmp_path / "cache"))
    first = qwen_tokenizer_dir("qwen3_vl")
    assert first.is_relative_to(tmp_path / "cache")
    stamp = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert set(stamp) == {"tokenizer.json", "tokenizer_config.json"}
    assert qwen_tokenizer_dir("qwen3_vl") == first
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamp  # not rebuilt
    assert [p.name for p in first.parent.iterdir()] == ["qwen3_vl"]  # no temporary folder left behind
    with pytest.raises(ValueError, match="is for qwen2_vl, qwen2_5_vl, qwen3_vl, not 'llava'"):
        qwen_tokenizer_dir("llava")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_the_shared_real_vocab_models_load_with_their_ids(family, real_vocab_model, tmp_path):
    """The conftest fixtures: processor, config and generation config all name the published ids; a forward gives
    logits over the 151,936-row vocabulary; an image expands to image tokens."""
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from dyncot_plugin.testing.lf_runner import make_image

    path = real_vocab_model(family)
    proc = AutoProcessor.from_pretrained(path)
    tok = proc.tokenizer
    assert tok.get_added_vocab() == IDS[family]
    assert tok.encode("Hello, world", add_special_tokens=False) == [9707, 11, 1879]
    assert tok.encode("<think>", add_special_tokens=False) == ([151667] if family == "qwen3_vl" else [13708, 766, 29])
    config = AutoConfig.from_pretrained(path)
    assert config.get_text_config().vocab_size == QWEN_MODEL_VOCAB
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    gen = json.loads((Path(path) / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643] and gen["pad_token_id"] == 151643

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Keyphrases?"}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = proc(images=[Image.open(make_image(tmp_path / "a.png"))], text=[prompt], return_tensors="pt")
    assert int((batch["input_ids"] == 151655).sum()) == 4
    assert batch["input_ids"][0, -3:].tolist() == [151644, 77091, 198]  # <|im_start|> "assistant" "\n"
    model = AutoModelForImageTextToText.from_pretrained(path)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == QWEN_MODEL_VOCAB and torch.isfinite(logits).all()


def test_cli_refuses_what_does_not_apply_to_the_qwen_tokenizer(tmp_path, capsys):
    from dyncot_plugin.cli.tiny_model import main

    refused = {
        ("--tokenizer", "qwen", "--vocab-size", "512"): "--vocab-size cannot be used with --tokenizer qwen",
        ("--tokenizer", "qwen", "--corpus-from", str(tmp_path)): "--corpus-from cannot be used with --tokenizer qwen",
        ("--tokenizer", "qwen", "--vocab-size", "512", "--corpus-from", str(tmp_path)): "--vocab-size and --corpus-from",
        ("--tokenizer", "qwen", "--family", "llava"): "--tokenizer qwen is for --family qwen2_vl, qwen2_5_vl, "
                                                      "qwen3_vl, not --family llava",
        ("--family", "gemma3", "--hidden-size", "32"): "--hidden-size and --num-layers are for --family qwen2_vl",
        ("--tokenizer", "qwen", "--hidden-size", "40"): "--hidden-size must be a positive multiple of 16, got 40",
    }  # fmt: skip
    for argv, message in refused.items():
        with pytest.raises(SystemExit) as exc:
            main([str(tmp_path / "refused"), *argv])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "refused").exists()

    from dyncot_plugin.testing.tiny_families import build_tiny_model

    with pytest.raises(ValueError, match="tokenizer='qwen' is for the families qwen2_vl, qwen2_5_vl, qwen3_vl, not 'gemma3'"):
        build_tiny_model(tmp_path / "refused", "gemma3", tokenizer="qwen")
    with pytest.raises(ValueError, match="unknown tokenizer 'llama'; known: tiny, qwen"):
        build_tiny_model(tmp_path / "refused", "qwen2_vl", tokenizer="llama")
    with pytest.raises(ValueError, match="vocab_size is for the tiny tokenizer"):
        build_tiny_model(tmp_path / "refused", "qwen3_vl", tokenizer="qwen", vocab_size=512)


@pytest.mark.slow
def test_cli_builds_any_qwen_family_at_any_width(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from dyncot_plugin.cli.tiny_model import main

    out = tmp_path / "q25"
    assert main([str(out), "--family", "qwen2_5_vl", "--tokenizer", "qwen", "--hidden-size", "32",
                 "--num-layers", "1"]) == 0  # fmt: skip
    text = AutoConfig.from_pretrained(out).get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (32, 1, QWEN_MODEL_VOCAB)
    assert AutoTokenizer.from_pretrained(out).get_added_vocab() == QWEN2_5_VL_IDS
    # --hidden-size with the tiny tokenizer too, on every Qwen family.
    assert main([str(tmp_path / "q3tiny"), "--family", "qwen3_vl", "--hidden-size", "32"]) == 0
    assert AutoConfig.from_pretrained(tmp_path / "q3tiny").get_text_config().hidden_size == 32


@pytest.mark.slow
def test_llamafactory_trains_the_real_vocab_qwen2vl(qwen2vl_real_vocab_dir, tmp_path):
    """A 1-step LLaMA-Factory SFT (template qwen2_vl) on the real-vocabulary model: the first loss is that of a
    near-uniform guess over all 151,936 rows, no token is added or resized, the saved tokenizer keeps the ids."""
    from transformers import AutoConfig, AutoTokenizer

    data_dir = tmp_path / "data"
    write_sharegpt_dataset(data_dir, "toy", toy_rows(data_dir, n=4))
    out = tmp_path / "out"
    proc = run_llamafactory("train", tiny_sft_config(qwen2vl_real_vocab_dir, data_dir, "toy", out, max_steps=1),
                            workdir=tmp_path)  # fmt: skip
    logs = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    (loss,) = [row["loss"] for row in logs if "loss" in row]
    assert abs(loss - math.log(QWEN_MODEL_VOCAB)) < 0.5, loss
    assert "New tokens have been added" not in proc.stdout + proc.stderr
    assert AutoConfig.from_pretrained(out).get_text_config().vocab_size == QWEN_MODEL_VOCAB
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.get_added_vocab() == QWEN2_VL_IDS and saved.tokenize("<think>") == ["<th", "ink", ">"]
