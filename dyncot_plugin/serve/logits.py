"""``dyncot_think`` on vLLM: one logits processor through vLLM's own extension point (``logits_processors=``).

Per request it reads ``SamplingParams.extra_args`` (``vllm_xargs`` of the OpenAI server):

=========================  ===========================================================================================
``dyncot_think``           ``auto`` (default), ``always``, ``never``, ``greedy`` (no control)
``dyncot_think_threshold`` the threshold of ``auto`` (default: the model's ``dyncot_think.json``, else 0.5)
``dyncot_think_prob``      ``think_prob`` measured beforehand (dyncot-predict's probe, the server's middleware)
=========================  ===========================================================================================

``always`` forces the tag's tokens as the first generated tokens (so the reply's text starts with ``<think>``, as on
the Hugging Face side); ``never`` bans, at every step, each token whose text would complete ``<think>`` in the
decoded reply (:class:`dyncot_plugin.think.TagTextBan`, the same automaton as training-side generation); ``auto``
decides by :func:`dyncot_plugin.think.decide` and then does exactly one of the two. On a one-token tag (Qwen3) the
processor measures ``think_prob`` itself from the first step's logits (the request's own prefill); on a multi-token
tag the rest of the tag needs a look-ahead, which a logits processor cannot run, so ``auto`` then needs
``dyncot_think_prob`` (a request without it is refused with HTTP 400 / a ValueError).

The processor sees raw model logits (vLLM applies temperature after logits processors; a request's own
``logit_bias`` or ``min_tokens`` would come first). Returned ``logprobs`` are vLLM's raw ones, from before any
processor, so the forced tag's logprobs are the model's: that is how ``think_prob`` is measured on vLLM.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from dyncot_plugin.serve.fields import DEFAULT_MODE_ENV, MODE_KEY, PROB_KEY, THRESHOLD_KEY
from dyncot_plugin.think import DEFAULT_THRESHOLD, THINK_MODES, TagTextBan, check_threshold, decide, think_tag_ids
from dyncot_plugin.think_settings import resolve_think_settings



def model_think_settings(model_dir: str) -> dict[str, Any]:
    """The model's ``dyncot_think.json`` (written by training and prediction runs), or {}
    (:func:`dyncot_plugin.think_settings.resolve_think_settings`)."""
    return dict(resolve_think_settings(model_dir).values)


def request_settings(extra: dict[str, Any] | None, default_threshold: float) -> tuple[str, float, float | None]:
    """(mode, threshold, think_prob or None) of a request, or a ValueError naming the bad field."""
    extra = extra or {}
    mode = extra.get(MODE_KEY) or os.environ.get(DEFAULT_MODE_ENV) or "auto"
    if mode not in THINK_MODES:
        raise ValueError(f"{MODE_KEY}: got {mode!r}; expected one of {', '.join(THINK_MODES)}")
    threshold = check_threshold(extra.get(THRESHOLD_KEY, default_threshold), THRESHOLD_KEY)
    prob = extra.get(PROB_KEY)
    if prob is not None:
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
            raise ValueError(f"{PROB_KEY}: got {prob!r}; expected a probability in [0, 1]")
        prob = float(prob)
    return mode, threshold, prob


class _ThinkRequest:
    """The per-request state: called as ``(output_ids, logits) -> logits`` at every step."""

    def __init__(self, shared: "DyncotThinkLogitsProcessor", mode: str, threshold: float, prob: float | None):
        self.shared, self.mode, self.threshold = shared, mode, threshold
        self.thinks = None if prob is None else decide(mode, prob, threshold)
        self.state, self.seen = "", 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        tag, ban = self.shared.tag, self.shared.ban
        step = len(output_ids)
        if self.thinks is None and step == 0:  # auto on a one-token tag: think_prob from this step's logits
            prob = torch.softmax(logits.to(torch.float64), dim=-1)[tag[0]].item()
            self.thinks = decide(self.mode, prob, self.threshold)
        for token in output_ids[self.seen:]:
            self.state = ban.next_state(self.state, token)
        self.seen = step
        if self.thinks:
            if step < len(tag):
                keep = logits[tag[step]].clone()
                logits.fill_(float("-inf"))
                logits[tag[step]] = keep
        else:
            banned = self.shared.banned(self.state, logits.device)
            if banned.numel():
                logits[banned] = float("-inf")
        return logits


class DyncotThinkLogitsProcessor(AdapterLogitsProcessor):
    """vLLM logits processor of ``dyncot_think`` (see the module docstring). Pass the class:
    ``LLM(..., logits_processors=[DyncotThinkLogitsProcessor])`` or ``--logits-processors
    dyncot_plugin.serve.logits:DyncotThinkLogitsProcessor``."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        from transformers import AutoTokenizer

        model_config = vllm_config.model_config
        tokenizer = AutoTokenizer.from_pretrained(model_config.tokenizer, trust_remote_code=model_config.trust_remote_code)
        settings = model_think_settings(model_config.model)
        self.tag = list(settings.get("tag_ids") or think_tag_ids(tokenizer))
        self.default_threshold = float(settings.get("threshold", DEFAULT_THRESHOLD))
        self.ban = TagTextBan.for_tokenizer(tokenizer, model_config.get_vocab_size())
        self._banned: dict[str, torch.Tensor] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        request_settings(sampling_params.extra_args, DEFAULT_THRESHOLD)

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams) -> _ThinkRequest | None:
        mode, threshold, prob = request_settings(params.extra_args, self.default_threshold)
        if mode == "greedy":
            return None
        if mode == "auto" and prob is None and len(self.tag) > 1:
            raise ValueError(f"{MODE_KEY}=auto on a {len(self.tag)}-token think tag needs {PROB_KEY} "
                             "(measured by a look-ahead: dyncot-predict and the server's middleware do it)")
        if mode == "auto" and prob is not None and math.isnan(prob):
            raise ValueError(f"{PROB_KEY}: NaN")
        return _ThinkRequest(self, mode, threshold, prob)

    def banned(self, state: str, device: torch.device) -> torch.Tensor:
        if state not in self._banned:
            self._banned[state] = torch.tensor(self.ban.banned[state], dtype=torch.long, device=device)
        return self._banned[state]


__all__ = ["DyncotThinkLogitsProcessor", "MODE_KEY", "PROB_KEY", "THRESHOLD_KEY", "model_think_settings",
           "request_settings"]
