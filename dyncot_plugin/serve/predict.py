"""``dyncot-predict RECIPE.yaml [key=value ...] [--modes auto,always,never]``: a prediction recipe on vLLM.

Writes LLaMA-Factory's ``generated_predictions.jsonl`` (``prompt``, ``predict``, ``label`` decoded as its
``save_predictions`` does) plus ``think_prob`` per row, and ``dyncot_think.json`` beside it; with several modes,
one folder per mode under ``output_dir`` from one engine load. Prompts are LLaMA-Factory's for the recipe
(:mod:`dyncot_plugin.serve.templates`, tested against LLaMA-Factory); keys: :mod:`dyncot_plugin.serve.recipe`.

How each post is generated (the think decision of :mod:`dyncot_plugin.think`):

1. **probe**: the prompt with the tag forced for ``len(tag)`` tokens, returning vLLM's raw logprobs of those
   tokens: ``think_prob`` = P(whole tag | prompt), from the model's own logits (the tag's look-ahead included);
2. **generation**: ``always`` forces the tag as the first generated tokens, ``never`` bans it in text
   (:class:`~dyncot_plugin.serve.logits.DyncotThinkLogitsProcessor`); ``auto`` takes, per post, exactly what
   ``always`` or ``never`` generates (their rows when those modes run too, else it generates the chosen branch).
   Prefix caching keeps the prompt's KV from the probe, so the prompt is prefilled once.

A LoRA adapter (``adapter_name_or_path``, :mod:`dyncot_plugin.serve.adapters`) runs on vLLM's LoRA for the probe and
every generation alike; the threshold of ``auto`` is the recipe's, else the adapter's saved one, else the model's,
else 0.5 (:func:`think_threshold`).

Resume: posts go in chunks; a chunk's rows are appended to ``generated_predictions.jsonl.partial`` of every mode
(then flushed) only once all modes have them, so a killed run restarts at the first unfinished chunk; sampling uses a
per-post seed (``seed`` + row), so a resumed file equals an uninterrupted one. The final file replaces the partial
one atomically at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

from dyncot_plugin.cot_format import THINK_OPEN
from dyncot_plugin.serve import templates as T
from dyncot_plugin.serve.adapters import AdapterError, adapter_settings, check_adapter, check_vocabulary
from dyncot_plugin.serve.checkpoint import CheckpointError, vllm_checkpoint
from dyncot_plugin.serve.recipe import PredictConfig, RecipeError, Row, check_recipe, load_rows, read_recipe
from dyncot_plugin.think import THINK_MODES, THINK_SETTINGS_FILE, check_threshold, decide, prob_for_file, think_tag_ids

PARTIAL = ".partial"


def log(message: str) -> None:
    print(f"[dyncot-predict] {message}", file=sys.stderr, flush=True)


class Prompts:
    """Builds each row's prompt the LLaMA-Factory way: ids (images expanded by the template's mm plugin, then cut by
    ``cutoff_len``), the label ids, and the vLLM input (each image in the form vLLM's processor expands itself:
    :attr:`~dyncot_plugin.serve.templates.PromptTemplate.engine_image_text`)."""

    def __init__(self, config: PredictConfig, tokenizer: Any, processor: Any):
        self.config, self.tokenizer, self.processor = config, tokenizer, processor
        try:
            self.template = T.get_template(config.template, config.default_system)
        except KeyError as e:
            raise RecipeError(str(e.args[0])) from None
        image_token = self.template.image_token
        self.image_id = tokenizer.convert_tokens_to_ids(image_token) if image_token else None

    def build(self, row: Row) -> dict[str, Any]:
        from PIL import Image

        where = f"row {row.index}"
        images = []
        for path in row.images:
            try:
                with Image.open(path) as img:
                    img.load()
                    images.append(T.preprocess_image(img, self.template.mm_plugin, int(self.config.image_max_pixels),
                                                     int(self.config.image_min_pixels)))
            except OSError as e:
                raise RecipeError(f"{where}: cannot read image {path} ({e})") from None
        try:
            seqlens = T.image_seqlens(self.processor, images, self.template.mm_plugin) if images else []
            messages = T.expand_images(self.template, row.messages, seqlens)
            engine_messages = T.expand_images(self.template, row.messages, seqlens, expand=False)
        except ValueError as e:
            raise RecipeError(f"{where}: {e}") from None
        prompt, label = T.encode_oneturn(self.template, self.tokenizer, messages, row.system)
        if self.template.efficient_eos:
            label = label + [self.tokenizer.eos_token_id]
        source_len, target_len = T.infer_seqlen(len(prompt), len(label), int(self.config.cutoff_len))
        cut = len(prompt) - source_len  # cutoff_len removes the prompt's last tokens
        engine = prompt
        if images:
            last_image = max(i for i, t in enumerate(prompt) if t == self.image_id)
            if cut and source_len <= last_image + 1:
                raise RecipeError(f"{where}: cutoff_len {self.config.cutoff_len} cuts into the prompt's image "
                                  "tokens; raise cutoff_len")
            engine, _ = T.encode_oneturn(self.template, self.tokenizer, engine_messages, row.system)
            engine = engine[:len(engine) - cut]  # after the last image both tokenise alike (vLLM checks: run())
        return {"prompt_ids": prompt[:source_len], "label_ids": label[:target_len], "images": images,
                "engine_ids": engine}


def _sampling(config: PredictConfig, stop_ids: list[int], max_tokens: int, mode: str, seed: int,
              prob: float | None = None) -> Any:
    from vllm import SamplingParams

    extra = {"dyncot_think": mode}
    if prob is not None:
        extra["dyncot_think_prob"] = prob
    kwargs: dict[str, Any] = {"temperature": 0.0}
    if config.do_sample:
        kwargs = {"temperature": float(config.temperature), "top_p": float(config.top_p),
                  "top_k": int(config.top_k) if config.top_k else -1, "seed": seed}
    return SamplingParams(max_tokens=max_tokens, stop_token_ids=stop_ids, ignore_eos=True, detokenize=False,
                          repetition_penalty=float(config.repetition_penalty), extra_args=extra, **kwargs)


def _out_dirs(config: PredictConfig, modes: list[str]) -> dict[str, str]:
    base = str(config.output_dir)
    return {m: base if len(modes) == 1 else os.path.join(base, m) for m in modes}


def _committed(path: str) -> int:
    """Complete rows in a partial file (a torn last line is cut off)."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        data = f.read()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(path, "wb") as f:
            f.write(keep)
    return keep.count(b"\n")


def _truncate_rows(path: str, n: int) -> None:
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with open(path, "wb") as f:
        f.write(b"".join(lines[:n]))


def engine_memory(kv_cache_gib: float | None) -> dict[str, Any]:
    """The KV cache's size: ``kv_cache_gib`` where given; on CPU 1 GiB by default (vLLM's CPU backend otherwise
    reserves 92 % of the machine's memory and refuses to start beside other processes); else vLLM's own sizing."""
    from vllm.platforms import current_platform

    out: dict[str, Any] = {}
    if current_platform.is_cpu():
        kv_cache_gib = 1.0 if kv_cache_gib is None else kv_cache_gib
        out["enforce_eager"] = True  # no graph compilation: the engine starts in seconds, not minutes
    if kv_cache_gib is not None:
        out["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
    return out


def think_threshold(config: PredictConfig, model: str, adapter: str | None) -> tuple[float, str]:
    """(threshold of ``auto``, where it came from): the recipe's ``dyncot_think_threshold`` where it sets one, else
    the adapter's saved one, else the model's, else the default (:mod:`dyncot_plugin.think_settings`)."""
    if "dyncot_think_threshold" in config.given:
        return check_threshold(config.dyncot_think_threshold), "the recipe"
    try:
        settings = adapter_settings(model, adapter)
    except AdapterError as e:
        raise RecipeError(str(e)) from None
    return settings.threshold, settings.source


def run(config: PredictConfig, modes: list[str], chunk_size: int, kv_cache_gib: float | None = None) -> dict[str, str]:
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    from dyncot_plugin.serve.logits import DyncotThinkLogitsProcessor

    model = str(config.model_name_or_path)
    adapter = config.adapter_name_or_path  # one LoRA adapter (checked by check_recipe), or None
    threshold, source = think_threshold(config, model, adapter)
    log(f"threshold {threshold} (from {source})" + (f"; LoRA adapter {adapter}" if adapter else ""))
    rows = load_rows(config)
    if not rows:
        raise RecipeError(f"eval_dataset {config.eval_dataset!r}: no rows")
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=bool(config.trust_remote_code))
    lora = None
    if adapter:  # the same adapter for the look-ahead and every generation
        from vllm.lora.request import LoRARequest

        try:
            check_vocabulary(adapter, tokenizer)
        except AdapterError as e:
            raise RecipeError(str(e)) from None
        lora = LoRARequest("dyncot-adapter", 1, os.path.abspath(adapter))
    processor = None
    if any(r.images for r in rows):  # the Qwen-VL counts need the image processor only; the others the processor's
        qwen = T.get_template(str(config.template)).mm_plugin in T.QWEN_PLUGINS
        loader = AutoImageProcessor if qwen else AutoProcessor
        processor = loader.from_pretrained(model, trust_remote_code=bool(config.trust_remote_code))
    prompts = Prompts(config, tokenizer, processor)
    for row in rows:  # every row's images and prompt are checked before the engine loads
        prompts.build(row)
    tag = think_tag_ids(tokenizer)
    stop_ids = T.stop_token_ids(prompts.template, tokenizer)
    dirs = _out_dirs(config, modes)
    for mode, folder in dirs.items():
        final = os.path.join(folder, "generated_predictions.jsonl")
        if os.path.exists(final) and not config.overwrite_output_dir and not os.path.exists(final + PARTIAL):
            raise RecipeError(f"{final} exists (set overwrite_output_dir: true to replace it)")
        os.makedirs(folder, exist_ok=True)
    partials = {m: os.path.join(d, "generated_predictions.jsonl" + PARTIAL) for m, d in dirs.items()}
    done = min(_committed(p) for p in partials.values())
    for p in partials.values():
        _truncate_rows(p, done) if os.path.exists(p) else open(p, "wb").close()
    if done:
        log(f"resuming after {done} of {len(rows)} posts")

    max_images = max(len(r.images) for r in rows)
    dtype = "bfloat16" if (config.bf16 or config.pure_bf16) else "float16" if config.fp16 else "float32"
    max_new = int(config.max_new_tokens) if int(config.max_new_tokens or 0) > 0 else None
    max_len = int(config.cutoff_len) + (max_new or int(config.max_length))
    engine_kwargs: dict[str, Any] = dict(
        model=vllm_checkpoint(model, log), dtype=dtype, seed=int(config.seed), enable_prefix_caching=True, max_model_len=max_len,
        trust_remote_code=bool(config.trust_remote_code), logits_processors=[DyncotThinkLogitsProcessor],
        generation_config="vllm",
    )
    if max_images:
        engine_kwargs["limit_mm_per_prompt"] = {"image": max_images}
    if adapter:  # vLLM's own LoRA: its rank from adapter_config.json
        engine_kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=check_adapter(adapter).max_lora_rank)
    engine_kwargs.update(engine_memory(kv_cache_gib))
    started = time.time()
    llm = LLM(**engine_kwargs)
    log(f"engine ready in {time.time() - started:.1f} s ({dtype}); {len(rows)} posts, modes {','.join(modes)}")
    started, first = time.time(), done

    for start in range(done, len(rows), chunk_size):
        chunk = rows[start:start + chunk_size]
        built = [prompts.build(r) for r in chunk]
        inputs = []
        for b in built:
            p = TokensPrompt(prompt_token_ids=b["engine_ids"])
            if b["images"]:
                p["multi_modal_data"] = {"image": b["images"]}
            inputs.append(p)
        probe = _sampling(config, stop_ids, len(tag), "always", 0)
        probe.temperature, probe.logprobs = 0.0, 0
        outs = llm.generate(inputs, [probe] * len(inputs), use_tqdm=False, lora_request=lora)
        probs = []
        for b, out in zip(built, outs):
            if list(out.prompt_token_ids) != b["prompt_ids"]:
                raise RecipeError(f"row {chunk[len(probs)].index}: vLLM's prompt differs from LLaMA-Factory's "
                                  "(image token count); check image_max_pixels / the image processor")
            logprob = sum(step[t].logprob for step, t in zip(out.outputs[0].logprobs, tag))
            probs.append(math.exp(logprob))
        texts: dict[str, list[str]] = {}
        auto_thinks = [bool(decide("auto", p, threshold)) for p in probs]
        rows_of = {  # which posts each generating mode runs on: all of them, or the ones auto sends to it
            "always": range(len(chunk)) if "always" in modes else
            [i for i, t in enumerate(auto_thinks) if t and "auto" in modes],
            "never": range(len(chunk)) if "never" in modes else
            [i for i, t in enumerate(auto_thinks) if not t and "auto" in modes],
            "greedy": range(len(chunk)) if "greedy" in modes else [],
        }
        generated: dict[str, dict[int, list[int]]] = {}
        for mode, idx in rows_of.items():
            idx = list(idx)
            if not idx:
                generated[mode] = {}
                continue
            params = [_sampling(config, stop_ids, max_new or max(int(config.max_length) - len(built[i]["prompt_ids"]), 1),
                                mode, int(config.seed) + chunk[i].index) for i in idx]
            outs = llm.generate([inputs[i] for i in idx], params, use_tqdm=False, lora_request=lora)
            generated[mode] = {i: list(o.outputs[0].token_ids) for i, o in zip(idx, outs)}
        if "auto" in modes:
            generated["auto"] = {i: generated["always" if auto_thinks[i] else "never"][i] for i in range(len(chunk))}
        skip = bool(config.skip_special_tokens)
        for mode in modes:
            texts[mode] = [
                json.dumps({
                    "prompt": tokenizer.decode(b["prompt_ids"], skip_special_tokens=False),
                    "predict": tokenizer.decode(generated[mode][i], skip_special_tokens=skip),
                    "label": tokenizer.decode(b["label_ids"], skip_special_tokens=skip),
                    "think_prob": prob_for_file(probs[i]),
                }, ensure_ascii=False) + "\n"
                for i, b in enumerate(built)
            ]
        for mode in modes:  # a chunk is committed to every mode's file before the next starts
            with open(partials[mode], "a", encoding="utf-8") as f:
                f.write("".join(texts[mode]))
                f.flush()
                os.fsync(f.fileno())
        n = start + len(chunk)
        rate = (n - first) / max(time.time() - started, 1e-9)
        log(f"{n}/{len(rows)} posts ({rate:.2f} posts/s)")

    finals = {}
    for mode, folder in dirs.items():
        final = os.path.join(folder, "generated_predictions.jsonl")
        os.replace(partials[mode], final)
        settings = {"think": mode, "threshold": threshold, "tag": THINK_OPEN, "tag_ids": tag, "engine": "vllm",
                    "threshold_from": source}
        if adapter:
            settings["adapter"] = adapter
        with open(os.path.join(folder, THINK_SETTINGS_FILE), "w", encoding="utf-8") as f:
            f.write(json.dumps(settings, indent=2) + "\n")
        finals[mode] = final
        log(f"{mode}: {final}")
    return finals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dyncot-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a llamafactory-cli prediction recipe (YAML)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as llamafactory-cli takes them")
    parser.add_argument("--modes", help="comma-separated think modes (default: the recipe's dyncot_think); with "
                                        "several, one folder per mode under output_dir")
    parser.add_argument("--chunk-size", type=int, default=256, help="posts per committed chunk (default 256)")
    parser.add_argument("--kv-cache-gib", type=float, help="KV cache size in GiB (default: 1 on CPU, else vLLM's)")
    args = parser.parse_args(argv)
    try:
        recipe = read_recipe(args.recipe, args.overrides)
        config = check_recipe(recipe, args.recipe)
        modes = [m.strip() for m in (args.modes or str(config.dyncot_think)).split(",") if m.strip()]
        bad = [m for m in modes if m not in THINK_MODES]
        if bad or not modes or len(set(modes)) != len(modes):
            raise RecipeError(f"--modes {args.modes!r}: expected distinct modes among {', '.join(THINK_MODES)}")
        if args.chunk_size < 1:
            raise RecipeError("--chunk-size: expected a positive integer")
        if config.ignored:
            log(f"ignored keys (they do not change predictions): {', '.join(config.ignored)}")
        run(config, modes, args.chunk_size, args.kv_cache_gib)
    except (RecipeError, CheckpointError) as e:
        print(f"[dyncot-plugin] error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
