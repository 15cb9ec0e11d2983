"""The Chat tab (and ``llamafactory-cli webchat``): think mode and threshold per message, each reply's decision shown.

Two fields join LlamaBoard's generation settings (under "Enable thinking"): the think mode (``off``: LLaMA-Factory's
own generation, ``auto``, ``always``, ``never``, ``greedy``) and the threshold of ``auto``. They are sent with every
message (the reply event's inputs), so they can change between two messages without reloading the model: the loaded
Hugging Face engine's model carries a :class:`~dyncot_plugin.chat.ThinkSwitch`, set for each message. Each reply then
ends with its decision, ``[dyncot] think_prob …, threshold …: thinks|plain (mode)``, the line the engine logs at
``LLAMAFACTORY_VERBOSITY=DEBUG`` (shown in the chat, not part of the conversation the model sees).

When a model loads, the fields take the engine's decision where it has one: the ``dyncot_think`` /
``dyncot_think_threshold`` of the Chat tab's extra arguments, else ``auto`` and the threshold of the model's (its last
adapter's) ``dyncot_think.json`` (:func:`dyncot_plugin.chat.saved_threshold`); otherwise they stay as they are.
A ``dyncot_*`` key of the extra arguments the command line would refuse is refused in the info box before loading.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from dyncot_plugin import chat
from dyncot_plugin.config import DynCotConfigError, parse_dyncot_args, split_args
from dyncot_plugin.io.read import InputError
from dyncot_plugin.validate import check_backend, error_line
from dyncot_plugin.webui.fields import OFF, TAB_FIELDS
from dyncot_plugin.webui.layout import add_inputs, place_after

USER_ERRORS = (DynCotConfigError, InputError)


def switch_of(chatter: Any) -> chat.ThinkSwitch | None:
    """The loaded engine's switch (put on its model now if it has none yet); None without a Hugging Face engine."""
    engine = getattr(chatter, "engine", None)
    model = getattr(engine, "model", None)
    if engine is None or model is None or not getattr(engine, "can_generate", False) or \
            not hasattr(engine, "tokenizer"):
        return None  # vLLM / SGLang engines generate elsewhere
    return chat.think_switch(model) or chat.think_in_generate(model, engine.tokenizer, None)


def stream_with_think(chatter: Any) -> Callable[..., Iterator[Any]]:
    """The chat box's reply event: LlamaBoard's ``WebChatModel.stream`` under the message's mode and threshold
    (its two last arguments), then the reply's decision appended to what the chat shows."""

    def stream(*args: Any) -> Iterator[Any]:
        import gradio as gr

        *lf_args, mode, threshold = args
        chatbot, messages = lf_args[0], lf_args[1]
        try:
            think = chat.web_think(mode, threshold)
        except DynCotConfigError as err:
            gr.Warning(error_line(err))
            yield chatbot + [{"role": "assistant", "content": error_line(err)}], messages[:-1]
            return
        switch = switch_of(chatter)
        if switch is None:
            if think is not None:
                gr.Warning("[dyncot-plugin] the think mode needs infer_backend huggingface; this reply is "
                           "LLaMA-Factory's own.")
            yield from chatter.stream(*lf_args)
            return
        ticket = switch.set(think)
        last = None
        for last in chatter.stream(*lf_args):
            yield last
        reply = switch.wait(ticket) if think is not None and last is not None else None
        if reply is not None:
            shown, history = last
            shown[-1] = {**shown[-1], "content": f"{shown[-1]['content']}\n\n`[dyncot] {reply.line()}`"}
            yield shown, history

    return stream


def engine_defaults(chatter: Any, model_path: str, model_name: str, finetuning_type: str, checkpoint_path: Any,
                    extra_args: str) -> tuple[str, float] | None:
    """The think mode and threshold of the engine just loaded: its recipe's, else ``auto`` at the threshold of the
    model's ``dyncot_think.json`` (looked up where LlamaBoard's ``load_model`` loads the model and adapters from);
    None when it has neither."""
    switch = switch_of(chatter)
    if switch is not None and switch.think is not None:
        return switch.think.mode, switch.think.threshold
    from llamafactory.extras.constants import PEFT_METHODS
    from llamafactory.webui.common import get_save_dir

    try:
        args = {"model_name_or_path": model_path, **json.loads(extra_args or "{}")}
    except ValueError:
        args = {"model_name_or_path": model_path}
    if checkpoint_path:  # as LlamaBoard's load_model: the checkpoint chosen at the top wins over the extra arguments
        if finetuning_type in PEFT_METHODS:
            args["adapter_name_or_path"] = ",".join(get_save_dir(model_name, finetuning_type, a) for a in checkpoint_path)
        else:
            args["model_name_or_path"] = get_save_dir(model_name, finetuning_type, checkpoint_path)
    saved = chat.saved_threshold(args.get("model_name_or_path"), args.get("adapter_name_or_path"))
    return ("auto", saved[0]) if saved is not None else None


def add_think_fields(engine: Any, elems: dict[str, Any]) -> dict[str, Any]:
    """Render the two fields under the chat box's "Enable thinking" and make the reply event send them."""
    fields = TAB_FIELDS["infer"]
    mode, threshold = fields[0].component(), fields[1].component(minimum=0)
    place_after(threshold, elems["enable_thinking"])
    place_after(mode, elems["enable_thinking"])
    add_inputs(engine.chatter.stream, [mode, threshold], stream_with_think(engine.chatter))
    return {fields[0].name: mode, fields[1].name: threshold}


def wrap_create_infer_tab(original: Callable) -> Callable:
    """LlamaBoard's ``create_infer_tab`` with the think fields; after a model loads they take its decision."""

    def create_infer_tab(engine: Any) -> dict[str, Any]:
        import gradio as gr

        elems = original(engine)
        form = add_think_fields(engine, elems)
        get = engine.manager.get_elem_by_id
        top = [get(f"top.{name}") for name in ("model_path", "model_name", "finetuning_type", "checkpoint_path")]

        def after_load(*values: Any) -> tuple[Any, Any]:
            if not engine.chatter.loaded:
                return gr.skip(), gr.skip()
            try:
                found = engine_defaults(engine.chatter, *values)
            except DynCotConfigError as err:  # a broken dyncot_think.json: say so, keep the fields
                gr.Warning(error_line(err))
                return gr.skip(), gr.skip()
            return (found[0], found[1]) if found else (gr.skip(), gr.skip())

        elems["info_box"].change(after_load, [*top, elems["extra_args"]], list(form.values()), queue=False)
        return {**elems, **form}

    return create_infer_tab


def wrap_create_chat_box(original: Callable) -> Callable:
    """``create_chat_box`` as ``llamafactory-cli webchat`` builds it (its model is loaded first): the think fields,
    starting at the engine's decision (a recipe with ``dyncot_*`` keys) or ``off``."""

    def create_chat_box(engine: Any, visible: bool = False) -> tuple[Any, Any, dict[str, Any]]:
        chatbot, messages, elems = original(engine, visible)
        form = add_think_fields(engine, elems)
        switch = switch_of(engine.chatter)
        if switch is not None and switch.think is not None:
            mode, threshold = form.values()
            mode.value, threshold.value = switch.think.mode, switch.think.threshold
        return chatbot, messages, {**elems, **form}

    return create_chat_box


def wrap_load_model(original: Callable) -> Callable:
    """``WebChatModel.load_model``: the extra arguments' ``dyncot_*`` keys and backend are checked first, and a value
    the command line refuses is shown in the info box (the engine would otherwise stop the server's thread)."""

    def load_model(self: Any, data: dict) -> Iterator[str]:
        import gradio as gr

        get = lambda elem_id: data[self.manager.get_elem_by_id(elem_id)]  # LlamaBoard's idiom
        try:
            extra = json.loads(get("infer.extra_args"))
        except (ValueError, KeyError):
            extra = None  # LlamaBoard reports bad JSON itself
        if isinstance(extra, dict):
            try:
                rest, found = split_args({"infer_backend": get("infer.infer_backend"), **extra})
                if found:
                    parse_dyncot_args(found)
                    check_backend(rest)
            except USER_ERRORS as err:
                gr.Warning(error_line(err))
                yield error_line(err)
                return
        yield from original(self, data)

    return load_model


__all__ = ["OFF", "add_think_fields", "engine_defaults", "stream_with_think", "switch_of", "wrap_create_chat_box",
           "wrap_create_infer_tab", "wrap_load_model"]
