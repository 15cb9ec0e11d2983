"""LLaMA-Factory's own front ends with the think decision: ``llamafactory-cli chat``, ``api`` and ``webchat``.

They never import the training entry point, so the seam (:mod:`dyncot_plugin.patches`) also hooks
``llamafactory.chat.chat_model``: a recipe's ``dyncot_*`` keys are taken out before LLaMA-Factory's parser sees them
(as for ``train``), and the Hugging Face engine generates every reply under the recipe's decision:

* ``dyncot_think`` (default ``auto``) and ``dyncot_think_threshold`` are honoured for every reply, non-streamed
  (``api``) and streamed (``chat``, ``webchat``, ``api`` with ``stream``), with the same
  :class:`~dyncot_plugin.train.generation.ThinkControl` prediction runs use: ``never`` keeps ``<think>`` out of the
  decoded reply however it is spelled in tokens, ``always`` opens every reply with the tag, ``auto`` thinks where the
  model's ``think_prob`` reaches the threshold (a multi-token tag costs a look-ahead of ``len(tag) - 1`` tokens on
  the prompt's KV cache per reply).
* The threshold: the recipe's ``dyncot_think_threshold`` where it sets one, else the model's own (the
  ``dyncot_think.json`` its training run saved: the last adapter of ``adapter_name_or_path``, else
  ``model_name_or_path``), else 0.5. The chosen value and where it came from are logged once.
* Every other ``dyncot_*`` key is training-only: validated as for training, then ignored (named in the log).
* A request's own fields cannot change the mode: LLaMA-Factory's request model drops unknown fields (per-request
  control is ``dyncot-serve``'s, on vLLM).
* LLaMA-Factory's vLLM and SGLang backends (``infer_backend``) generate outside Hugging Face ``generate``: a recipe
  with ``dyncot_*`` keys that picks one is refused by name before the model loads.
* The model's position inputs: for the Qwen-VL families the reply is generated with the per-token type ids
  ``generate`` computes M-RoPE positions from (as prediction runs do; LLaMA-Factory's engine does not pass them, and
  transformers 5 then falls back to 1-D positions on image prompts), so a chat reply equals the prediction run's.

* A generation that raises (a request whose ``max_length`` is below its prompt's length, say) ends its streamed
  reply with that error, at once: LLaMA-Factory's reader would otherwise wait forever on a stream nobody closes.

A recipe without ``dyncot_*`` keys changes nothing: the engine is LLaMA-Factory's own, untouched.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any

from llamafactory.extras import logging as lf_logging

from dyncot_plugin.config import DynCotArguments, DynCotConfigError
from dyncot_plugin.think import DEFAULT_THRESHOLD
from dyncot_plugin.think_settings import ThinkSettingsError, resolve_think_settings
from dyncot_plugin.train.families import family_of
from dyncot_plugin.train.generation import ThinkControl, generate_with_think, generation_inputs

logger = lf_logging.get_logger(f"llamafactory.{__name__}")

INFERENCE_KEYS = ("dyncot_think", "dyncot_think_threshold")
"""The keys a chat front end honours; every other ``dyncot_*`` key is training-only there."""
_WRAPPED = "__dyncot_think__"


@dataclass(frozen=True)
class ChatThink:
    """The think decision of one chat engine."""

    mode: str
    threshold: float
    threshold_from: str  # "the recipe", a dyncot_think.json path, or "the default"


def check_backend(args: dict[str, Any] | list[str]) -> None:
    """Only the Hugging Face engine generates through ``generate`` (where the decision runs): refuse the others.
    ``args`` is the recipe as LLaMA-Factory's ``read_args`` returns it (a dict, or a ``--key value`` list); checked
    before LLaMA-Factory's own parser, which would first ask for the backend's package."""
    if isinstance(args, dict):
        backend = args.get("infer_backend", "huggingface")
    else:  # as HfArgumentParser reads it: --infer_backend, --infer-backend, an unambiguous prefix, "=value" or not
        backend = "huggingface"
        for i, item in enumerate(map(str, args)):
            key, sep, value = item.partition("=")
            key = key[2:].replace("-", "_") if key.startswith("--") else ""
            if len(key) >= len("infer_b") and "infer_backend".startswith(key):
                backend = value if sep else (args[i + 1] if i + 1 < len(args) else backend)
    if str(backend) != "huggingface":
        raise DynCotConfigError(
            f"dyncot-plugin cannot honour `infer_backend: {backend}` with dyncot_think: LLaMA-Factory's {backend} "
            "engine generates outside Hugging Face generate. Use infer_backend: huggingface, or serve the model "
            "with dyncot-serve (vLLM, per-request control; README 'Predicting and serving on vLLM')."
        )


def _saved_threshold(model_args: Any) -> tuple[float, str] | None:
    """The threshold in the ``dyncot_think.json`` of the last adapter, else of the model folder, if any
    (:func:`dyncot_plugin.think_settings.resolve_think_settings`)."""
    try:
        settings = resolve_think_settings(getattr(model_args, "model_name_or_path", None),
                                          getattr(model_args, "adapter_name_or_path", None))
    except ThinkSettingsError as e:
        raise DynCotConfigError(str(e)) from None
    return None if settings.path is None else (settings.threshold, settings.path)


def chat_think(dyncot_args: DynCotArguments, given: frozenset[str], model_args: Any) -> ChatThink:
    """The engine's decision: the recipe's mode; its threshold, else the model's saved one, else the default."""
    if "dyncot_think_threshold" in given:
        threshold, source = dyncot_args.dyncot_think_threshold, "the recipe"
    else:
        threshold, source = _saved_threshold(model_args) or (DEFAULT_THRESHOLD, "the default")
    ignored = sorted(set(given) - set(INFERENCE_KEYS))
    note = f"; training-only keys ignored: {', '.join(ignored)}" if ignored else ""
    logger.info_rank0(f"[dyncot] chat replies: dyncot_think={dyncot_args.dyncot_think}, threshold {threshold} "
                      f"(from {source}){note}")
    return ChatThink(dyncot_args.dyncot_think, threshold, source)


class _StreamError:
    """What a failed generation leaves in its ``TextIteratorStreamer``'s queue: the reader compares every item with
    the stop signal before it returns it (``value == self.stop_signal``), and this item's comparison raises the
    generation's error, in the reader's thread, whether the reader was already waiting on the queue or not."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __eq__(self, other: object) -> bool:
        raise self.error


def end_stream_with(streamer: Any, error: BaseException) -> None:
    """End a streamed reply with ``error``. LLaMA-Factory's streaming chat runs ``generate`` in a thread and reads
    a ``TextIteratorStreamer`` that only ``generate``'s normal end closes, so a generation that raises would leave
    the reader (``chat``, ``webchat``, ``api`` with ``stream``) waiting forever; with this the reader raises the
    same error at once. A streamer without a queue (no reader waits on it) is left alone."""
    queue = getattr(streamer, "text_queue", None)
    if queue is not None:
        queue.put(_StreamError(error))


def think_in_generate(model: Any, tokenizer: Any, think: ChatThink) -> None:
    """Make ``model.generate`` (this model object only) generate under ``think``: each call gets a fresh
    :class:`ThinkControl` and the family's position inputs. Calls on one model run one at a time (a lock): the
    control's prefill hook is added to and removed from the shared model per call, and torch's hook tables must not
    change under another thread's forward (LLaMA-Factory's Hugging Face engine runs one request at a time by default,
    ``MAX_CONCURRENT=1``, but a streamed reply whose client left keeps generating in its thread). A call that
    raises ends its stream (if any) with the error (:func:`end_stream_with`). Idempotent."""
    if getattr(model.generate, _WRAPPED, False):
        return
    base = ThinkControl.for_model(think.mode, tokenizer, think.threshold, model)
    original = model.generate
    family = family_of(model)
    one_at_a_time = threading.Lock()

    @functools.wraps(original)
    def generate(*args: Any, **kwargs: Any) -> Any:
        if args:  # generate(input_ids, ...): LLaMA-Factory passes everything by name
            kwargs["inputs"], args = args[0], args[1:]
        if args:
            raise TypeError("dyncot chat: generate takes the prompt ids as its only positional argument")
        if "inputs" in kwargs:  # the engine's call: model.generate(inputs=prompt ids, attention_mask=..., ...)
            kwargs = generation_inputs(model, {"input_ids": kwargs.pop("inputs"), **kwargs}, family)
        processors = kwargs.pop("logits_processor", None)
        control = base.fresh()
        try:
            with one_at_a_time:
                out = generate_with_think(model, kwargs, control, original, logits_processor=processors)
        except BaseException as error:
            end_stream_with(kwargs.get("streamer"), error)
            raise
        if logger.isEnabledFor(logging.DEBUG) and control.think_prob is not None:  # LLAMAFACTORY_VERBOSITY=DEBUG
            for prob, thinks in zip(control.think_prob.tolist(), control.thinks.tolist()):
                logger.debug(f"[dyncot] think_prob {prob!r}, threshold {think.threshold!r}: "
                             f"{'thinks' if thinks else 'plain'} ({think.mode})")
        return out

    setattr(generate, _WRAPPED, True)
    model.generate = generate


__all__ = ["INFERENCE_KEYS", "ChatThink", "chat_think", "check_backend", "end_stream_with", "think_in_generate"]
