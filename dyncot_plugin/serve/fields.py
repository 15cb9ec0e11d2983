"""The per-request fields of ``dyncot_think`` on vLLM (``vllm_xargs`` keys), their validation, and the server's
environment; vLLM-free: the logits processor validates with it inside vLLM (``validate_params``), the ASGI middleware
before vLLM parses the request (and is unit-tested without vLLM installed)."""

from __future__ import annotations

import math
import os
from typing import Any

from dyncot_plugin.think import THINK_MODES, check_threshold, think_tag_ids
from dyncot_plugin.think_settings import resolve_think_settings

MODE_KEY, THRESHOLD_KEY, PROB_KEY = "dyncot_think", "dyncot_think_threshold", "dyncot_think_prob"
DEFAULT_MODE_ENV = "DYNCOT_THINK_DEFAULT"  # the server's default mode (dyncot-serve --think), else auto
TAG_LEN_ENV = "DYNCOT_THINK_TAG_LEN"  # tokens of the think tag (> 1: the middleware's look-ahead)
ADAPTERS_ENV = "DYNCOT_THINK_ADAPTERS"  # JSON {served LoRA name: its threshold}, from dyncot-serve's --lora-modules
MAX_BODY_ENV = "DYNCOT_MAX_BODY_MB"  # dyncot-serve --max-body-mb: the middleware's cap on a request body
DEFAULT_MAX_BODY_MB = 64


class FieldError(ValueError):
    """A bad request field: ``field`` is its dotted name (``vllm_xargs.dyncot_think``), the message says what was
    expected. The middleware answers it with HTTP 400 (``param`` = the field), the processor's ``validate_params``
    raises it as vLLM's own validation error (HTTP 400 too)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def model_think_settings(model_dir: str) -> dict[str, Any]:
    """The model's ``dyncot_think.json`` (written by training and prediction runs), or {}
    (:func:`dyncot_plugin.think_settings.resolve_think_settings`)."""
    return dict(resolve_think_settings(model_dir).values)


def served_tag(model_dir: str, tokenizer: Any) -> list[int]:
    """The think tag's ids the processor forces: ``dyncot_think.json``'s ``tag_ids``, else the tokenizer's."""
    return resolve_think_settings(model_dir).tag_ids or think_tag_ids(tokenizer)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def default_mode() -> str:
    return os.environ.get(DEFAULT_MODE_ENV) or "auto"


def tag_len_from_env() -> int | None:
    """Tokens of the served model's think tag, as dyncot-serve announces it to vLLM's processes; None if unknown."""
    value = os.environ.get(TAG_LEN_ENV)
    try:
        return int(value) if value else None
    except ValueError:
        return None


def request_settings(extra: Any, default_threshold: float) -> tuple[str, float, float | None]:
    """(mode, threshold, think_prob or None) of a request's ``vllm_xargs``, or a :class:`FieldError` naming the bad
    field. Absent keys take the defaults: the server's mode (``dyncot-serve --think``, else ``auto``) and
    ``default_threshold``."""
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise FieldError("vllm_xargs", f"got {_shown(extra)}; expected an object such as "
                                       f'{{"{MODE_KEY}": "never"}}')
    mode = extra[MODE_KEY] if MODE_KEY in extra else default_mode()
    if not isinstance(mode, str) or mode not in THINK_MODES:
        raise FieldError(f"vllm_xargs.{MODE_KEY}", f"got {_shown(mode)}; expected one of {', '.join(THINK_MODES)}")
    try:
        threshold = check_threshold(extra.get(THRESHOLD_KEY, default_threshold), THRESHOLD_KEY)
    except ValueError as e:
        raise FieldError(f"vllm_xargs.{THRESHOLD_KEY}", str(e).split(": ", 1)[-1]) from None
    prob = extra.get(PROB_KEY)
    if prob is not None:
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not math.isfinite(prob) \
                or not 0 <= prob <= 1:
            raise FieldError(f"vllm_xargs.{PROB_KEY}", f"got {_shown(prob)}; expected a probability in [0, 1]")
        prob = float(prob)
    return mode, threshold, prob


def check_measurable(mode: str, prob: float | None, tag_len: int | None) -> None:
    """``auto`` on a multi-token tag needs ``think_prob`` from a look-ahead (a logits processor cannot run one):
    a :class:`FieldError` naming ``vllm_xargs.dyncot_think_prob`` where it is missing."""
    if mode == "auto" and prob is None and tag_len is not None and tag_len > 1:
        raise FieldError(f"vllm_xargs.{PROB_KEY}", f"{MODE_KEY}=auto on a {tag_len}-token think tag needs the "
                         "probability of the whole tag, measured by a look-ahead (dyncot-serve's middleware does it "
                         f"on /v1/chat/completions and /v1/completions; elsewhere pass {PROB_KEY} or choose always / "
                         "never)")


__all__ = ["ADAPTERS_ENV", "DEFAULT_MAX_BODY_MB", "DEFAULT_MODE_ENV", "FieldError", "MAX_BODY_ENV", "MODE_KEY", "PROB_KEY",
           "TAG_LEN_ENV", "THRESHOLD_KEY", "check_measurable", "default_mode", "model_think_settings",
           "request_settings", "served_tag", "tag_len_from_env"]
