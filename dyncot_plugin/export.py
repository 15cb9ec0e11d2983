"""``llamafactory-cli export`` with the model's think settings: ``dyncot_think.json`` goes next to the exported model.

A merged model is served by its own folder (chat front ends, ``dyncot-predict``, ``dyncot-serve``), which read "the
model's threshold" from ``dyncot_think.json`` there (:mod:`dyncot_plugin.think_settings`). LLaMA-Factory's export
writes the weights, tokenizer, processor and an Ollama ``Modelfile`` only, so without this a merged Dynamic-CoT
adapter would be served at the default threshold 0.5 instead of its own. The seam (:mod:`dyncot_plugin.patches`)
wraps ``llamafactory.train.tuner.export_model``, which the launcher (``llamafactory-cli export``) and LlamaBoard's
Export tab (``llamafactory.webui.components.export``) both call:

1. before the model loads, the file is resolved as everywhere else (the last adapter's, else the model's; a
   malformed one stops the export with one ``[dyncot-plugin] error:`` line);
2. LLaMA-Factory's export runs unchanged;
3. the file is copied byte for byte into ``export_dir`` (atomically) and the copy is logged.

Where neither the adapter nor the model has the file (a model the plugin never trained), nothing is written: the
export is LLaMA-Factory's, file for file. ``export_hub_model_id`` pushes what LLaMA-Factory pushes (the file stays
in ``export_dir``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from llamafactory.extras import logging as lf_logging

from dyncot_plugin.config import DynCotConfigError
from dyncot_plugin.io.files import atomic_write_text
from dyncot_plugin.think import THINK_SETTINGS_FILE
from dyncot_plugin.think_settings import ThinkSettingsError, resolve_think_settings

logger = lf_logging.get_logger(f"llamafactory.{__name__}")


def export_with_think_settings(original: Callable[..., Any], args: dict[str, Any] | list[str] | None) -> None:
    """Run LLaMA-Factory's ``export_model(args)`` and copy the model's ``dyncot_think.json`` next to its output."""
    from llamafactory.hparams import get_infer_args

    model_args = get_infer_args(args)[0]  # the same parse export_model does first (no model is loaded)
    try:
        settings = resolve_think_settings(model_args.model_name_or_path, model_args.adapter_name_or_path)
    except ThinkSettingsError as e:
        raise DynCotConfigError(str(e)) from None
    text = None
    if settings.path is not None:
        with open(settings.path, encoding="utf-8") as f:
            text = f.read()
    original(args)
    if text is None or model_args.export_dir is None:
        return
    dest = os.path.join(model_args.export_dir, THINK_SETTINGS_FILE)
    atomic_write_text(dest, text)
    logger.info_rank0(f"[dyncot] {THINK_SETTINGS_FILE} (threshold {settings.threshold}) copied from "
                      f"{settings.path} to {dest}")


__all__ = ["export_with_think_settings"]
