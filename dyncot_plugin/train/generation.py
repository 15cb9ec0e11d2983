"""Generation as the model was trained, and the thinking control of ``dyncot_think``.

Positions: a collated training batch carries the model's position inputs (M-RoPE ``position_ids`` for the Qwen-VL
families), which ``generate`` cannot take as they are; it computes them itself from the prompt and the inputs the
model family needs for that (transformers 5: ``mm_token_type_ids`` for Qwen2-VL, Qwen2.5-VL and Qwen3-VL, without
which it silently falls back to 1-D text positions; transformers 4.57 computes them from the ids and image grids
alone and refuses ``mm_token_type_ids``: a per-token type key goes to ``generate`` only where it accepts it,
:func:`dyncot_plugin.compat.generate_accepts`). :func:`generation_inputs` turns a collated batch into what
``generate`` needs, from the family table (:mod:`dyncot_plugin.train.families`), so that the first generated token
sees the logits the training forward computes for the same prompt.

Thinking (``dyncot_think``, the rule in :mod:`dyncot_plugin.think`): :class:`ThinkControl` is one logits
processor for every mode, so that ``auto`` generates a thinking reply exactly as ``always`` does and a plain one
exactly as ``never`` does, with the same batching: on a thinking row it forces the tag's tokens (the tag is part of
the generated reply), on a plain row it bans exactly the tokens that would put a think block (or its opening) in
the decoded reply (:class:`~dyncot_plugin.think.NoThinkBan`). The decision of ``auto`` needs ``think_prob``, the probability of the whole tag at the start of the reply: its first
factor comes from the generation's own prefill logits, and where the tag has several tokens a forward hook on the
generating module runs the remaining tag tokens on the prefill's KV cache right after the prefill and leaves the
cache as the prefill made it (a look-ahead of ``len(tag) - 1`` tokens; never a second pass over the prompt; on
sliding-window and static caches too: :func:`_scratch_cache`).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from dyncot_plugin.compat import generate_accepts, unwrap_model
from dyncot_plugin.think import DEFAULT_THRESHOLD, THINK_MODES, NoThinkBan, check_threshold, decide, think_tag_ids
from dyncot_plugin.train.families import DEFAULT_FAMILY, ModelFamily

TRAINING_ONLY_KEYS = ("labels", "position_ids", "rope_deltas")  # generate recomputes positions from the prompt


def _config(model: Any) -> Any:
    for candidate in (model, getattr(model, "module", None)):
        if getattr(candidate, "config", None) is not None:
            return candidate.config
    return None


def generation_inputs(model: Any, batch: dict[str, Any], family: ModelFamily = DEFAULT_FAMILY) -> dict[str, Any]:
    """``batch`` (a collated, left-padded prompt batch) without its training-only keys, plus the per-token type
    ids the family's ``generate`` computes positions from (derived from the ids, as LLaMA-Factory's collator does),
    where the model's ``generate`` takes them (per-token type keys it does not take are dropped)."""
    inputs = {k: v for k, v in batch.items() if k not in TRAINING_ONLY_KEYS}
    for key in {*family.token_type_keys, family.generation_type_key}:
        if key in inputs and not generate_accepts(model, key):
            del inputs[key]
    if (family.generation_type_ids and family.generation_type_key not in inputs
            and generate_accepts(model, family.generation_type_key)):
        config = _config(model)
        types = torch.zeros_like(inputs["input_ids"])
        for attribute, value in family.generation_type_ids:
            token = getattr(config, attribute, None)
            if token is not None:
                types[inputs["input_ids"] == token] = value
        inputs[family.generation_type_key] = types
    return inputs


class ThinkControl(LogitsProcessor):
    """``generate``'s logits processor for ``dyncot_think`` plus the prefill hook that measures ``think_prob``.

    Use: ``with control.attach(model): model.generate(..., logits_processor=LogitsProcessorList([control]))``;
    afterwards ``control.think_prob`` (per row, float64) and ``control.thinks`` (per row, bool; always False under
    ``greedy``) describe the batch. One instance serves many ``generate`` calls, one ``attach`` each, one at a time;
    other calls take a :meth:`fresh` copy (the text ban is shared). The prefill hook only listens to the thread that
    attached it; ``attach`` adds and removes a hook on the model, which must not happen while another thread runs
    a forward on it (torch's hook tables are not thread-safe): run generations on one model one at a time
    (:func:`dyncot_plugin.chat.think_in_generate` holds a lock).
    """

    def __init__(self, mode: str, tokenizer: Any, threshold: float = DEFAULT_THRESHOLD,
                 vocab_size: int | None = None) -> None:
        if mode not in THINK_MODES:
            raise ValueError(f"dyncot_think: got {mode!r}; expected one of {', '.join(THINK_MODES)}")
        self.mode, self.threshold = mode, check_threshold(threshold)
        self.tag = think_tag_ids(tokenizer)
        self.ban = NoThinkBan.for_tokenizer(tokenizer, vocab_size)
        self.think_logprob: torch.Tensor | None = None
        self.think_prob: torch.Tensor | None = None
        self.thinks: torch.Tensor | None = None
        self._prompt_len: int | None = None
        self._states: list[int] = []
        self._hooked = False
        self._in_lookahead = False
        self._thread: int | None = None

    @classmethod
    def for_model(cls, mode: str, tokenizer: Any, threshold: float, model: Any) -> "ThinkControl":
        """A control whose text ban covers the model's whole output width (a vocabulary padded past the tokenizer's
        length: those ids decode to nothing)."""
        config = _config(model)
        vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
        return cls(mode, tokenizer, threshold, vocab_size=vocab)

    def fresh(self) -> "ThinkControl":
        """A copy for one more concurrent ``generate``: same mode, threshold, tag and text ban, no batch state."""
        other = copy.copy(self)
        other.reset()
        other._hooked, other._in_lookahead, other._thread = False, False, None
        return other

    # ------------------------------------------------------------------------------------------ the prefill hook
    @contextmanager
    def attach(self, model: Any) -> Iterator[None]:
        """Hook the module whose ``generate`` runs (PEFT and engine wrappers unwrapped) for one ``generate`` call."""
        self.reset()
        module = unwrap_model(model)  # the module whose generate runs
        handle = module.register_forward_hook(self._after_forward, with_kwargs=True)
        self._hooked, self._thread = True, threading.get_ident()
        try:
            yield
        finally:
            handle.remove()
            self._hooked, self._thread = False, None

    def _after_forward(self, module: Any, args: tuple, kwargs: dict, outputs: Any) -> None:
        if self._in_lookahead or self._prompt_len is not None or threading.get_ident() != self._thread:
            return  # a decode step, the look-ahead's own forward, or another thread's generation on this model
        logits = outputs.logits[:, -1].to(torch.float64)
        logprob = torch.log_softmax(logits, dim=-1)[:, self.tag[0]]
        if len(self.tag) > 1:
            logprob = logprob + self._lookahead(module, kwargs, outputs).to(logprob.device)
        self.think_logprob = logprob
        self._prompt_len = -1  # prefill seen; the processor's first call sets the real length

    @torch.no_grad()
    def _lookahead(self, module: Any, kwargs: dict, outputs: Any) -> torch.Tensor:
        """log P(tag[1:] | prompt, tag[0]) per row, from the tag tokens run on the prefill's cache, which is then
        as the prefill left it (:func:`_scratch_cache`)."""
        cache = getattr(outputs, "past_key_values", None) or kwargs.get("past_key_values")
        if cache is None:
            raise RuntimeError("dyncot_think: the think tag has several tokens and generate keeps no KV cache "
                               "(use_cache must stay on)")
        batch = outputs.logits.size(0)
        device = outputs.logits.device
        extra = len(self.tag) - 1
        prompt = kwargs.get("input_ids") if torch.is_tensor(kwargs.get("input_ids")) else kwargs.get("inputs_embeds")
        past = prompt.size(1)  # the prefill is the first forward: the cache holds the prompt, nothing before it
        scratch, restore = _scratch_cache(cache)
        step: dict[str, Any] = {
            "input_ids": torch.tensor(self.tag[:-1], device=device).expand(batch, extra).contiguous(),
            "past_key_values": scratch,
            "use_cache": True,
        }
        mask = _padding_mask(kwargs.get("attention_mask"), past)
        if mask is not None:
            step["attention_mask"] = torch.cat([mask, mask.new_ones((batch, extra))], dim=-1)
        positions = kwargs.get("position_ids")
        if torch.is_tensor(positions):  # as generate advances them: every axis continues from the last position
            offsets = torch.arange(1, extra + 1, dtype=positions.dtype, device=positions.device)
            step["position_ids"] = positions[..., -1:] + offsets.view(*([1] * (positions.dim() - 1)), -1)
        if torch.is_tensor(kwargs.get("cache_position")):
            step["cache_position"] = torch.arange(past, past + extra, device=device)
        for key in ("mm_token_type_ids", "token_type_ids"):
            if torch.is_tensor(kwargs.get(key)):
                step[key] = kwargs[key].new_zeros((batch, extra))
        if "logits_to_keep" in kwargs:
            step["logits_to_keep"] = extra
        self._in_lookahead = True
        try:
            out = module(**step)
        except (IndexError, RuntimeError) as e:
            if scratch is cache:
                raise
            raise RuntimeError(f"dyncot_think: the look-ahead of the think tag ({extra} more tokens after the prompt) "
                               f"does not fit this {type(cache).__name__} ({e}); give max_new_tokens >= "
                               f"{len(self.tag)}, or generate with the default dynamic cache") from e
        finally:
            self._in_lookahead = False
            restore()
        logprobs = torch.log_softmax(out.logits[:, -extra:].to(torch.float64), dim=-1)
        targets = torch.tensor(self.tag[1:], device=logprobs.device).view(1, extra, 1).expand(batch, extra, 1)
        return logprobs.gather(-1, targets).squeeze(-1).sum(dim=-1)

    # ------------------------------------------------------------------------------------------ the processor
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._prompt_len is None or self._prompt_len < 0:
            self._start(input_ids, scores)
        step = input_ids.size(1) - self._prompt_len
        if step > 0 and self._states:
            last = input_ids[:, -1].tolist()
            self._states = [self.ban.next_state(s, t) for s, t in zip(self._states, last)]
        if self.mode == "greedy":
            return scores
        for row in range(scores.size(0)):
            if self.thinks[row]:
                if step < len(self.tag):
                    keep = scores[row, self.tag[step]].clone()
                    scores[row] = float("-inf")
                    scores[row, self.tag[step]] = keep
            else:
                self.ban.apply(self._states[row], scores[row])
        return scores

    def _start(self, input_ids: torch.Tensor, scores: torch.Tensor) -> None:
        if self._prompt_len is None:  # not attached: the first factor from the processor's own scores
            if len(self.tag) > 1:
                raise RuntimeError("ThinkControl.attach(model) must wrap generate when the tag has several tokens")
            self.think_logprob = torch.log_softmax(scores.to(torch.float64), dim=-1)[:, self.tag[0]]
        self._prompt_len = input_ids.size(1)
        self.think_prob = self.think_logprob.exp().cpu()
        decisions = [decide(self.mode, float(p), self.threshold) for p in self.think_prob]
        self.thinks = torch.tensor([bool(d) for d in decisions])
        self._states = [self.ban.initial] * input_ids.size(0)

    def reset(self) -> None:
        """Forget the last batch (call before each ``generate``)."""
        self._prompt_len, self.think_logprob, self.think_prob, self.thinks, self._states = None, None, None, None, []


def _scratch_cache(cache: Any) -> tuple[Any, Any]:
    """``(cache to run the look-ahead on, restore())``: afterwards the prefill's cache is exactly as it was.

    A dynamic cache (``DynamicLayer``, and ``DynamicSlidingWindowLayer`` of sliding-window models such as Gemma 3,
    on transformers 4.57 and 5.x alike) replaces its tensors on every update and never writes into them, so keeping
    each layer's attributes and putting them back undoes the look-ahead for free; cropping would not do on a
    sliding-window layer, which drops its oldest tokens once prompt + tag exceed the window (and refuses ``crop``
    then). Any other cache (a static cache, written in place; quantised or offloaded ones) gets the look-ahead on a
    copy of itself: memory for one more copy of the prompt's cache, for the look-ahead's duration."""
    layers = getattr(cache, "layers", None)
    dynamic = _dynamic_layer_types()
    if layers and all(type(layer) in dynamic for layer in layers):
        saved = dict(cache.__dict__), list(layers), [dict(layer.__dict__) for layer in layers]

        def restore() -> None:
            cache.__dict__.clear()
            cache.__dict__.update(saved[0])
            cache.layers[:] = saved[1]
            for layer, state in zip(saved[1], saved[2]):
                layer.__dict__.clear()
                layer.__dict__.update(state)

        return cache, restore
    try:
        return copy.deepcopy(cache), lambda: None
    except Exception as e:
        raise RuntimeError(f"dyncot_think: the think tag has several tokens and its look-ahead needs a copy of the "
                           f"KV cache, but {type(cache).__name__} cannot be copied ({e}); generate with the default "
                           f"dynamic cache") from e


def _padding_mask(mask: Any, length: int) -> torch.Tensor | None:
    """The prompt's 2-D padding mask (1 = a real token) from the prefill's ``attention_mask``: as given, or read
    from the full-attention 4-D mask generate builds beforehand for a static cache (transformers 5: a dict of masks
    per attention type; the prompt's last query row attends exactly to the prompt's real tokens)."""
    if isinstance(mask, dict):
        mask = mask.get("full_attention")
        if mask is None:
            raise RuntimeError("dyncot_think: the look-ahead needs the prompt's padding, and this model's prefill has no "
                               "full-attention mask to read it from; generate with the default dynamic cache")
    if mask is None or (torch.is_tensor(mask) and mask.dim() == 2):
        return mask
    if torch.is_tensor(mask) and mask.dim() == 4:
        last = mask[:, 0, -1, :length]
        return (last if last.dtype == torch.bool else last == 0).long()
    raise RuntimeError(f"dyncot_think: the look-ahead cannot read the prompt's padding from an attention mask of type "
                       f"{type(mask).__name__}; generate with the default dynamic cache and attention")


def _dynamic_layer_types() -> tuple[type, ...]:
    from transformers import cache_utils

    return tuple(getattr(cache_utils, name) for name in ("DynamicLayer", "DynamicSlidingWindowLayer")
                 if hasattr(cache_utils, name))


def generate_with_think(model: Any, inputs: dict[str, Any], control: ThinkControl, generate: Any = None,
                        **kwargs: Any) -> torch.Tensor:
    """``model.generate(**inputs, **kwargs)`` (or ``generate(...)``, the same model's generate under another name)
    under ``control`` (its processor and its prefill hook); afterwards ``control.think_prob`` and ``control.thinks``
    describe the batch."""
    processors = LogitsProcessorList([*(kwargs.pop("logits_processor", None) or []), control])
    with control.attach(model):
        return (generate or model.generate)(**inputs, logits_processor=processors, **kwargs)


__all__ = ["TRAINING_ONLY_KEYS", "ThinkControl", "generate_with_think", "generation_inputs"]
