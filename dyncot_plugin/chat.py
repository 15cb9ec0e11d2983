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
* Per message (LlamaBoard's Chat tab, :mod:`dyncot_plugin.webui.chat`): the engine's model carries a
  :class:`ThinkSwitch`, so the mode and threshold can change between two messages without reloading the model, and
  each reply's ``think_prob`` and decision are handed back (:class:`ReplyThink`, the same line the engine logs at
  ``LLAMAFACTORY_VERBOSITY=DEBUG``).

A recipe without ``dyncot_*`` keys changes nothing: the engine is LLaMA-Factory's own, untouched.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from llamafactory.extras import logging as lf_logging

from dyncot_plugin.config import DynCotArguments, DynCotConfigError
from dyncot_plugin.think import DEFAULT_THRESHOLD, THINK_MODES, check_threshold
from dyncot_plugin.think_settings import ThinkSettingsError, resolve_think_settings
from dyncot_plugin.train.families import family_of
from dyncot_plugin.train.generation import ThinkControl, generate_with_think, generation_inputs
from dyncot_plugin.validate import check_backend

logger = lf_logging.get_logger(f"llamafactory.{__name__}")

INFERENCE_KEYS = ("dyncot_think", "dyncot_think_threshold")
"""The keys a chat front end honours; every other ``dyncot_*`` key is training-only there."""
OFF = "off"
"""A chat box's think mode meaning LLaMA-Factory's own generation (no decision, no ``think_prob``)."""
_WRAPPED = "__dyncot_think__"


@dataclass(frozen=True)
class ChatThink:
    """The think decision of one chat engine."""

    mode: str
    threshold: float
    threshold_from: str  # "the recipe", a dyncot_think.json path, or "the default"


def saved_threshold(model_name_or_path: Any, adapter_name_or_path: Any = None) -> tuple[float, str] | None:
    """``(threshold, path)`` from the ``dyncot_think.json`` of the last adapter of ``adapter_name_or_path`` (a list,
    or LLaMA-Factory's comma-separated string), else of ``model_name_or_path``; None when neither has one
    (:func:`dyncot_plugin.think_settings.resolve_think_settings`; the web UI's Chat tab takes its default from it)."""
    try:
        settings = resolve_think_settings(model_name_or_path, adapter_name_or_path)
    except ThinkSettingsError as e:
        raise DynCotConfigError(str(e)) from None
    return None if settings.path is None else (settings.threshold, settings.path)


def _saved_threshold(model_args: Any) -> tuple[float, str] | None:
    """The threshold in the ``dyncot_think.json`` of the last adapter, else of the model folder, if any."""
    return saved_threshold(getattr(model_args, "model_name_or_path", None),
                           getattr(model_args, "adapter_name_or_path", None))


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


@dataclass(frozen=True)
class ReplyThink:
    """The decision of one reply: its ``think_prob`` (the model's probability of opening it with ``<think>``),
    whether it thinks, under which mode and threshold."""

    think_prob: float
    thinks: bool
    mode: str
    threshold: float

    def line(self) -> str:
        """The reply's decision as the engine logs it at DEBUG (``[dyncot] `` + this line)."""
        return (f"think_prob {self.think_prob:.8g}, threshold {self.threshold}: "
                f"{'thinks' if self.thinks else 'plain'} ({self.mode})")


class ThinkSwitch:
    """The think decision of one chat model, changeable between replies without reloading the model.

    :func:`think_in_generate` puts one on a model. :meth:`set` picks the decision of the replies that start after it
    (``None``: LLaMA-Factory's own generation, untouched) and returns a ticket; every reply records its
    :class:`ReplyThink` under the ticket in force when it started, and :meth:`wait` hands it back (a streamed
    reply's ``generate`` returns just after its last token reached the reader). A front end that sets the decision
    for each message and then asks for the reply (LlamaBoard's Chat tab, one message at a time: Gradio runs an
    event's calls one at a time by default) gets each reply's own decision."""

    def __init__(self, think: ChatThink | None):
        self._think = think
        self._ticket = 0
        self._done = threading.Condition()
        self._replies: deque[tuple[int, ReplyThink | None]] = deque(maxlen=64)

    @property
    def think(self) -> ChatThink | None:
        return self._think

    def set(self, think: ChatThink | None) -> int:
        """The decision of the replies that start from now on (None: LLaMA-Factory's own generation); returns the
        ticket they record under."""
        with self._done:
            self._think, self._ticket = think, self._ticket + 1
            return self._ticket

    def current(self) -> tuple[ChatThink | None, int]:
        """The decision in force and its ticket (read by a reply as it starts)."""
        with self._done:
            return self._think, self._ticket

    def record(self, ticket: int, reply: ReplyThink | None) -> None:
        with self._done:
            self._replies.append((ticket, reply))
            self._done.notify_all()

    def wait(self, ticket: int, timeout: float = 60.0) -> ReplyThink | None:
        """The decision of the first reply that started under ``ticket``, waiting up to ``timeout`` seconds for it to
        finish; None when it generated under LLaMA-Factory's own decision or did not finish in time."""
        def found() -> bool:
            return any(t == ticket for t, _ in self._replies)

        with self._done:
            self._done.wait_for(found, timeout=timeout)
            return next((reply for t, reply in self._replies if t == ticket), None)


def think_switch(model: Any) -> ThinkSwitch | None:
    """The :class:`ThinkSwitch` :func:`think_in_generate` put on ``model``, if any."""
    return getattr(getattr(model, "generate", None), _WRAPPED, None)


def think_in_generate(model: Any, tokenizer: Any, think: ChatThink | None) -> ThinkSwitch:
    """Make ``model.generate`` (this model object only) generate under a :class:`ThinkSwitch` set to ``think``
    (None: LLaMA-Factory's own generation until :meth:`ThinkSwitch.set` picks a mode): each call gets a fresh
    :class:`ThinkControl` with the switch's mode and threshold, and the family's position inputs. Calls on one model
    run one at a time (a lock): the control's prefill hook is added to and removed from the shared model per call,
    and torch's hook tables must not change under another thread's forward (LLaMA-Factory's Hugging Face engine runs
    one request at a time by default, ``MAX_CONCURRENT=1``, but a streamed reply whose client left keeps generating in
    its thread). A call that raises ends its stream (if any) with the error (:func:`end_stream_with`).
    Idempotent: a model that has a switch keeps it (returned)."""
    switch = think_switch(model)
    if switch is not None:
        return switch
    switch = ThinkSwitch(think)
    original = model.generate
    family = family_of(model)
    one_at_a_time = threading.Lock()
    built: list[ThinkControl] = []

    def base() -> ThinkControl:  # the text ban decodes the whole vocabulary once: built on first use
        if not built:
            built.append(ThinkControl.for_model("greedy", tokenizer, DEFAULT_THRESHOLD, model))
        return built[0]

    if think is not None:
        base()

    @functools.wraps(original)
    def generate(*args: Any, **kwargs: Any) -> Any:
        think, ticket = switch.current()
        if think is None:  # LLaMA-Factory's own call, as it made it
            with one_at_a_time:
                try:
                    return original(*args, **kwargs)
                finally:
                    switch.record(ticket, None)
        if args:  # generate(input_ids, ...): LLaMA-Factory passes everything by name
            kwargs["inputs"], args = args[0], args[1:]
        if args:
            raise TypeError("dyncot chat: generate takes the prompt ids as its only positional argument")
        if "inputs" in kwargs:  # the engine's call: model.generate(inputs=prompt ids, attention_mask=..., ...)
            kwargs = generation_inputs(model, {"input_ids": kwargs.pop("inputs"), **kwargs}, family)
        processors = kwargs.pop("logits_processor", None)
        control = base().fresh()
        control.mode, control.threshold = think.mode, think.threshold  # both checked when the ChatThink was made
        replies: list[ReplyThink] = []
        try:
            with one_at_a_time:
                out = generate_with_think(model, kwargs, control, original, logits_processor=processors)
            if control.think_prob is not None:
                replies = [ReplyThink(prob, bool(thinks), think.mode, think.threshold)
                           for prob, thinks in zip(control.think_prob.tolist(), control.thinks.tolist())]
        except BaseException as error:
            end_stream_with(kwargs.get("streamer"), error)
            raise
        finally:
            switch.record(ticket, replies[0] if replies else None)
        if logger.isEnabledFor(logging.DEBUG):  # LLAMAFACTORY_VERBOSITY=DEBUG
            for reply in replies:
                logger.debug(f"[dyncot] {reply.line()}")
        return out

    setattr(generate, _WRAPPED, switch)
    model.generate = generate
    return switch


def web_think(mode: str, threshold: Any) -> ChatThink | None:
    """The decision a front end's two fields ask for (the web UI's Chat tab): ``mode`` one of
    :data:`~dyncot_plugin.think.THINK_MODES` or :data:`OFF`; a bad threshold raises :class:`DynCotConfigError`."""
    if mode == OFF:
        return None
    if mode not in THINK_MODES:
        raise DynCotConfigError(f"dyncot_think: got {mode!r}; allowed values are {OFF}, {', '.join(THINK_MODES)}.")
    try:
        return ChatThink(mode, check_threshold(threshold), "the chat box")
    except ValueError as exc:
        raise DynCotConfigError(str(exc)) from None


__all__ = [
    "INFERENCE_KEYS",
    "OFF",
    "ChatThink",
    "ReplyThink",
    "ThinkSwitch",
    "chat_think",
    "check_backend",
    "end_stream_with",
    "saved_threshold",
    "think_in_generate",
    "think_switch",
    "web_think",
]
