"""The Train tab: the "Dynamic CoT" group, and the CoT share and γ beside the loss curve while a run goes.

The group holds one field per :class:`~dyncot_plugin.config.DynCotArguments` key (:mod:`dyncot_plugin.webui.fields`)
and a line naming each chosen dataset's CoT column. Preview, Save, Load and Start carry the fields like
LlamaBoard's own (:mod:`dyncot_plugin.webui.runner` turns them into recipe keys and checks the recipe first).

Watching: every 2 s (LlamaBoard's loss viewer's pace) the run's ``trainer_log.jsonl`` in the output folder the form
names is read, as LlamaBoard's loss viewer and ``python -m dyncot_plugin.train.report`` read it, and drawn under the
loss plot: ``cot_share`` per logged step against ``dyncot_target_cot_ratio`` (from the run's own
``training_args.yaml``) and γ on the right axis. Below it, the last values and, when the run logs its selections
(``dyncot_log_selection``), the share of samples whose view flipped since the previous epoch
(:func:`dyncot_plugin.train.report.view_changes`). Nothing is read again while the files stay the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from dyncot_plugin.io.datasets import read_dataset_info
from dyncot_plugin.io.read import InputError
from dyncot_plugin.train.report import selection_records, view_changes
from dyncot_plugin.train.resume import SELECTION_DIR
from dyncot_plugin.validate import dataset_names
from dyncot_plugin.webui.fields import TAB_FIELDS, help_markdown
from dyncot_plugin.webui.layout import extra_inputs, place_after, place_before

PLOT_ID = "dyncot_cot_share_plot"
SUMMARY_ID = "dyncot_cot_share_summary"
COLUMNS_ID = "dyncot_cot_columns"
PER_ROW = 5  # fields per row of the group


def wrap_create_train_tab(original: Callable) -> Callable:
    """LlamaBoard's ``create_train_tab`` with the Dynamic CoT group and the CoT-share plot."""

    def create_train_tab(engine: Any) -> dict[str, Any]:
        import gradio as gr

        fields = TAB_FIELDS["train"]
        form = {f.name: f.component(render=False) for f in fields}
        with extra_inputs(engine.manager, form.values()):
            elems = original(engine)

        with gr.Accordion("Dynamic CoT", open=False, elem_id="dyncot_tab") as group:
            for start in range(0, len(fields), PER_ROW):
                with gr.Row():
                    for f in fields[start:start + PER_ROW]:
                        form[f.name].render()
            columns = gr.Markdown(elem_id=COLUMNS_ID)
            with gr.Accordion("Help: every Dynamic CoT key", open=False, elem_id="dyncot_help") as help_group:
                gr.Markdown(help_markdown(fields))
        place_before(group, elems["cmd_preview_btn"].parent)  # the row of LlamaBoard's buttons

        plot = gr.Plot(label="CoT share and γ", elem_id=PLOT_ID, visible=False)
        summary = gr.Markdown(elem_id=SUMMARY_ID)
        place_after(plot, elems["loss_viewer"])
        place_after(summary, plot)

        get = engine.manager.get_elem_by_id
        seen = gr.State(None)
        timer = gr.Timer(2.0)
        timer.tick(watch, [get("top.model_name"), get("top.finetuning_type"), elems["output_dir"], seen],
                   [plot, summary, seen], show_progress="hidden", concurrency_limit=None)
        for trigger in (elems["dataset"].change, elems["dataset_dir"].change):
            trigger(describe_cot_columns, [elems["dataset_dir"], elems["dataset"]], [columns], queue=False)
        return {**elems, **form, "dyncot_tab": group, "dyncot_help": help_group, "dyncot_plot": plot}

    return create_train_tab


# ------------------------------------------------------------------------------------------------ the CoT column
def describe_cot_columns(dataset_dir: str, datasets: Any) -> str:
    """One line per chosen dataset: the CoT column its ``dataset_info.json`` entry declares, or that it has none."""
    names = dataset_names(datasets)
    if not names or not dataset_dir:
        return ""
    try:
        info = read_dataset_info(dataset_dir)
    except InputError as err:
        return f"CoT column: {err}"
    lines = []
    for name in names:
        entry = info.get(name)
        column = (entry.get("columns") or {}).get("cot") if isinstance(entry, dict) else None
        lines.append(f"`{name}`: CoT column `{column}`" if column else
                     f"`{name}`: no CoT column (no `cot` key under `columns` in dataset_info.json): "
                     "cot, multitask and dynamic need one, or `dyncot_missing_cot: sft`")
    return "CoT column of each dataset: " + "; ".join(lines)


# ------------------------------------------------------------------------------------------------ watching
def _signature(path: str) -> tuple:
    stamps = []
    for name in ("trainer_log.jsonl", os.path.join(SELECTION_DIR, "")):
        full = os.path.join(path, name)
        if os.path.isdir(full):
            stamps += [(entry.name, entry.stat().st_mtime_ns, entry.stat().st_size) for entry in os.scandir(full)]
        elif os.path.isfile(full):
            stamps.append((name, os.stat(full).st_mtime_ns, os.stat(full).st_size))
    return (path, tuple(sorted(stamps)))


def read_log(path: str) -> list[dict]:
    """The training entries of ``<path>/trainer_log.jsonl`` (those with a loss), a line still being written
    skipped."""
    rows = []
    try:
        with open(os.path.join(path, "trainer_log.jsonl"), encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and "loss" in entry:
                    rows.append(entry)
    except OSError:
        return []
    return rows


def run_target(path: str) -> float | None:
    """``dyncot_target_cot_ratio`` of the recipe LlamaBoard started in ``path`` (its ``training_args.yaml``)."""
    import yaml

    try:
        with open(os.path.join(path, "training_args.yaml"), encoding="utf-8") as f:
            value = (yaml.safe_load(f) or {}).get("dyncot_target_cot_ratio")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def share_of(entry: dict) -> float | None:
    """The CoT share a logged step trained on: ``cot_share`` (rows with a usable CoT view), else ``cot_ratio``."""
    value = entry.get("cot_share", entry.get("cot_ratio"))
    return float(value) if value is not None else None


def cot_share_figure(rows: list[dict], target: float | None) -> Any:
    """CoT share per logged step (left axis, with the target as a dashed line) and γ (right axis)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    steps = [(e["current_steps"], share_of(e)) for e in rows if share_of(e) is not None]
    ax.plot([s for s, _ in steps], [v for _, v in steps], color="#1f77b4", marker="o", markersize=3,
            label="cot_share")
    if target is not None:
        ax.axhline(target, color="#1f77b4", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("share trained on CoT")
    ax.set_ylim(-0.02, 1.02)
    handles = list(ax.get_lines())
    gammas = [(e["current_steps"], e["gamma"]) for e in rows if "gamma" in e]
    if gammas:
        right = ax.twinx()
        right.plot([s for s, _ in gammas], [g for _, g in gammas], color="#d62728", label="gamma")
        right.set_ylabel("γ (plain-answer loss threshold)")
        handles += list(right.get_lines())
    ax.legend(handles, [h.get_label() for h in handles], loc="best")
    fig.tight_layout()
    return fig


def summary_text(rows: list[dict], target: float | None, path: str) -> str:
    """The last logged step's share and γ, and the per-epoch view flips of the run's selection records."""
    last = next((e for e in reversed(rows) if share_of(e) is not None), None)
    parts = []
    if last is not None:
        line = f"step {last['current_steps']}: cot_share {share_of(last):.3f}"
        if target is not None:
            line += f" (target {target:g})"
        if "gamma" in last:
            line += f", γ {last['gamma']:.4g}"
        parts.append(line)
    records = selection_records(path) if os.path.isdir(os.path.join(path, SELECTION_DIR)) else []
    if records:
        changes, _ = view_changes(records)
        for change in changes:
            parts.append(f"epoch {change['epoch']}: view flipped for {change['changed']} of {change['samples']} "
                         f"samples (flip share {change['share']:.3f})")
    return "  \n".join(parts)


def watch(model_name: str, finetuning_type: str, output_dir: str, seen: Any) -> tuple[Any, Any, Any]:
    """The timer's step: redraw when the run's log or selection records changed, else leave the page alone."""
    import gradio as gr
    from llamafactory.webui.common import get_save_dir

    if not model_name or not output_dir:
        return gr.skip(), gr.skip(), seen
    # LlamaBoard's get_save_dir, without its warning on a path (logged on every call: every 2 s here)
    path = output_dir if os.path.sep in output_dir else str(get_save_dir(model_name, finetuning_type, output_dir))
    signature = _signature(path)
    if signature == seen:
        return gr.skip(), gr.skip(), seen
    rows = read_log(path)
    if not any(share_of(e) is not None for e in rows):
        return gr.Plot(visible=False), "", signature
    target = run_target(path)
    return gr.Plot(value=cot_share_figure(rows, target), visible=True), summary_text(rows, target, path), signature


__all__ = ["COLUMNS_ID", "PLOT_ID", "SUMMARY_ID", "cot_share_figure", "describe_cot_columns", "read_log",
           "run_target", "summary_text", "watch", "wrap_create_train_tab"]
