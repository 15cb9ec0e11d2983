"""``dyncot_think`` on vLLM: one logits processor through vLLM's own extension point (``logits_processors=``).

Per request it reads ``SamplingParams.extra_args`` (``vllm_xargs`` of the OpenAI server):

=========================  ===========================================================================================
``dyncot_think``           ``auto`` (default), ``always``, ``never``, ``greedy`` (no control)
``dyncot_think_threshold`` the threshold of ``auto`` (default: the model's ``dyncot_think.json``, else 0.5)
``dyncot_think_prob``      ``think_prob`` measured beforehand (dyncot-predict's probe, the server's middleware)
=========================  ===========================================================================================

``always`` forces the tag's tokens as the first generated tokens (so the reply's text starts with ``<think>``, as on
the Hugging Face side); ``never`` bans, at every step, exactly the tokens whose text would put a think block (or
its opening) in the decoded reply (:class:`dyncot_plugin.think.NoThinkBan`, the same automaton and the same call
as training-side generation); ``auto`` decides by :func:`dyncot_plugin.think.decide` and then does exactly one of
the two.

**Where a request is refused.** vLLM treats an exception inside an engine step as fatal (the server exits), so
everything a request could get wrong is checked in :meth:`DyncotThinkLogitsProcessor.validate_params`, which vLLM
calls where it validates a request (the API server answers HTTP 400 naming the field): the fields above, structured
outputs (their grammar mask applies before the processor and before raw logprobs, and the reasoning parser never
hands the reply over to the grammar), and ``auto`` without ``dyncot_think_prob`` on a multi-token tag (the rest of the
tag needs a look-ahead, which a logits processor cannot run; ``DYNCOT_THINK_TAG_LEN``, set by dyncot-serve, tells the
API server's process the tag's length). In the engine the processor never raises: a request that reaches it
unvalidated gets no control or ``never`` and a logged error, an unexpected error in a step leaves that row unchanged
and is logged.

**When ``auto`` decides** (one-token tag, no ``dyncot_think_prob``). From the logits at the end of the prompt.
vLLM runs the sampler, so this processor, on every chunk of a chunked prefill (the token budget of a step is shared
by all its requests) and discards those samples; every call before the first output token therefore decides anew,
and the last one, at the prompt's end, is the one whose token is kept. Prefix-cache hits still recompute the
prompt's last token. A request resumed after preemption (its output kept, its prompt recomputed) is new to the
processor: its first output token shows the decision taken before (the tag, or anything else).

The processor sees the logits after vLLM's ``allowed_token_ids``, ``bad_words``, ``min_tokens`` and ``logit_bias``
(vLLM applies temperature, penalties and top-k/p after logits processors): a one-token ``auto`` decision read here
would include them, so the middleware measures such requests by a look-ahead instead. Returned ``logprobs`` are
vLLM's raw ones (``--logprobs-mode raw_logprobs``, required at start-up), from before any processor, so the forced
tag's logprobs are the model's: that is how ``think_prob`` is measured on vLLM.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.logger import init_logger
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from dyncot_plugin.serve.fields import MODE_KEY, PROB_KEY, THRESHOLD_KEY, FieldError, check_measurable, \
    model_think_settings, request_settings, tag_len_from_env
from dyncot_plugin.think import NoThinkBan, decide, think_tag_ids
from dyncot_plugin.think_settings import resolve_think_settings

logger = init_logger(__name__)


class _ThinkRequest:
    """The per-request state: called as ``(output_ids, logits) -> logits`` at every step, prefill chunks included."""

    def __init__(self, shared: "DyncotThinkLogitsProcessor", mode: str, threshold: float, prob: float | None):
        self.shared, self.mode, self.threshold = shared, mode, threshold
        # auto without a measured think_prob (a one-token tag): decided from the logits at the end of the prompt
        self.measure = mode == "auto" and prob is None
        self.thinks = None if self.measure else decide(mode, 0.0 if prob is None else prob, threshold)
        self.state, self.seen = shared.ban.initial, 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        try:
            return self._apply(output_ids, logits)
        except Exception:  # an exception in a step stops vLLM's engine: leave this row as it is and say so
            logger.exception("dyncot_think: the logits processor failed on a request (%s); its row is unchanged",
                             self.mode)
            return logits

    def _apply(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        tag, ban = self.shared.tag, self.shared.ban
        step = len(output_ids)
        if self.measure:
            if step == 0:  # every prefill chunk's call decides anew: the last one is at the end of the prompt
                prob = torch.softmax(logits.to(torch.float64), dim=-1)[tag[0]].item()
                self.thinks = decide(self.mode, prob, self.threshold)
            elif self.thinks is None:  # resumed after preemption: the first token shows the decision taken
                self.thinks = output_ids[0] == tag[0]
        self.state = ban.advance(self.state, output_ids[self.seen:])
        self.seen = step
        if self.thinks:
            if step < len(tag):  # forced: the tag's token is the only finite logit (whatever masks came before)
                logits.fill_(float("-inf"))
                logits[tag[step]] = 0.0
        else:
            ban.apply(self.state, logits)
        return logits


class DyncotThinkLogitsProcessor(AdapterLogitsProcessor):
    """vLLM logits processor of ``dyncot_think`` (see the module docstring). Pass the class:
    ``LLM(..., logits_processors=[DyncotThinkLogitsProcessor])`` or ``--logits-processors
    dyncot_plugin.serve.logits:DyncotThinkLogitsProcessor``."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        from transformers import AutoTokenizer

        model_config = vllm_config.model_config
        mode = getattr(model_config, "logprobs_mode", "raw_logprobs")
        if mode != "raw_logprobs":  # think_prob is read from returned logprobs: they must be the model's own
            raise ValueError(f"dyncot_think needs --logprobs-mode raw_logprobs (got {mode}): think_prob is measured "
                             "from the returned logprobs, which must be the model's, before any processor")
        tokenizer = AutoTokenizer.from_pretrained(model_config.tokenizer, trust_remote_code=model_config.trust_remote_code)
        settings = resolve_think_settings(model_config.model)
        self.tag = settings.tag_ids or think_tag_ids(tokenizer)
        self.default_threshold = settings.threshold
        self.ban = NoThinkBan.for_tokenizer(tokenizer, model_config.get_vocab_size())
        announced = tag_len_from_env()
        if announced is not None and announced != len(self.tag):
            logger.warning("dyncot_think: DYNCOT_THINK_TAG_LEN=%d but the think tag is %d tokens", announced,
                           len(self.tag))

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Runs where vLLM validates a request (the API server answers HTTP 400 naming the field): everything that
        could otherwise fail inside an engine step."""
        try:
            mode, _, prob = request_settings(sampling_params.extra_args, 0.5)
            if mode != "greedy":
                check_measurable(mode, prob, tag_len_from_env())
        except FieldError as e:
            raise VLLMValidationError(str(e), parameter=e.field) from None
        if sampling_params.structured_outputs is not None:
            raise VLLMValidationError(
                "structured outputs (response_format json_object / json_schema / structural_tag, structured_outputs, "
                "tool_choice required or a named tool) are not supported with dyncot_think: the grammar mask applies "
                "before the think decision and the reasoning parser never hands the reply over to the grammar",
                parameter="structured_outputs")

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams) -> _ThinkRequest | None:
        # Never raises (vLLM would stop): validate_params refused bad requests in the API server already.
        try:
            mode, threshold, prob = request_settings(params.extra_args, self.default_threshold)
        except FieldError as e:
            logger.error("dyncot_think: a request reached the engine unvalidated (%s); it gets no think control", e)
            return None
        if mode == "greedy":
            return None
        if mode == "auto" and prob is None and len(self.tag) > 1:
            # only where the API server could not know the tag's length (no DYNCOT_THINK_TAG_LEN): no think block
            logger.error("dyncot_think: auto without %s on a %d-token think tag (set DYNCOT_THINK_TAG_LEN=%d so that "
                         "such requests are refused with HTTP 400); generated as never", PROB_KEY, len(self.tag),
                         len(self.tag))
            mode = "never"
        return _ThinkRequest(self, mode, threshold, prob)


__all__ = ["DyncotThinkLogitsProcessor", "MODE_KEY", "PROB_KEY", "THRESHOLD_KEY", "model_think_settings",
           "request_settings"]
