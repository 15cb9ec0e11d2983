"""The plugin's seam into LLaMA-Factory 0.9.5: every name it replaces for good, each by one named, idempotent function
(Liger-Kernel's ``monkey_patch.py`` style). Wiring only: what a plugin run does lives in
:mod:`dyncot_plugin.train.workflow`, what a chat front end does in :mod:`dyncot_plugin.chat`, what export adds in
:mod:`dyncot_plugin.export`, what LlamaBoard shows in :mod:`dyncot_plugin.webui`.

Applied when a seam module is first imported (see :mod:`dyncot_plugin._bootstrap`), per :data:`SEAMS`:
``llamafactory.train.tuner`` (``llamafactory-cli train`` and ``export``, torchrun workers),
``llamafactory.chat.chat_model`` (``llamafactory-cli chat``, ``api``, ``webchat``),
``llamafactory.chat.hf_engine`` (their Hugging Face engine) and ``llamafactory.webui.interface`` (below):

======================================================  ===========================================================
LLaMA-Factory name                                      why
======================================================  ===========================================================
``llamafactory.hparams.parser.read_args``               take the recipe's ``dyncot_*`` keys out (YAML and
                                                        ``key=value`` overrides), validate them before anything
                                                        loads, and remember them; LLaMA-Factory's parser then sees
                                                        exactly the keys it knows.
``llamafactory.train.tuner.run_sft``                    route ``stage: sft`` through the plugin when the recipe has
                                                        ``dyncot_*`` keys; otherwise call the original untouched.
``llamafactory.train.tuner.export_model``               copy the model's ``dyncot_think.json`` (the last adapter's,
                                                        else the model's) next to the exported model
                                                        (``llamafactory-cli export`` and LlamaBoard's Export tab).
``llamafactory.train.callbacks.LogCallback.on_log``     copy the plugin's metrics (``cot_ratio``,
                                                        ``selection_loss``, ``eval_f1@1`` & co.) into
                                                        ``trainer_log.jsonl`` (it writes a fixed set of keys).
``llamafactory.chat.chat_model.get_infer_args``         a chat recipe with ``dyncot_*`` keys and a backend other
                                                        than Hugging Face is refused by name before the model loads.
``llamafactory.chat.hf_engine.HuggingfaceEngine``       with ``dyncot_*`` keys, the engine's model generates every
``.__init__``                                           reply under the recipe's ``dyncot_think`` and threshold.
======================================================  ===========================================================

and when ``llamafactory.webui.interface`` is (``llamafactory-cli webui``, ``webchat``), the web UI's names, each
wrapped by a factory of :mod:`dyncot_plugin.webui`:

======================================================  ===========================================================
``llamafactory.webui.locales.LOCALES``                  entries for the plugin's elements, five languages each.
``...webui.interface.create_train_tab``                 the "Dynamic CoT" group; the CoT share and γ beside the
                                                        loss curve.
``...webui.interface.create_eval_tab``                  the prediction run's think mode and threshold.
``...webui.interface.create_infer_tab``,                the Chat box's think mode and threshold, sent with each
``...webui.interface.create_chat_box``                  message; each reply's ``think_prob`` shown.
``...webui.chatter.WebChatModel.load_model``            the Chat tab's ``dyncot_*`` extra arguments checked first.
``...webui.runner.Runner._parse_train_args``,           the tab's non-default fields become ``dyncot_*`` keys of
``._parse_eval_args``                                   the recipe.
``...webui.runner.Runner._initialize``                  the recipe checked as the command line checks it
                                                        (:mod:`dyncot_plugin.validate`) before anything starts.
``...webui.runner.Runner._build_config_dict``           fields at their default stay out of saved configurations.
``...webui.runner.load_args``                           a configuration without a field resets it to its default.
======================================================  ===========================================================

A recipe without any ``dyncot_*`` key therefore runs LLaMA-Factory's own code path, value for value, and a
LlamaBoard user who leaves the Dynamic CoT fields alone gets LlamaBoard's own recipes and saved files, byte for byte.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from dyncot_plugin import config as dyncot_config
from dyncot_plugin.train import workflow

_ORIGINAL = "__dyncot_original__"
_APPLIED = False


def _wrap(original: Callable, replacement: Callable) -> Callable:
    functools.update_wrapper(replacement, original)
    setattr(replacement, _ORIGINAL, original)
    return replacement


def is_patched(obj: Any) -> bool:
    return hasattr(obj, _ORIGINAL)


def original_of(obj: Any) -> Any:
    return getattr(obj, _ORIGINAL, obj)


def patch_argument_reader() -> None:
    """Replace ``llamafactory.hparams.parser.read_args`` so ``dyncot_*`` keys are split off and validated."""
    from llamafactory.hparams import parser

    if is_patched(parser.read_args):
        return
    original = parser.read_args

    def read_args(args=None):
        with workflow.reported_errors():
            rest, found = dyncot_config.split_args(original(args))
            dyncot_config.set_current(dyncot_config.parse_dyncot_args(found) if found else None, found)
        return rest

    parser.read_args = _wrap(original, read_args)


def patch_sft_entry() -> None:
    """Replace ``llamafactory.train.tuner.run_sft`` by :func:`dyncot_plugin.train.workflow.run_dyncot_sft`."""
    from llamafactory.train import tuner

    if is_patched(tuner.run_sft):
        return
    original = tuner.run_sft

    def run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks=None):
        dyncot_args = dyncot_config.get_current()
        if dyncot_args is None:  # vanilla recipe
            return original(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
        with workflow.reported_errors():
            return workflow.run_dyncot_sft(
                original, dyncot_args, model_args, data_args, training_args, finetuning_args, generating_args,
                callbacks,
            )

    tuner.run_sft = _wrap(original, run_sft)


def patch_export_model() -> None:
    """Wrap ``llamafactory.train.tuner.export_model`` by :func:`dyncot_plugin.export.export_with_think_settings`."""
    from llamafactory.train import tuner

    if is_patched(tuner.export_model):
        return
    original = tuner.export_model

    def export_model(args=None):
        from dyncot_plugin import export

        with workflow.reported_errors():
            return export.export_with_think_settings(original, args)

    tuner.export_model = _wrap(original, export_model)


def patch_log_callback() -> None:
    """Wrap ``LogCallback.on_log`` so the plugin's metrics also reach ``trainer_log.jsonl``."""
    from llamafactory.train.callbacks import LogCallback

    if is_patched(LogCallback.on_log):
        return
    original = LogCallback.on_log
    keys = workflow.LOGGED_KEYS

    def on_log(self, args, state, control, **kwargs):
        last = state.log_history[-1] if state.log_history else {}
        extra = {key: last[key] for key in keys if key in last}
        if not extra:
            return original(self, args, state, control, **kwargs)
        write = type(self)._write_log
        # ``_write_log`` runs on LogCallback's thread pool: bind this entry's values now.
        self._write_log = lambda output_dir, logs: write(self, output_dir, {**logs, **extra})
        try:
            return original(self, args, state, control, **kwargs)
        finally:
            del self._write_log

    LogCallback.on_log = _wrap(original, on_log)


def patch_infer_args() -> None:
    """Wrap ``llamafactory.chat.chat_model.get_infer_args``: a dyncot chat recipe must use the Hugging Face engine."""
    from llamafactory.chat import chat_model

    if is_patched(chat_model.get_infer_args):
        return
    original = chat_model.get_infer_args

    def get_infer_args(args=None):
        from llamafactory.hparams import parser

        rest = parser.read_args(args)  # the patched reader: validates and records the dyncot_* keys
        if dyncot_config.get_current() is not None:
            from dyncot_plugin import chat

            with workflow.reported_errors():
                chat.check_backend(rest)
        return original(args)  # reads the recipe again, the same way

    chat_model.get_infer_args = _wrap(original, get_infer_args)


def patch_hf_engine() -> None:
    """Wrap ``HuggingfaceEngine.__init__``: with ``dyncot_*`` keys, its model generates under the think decision."""
    from llamafactory.chat.hf_engine import HuggingfaceEngine

    if is_patched(HuggingfaceEngine.__init__):
        return
    original = HuggingfaceEngine.__init__

    def __init__(self, model_args, data_args, finetuning_args, generating_args):
        dyncot_args, think = dyncot_config.get_current(), None
        if dyncot_args is not None:
            from dyncot_plugin import chat

            with workflow.reported_errors():  # reads only dyncot_think.json: before the model loads
                think = chat.chat_think(dyncot_args, dyncot_config.given_keys(), model_args)
        original(self, model_args, data_args, finetuning_args, generating_args)
        if think is not None and self.can_generate:
            chat.think_in_generate(self.model, self.tokenizer, think)

    HuggingfaceEngine.__init__ = _wrap(original, __init__)


# ------------------------------------------------------------------------------ LlamaBoard (webui, webchat)
def _replace(owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
    """``owner.name = make(original)`` unless already done (the shape of every web UI patch below)."""
    original = getattr(owner, name)
    if not is_patched(original):
        setattr(owner, name, _wrap(original, make(original)))


def patch_webui_locales() -> None:
    """Add the plugin's elements to ``llamafactory.webui.locales.LOCALES`` (labels in LlamaBoard's five languages)."""
    from llamafactory.webui import locales

    from dyncot_plugin.webui.locales import add_to

    add_to(locales.LOCALES)


def patch_webui_train_tab() -> None:
    """``llamafactory.webui.interface.create_train_tab``: the "Dynamic CoT" group, the CoT-share plot."""
    from llamafactory.webui import interface

    from dyncot_plugin.webui.train import wrap_create_train_tab

    _replace(interface, "create_train_tab", wrap_create_train_tab)


def patch_webui_eval_tab() -> None:
    """``llamafactory.webui.interface.create_eval_tab``: the prediction run's think mode and threshold."""
    from llamafactory.webui import interface

    from dyncot_plugin.webui.evaluate import wrap_create_eval_tab

    _replace(interface, "create_eval_tab", wrap_create_eval_tab)


def patch_webui_infer_tab() -> None:
    """``llamafactory.webui.interface.create_infer_tab``: the Chat tab's think mode and threshold per message."""
    from llamafactory.webui import interface

    from dyncot_plugin.webui.chat import wrap_create_infer_tab

    _replace(interface, "create_infer_tab", wrap_create_infer_tab)


def patch_webui_chat_box() -> None:
    """``llamafactory.webui.interface.create_chat_box`` (``webchat``'s page): the same two fields."""
    from llamafactory.webui import interface

    from dyncot_plugin.webui.chat import wrap_create_chat_box

    _replace(interface, "create_chat_box", wrap_create_chat_box)


def patch_webui_load_model() -> None:
    """``WebChatModel.load_model``: the Chat tab's ``dyncot_*`` extra arguments checked before loading."""
    from llamafactory.webui.chatter import WebChatModel

    from dyncot_plugin.webui.chat import wrap_load_model

    _replace(WebChatModel, "load_model", wrap_load_model)


def patch_webui_train_args() -> None:
    """``Runner._parse_train_args``: the Train tab's non-default fields become ``dyncot_*`` keys of the recipe."""
    from llamafactory.webui.runner import Runner

    from dyncot_plugin.webui.runner import wrap_parse_train_args

    _replace(Runner, "_parse_train_args", wrap_parse_train_args)


def patch_webui_eval_args() -> None:
    """``Runner._parse_eval_args``: the prediction run's think mode (when not off) joins its recipe."""
    from llamafactory.webui.runner import Runner

    from dyncot_plugin.webui.runner import wrap_parse_eval_args

    _replace(Runner, "_parse_eval_args", wrap_parse_eval_args)


def patch_webui_initialize() -> None:
    """``Runner._initialize``: the recipe is checked as the command line checks it before Preview, Save and Start."""
    from llamafactory.webui.runner import Runner

    from dyncot_plugin.webui.runner import wrap_initialize

    _replace(Runner, "_initialize", wrap_initialize)


def patch_webui_config_dict() -> None:
    """``Runner._build_config_dict``: fields at their default stay out of saved configurations."""
    from llamafactory.webui.runner import Runner

    from dyncot_plugin.webui.runner import wrap_build_config_dict

    _replace(Runner, "_build_config_dict", wrap_build_config_dict)


def patch_webui_load_args() -> None:
    """``llamafactory.webui.runner.load_args``: a configuration without a field sets it back to its default."""
    from llamafactory.webui import runner

    from dyncot_plugin.webui.runner import wrap_load_args

    _replace(runner, "load_args", wrap_load_args)


SEAMS: dict[str, tuple[Callable[[], None], ...]] = {
    "llamafactory.train.tuner": (patch_argument_reader, patch_sft_entry, patch_export_model, patch_log_callback),
    "llamafactory.chat.chat_model": (patch_argument_reader, patch_infer_args),
    # its own seam: LLaMA-Factory imports the engine only for infer_backend huggingface, and so does the plugin
    "llamafactory.chat.hf_engine": (patch_hf_engine,),
    # LlamaBoard and webchat: the module that builds their pages (it has imported everything patched below)
    "llamafactory.webui.interface": (
        patch_webui_locales, patch_webui_train_tab, patch_webui_eval_tab, patch_webui_infer_tab,
        patch_webui_chat_box, patch_webui_load_model, patch_webui_train_args, patch_webui_eval_args,
        patch_webui_initialize, patch_webui_config_dict, patch_webui_load_args,
    ),
}
"""Seam module -> the patches its first import applies (the keys are what :mod:`dyncot_plugin._bootstrap` watches)."""


def _targets() -> list[tuple[Any, str]]:
    from llamafactory.hparams import parser
    from llamafactory.train import callbacks, tuner

    targets = [(parser, "read_args"), (tuner, "run_sft"), (tuner, "export_model"), (callbacks.LogCallback, "on_log")]
    chat_model, hf_engine = (sys.modules.get(f"llamafactory.chat.{m}") for m in ("chat_model", "hf_engine"))
    if chat_model is not None:
        targets.append((chat_model, "get_infer_args"))
    if hf_engine is not None:
        targets.append((hf_engine.HuggingfaceEngine, "__init__"))
    if "llamafactory.webui.interface" in sys.modules:
        from llamafactory.webui import chatter, interface, runner

        targets += [(interface, name) for name in ("create_train_tab", "create_eval_tab", "create_infer_tab",
                                                   "create_chat_box")]
        targets += [(chatter.WebChatModel, "load_model"), (runner, "load_args")]
        targets += [(runner.Runner, name) for name in ("_parse_train_args", "_parse_eval_args", "_initialize",
                                                       "_build_config_dict")]
    return targets


LAZY_SEAMS = ("llamafactory.webui.interface",)
"""Seams :func:`apply_patches` without a seam leaves alone until their module is imported (it would import Gradio)."""


def apply_patches(seam: str | None = None) -> None:
    """Apply the patches of ``seam`` (a key of :data:`SEAMS`), or of every seam (idempotent; a seam of
    :data:`LAZY_SEAMS` only once its module is imported)."""
    global _APPLIED
    every = [name for name in SEAMS if name not in LAZY_SEAMS or name in sys.modules]
    for name in [seam] if seam else every:
        for patch in SEAMS[name]:
            patch()
    if not _APPLIED:
        _APPLIED = True
        rank = os.environ.get("RANK", "0")
        print(f"[dyncot-plugin] active in pid {os.getpid()} (rank {rank}): patched llamafactory", file=sys.stderr)


def remove_patches() -> None:
    """Restore LLaMA-Factory's originals (for tests and for people who want the vanilla path back in-process)."""
    global _APPLIED
    for owner, name in _targets():
        current = getattr(owner, name)
        if is_patched(current):
            setattr(owner, name, original_of(current))
    dyncot_config.set_current(None)
    _APPLIED = False
