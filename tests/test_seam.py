"""The seam into LLaMA-Factory: patches take effect, are idempotent, and the vanilla path stays untouched."""

import json
import subprocess
import sys

import pytest

from dyncot_plugin.testing.lf_runner import LlamaFactoryRunError, offline_env, run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import read_losses, write_plugin_dataset


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=offline_env(env), timeout=300, check=True
    )


PROBE = """
import json, llamafactory.train.tuner as tuner, llamafactory.train.sft as sft
from llamafactory.hparams import parser
from llamafactory.train.callbacks import LogCallback
from dyncot_plugin.patches import is_patched
print(json.dumps({"read_args": is_patched(parser.read_args), "run_sft": is_patched(tuner.run_sft),
                  "on_log": is_patched(LogCallback.on_log), "run_sft_is_original": tuner.run_sft is sft.run_sft,
                  "export_model": is_patched(tuner.export_model)}))
"""


def test_importing_the_tuner_applies_every_patch():
    proc = _python(PROBE)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "read_args": True, "run_sft": True, "on_log": True, "run_sft_is_original": False, "export_model": True
    }
    assert "[dyncot-plugin] active in pid" in proc.stderr


@pytest.mark.parametrize("disabled", [False, True])
def test_llamaboard_export_tab_calls_the_patched_export(disabled):
    """LlamaBoard's Export tab binds ``export_model`` at import (``from ...train.tuner import export_model``): it gets
    the wrapped one, as ``llamafactory-cli export`` does (the patch runs right after the tuner module executes)."""
    code = """
import json
from llamafactory.webui.components import export as tab
import llamafactory.train.tuner as tuner
from dyncot_plugin.patches import is_patched
print(json.dumps({"same": tab.export_model is tuner.export_model, "patched": is_patched(tab.export_model)}))
"""
    proc = _python(code, **({"DYNCOT_DISABLE": "1"} if disabled else {}))
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"same": True, "patched": not disabled}


def test_disable_leaves_llamafactory_untouched():
    proc = _python(PROBE, DYNCOT_DISABLE="1")
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "read_args": False, "run_sft": False, "on_log": False, "run_sft_is_original": True, "export_model": False
    }
    assert "dyncot-plugin" not in proc.stderr


CHAT_PROBE = """
import json, sys, llamafactory.chat.chat_model as chat_model
engine_imported = "llamafactory.chat.hf_engine" in sys.modules  # LLaMA-Factory imports it for its HF backend only
from llamafactory.chat.hf_engine import HuggingfaceEngine
from llamafactory.hparams import parser
from dyncot_plugin.patches import is_patched
print(json.dumps({"read_args": is_patched(parser.read_args), "get_infer_args": is_patched(chat_model.get_infer_args),
                  "engine": is_patched(HuggingfaceEngine.__init__), "engine_imported_first": engine_imported,
                  "tuner_imported": "llamafactory.train.tuner" in sys.modules}))
"""


@pytest.mark.parametrize("disabled", [False, True])
def test_importing_the_chat_model_applies_the_chat_patches_only(disabled):
    """``llamafactory-cli chat``/``api``/``webchat`` import ``llamafactory.chat.chat_model``, never the tuner."""
    proc = _python(CHAT_PROBE, **({"DYNCOT_DISABLE": "1"} if disabled else {}))
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "read_args": not disabled, "get_infer_args": not disabled, "engine": not disabled,
        "engine_imported_first": False, "tuner_imported": False,
    }
    assert ("[dyncot-plugin] active in pid" in proc.stderr) == (not disabled)


def test_explicit_install_works_even_when_disabled_and_is_idempotent():
    code = """
import json, dyncot_plugin
import llamafactory.train.tuner as tuner
before = tuner.run_sft
dyncot_plugin.install(); first = tuner.run_sft
dyncot_plugin.install(); second = tuner.run_sft
from dyncot_plugin.patches import is_patched, original_of, remove_patches
remove_patches()
print(json.dumps({"before_patched": is_patched(before), "patched": is_patched(first), "same": first is second,
                  "wraps_original": original_of(first) is before, "restored": tuner.run_sft is before}))
"""
    proc = _python(code, DYNCOT_DISABLE="1")
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "before_patched": False, "patched": True, "same": True, "wraps_original": True, "restored": True
    }


def test_interpreter_start_up_imports_nothing_heavy():
    code = "import sys; print(sorted(m for m in ('torch', 'transformers', 'llamafactory', 'dyncot_plugin._bootstrap') if m in sys.modules))"
    assert _python(code).stdout.split() == ["['dyncot_plugin._bootstrap']"]


@pytest.mark.slow
def test_vanilla_recipe_gives_the_same_losses_as_with_the_plugin_disabled(tiny_model_dir, tmp_path):
    write_plugin_dataset(tmp_path / "data", "toy", n=8)
    losses = {}
    for name, env in (("plugin", {}), ("disabled", {"DYNCOT_DISABLE": "1"})):
        config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / name / "out", max_steps=3)
        proc = run_llamafactory("train", config, tmp_path / name, env=env)
        assert ("[dyncot-plugin] active" in proc.stderr) == (name == "plugin")
        losses[name] = read_losses(tmp_path / name / "out")
    assert len(losses["plugin"]) == 3 and losses["plugin"] == losses["disabled"]


@pytest.mark.slow
def test_misspelt_key_fails_before_model_loading_and_names_the_right_key(tiny_model_dir, tmp_path):
    write_plugin_dataset(tmp_path / "data", "toy", n=4)
    config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / "out", dyncot_gama=0.4)
    with pytest.raises(LlamaFactoryRunError) as info:
        run_llamafactory("train", config, tmp_path)
    output = info.value.proc.stdout + info.value.proc.stderr
    assert "Unknown dyncot-plugin key `dyncot_gama`. Did you mean `dyncot_gamma`?" in output
    assert "trainable params" not in output and not (tmp_path / "out").exists()  # the model was never loaded


@pytest.mark.slow
def test_command_line_overrides_are_read_and_validated(tiny_model_dir, tmp_path):
    from dyncot_plugin.testing.lf_runner import llamafactory_cli

    write_plugin_dataset(tmp_path / "data", "toy", n=4)
    config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / "out", max_steps=1)
    run_llamafactory("train", config, tmp_path, config_name="base.yaml")  # writes base.yaml (and trains 1 step)
    argv = [llamafactory_cli(), "train", str(tmp_path / "base.yaml")]
    bad = subprocess.run(argv + ["dyncot_gamma=-1"], capture_output=True, text=True, env=offline_env(), timeout=300)
    assert bad.returncode != 0 and "dyncot_gamma: got -1; expected a finite number >= 0" in bad.stderr + bad.stdout
    good = subprocess.run(
        argv + ["dyncot_strategy=dynamic", "dyncot_gamma=0.25"], capture_output=True, text=True, env=offline_env(),
        timeout=300,
    )
    assert good.returncode == 0, good.stderr[-2000:]
    assert "[dyncot] strategy=dynamic gamma=0.25" in good.stdout + good.stderr
