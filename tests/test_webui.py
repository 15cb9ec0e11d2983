"""Dynamic CoT in LlamaBoard, without a browser: the form follows ``DynCotArguments``, every element has its five
languages, and a user who leaves the group alone gets vanilla LlamaBoard's files byte for byte.

The byte comparison runs LlamaBoard's own handlers (Save, Start, Load) in two processes built the same way, one with
the plugin and one with ``DYNCOT_DISABLE=1`` (``dyncot_plugin.testing.board_probe``); Start launches the real
``llamafactory-cli train`` and aborts it at its first progress report, as the Abort button does. The browser tests
are in ``test_webui_browser.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from dataclasses import fields

import pytest
import yaml

from dyncot_plugin.config import CHOICES, DynCotArguments
from dyncot_plugin.testing.board import webui_env
from dyncot_plugin.testing.plugin_data import write_plugin_dataset
from dyncot_plugin.webui.fields import OFF, TAB_FIELDS, field_of, first_sentence, recipe_keys
from dyncot_plugin.webui.locales import LABELS, LANGUAGES, entries


# ------------------------------------------------------------------------------------------- fast: the form itself
def test_the_train_fields_are_the_dataclass_keys_in_order_with_widgets_from_their_types():
    hints = typing.get_type_hints(DynCotArguments)
    train = TAB_FIELDS["train"]
    assert [f.key for f in train] == [f.name for f in fields(DynCotArguments)]
    expected = {bool: "bool", int: "int", float: "float", float | None: "optional_float"}
    for f, declared in zip(train, fields(DynCotArguments)):
        assert f.default == declared.default
        assert f.kind == ("choice" if declared.name in CHOICES else expected[hints[declared.name]]), f.key
        assert f.choices == CHOICES.get(declared.name, ())
        assert f.help and first_sentence(f.help) == f.summary and f.summary.endswith(".")


def test_fields_left_at_their_default_add_nothing_and_others_add_their_key():
    train = {f.name: f.default for f in TAB_FIELDS["train"]}
    assert recipe_keys("train", train) == {}
    # what the widgets send back: a number box gives floats, an empty one None
    assert recipe_keys("train", {**train, "dyncot_target_window": 4096.0, "dyncot_target_cot_ratio": None,
                                 "dyncot_gamma": 0.4}) == {}
    # an optional float is a text box: empty = null, a number is a float, anything else goes to the recipe check as is
    assert recipe_keys("train", {**train, "dyncot_target_cot_ratio": " "}) == {}
    assert recipe_keys("train", {**train, "dyncot_target_cot_ratio": "0.5"}) == {"dyncot_target_cot_ratio": 0.5}
    assert recipe_keys("train", {**train, "dyncot_target_cot_ratio": "half"}) == {"dyncot_target_cot_ratio": "half"}
    changed = {**train, "dyncot_strategy": "dynamic", "dyncot_target_cot_ratio": 0.5, "dyncot_target_window": 64.0,
               "dyncot_log_selection": True, "dyncot_gamma": 1}
    assert recipe_keys("train", changed) == {"dyncot_strategy": "dynamic", "dyncot_target_cot_ratio": 0.5,
                                             "dyncot_target_window": 64, "dyncot_log_selection": True,
                                             "dyncot_gamma": 1.0}
    for tab in ("eval", "infer"):
        mode, threshold = (f.name for f in TAB_FIELDS[tab])
        assert recipe_keys(tab, {mode: OFF, threshold: 0.2}) == {}  # off: LLaMA-Factory's own, no key at all
        assert recipe_keys(tab, {mode: "auto", threshold: 0.5}) == {"dyncot_think": "auto"}
        assert recipe_keys(tab, {mode: "never", threshold: 0.2}) == {"dyncot_think": "never",
                                                                    "dyncot_think_threshold": 0.2}
    assert field_of("train.dyncot_gamma").key == "dyncot_gamma" and field_of("train.learning_rate") is None
    assert field_of("eval.dyncot_predict_think").key == "dyncot_think"


def test_every_element_has_every_language():
    table = entries()
    names = {f.name for tab in TAB_FIELDS.values() for f in tab} | {"dyncot_tab", "dyncot_help", "dyncot_plot"}
    assert set(table) == names
    for name, per_language in table.items():
        assert tuple(per_language) == LANGUAGES, name
        labels = [per_language[lang]["label"] for lang in LANGUAGES]
        assert all(labels), name
        if name in LABELS:
            assert labels == list(LABELS[name]) and len(set(labels)) >= 4, name  # translated, not copied
    from llamafactory.webui.locales import LOCALES

    assert tuple(LOCALES["lang"]) == LANGUAGES  # LlamaBoard's own languages


# ------------------------------------------------------------------------------ slow: LlamaBoard's own handlers
@pytest.fixture(scope="module")
def probes(tiny_model_dir, tmp_path_factory) -> dict:
    """The same fields through LlamaBoard with the plugin and without (``DYNCOT_DISABLE=1``), in parallel."""
    root = tmp_path_factory.mktemp("board_probe")
    write_plugin_dataset(root / "data", "toy", n=4)
    extra = json.dumps({"max_steps": 1, "bf16": False, "preprocessing_num_workers": 1})
    base = {"top.lang": "en", "top.model_name": "Custom", "top.model_path": tiny_model_dir,
            "top.template": "qwen2_vl", "top.finetuning_type": "lora", "train.dataset_dir": str(root / "data"),
            "train.dataset": ["toy"], "train.extra_args": extra}
    runs = {}
    for name, env in (("plugin", {}), ("vanilla", {"DYNCOT_DISABLE": "1"})):
        work = root / name
        work.mkdir()
        predict = {"eval.dataset_dir": str(root / "data"), "eval.dataset": ["toy"], "eval.output_dir": "pred"}
        scenarios = [{"name": "untouched", "save": "untouched.yaml", "launch": True,
                      "values": {"train.output_dir": str(work / "out_untouched")}},
                     {"name": "predict_off", "eval_args": True, "values": predict}]
        if name == "plugin":
            scenarios += [
                {"name": "dynamic", "save": "dynamic.yaml", "launch": True, "load": "dynamic.yaml",
                 "values": {"train.output_dir": str(work / "out_dynamic"), "train.dyncot_strategy": "dynamic",
                            "train.dyncot_target_cot_ratio": 0.5, "train.dyncot_target_window": 64.0}},
                {"name": "predict_never", "eval_args": True,
                 "values": {**predict, "eval.dyncot_predict_think": "never", "eval.dyncot_predict_think_threshold": 0.3}},
                # then a file without dyncot entries (the untouched one, = vanilla's bytes): the fields reset
                {"name": "older_file", "load": "untouched.yaml"},
            ]
        spec = work / "spec.json"
        spec.write_text(json.dumps({"workdir": str(work), "values": base, "scenarios": scenarios}))
        runs[name] = subprocess.Popen([sys.executable, "-m", "dyncot_plugin.testing.board_probe", str(spec),
                                       str(work / "report.json")], cwd=work, env=webui_env(0, env),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reports = {}
    for name, proc in runs.items():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]
        reports[name] = json.loads((root / name / "report.json").read_text())
        reports[f"{name}_log"] = out
    return reports


@pytest.mark.slow
def test_an_untouched_group_saves_and_launches_vanillas_bytes(probes):
    plugin, vanilla = probes["plugin"]["scenarios"]["untouched"], probes["vanilla"]["scenarios"]["untouched"]
    for name in ("saved", "recipe", "board_config"):
        assert plugin[name] is not None and plugin[name] == vanilla[name].replace("/vanilla/", "/plugin/"), name
    assert "dyncot" not in plugin["saved"] + plugin["recipe"] + plugin["board_config"]
    assert "max_steps: 1" in plugin["recipe"]  # the recipe Start ran (the extra arguments reached it)


@pytest.mark.slow
def test_without_the_plugin_llamaboard_is_untouched(probes):
    vanilla = probes["vanilla"]
    assert vanilla["dyncot_elems"] == [] and not any(vanilla["patched"].values())
    assert "dyncot-plugin" not in probes["vanilla_log"]
    plugin = probes["plugin"]
    assert all(plugin["patched"].values()), plugin["patched"]
    # LlamaBoard's own labels are the same with the plugin in every language
    for lang in LANGUAGES:
        own = {k: v for k, v in plugin["labels"][lang].items() if "dyncot" not in k}
        assert own == vanilla["labels"][lang], lang


@pytest.mark.slow
def test_every_language_labels_the_group(probes):
    labels = probes["plugin"]["labels"]
    for i, lang in enumerate(LANGUAGES):
        assert labels[lang]["train.dyncot_tab"] == LABELS["dyncot_tab"][i]
        for tab, tab_fields in TAB_FIELDS.items():
            for f in tab_fields:
                assert labels[lang][f"{tab}.{f.name}"] == entries()[f.name][lang]["label"], (lang, f.name)


@pytest.mark.slow
def test_changed_fields_reach_the_recipe_the_saved_file_and_come_back_on_load(probes):
    dynamic = probes["plugin"]["scenarios"]["dynamic"]
    recipe = yaml.safe_load(dynamic["recipe"])
    assert {k: v for k, v in recipe.items() if k.startswith("dyncot_")} == {
        "dyncot_strategy": "dynamic", "dyncot_target_cot_ratio": 0.5, "dyncot_target_window": 64}
    saved = yaml.safe_load(dynamic["saved"])
    assert {k: v for k, v in saved.items() if "dyncot" in k} == {
        "train.dyncot_strategy": "dynamic", "train.dyncot_target_cot_ratio": 0.5, "train.dyncot_target_window": 64}
    loaded = dynamic["loaded"]
    assert loaded["train.dyncot_strategy"] == "dynamic" and loaded["train.dyncot_target_cot_ratio"] == 0.5
    assert loaded["train.dyncot_gamma"] == 0.4  # not in the file: its default
    older = probes["plugin"]["scenarios"]["older_file"]["loaded"]
    assert {k: v for k, v in older.items() if "dyncot" in k} == {
        f"train.{f.name}": f.default for f in TAB_FIELDS["train"]}


@pytest.mark.slow
def test_the_prediction_runs_think_mode_reaches_its_recipe_and_off_leaves_vanillas(probes):
    plugin, vanilla = probes["plugin"]["scenarios"], probes["vanilla"]["scenarios"]
    assert plugin["predict_off"]["eval_args"] == vanilla["predict_off"]["eval_args"]
    assert not any(k.startswith("dyncot_") for k in plugin["predict_off"]["eval_args"])
    never = plugin["predict_never"]["eval_args"]
    assert {k: v for k, v in never.items() if k.startswith("dyncot_")} == {"dyncot_think": "never",
                                                                           "dyncot_think_threshold": 0.3}
    assert {k: v for k, v in never.items() if not k.startswith("dyncot_")} == plugin["predict_off"]["eval_args"]
