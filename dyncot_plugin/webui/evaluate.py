"""The Evaluate & Predict tab: the prediction run's think mode and threshold (one mode per Start).

``off`` (the default) leaves the recipe as LlamaBoard writes it; another mode adds ``dyncot_think`` (and a threshold
other than 0.5) to the recipe Start runs, so every row of ``generated_predictions.jsonl`` carries its ``think_prob``
and ``dyncot_think.json`` is written next to the predictions (README "Thinking at inference").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dyncot_plugin.webui.fields import TAB_FIELDS
from dyncot_plugin.webui.layout import extra_inputs, place_before


def wrap_create_eval_tab(original: Callable) -> Callable:
    """LlamaBoard's ``create_eval_tab`` with the think mode and threshold above its buttons."""

    def create_eval_tab(engine: Any) -> dict[str, Any]:
        import gradio as gr

        form = {f.name: f.component(render=False) for f in TAB_FIELDS["eval"]}
        with extra_inputs(engine.manager, form.values()):
            elems = original(engine)
        with gr.Row() as row:
            for component in form.values():
                component.render()
        place_before(row, elems["cmd_preview_btn"].parent)
        return {**elems, **form}

    return create_eval_tab


__all__ = ["wrap_create_eval_tab"]
