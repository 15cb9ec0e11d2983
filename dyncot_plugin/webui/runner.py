"""LlamaBoard's ``Runner`` with the Dynamic CoT fields: into the recipe, checked before anything starts, out of the
saved configuration when left alone, back to their defaults when a configuration without them loads.

* ``_parse_train_args`` / ``_parse_eval_args``: the tab's fields that differ from their default become ``dyncot_*``
  keys of the recipe (after LlamaBoard's own keys; a key the "Extra arguments" JSON already sets keeps that value, as
  extra arguments win over LlamaBoard's fields). Preview shows them, Start writes them into ``training_args.yaml``.
* ``_initialize`` (run before Preview, Save and Start): the recipe goes through
  :func:`dyncot_plugin.validate.check_recipe`; a value the command line refuses comes back as LlamaBoard's own error
  (its warning and output box) with the command line's line, ``[dyncot-plugin] error: …``, and nothing starts.
* ``_build_config_dict`` (Save arguments, ``llamaboard_config.yaml`` of each run): fields at their default are left
  out, so an untouched group saves the bytes vanilla LlamaBoard saves.
* ``load_args`` (Load arguments, and an existing output folder's configuration): a configuration that does not name a
  field (an older file, or one saved with the field at its default) sets it back to its default; an entry for a key
  that no longer exists is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dyncot_plugin.config import DynCotConfigError
from dyncot_plugin.io.read import InputError
from dyncot_plugin.validate import check_recipe, error_line
from dyncot_plugin.webui.fields import TAB_FIELDS, field_of, recipe_keys

USER_ERRORS = (DynCotConfigError, InputError)


def _form_values(runner: Any, data: dict, tab: str) -> dict[str, Any]:
    values = {}
    for f in TAB_FIELDS[tab]:
        elem = runner.manager.get_elem_by_id(f"{tab}.{f.name}")
        if elem in data:
            values[f.name] = data[elem]
    return values


def _with_form(original: Callable, tab: str) -> Callable:
    def parse_args(self: Any, data: dict) -> dict[str, Any]:
        args = original(self, data)
        keys = recipe_keys(tab, _form_values(self, data, tab))
        return {**args, **{key: value for key, value in keys.items() if key not in args}}

    return parse_args


def wrap_parse_train_args(original: Callable) -> Callable:
    return _with_form(original, "train")


def wrap_parse_eval_args(original: Callable) -> Callable:
    return _with_form(original, "eval")


def wrap_initialize(original: Callable) -> Callable:
    def _initialize(self: Any, data: dict, do_train: bool, from_preview: bool) -> str:
        error = original(self, data, do_train, from_preview)
        if error:
            return error
        args = self._parse_train_args(data) if do_train else self._parse_eval_args(data)
        try:
            check_recipe(args)
        except USER_ERRORS as err:
            return error_line(err)
        return ""

    return _initialize


def wrap_build_config_dict(original: Callable) -> Callable:
    def _build_config_dict(self: Any, data: dict) -> dict[str, Any]:
        config = original(self, data)
        return {elem_id: value if (f := field_of(elem_id)) is None else f.recipe_value(value)
                for elem_id, value in config.items() if (f := field_of(elem_id)) is None or not f.is_default(value)}

    return _build_config_dict


def wrap_load_args(original: Callable) -> Callable:
    def load_args(config_path: str) -> dict[str, Any] | None:
        config = original(config_path)
        if not isinstance(config, dict) or not any(str(k).startswith("train.") for k in config):
            return config
        kept = {k: v for k, v in config.items()
                if not str(k).startswith("train.dyncot_") or field_of(str(k)) is not None}
        defaults = {f"train.{f.name}": f.default for f in TAB_FIELDS["train"] if f"train.{f.name}" not in kept}
        return {**kept, **defaults}

    return load_args


__all__ = ["wrap_build_config_dict", "wrap_initialize", "wrap_load_args", "wrap_parse_eval_args",
           "wrap_parse_train_args"]
