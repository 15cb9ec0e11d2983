"""Random-init models of real widths and MMKP-shaped rows for the benchmark scripts (imports as ``_models``).

The tokenizer and processor come from the offline tiny builders (``dyncot_plugin.testing``); the model is rebuilt at
the shape's sizes, so nothing is downloaded. Rows are built with the library's own pieces: the CMKP converter's row
format and prompt (``tasks.mmkp.convert``), ``cot_format.build_cot`` and ``io.datasets.update_dataset_info``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# Model shapes. `qwen2vl-2b` is Qwen2-VL-2B-Instruct's config (2.21 B parameters: Qwen2-1.5B with tied embeddings +
# a 675 M ViT). `mid` keeps 2B's proportions at a size 2 CPU cores train in a few seconds a step: per text token the
# decoder has ~40 M non-embedding weights, the vision tower ~0.48x that per patch (2B: 629 M vs 1,310 M) and the
# LM head ~0.18x (2B: 233 M vs 1,310 M; hence 14,336 ids), so the selection pass costs about the share of a step it
# costs at 2B. `tiny` is for smoke runs. `qwen2_5vl-7b` is Qwen2.5-VL-7B-Instruct's config (8.3 B parameters; windowed
# ViT with a gated MLP), `tiny-qwen2_5vl` its smoke-run sibling.
SHAPES = {
    "tiny": dict(family="qwen2_vl", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024,
                 vision_depth=1, vision_embed=32, vision_heads=2, mlp_ratio=2, tie=True),
    "mid": dict(family="qwen2_vl", hidden=512, layers=8, heads=8, kv_heads=2, intermediate=2816, vocab=14336,
                vision_depth=8, vision_embed=448, vision_heads=7, mlp_ratio=4, tie=True),
    "qwen2vl-2b": dict(family="qwen2_vl", hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960,
                       vocab=151936, vision_depth=32, vision_embed=1280, vision_heads=16, mlp_ratio=4, tie=True),
    "tiny-qwen2_5vl": dict(family="qwen2_5_vl", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                           vocab=1024, vision_depth=2, vision_embed=32, vision_heads=2, vision_intermediate=64,
                           fullatt_every=2, tie=False),
    "qwen2_5vl-7b": dict(family="qwen2_5_vl", hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944,
                         vocab=152064, vision_depth=32, vision_embed=1280, vision_heads=16, vision_intermediate=3420,
                         fullatt_every=8, tie=False),
}


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    hw = (half - max(1, half // 4)) // 2  # 64 -> [8, 12, 12], 128 -> [16, 24, 24] (Qwen2-VL's)
    return [half - 2 * hw, hw, hw]


def _set_pixel_limits(out: Path, min_pixels: int, max_pixels: int) -> None:
    """The image/video processors' pixel limits, in every processor file that states them."""
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json"):
        path = out / name
        if not path.is_file():
            continue
        cfg = json.loads(path.read_text())
        for part in [cfg, cfg.get("image_processor"), cfg.get("video_processor")]:
            if isinstance(part, dict) and "size" in part:
                part["size"] = dict(size)
                for key in ("min_pixels", "max_pixels"):
                    part.pop(key, None)
        path.write_text(json.dumps(cfg, indent=2))


def build_model_dir(out: Path, shape: dict, vocab: int, max_pixels: int, seed: int, weights: bool, device: str,
                    layers: int | None = None, vision_depth: int | None = None) -> Path:
    """Tokenizer + processor of the tiny builder, with a random model of ``shape`` (when ``weights``); bf16 on CUDA,
    fp32 on CPU. ``layers`` / ``vision_depth`` cut the depth (widths stay the shape's)."""
    from transformers import AutoTokenizer

    family = shape["family"]
    if family == "qwen2_vl":
        from dyncot_plugin.testing.tiny_model import build_tiny_qwen2vl

        build_tiny_qwen2vl(out, seed=seed, num_layers=1, min_pixels=56 * 56, max_pixels=max_pixels)
    else:
        from dyncot_plugin.testing.tiny_families import build_tiny_model

        build_tiny_model(out, family, seed=seed)
        _set_pixel_limits(out, 56 * 56, max_pixels)
    if not weights:
        return out
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    n_tokens = len(AutoTokenizer.from_pretrained(out))
    if vocab < n_tokens:
        raise SystemExit(f"--vocab-size {vocab} is below the tokenizer's {n_tokens} tokens")
    n_layers, depth = layers or shape["layers"], vision_depth or shape["vision_depth"]
    cfg = json.loads((out / "config.json").read_text())
    text = cfg["text_config"]
    text.update(hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                num_hidden_layers=n_layers, num_attention_heads=shape["heads"],
                num_key_value_heads=shape["kv_heads"], vocab_size=vocab, max_window_layers=n_layers,
                layer_types=["full_attention"] * n_layers, tie_word_embeddings=shape["tie"],
                max_position_embeddings=32768)
    text["rope_parameters"]["mrope_section"] = _mrope_section(shape["hidden"] // shape["heads"])
    vision = cfg["vision_config"]
    if family == "qwen2_vl":
        vision.update(depth=depth, embed_dim=shape["vision_embed"], num_heads=shape["vision_heads"],
                      mlp_ratio=shape["mlp_ratio"], hidden_size=shape["hidden"])
    else:  # Qwen2.5-VL: windowed attention except every `fullatt_every`-th block (7, 15, 23, 31 at 32 blocks)
        every = shape["fullatt_every"]
        vision.update(depth=depth, hidden_size=shape["vision_embed"], num_heads=shape["vision_heads"],
                      intermediate_size=shape["vision_intermediate"], out_hidden_size=shape["hidden"],
                      fullatt_block_indexes=[i for i in range(depth) if i % every == every - 1] or [depth - 1])
    cfg["tie_word_embeddings"] = shape["tie"]
    big = device == "cuda"
    cfg["dtype"] = "bfloat16" if big else "float32"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    config = AutoConfig.from_pretrained(out)
    model_class = AutoModelForImageTextToText._model_mapping[type(config)]
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.random.set_rng_state(state)
    model = model.to(torch.bfloat16 if big else torch.float32)
    (out / "model.safetensors").unlink(missing_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    del model
    return out


def write_rows(data_dir: Path, model_dir: Path, n: int, name: str, *, prompt_len: tuple[int, int],
               answer_len: tuple[int, int], cot_len: tuple[int, int], image_size: tuple[int, int],
               seed: int, eval_rows: int = 0) -> str:
    """``n`` MMKP-shaped rows (image, post, plain answer, CoT) with token lengths drawn from the ranges, as the CMKP
    converter writes them, declared as dataset ``name`` (and the last ``eval_rows`` of them also as
    ``<name>_eval``, a held-out split for the training-time evaluation)."""
    from transformers import AutoTokenizer

    from dyncot_plugin.cot_format import ANSWER_SEP, build_cot
    from dyncot_plugin.io.datasets import update_dataset_info
    from dyncot_plugin.io.files import atomic_write_json
    from dyncot_plugin.tasks.mmkp.convert import DEFAULT_PROMPT_TEMPLATE, PromptTemplate, make_row
    from dyncot_plugin.testing.lf_runner import make_image

    tok = AutoTokenizer.from_pretrained(model_dir)
    words = sorted({t[1:] for t in tok.get_vocab() if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 3})
    rng = random.Random(seed)
    prompt = PromptTemplate(DEFAULT_PROMPT_TEMPLATE)

    def draw_words(n_tokens: int, sep: str = " ") -> list[str]:
        out: list[str] = []
        while len(tok(sep.join(out))["input_ids"]) < n_tokens:
            out.append(rng.choice(words))
        return out

    base = len(tok(prompt.render("", with_image=False))["input_ids"])
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        keyphrases = draw_words(rng.randint(*answer_len), sep=ANSWER_SEP)
        answer = ANSWER_SEP.join(keyphrases)
        think = " ".join(draw_words(max(1, rng.randint(*cot_len) - len(tok(answer)["input_ids"]) - 4)))
        post = " ".join(draw_words(max(1, rng.randint(*prompt_len) - base)))
        image = make_image(data_dir / f"img_{i}.png", seed=i, size=image_size)
        row = make_row(f"bench_{i:05d}", post, keyphrases, prompt.render(post), images=[image])
        row["cot"] = build_cot(think, answer)
        rows.append(row)
    splits = {name: rows} | ({f"{name}_eval": rows[-eval_rows:]} if eval_rows else {})
    for split, split_rows in splits.items():
        atomic_write_json(data_dir / f"{split}.json", split_rows, indent=1)
        update_dataset_info(data_dir, split, f"{split}.json")
    return name
