"""The built wheel carries the .pth activation file, and installing that wheel into a scratch venv activates the plugin.

CI itself uses the editable install (``pip install -e .``), which the rest of the suite exercises; this test proves
the regular install path: ``pip wheel`` (hatchling, no build isolation so it works offline) -> a fresh venv ->
``pip install --no-deps`` of that wheel. The scratch venv borrows this venv's third-party packages (llamafactory,
torch, ...) through a path-only ``.pth``; ``dyncot_plugin`` itself comes from the wheel, and the activation file
processed at start-up is the wheel's.
"""

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from dyncot_plugin.testing.lf_runner import offline_env

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, **env):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=offline_env(env), timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(REPO),
          "-w", str(out)], cwd=out)
    (path,) = out.glob("dyncot_plugin-*.whl")
    return path


def test_wheel_contains_the_pth_file_and_the_bundled_data(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert zf.read("dyncot_plugin.pth").decode().strip() == "import dyncot_plugin._bootstrap"
    for name in ("dyncot_plugin/_bootstrap.py", "dyncot_plugin/patches.py", "dyncot_plugin/tasks/mmkp/demo_cmkp/NOTICE",
                 "dyncot_plugin/tasks/mmkp/demo_cmkp/demo_src.txt", "dyncot_plugin/tasks/mmkp/demo_cmkp/demo_ocr_final.txt",
                 "dyncot_plugin/tasks/mmkp/demo_cmkp/demo_attribute_cleaned.txt",
                 "dyncot_plugin/testing/qwen_vocab_data/qwen.tiktoken.xz", "dyncot_plugin/testing/qwen_vocab_data/NOTICE",
                 "dyncot_plugin/testing/qwen_vocab_data/LICENSE"):
        assert name in names, name
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


PROBE = """
import json, sys
started_with_bootstrap = 'dyncot_plugin._bootstrap' in sys.modules
import dyncot_plugin, llamafactory.train.tuner as tuner
from llamafactory.hparams import parser
from dyncot_plugin.patches import is_patched
print(json.dumps({"plugin_file": dyncot_plugin.__file__, "started_with_bootstrap": started_with_bootstrap,
                  "read_args": is_patched(parser.read_args), "run_sft": is_patched(tuner.run_sft)}))
"""


@pytest.mark.slow
def test_installing_the_wheel_into_a_scratch_venv_activates_the_plugin(wheel, tmp_path):
    venv = tmp_path / "scratch"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    scratch_site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=tmp_path).stdout.strip())
    assert (scratch_site / "dyncot_plugin.pth").is_file()
    # Third-party dependencies from this venv, after the scratch site-packages (path entries only: its .pth files,
    # including the editable install's, are not processed).
    (scratch_site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    proc = _run([py, "-c", PROBE], cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result.pop("plugin_file")).is_relative_to(scratch_site)
    assert result == {"started_with_bootstrap": True, "read_args": True, "run_sft": True}
    assert "[dyncot-plugin] active in pid" in proc.stderr

    disabled = _run([py, "-c", PROBE], cwd=tmp_path, DYNCOT_DISABLE="1")
    result = json.loads(disabled.stdout.strip().splitlines()[-1])
    assert (result["read_args"], result["run_sft"]) == (False, False)

    # A typo in a recipe key fails through the wheel's hook, before any model is loaded.
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model_name_or_path: /nonexistent\nstage: sft\ndo_train: true\ndyncot_gama: 0.4\n")
    cli = f"import sys; from llamafactory.cli import main; sys.argv = ['llamafactory-cli', 'train', {str(recipe)!r}]; main()"
    typo = subprocess.run([py, "-c", cli], cwd=tmp_path, capture_output=True, text=True, env=offline_env({}), timeout=300)
    assert typo.returncode != 0
    assert "dyncot_gamma" in typo.stderr + typo.stdout
