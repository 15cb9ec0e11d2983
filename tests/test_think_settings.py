"""dyncot_plugin.think_settings: the one rule for "the model's threshold" (last adapter, else model, else default), the
errors that name the file, and the readers that use it (chat, the vLLM logits processor's settings, dyncot-eval)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from dyncot_plugin.think_settings import (DEFAULT_SOURCE, ThinkSettingsError, adapter_list, read_think_settings,
                                          resolve_think_settings)


def _save(folder, threshold, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dyncot_think.json").write_text(json.dumps({"think": "auto", "threshold": threshold, **extra}))
    return str(folder)


def test_last_adapter_else_model_else_default(tmp_path):
    model = _save(tmp_path / "model", 0.7, tag="<think>", tag_ids=[1, 2, 3])
    first = _save(tmp_path / "a1", 0.1)
    last = _save(tmp_path / "a2", 0.0)
    bare = str(tmp_path / "bare")
    (tmp_path / "bare").mkdir()

    s = resolve_think_settings(model, [first, last])
    assert (s.threshold, s.path, s.tag_ids) == (0.0, f"{last}/dyncot_think.json", None)
    assert resolve_think_settings(model, f"{first},{last}") == s  # LLaMA-Factory's comma-separated string
    # the last adapter has no file: the model's (an earlier adapter's file describes another model)
    s = resolve_think_settings(model, [first, bare])
    assert (s.threshold, s.source, s.tag_ids) == (0.7, f"{model}/dyncot_think.json", [1, 2, 3])
    assert resolve_think_settings(model, None).threshold == 0.7
    s = resolve_think_settings(bare, [bare])
    assert (s.threshold, s.source, s.path, dict(s.values)) == (0.5, DEFAULT_SOURCE, None, {})
    assert resolve_think_settings("Qwen/Qwen2-VL-2B-Instruct").source == DEFAULT_SOURCE  # a Hub id: no folder
    assert resolve_think_settings(None).source == DEFAULT_SOURCE
    assert adapter_list(" a , b ,") == ["a", "b"] and adapter_list(None) == []


@pytest.mark.parametrize("text, expected", [
    ("{not json", "not valid JSON"),
    ("[0.3]", "expected a JSON object with a numeric threshold"),
    ('{"think": "auto"}', "expected a JSON object with a numeric threshold"),
    ('{"threshold": -1}', "threshold: got -1"),
    ('{"threshold": "0.3"}', "threshold: got '0.3'"),
    ('{"threshold": 0.3, "tag_ids": "<think>"}', "tag_ids: got '<think>'"),
])
def test_a_malformed_file_names_itself(tmp_path, text, expected):
    (tmp_path / "dyncot_think.json").write_text(text)
    with pytest.raises(ThinkSettingsError) as e:
        resolve_think_settings(str(tmp_path))
    assert str(e.value).startswith(f"{tmp_path}/dyncot_think.json") and expected in str(e.value)
    assert read_think_settings(tmp_path / "missing") is None


def test_chat_reads_the_same_rule(tmp_path):
    from dyncot_plugin.chat import _saved_threshold
    from dyncot_plugin.config import DynCotConfigError

    model = _save(tmp_path / "model", 0.7)
    adapter = _save(tmp_path / "adapter", 0.25)
    args = SimpleNamespace(model_name_or_path=model, adapter_name_or_path=[adapter])
    assert _saved_threshold(args) == (0.25, f"{adapter}/dyncot_think.json")
    assert _saved_threshold(SimpleNamespace(model_name_or_path=model, adapter_name_or_path=None)) == (
        0.7, f"{model}/dyncot_think.json")
    assert _saved_threshold(SimpleNamespace(model_name_or_path=str(tmp_path), adapter_name_or_path=None)) is None
    (tmp_path / "adapter" / "dyncot_think.json").write_text("{}")
    with pytest.raises(DynCotConfigError, match="adapter/dyncot_think.json"):
        _saved_threshold(args)


def test_eval_reads_a_prediction_folder_and_tolerates_a_bad_file(tmp_path):
    from dyncot_plugin.tasks.mmkp.evaluate import _think_settings

    _save(tmp_path / "run", 0.3)
    assert _think_settings(tmp_path / "run" / "generated_predictions.jsonl")["threshold"] == 0.3
    (tmp_path / "run" / "dyncot_think.json").write_text("{broken")
    assert _think_settings(tmp_path / "run" / "generated_predictions.jsonl") == {}  # only labels depend on it
