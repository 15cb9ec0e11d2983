"""The form fields of the web UI, made from :class:`~dyncot_plugin.config.DynCotArguments`: one per key, so a key
added to (or removed from) the dataclass appears in (or leaves) the Train tab without an edit here.

A field's widget follows the key's declaration: a key with a fixed set of values (``CHOICES``) is a drop-down, a
``bool`` a checkbox, an ``int`` or ``float`` a number box, a ``float | None`` key a text box (empty: null), and its
help text is the key's paragraph of the dataclass docstring (``FIELD_DOCS``). What the user leaves at the key's
default is never written into a recipe or a saved configuration (:meth:`FormField.recipe_value`), so an untouched
group leaves LlamaBoard's files byte for byte as vanilla LlamaBoard writes them.

The Evaluate & Predict and Chat tabs have two fields each, the think mode and its threshold, made from the same two
keys; their mode has one more value, :data:`~dyncot_plugin.chat.OFF`: LLaMA-Factory's own generation (the default,
so that a prediction run or a chat stays vanilla until the user picks a mode).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any

from dyncot_plugin.config import CHOICES, FIELD_DOCS, DynCotArguments
from dyncot_plugin.think import THINK_MODES

OFF = "off"  # = dyncot_plugin.chat.OFF (the chat module needs LLaMA-Factory's engine; this one does not)


@dataclass(frozen=True)
class FormField:
    """One widget: its element name in LlamaBoard (``<tab>.<name>``), the recipe key it sets, and how."""

    name: str
    key: str
    kind: str  # "choice" | "bool" | "int" | "float" | "optional_float" | "text"
    default: Any
    choices: tuple[str, ...] = ()
    help: str = ""

    @property
    def summary(self) -> str:
        """The help's first sentence (shown under the field; the group's "Help" has the whole text)."""
        return first_sentence(self.help)

    def component(self, **kwargs: Any) -> Any:
        """The Gradio component of this field, with its default value and English label and help (LOCALES gives
        the other languages)."""
        import gradio as gr

        common = dict(label=self.key, info=self.summary, elem_id=self.name, **kwargs)
        if self.kind == "choice":
            return gr.Dropdown(choices=list(self.choices), value=self.default, **common)
        if self.kind == "bool":
            return gr.Checkbox(value=self.default, **common)
        if self.kind == "int":
            return gr.Number(value=self.default, precision=0, **common)
        if self.kind == "float":
            return gr.Number(value=self.default, **common)
        # optional_float: a text box, empty = null (Gradio's number box has no stable empty state: in the browser an
        # untouched empty box came back as 0.0, which the key refuses)
        return gr.Textbox(value="" if self.default is None else str(self.default), **common)

    def recipe_value(self, raw: Any) -> Any:
        """The value the widget's ``raw`` value stands for in a recipe (an empty number box: the default)."""
        if raw is None or (self.kind in ("text", "optional_float") and str(raw).strip() == ""):
            return self.default
        if self.kind == "optional_float" and isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                return raw.strip()  # the recipe check refuses it with the command line's message
        if self.kind == "int" and isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if self.kind in ("float", "optional_float") and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        return raw

    def is_default(self, raw: Any) -> bool:
        value = self.recipe_value(raw)
        return value == self.default and type(value) is type(self.default) or (value is None and self.default is None)


def first_sentence(text: str) -> str:
    """``text`` up to its first full stop outside a code span."""
    inside = False
    for i, char in enumerate(text):
        if char == "`":
            inside = not inside
        elif char == "." and not inside and (i + 1 == len(text) or text[i + 1] == " "):
            return text[: i + 1]
    return text


def help_markdown(fields: tuple[FormField, ...]) -> str:
    """Every field's whole help, as a Markdown list (key, default, meaning)."""
    return "\n".join(f"- **{f.key}** (default `{f.default}`): {f.help}" for f in fields)


def _kind(key: str, annotation: Any) -> str:
    if key in CHOICES:
        return "choice"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if set(typing.get_args(annotation)) == {float, type(None)}:
        return "optional_float"
    return "text"


def train_fields() -> tuple[FormField, ...]:
    """The Train tab's fields: every key of :class:`DynCotArguments`, in declaration order."""
    hints = typing.get_type_hints(DynCotArguments)
    return tuple(
        FormField(f.name, f.name, _kind(f.name, hints[f.name]), f.default, CHOICES.get(f.name, ()),
                  FIELD_DOCS.get(f.name, ""))
        for f in fields(DynCotArguments)
    )


def think_fields(prefix: str, mode_help: str) -> tuple[FormField, FormField]:
    """The think mode (``OFF`` first: LLaMA-Factory's own) and threshold of a prediction run or a chat box."""
    threshold = next(f for f in train_fields() if f.key == "dyncot_think_threshold")
    return (
        FormField(f"{prefix}_think", "dyncot_think", "choice", OFF, (OFF, *CHOICES.get("dyncot_think", THINK_MODES)),
                  mode_help),
        FormField(f"{prefix}_think_threshold", threshold.key, "float", threshold.default, (), threshold.help),
    )


PREDICT_MODE_HELP = (
    "`off`: LLaMA-Factory's own generation; `auto` (think where `think_prob` reaches the threshold), `always`, "
    "`never`, `greedy`: the run's `dyncot_think`, and every prediction row carries its `think_prob`."
)
CHAT_MODE_HELP = (
    "Changeable between two messages. `off`: LLaMA-Factory's own generation; `auto` thinks where `think_prob` reaches "
    "the threshold, `always` / `never` force or forbid `<think>`; each reply shows its `think_prob`."
)

TAB_FIELDS: dict[str, tuple[FormField, ...]] = {
    "train": train_fields(),
    "eval": think_fields("dyncot_predict", PREDICT_MODE_HELP),
    "infer": think_fields("dyncot_chat", CHAT_MODE_HELP),
}
"""LlamaBoard tab -> the Dynamic CoT fields it shows (element ids ``<tab>.<field name>``)."""


def field_of(elem_id: str) -> FormField | None:
    """The field behind a LlamaBoard element id (``train.dyncot_gamma``), or None for LlamaBoard's own elements."""
    tab, _, name = elem_id.partition(".")
    return next((f for f in TAB_FIELDS.get(tab, ()) if f.name == name), None)


def recipe_keys(tab: str, values: dict[str, Any]) -> dict[str, Any]:
    """The ``dyncot_*`` keys a tab's field values (field name -> widget value) put into a recipe: the fields left
    at their default add nothing; a prediction or chat mode left at ``off`` adds nothing at all."""
    chosen = {f.key: f.recipe_value(values[f.name]) for f in TAB_FIELDS[tab] if f.name in values
              and not f.is_default(values[f.name])}
    if tab != "train" and values.get(TAB_FIELDS[tab][0].name, OFF) == OFF:
        return {}
    return chosen


__all__ = ["OFF", "TAB_FIELDS", "FormField", "field_of", "first_sentence", "help_markdown", "recipe_keys",
           "think_fields", "train_fields"]
