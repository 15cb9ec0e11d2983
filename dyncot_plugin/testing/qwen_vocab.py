"""Qwen's real tokenizer, offline: the 151,643 byte-level BPE ranks that Qwen2, Qwen2.5 and Qwen3 share, plus each
vision-language family's added tokens at their published ids.

Why: on the tiny tokenizer of :mod:`~dyncot_plugin.testing.tiny_model` ``<think>`` is one token; on Qwen2-VL's and
Qwen2.5-VL's real vocabulary it is three (``<th`` ``ink`` ``>``) and Qwen's pre-tokenizer glues ``>`` to the next
word. Tests that decide or suppress thinking must see that, without a hub download.

Where the ranks come from: ``qwen_vocab_data/qwen.tiktoken.xz`` is ``qwen_agent/utils/qwen.tiktoken`` of the
``qwen-agent`` 0.0.34 wheel (Apache-2.0; see ``qwen_vocab_data/NOTICE``), xz-compressed unchanged; its sha256 is
checked on every read. Vendored rather than fetched, so a fresh clone tests offline with one command.

How it becomes a Hugging Face tokenizer: rank ``r`` is id ``r``; each multi-byte token's merge is the pair that
byte-level BPE with only lower ranks reaches (one merge per token: 151,387, as in Qwen2's ``merges.txt``); Qwen2's
pre-tokenizer regex, NFC normaliser and ByteLevel pre-tokenizer / decoder / post-processor, as in Qwen2's
``tokenizer.json``. Then the family's added tokens (:data:`ADDED_TOKENS`) at ids 151643 onwards, with the special
flags of the real ``tokenizer_config.json`` files. Deriving the merges takes ~2 s, so the result is cached on disk
(:func:`cache_dir`), keyed by the ranks file's hash and this module's source (a change here rebuilds it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "ADDED_TOKENS",
    "NUM_RANKS",
    "QWEN_FAMILIES",
    "QWEN_MODEL_VOCAB",
    "RANKS_FILE",
    "cache_dir",
    "load_ranks",
    "qwen_tokenizer",
    "qwen_tokenizer_dir",
]

RANKS_FILE = Path(__file__).parent / "qwen_vocab_data" / "qwen.tiktoken.xz"
# sha256 of the uncompressed file (as listed in qwen-agent 0.0.34's RECORD).
RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
NUM_RANKS = 151_643
QWEN_MODEL_VOCAB = 151_936  # the embedding rows of Qwen2-VL-2B, Qwen2.5-VL-3B, Qwen3-VL-2B (ids past the tokens unused)

# Qwen2's pre-tokenizer (its tokenizer.json / transformers' Qwen2Tokenizer): single digits, no letter+number glue.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# (token, special) in id order from 151643, as in each family's real tokenizer_config.json `added_tokens_decoder`.
# special=False tokens survive decode(skip_special_tokens=True) (Qwen3's <think>/</think> do; Qwen2-VL has none).
_QWEN2_VL = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
)
_QWEN2_5_VL = _QWEN2_VL + (
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
_QWEN3_VL = _QWEN2_5_VL + (
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
ADDED_TOKENS: dict[str, tuple[tuple[str, bool], ...]] = {
    "qwen2_vl": _QWEN2_VL,
    "qwen2_5_vl": _QWEN2_5_VL,
    "qwen3_vl": _QWEN3_VL,
}
QWEN_FAMILIES = tuple(ADDED_TOKENS)


def load_ranks(path: str | Path = RANKS_FILE) -> dict[bytes, int]:
    """The BPE ranks (token bytes -> rank) of the vendored ``qwen.tiktoken``; raises ``ValueError`` if its sha256
    is not the pinned one (a damaged or replaced file)."""
    raw = lzma.decompress(Path(path).read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != RANKS_SHA256:
        raise ValueError(f"{path}: sha256 of the uncompressed ranks is {digest}, expected {RANKS_SHA256}")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def bpe_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocabulary (token string -> id = rank) and merges (in rank order) equivalent to ``ranks``.

    A token's merge is the last step of BPE on its own bytes with only lower ranks allowed, which must end in
    exactly two parts for a well-formed rank file.
    """
    byte_char = _byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        vocab[text(token)] = rank
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best_rank, best_at = rank, -1
            for i in range(len(parts) - 1):
                pair_rank = ranks.get(parts[i] + parts[i + 1])
                if pair_rank is not None and pair_rank < best_rank:
                    best_rank, best_at = pair_rank, i
            if best_at < 0:
                break
            parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
        if len(parts) != 2:
            raise ValueError(f"rank {rank} ({token!r}) is not reachable by merging two lower-ranked tokens")
        merges.append((text(parts[0]), text(parts[1])))
    return vocab, merges


def _backend(vocab: dict[str, int], merges: list[tuple[str, str]], added: tuple[tuple[str, bool], ...]) -> Any:
    """A ``tokenizers.Tokenizer`` laid out like Qwen2's ``tokenizer.json``, with ``added`` at ids len(vocab)..."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                   fuse_unk=False, byte_fallback=False)
    )  # fmt: skip
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for content, special in added:  # one at a time: each takes the next id, in the published order
        token = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        if special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
    return tok


def _tokenizer_config(added: tuple[tuple[str, bool], ...]) -> dict[str, Any]:
    """``tokenizer_config.json`` as Qwen's instruct checkpoints write it (eos ``<|im_end|>``, pad ``<|endoftext|>``)."""
    decoder = {
        str(NUM_RANKS + i): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": special}
        for i, (content, special) in enumerate(added)
    }  # fmt: skip
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        # Qwen lists its special tokens but <|endoftext|> (the pad token) here.
        "additional_special_tokens": [c for c, special in added if special and c != "<|endoftext|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def cache_dir() -> Path:
    """Where built tokenizers are kept: ``$DYNCOT_CACHE_DIR``, else ``$XDG_CACHE_HOME/dyncot-plugin``, else
    ``~/.cache/dyncot-plugin``."""
    if os.environ.get("DYNCOT_CACHE_DIR"):
        return Path(os.environ["DYNCOT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dyncot-plugin"


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return bpe_vocab_and_merges(load_ranks())


def _write_dir(final: Path, family: str) -> None:
    """Write the family's tokenizer folder under a temporary name, then rename it into place (concurrent builders
    never see a half-written folder; the loser of a race drops its copy)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        added = ADDED_TOKENS[family]
        _backend(*_vocab_and_merges(), added).save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(added), indent=2), encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "tokenizer_config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def qwen_tokenizer_dir(family: str) -> Path:
    """A folder with the ``tokenizer.json`` and ``tokenizer_config.json`` of ``family``'s real tokenizer (built on
    first use, then taken from :func:`cache_dir`; built in a temporary folder if the cache is not writable)."""
    if family not in ADDED_TOKENS:
        raise ValueError(f"the real Qwen vocabulary is for {', '.join(QWEN_FAMILIES)}, not {family!r}")
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = f"qwen-tokenizer-{RANKS_SHA256[:12]}-{source[:12]}"
    final = cache_dir() / key / family
    if not (final / "tokenizer_config.json").exists():
        try:
            _write_dir(final, family)
        except OSError:  # read-only home, full disk: build where we can
            final = Path(tempfile.mkdtemp(prefix="dyncot-qwen-tokenizer-")) / family
            _write_dir(final, family)
    return final


def qwen_tokenizer(family: str, chat_template: str | None = None) -> Any:
    """``family``'s real tokenizer (a transformers ``Qwen2Tokenizer``), loaded with ``from_pretrained`` from
    :func:`qwen_tokenizer_dir`, with ``chat_template`` set when given."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir(family)))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
