"""The cost of a batch before it is submitted: request count, an estimate of its prompt tokens, and the price.

Text is counted at about 4 characters a token (no tokenizer of a hosted model runs offline); images by the
teacher's image-token rule where :data:`IMAGE_TOKEN_RULES` knows the model, else they are left out and the
estimate says so. Completion tokens are bounded by ``--max-tokens`` per request, and estimated from the replies
already in the cache where there are some. The actual cost, from the usage each reply reports, is in the summary
once the results are read (:func:`dyncot_plugin.teacher.report.summary`).
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import re
from collections.abc import Callable
from typing import Any

from dyncot_plugin.teacher.report import cost

CHARS_PER_TOKEN = 4  # English text in GPT-4o's and Qwen's tokenizers: about 4 characters a token
MESSAGE_OVERHEAD = 4  # tokens a chat template adds around each message


def _tiles(base: int, tile: int) -> Callable[[int, int, str | None], int]:
    """OpenAI's tile rule: ``detail: low`` costs ``base``; otherwise the image is fit into 2048x2048, its short side
    scaled down to 768, and each 512px tile costs ``tile`` more. ``auto`` is counted as high (an upper bound)."""

    def rule(w: int, h: int, detail: str | None) -> int:
        if detail == "low":
            return base
        s = min(1.0, 2048 / max(w, h))
        w2, h2 = w * s, h * s
        s = min(1.0, 768 / min(w2, h2))
        w2, h2 = w2 * s, h2 * s
        return base + tile * math.ceil(w2 / 512) * math.ceil(h2 / 512)

    return rule


def _patches(multiplier: float, cap: int = 1536) -> Callable[[int, int, str | None], int]:
    """OpenAI's patch rule (gpt-4.1-mini and friends): 32px patches, at most ``cap`` (the image scaled down to fit),
    times the model's multiplier."""

    def rule(w: int, h: int, detail: str | None) -> int:
        n = math.ceil(w / 32) * math.ceil(h / 32)
        if n > cap:
            s = math.sqrt(cap * 32 * 32 / (w * h))
            n = min(cap, math.floor(w * s / 32) * math.floor(h * s / 32))
        return math.ceil(n * multiplier)

    return rule


def _qwen_vl(w: int, h: int, detail: str | None, factor: int = 28, min_pixels: int = 56 * 56,
             max_pixels: int = 28 * 28 * 16384) -> int:
    """Qwen2-VL / Qwen2.5-VL: the image resized to multiples of 28 within the processor's pixel limits (its
    defaults), one token per 28x28 area, plus the two vision start/end tokens."""
    h2, w2 = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if h2 * w2 > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        h2, w2 = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif h2 * w2 < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h2, w2 = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return (h2 // factor) * (w2 // factor) + 2


IMAGE_TOKEN_RULES: list[tuple[str, str, Callable[[int, int, str | None], int]]] = [
    # (model name pattern, the rule's name, tokens(width, height, detail)); the first match wins. OpenAI's values
    # are those of its vision guide (image tokens per model family).
    (r"gpt-4o-mini", "OpenAI tiles 2833 + 5667/tile", _tiles(2833, 5667)),
    (r"gpt-4\.1-mini", "OpenAI 32px patches x 1.62", _patches(1.62)),
    (r"gpt-4\.1-nano", "OpenAI 32px patches x 2.46", _patches(2.46)),
    (r"o4-mini", "OpenAI 32px patches x 1.72", _patches(1.72)),
    (r"gpt-4o|gpt-4\.1|gpt-4\.5|gpt-4-turbo", "OpenAI tiles 85 + 170/tile", _tiles(85, 170)),
    (r"(^|/)o1|(^|/)o3", "OpenAI tiles 75 + 150/tile", _tiles(75, 150)),
    (r"qwen2(\.5)?[-_]?vl", "Qwen2-VL 28px areas", _qwen_vl),
]


def image_rule(model: str) -> tuple[str, Callable[[int, int, str | None], int]] | None:
    for pattern, name, rule in IMAGE_TOKEN_RULES:
        if re.search(pattern, model, re.IGNORECASE):
            return name, rule
    return None


def _image_size(url: str) -> tuple[int, int] | None:
    if not url.startswith("data:") or "," not in url:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
            return img.size
    except Exception:  # noqa: BLE001 (an image the estimate cannot read is counted as unknown)
        return None


class Estimate:
    """Adds up the requests of a batch as they are written (:meth:`add`), then says what they may cost."""

    def __init__(self, args: argparse.Namespace, replies_in_cache: tuple[int, int] = (0, 0)) -> None:
        self.args = args
        self.rule = image_rule(args.model)
        self.requests = 0
        self.bytes = 0
        self.text_tokens = 0
        self.images = 0
        self.image_tokens = 0
        self.unsized_images = 0
        self.cache_replies, self.cache_completion = replies_in_cache

    def add(self, body: dict[str, Any], size: int) -> None:
        self.requests += 1
        self.bytes += size
        chars = 0
        for m in body.get("messages", []):
            self.text_tokens += MESSAGE_OVERHEAD
            content = m.get("content")
            parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
            for part in parts:
                if part.get("type") == "image_url":
                    self.images += 1
                    if self.rule is None:
                        continue
                    image = part.get("image_url") or {}
                    wh = _image_size(image.get("url", ""))
                    if wh is None:
                        self.unsized_images += 1
                    else:
                        self.image_tokens += self.rule[1](wh[0], wh[1], image.get("detail"))
                else:
                    chars += len(part.get("text") or "")
        self.text_tokens += math.ceil(chars / CHARS_PER_TOKEN)

    def as_dict(self) -> dict[str, Any]:
        a = self.args
        prompt = self.text_tokens + self.image_tokens
        completion_max = self.requests * a.max_tokens
        typical = (round(self.requests * self.cache_completion / self.cache_replies) if self.cache_replies else None)
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "prompt_tokens": prompt,
            "text_tokens": self.text_tokens,
            "images": self.images,
            "image_tokens": self.image_tokens,
            "image_rule": self.rule[0] if self.rule else None,
            "images_not_counted": self.images if self.rule is None else self.unsized_images,
            "completion_tokens_max": completion_max,
            "completion_tokens_typical": typical,
            "discount": a.batch_discount,
            "prompt_cost_usd": cost(prompt, 0, a.price_prompt, a.price_completion, a.batch_discount),
            "completion_cost_max_usd": cost(0, completion_max, a.price_prompt, a.price_completion, a.batch_discount),
            "completion_cost_typical_usd": (
                None if typical is None else cost(0, typical, a.price_prompt, a.price_completion, a.batch_discount)
            ),
        }

    def lines(self) -> list[str]:
        d = self.as_dict()
        if d["image_rule"]:
            images = f"{d['images']} image(s) {d['image_tokens']:,} by the {d['image_rule']} rule"
            if d["images_not_counted"]:
                images += f", {d['images_not_counted']} unreadable one(s) not counted"
        elif d["images"]:
            images = (f"{d['images']} image(s) NOT counted: no image-token rule is known for {self.args.model!r} "
                      "(docs/teacher.md)")
        else:
            images = "no images"
        detail = " (detail auto counted as high)" if self.args.image_detail in (None, "auto") and d["image_rule"] \
            and d["image_rule"].startswith("OpenAI tiles") else ""
        typical = (f", ~{d['completion_tokens_typical']:,} at the replies' average in the cache"
                   if d["completion_tokens_typical"] is not None else "")
        out = [  # one thing a line, in the summary's columns
            (f"  estimate   {d['requests']} requests ({d['bytes'] / 1e6:.2f} MB), prompt ~{d['prompt_tokens']:,} "
             f"tokens: text ~{d['text_tokens']:,} (at {CHARS_PER_TOKEN} characters a token)"),
            f"             + {images}{detail}",
            (f"             completion at most {d['completion_tokens_max']:,} (--max-tokens {self.args.max_tokens} "
             f"each){typical}"),
        ]
        if d["prompt_cost_usd"] is None:
            out.append("  est. cost  n/a before submitting (pass --price-prompt and --price-completion, USD per 1M)")
        else:
            typical_cost = (f", ~${d['completion_cost_typical_usd']:.4f} typical"
                            if d["completion_cost_typical_usd"] is not None else "")
            out.append(
                f"  est. cost  ${d['prompt_cost_usd']:.4f} prompt + at most ${d['completion_cost_max_usd']:.4f} "
                f"completion{typical_cost} (at ${self.args.price_prompt or 0:g} / ${self.args.price_completion or 0:g}"
                f" per 1M, {d['discount']:.0%} batch discount)"
            )
        return out
