"""Where a model's think settings come from: the one reader of ``dyncot_think.json``.

A training run saves ``dyncot_think.json`` next to what it saves (the full model, or the LoRA adapter), a prediction
run next to its predictions: ``{"think", "threshold", "tag", "tag_ids"}``. Chat front ends, ``dyncot-predict``,
``dyncot-serve`` and ``llamafactory-cli export`` all take "the model's threshold" from it, by one rule
(:func:`resolve_think_settings`):

1. the **last adapter** of ``adapter_name_or_path`` that has the file (the adapter that was trained last is the one
   whose run chose the threshold; with no file in it, earlier adapters are not consulted: see below), else
2. the **model folder** (``model_name_or_path``), else
3. the **default** (:data:`~dyncot_plugin.think.DEFAULT_THRESHOLD`, 0.5, no saved tag ids).

Only the last adapter is read, as LLaMA-Factory resumes training on the last one: an earlier adapter's file
describes a model that no longer exists once later adapters are stacked on it, so it falls through to the base
model's. The :class:`ThinkSettings` returned say which file they came from (``source``), so every caller logs the same
"threshold 0.3 (from /path/dyncot_think.json)" line.

A file that exists but is not a JSON object with a finite threshold >= 0 (and, where given, a list of token ids as
``tag_ids``) is a :class:`ThinkSettingsError` naming the file, never silently the default.

Torch-free and LLaMA-Factory-free (the core): the vLLM venv and the training stack share it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from dyncot_plugin.think import DEFAULT_THRESHOLD, THINK_SETTINGS_FILE, check_threshold

__all__ = ["DEFAULT_SOURCE", "ThinkSettings", "ThinkSettingsError", "adapter_list", "read_think_settings",
           "resolve_think_settings", "settings_path"]

DEFAULT_SOURCE = "the default"
"""``ThinkSettings.source`` when no ``dyncot_think.json`` was found."""


class ThinkSettingsError(ValueError):
    """A ``dyncot_think.json`` that cannot be read or is malformed; the message names the file."""


@dataclass(frozen=True)
class ThinkSettings:
    """The think settings a model is served with, and where they came from."""

    threshold: float
    """The threshold of ``auto`` on ``think_prob``."""
    source: str
    """The ``dyncot_think.json`` they were read from, or :data:`DEFAULT_SOURCE`."""
    values: Mapping[str, Any] = field(default_factory=dict)
    """The file's whole JSON object (``think``, ``threshold``, ``tag``, ``tag_ids``); ``{}`` for the default."""

    @property
    def path(self) -> str | None:
        """The file read, or None for the default."""
        return None if self.source == DEFAULT_SOURCE else self.source

    @property
    def tag_ids(self) -> list[int] | None:
        """The think tag's token ids the training run saved, or None."""
        ids = self.values.get("tag_ids")
        return list(ids) if ids else None


def settings_path(folder: str | os.PathLike) -> str:
    return os.path.join(os.fspath(folder), THINK_SETTINGS_FILE)


def read_think_settings(folder: str | os.PathLike | None) -> dict[str, Any] | None:
    """The validated JSON object of ``folder/dyncot_think.json``; None when ``folder`` is not given, not a local
    folder (a Hub id) or has no such file; a :class:`ThinkSettingsError` naming the file when it is unreadable or
    malformed."""
    if not folder:
        return None
    path = settings_path(folder)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise ThinkSettingsError(f"{path}: cannot read ({e})") from None
    except ValueError as e:
        raise ThinkSettingsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(values, dict) or "threshold" not in values:
        raise ThinkSettingsError(f"{path}: expected a JSON object with a numeric threshold")
    try:
        check_threshold(values["threshold"], f"{path}: threshold")
    except ValueError as e:
        raise ThinkSettingsError(str(e)) from None
    ids = values.get("tag_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                              and i >= 0 for i in ids)):
        raise ThinkSettingsError(f"{path}: tag_ids: got {ids!r}; expected a list of token ids")
    return values


def adapter_list(adapters: str | Sequence[str] | None) -> list[str]:
    """``adapter_name_or_path`` as LLaMA-Factory reads it: a list, or one comma-separated string."""
    if not adapters:
        return []
    if isinstance(adapters, str):
        return [a.strip() for a in adapters.split(",") if a.strip()]
    return [str(a) for a in adapters]


def resolve_think_settings(model: str | os.PathLike | None,
                           adapters: str | Sequence[str] | None = None) -> ThinkSettings:
    """The settings of ``model`` with ``adapters`` applied: the last adapter's ``dyncot_think.json``, else the
    model's, else the default (see the module docstring)."""
    folders = adapter_list(adapters)[-1:] + ([os.fspath(model)] if model else [])
    for folder in folders:
        values = read_think_settings(folder)
        if values is not None:
            return ThinkSettings(float(values["threshold"]), settings_path(folder), values)
    return ThinkSettings(DEFAULT_THRESHOLD, DEFAULT_SOURCE, {})
