"""Dynamic CoT in LlamaBoard, in a real headless Chromium against ``llamafactory-cli webui`` on 127.0.0.1.

One LlamaBoard server and one browser for the module (``dyncot_plugin.testing.board``), in the order a user works:
every language shows the group; a strategy that needs CoT on a dataset without it is refused with the command line's
own error before anything starts; ``dynamic`` with a target share 0.5 on the tiny Qwen2-VL is previewed, started and
watched (the CoT-share plot beside the loss curve, a screenshot kept in the test's folder); the Chat tab replies
under ``never`` and ``always`` as ``llamafactory-cli chat`` does, the mode switched between two messages, each
reply's ``think_prob`` the one the engine logs. Skipped, saying why, where Selenium or Chromium is missing
(``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from dyncot_plugin.testing.board import Board, Page, browser_missing, chromium, wait_for
from dyncot_plugin.testing.lf_runner import (
    chat_cli_ended,
    LlamaFactoryRunError,
    llamafactory_cli,
    offline_env,
    run_llamafactory,
    tiny_sft_config,
    toy_rows,
    write_sharegpt_dataset,
)
from dyncot_plugin.testing.plugin_data import read_log, write_plugin_dataset
from dyncot_plugin.webui.locales import LABELS, LANGUAGES

# .ci/run sets DYNCOT_REQUIRE_BROWSER=1: there a missing browser fails the tests instead of skipping them
MISSING = browser_missing()
REQUIRED = os.environ.get("DYNCOT_REQUIRE_BROWSER") == "1"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None and not REQUIRED,
                                                   reason=f"browser tests: {MISSING}")]

LANGUAGE_LABEL = {"en": "Language", "ru": "Язык", "zh": "语言", "ko": "언어", "ja": "言語"}  # LlamaBoard's own
EXTRA = {"optim": "adamw_torch", "max_steps": 8, "num_train_epochs": 2, "gradient_accumulation_steps": 1,
         "logging_steps": 1, "preprocessing_num_workers": 1, "dataloader_num_workers": 0, "bf16": False,
         "learning_rate": 0.001}
PROMPTS = ["a morning run by the river #", "the match tonight was unreal"]
DECISION = re.compile(r"\[dyncot\] think_prob ([0-9.e+-]+), threshold ([0-9.e+-]+): (thinks|plain) \((\w+)\)")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """`toy`: 8 rows with a CoT column; `plain`: the same posts without one."""
    root = tmp_path_factory.mktemp("board_data")
    write_plugin_dataset(root, "toy", n=8)
    write_sharegpt_dataset(root, "plain", toy_rows(root, n=8, cot=False))
    return root


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """``llamafactory-cli webui`` with the plugin; the engine's decision lines logged (DEBUG)."""
    server = Board(tmp_path_factory.mktemp("board"), env={"LLAMAFACTORY_VERBOSITY": "DEBUG"})
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page(board):
    if MISSING is not None:  # only with DYNCOT_REQUIRE_BROWSER=1 (else the module skips)
        pytest.fail(f"DYNCOT_REQUIRE_BROWSER=1 but {MISSING}")
    driver = chromium()
    try:
        yield Page(driver, board.url).open()
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def cli_chat(cot_chat_model, tmp_path_factory):
    """``llamafactory-cli chat`` under ``never`` and ``always`` on the first prompt (started now, in the background:
    read with ``cli_chat(mode)``)."""
    root = tmp_path_factory.mktemp("cli_chat")
    runs = {}
    for mode in ("never", "always"):
        recipe = root / f"{mode}.yaml"
        recipe.write_text(json.dumps({"model_name_or_path": str(cot_chat_model), "template": "qwen2_vl",
                                      "infer_backend": "huggingface", "do_sample": False, "max_new_tokens": 12,
                                      "dyncot_think": mode}))
        runs[mode] = subprocess.Popen([llamafactory_cli(), "chat", str(recipe)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=offline_env())
        runs[mode].stdin.write(f"{PROMPTS[0]}\nexit\n")
        runs[mode].stdin.close()
    replies = {}

    def reply(mode: str) -> str:
        if mode not in replies:
            out = runs[mode].stdout.read()
            err = runs[mode].stderr.read()
            assert chat_cli_ended(runs[mode].wait(timeout=600), out, 1), err[-3000:]
            replies[mode] = out.split("Assistant: ")[1].split("\n\n")[0].strip()
        return replies[mode]

    yield reply
    for proc in runs.values():
        if proc.poll() is None:
            proc.kill()


def _set_model(page: Page, path: str) -> None:
    page.choose("Custom", label="Model name")
    page.type(path, label="Model path")
    page.choose("qwen2_vl", label="Chat template")


def _output(page: Page) -> str:
    """The Train tab's output box (LlamaBoard's Markdown under the buttons), as shown."""
    from selenium.webdriver.common.by import By

    boxes = [e for e in page.driver.find_elements(  # not the plugin's own Markdown (the CoT-share summary)
        By.XPATH, "//div[contains(@class, 'prose')][not(ancestor-or-self::*[starts-with(@id, 'dyncot_')])]")
        if e.is_displayed() and e.text]
    return boxes[-1].text if boxes else ""


# ------------------------------------------------------------------------------------------------------ tests
def test_every_language_shows_the_group(page):
    page.tab("Train")
    for i, lang in enumerate([*LANGUAGES[1:], "en"]):
        current = LANGUAGES[i] if i < len(LANGUAGES) - 1 else LANGUAGES[-1]
        page.choose(lang, label=LANGUAGE_LABEL[current])
        index = LANGUAGES.index(lang)
        wait_for(lambda: page.find("#dyncot_tab > button > span").text.strip() == LABELS["dyncot_tab"][index], 30,
                 f"the group's title in {lang}")
        page.expand(elem_id="dyncot_tab")
        assert page.find("#dyncot_gamma [data-testid=block-info]").text.strip() == LABELS["dyncot_gamma"][index]
        assert page.find("#dyncot_strategy [data-testid=block-info]").text.strip() == LABELS["dyncot_strategy"][index]
    assert page.find("#dyncot_gamma [data-testid=block-info]").text.strip() == "γ (loss threshold)"


def test_a_refused_recipe_shows_the_command_lines_error_and_starts_nothing(page, board, data, tiny_model_dir,
                                                                           tmp_path):
    page.tab("Train")
    _set_model(page, tiny_model_dir)
    page.type(str(data), label="Data dir")
    page.clear(label="Dataset")
    page.choose("plain", label="Dataset")
    page.expand(elem_id="dyncot_tab")
    wait_for(lambda: "plain: no CoT column" in page.text("#dyncot_cot_columns"), 30, "the dataset's CoT column line")
    # a typo in the extra arguments: the command line's "did you mean"
    page.expand(text="Extra configurations")
    page.type(json.dumps({**EXTRA, "dyncot_gama": 0.3}), label="Extra arguments")
    page.click("Preview command")
    wait_for(lambda: "Did you mean dyncot_gamma?" in _output(page), 30, "the typo's error")
    # a strategy that needs CoT on a dataset without it
    page.type(json.dumps(EXTRA), label="Extra arguments")
    page.choose("cot", elem_id="dyncot_strategy")
    saves = Path(board.workdir, "saves")
    before = sorted(saves.rglob("*")) if saves.exists() else []
    page.click("Start")
    shown = wait_for(lambda: next((line for line in _output(page).splitlines()
                                   if line.startswith("[dyncot-plugin] error:")), None), 30, "the error")
    time.sleep(3)  # LlamaBoard would have started the run by now
    assert board.children() == []
    assert (sorted(saves.rglob("*")) if saves.exists() else []) == before  # no output folder, no recipe
    # the same recipe on the command line: the same line (the page renders the `code` marks)
    config = tiny_sft_config(tiny_model_dir, data, "plain", tmp_path / "out", dyncot_strategy="cot")
    with pytest.raises(LlamaFactoryRunError) as info:
        run_llamafactory("train", config, tmp_path)
    cli = [line for line in info.value.proc.stderr.splitlines() if line.startswith("[dyncot-plugin] error:")]
    assert info.value.proc.returncode == 2 and len(cli) == 1
    assert shown == cli[0].replace("`", "")
    assert "Dataset plain: dyncot_strategy=cot needs a CoT text per sample" in shown


def test_a_dynamic_run_with_a_target_share_is_previewed_started_and_watched(page, board, data, tiny_model_dir,
                                                                            tmp_path):
    from dyncot_plugin.train.report import selection_records, view_changes

    page.tab("Train")
    _set_model(page, tiny_model_dir)
    page.type(str(data), label="Data dir")
    page.clear(label="Dataset")  # the previous test chose `plain` (a multi-select)
    page.choose("toy", label="Dataset")
    page.expand(text="Extra configurations")
    page.type(json.dumps(EXTRA), label="Extra arguments")
    page.expand(elem_id="dyncot_tab")
    page.choose("dynamic", elem_id="dyncot_strategy")
    page.type("0.5", elem_id="dyncot_target_cot_ratio")
    page.check(True, elem_id="dyncot_log_selection")
    page.click("Preview command")
    try:
        preview = wait_for(lambda: "llamafactory-cli train" in _output(page) and _output(page), 30, "the preview")
    except TimeoutError as err:
        raise AssertionError(f"{err}; the output box shows {_output(page)!r}") from None
    for line in ("--dyncot_strategy dynamic", "--dyncot_target_cot_ratio 0.5", "--dyncot_log_selection True"):
        assert line in preview
    assert preview.count("--dyncot_") == 3  # the fields left alone add nothing

    page.click("Start")
    saves = Path(board.workdir, "saves", "Custom", "lora")
    out = wait_for(lambda: next(iter(saves.iterdir()), None), 60, "the run's output folder")
    wait_for(lambda: board.children(), 30, "LlamaBoard's training process")
    wait_for(lambda: not board.children(), 600, "the run to finish", poll=1)
    try:
        wait_for(lambda: "Finished." in _output(page), 30, "LlamaBoard's finish line")
    except TimeoutError as err:
        raise AssertionError(f"{err}; the output box shows {_output(page)[-1500:]!r}") from None
    recipe = (out / "training_args.yaml").read_text()
    assert "dyncot_strategy: dynamic" in recipe and "dyncot_target_cot_ratio: 0.5" in recipe
    rows = read_log(out)
    assert len(rows) == 8 and all("cot_ratio" in r and "gamma" in r and "cot_share" in r for r in rows)

    plot = wait_for(lambda: page.find("#dyncot_cot_share_plot"), 30, "the CoT-share plot")
    wait_for(lambda: plot.is_displayed() and plot.find_elements("css selector", "img"), 30, "the plot's image")
    src = page.find("#dyncot_cot_share_plot img").get_attribute("src")  # Gradio 5 sends it as webp
    assert src.startswith("data:image/"), src[:40]
    import base64
    import io

    from PIL import Image

    drawn = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert drawn.width >= 200 and drawn.height >= 100 and len(set(drawn.convert("L").getdata())) > 2  # a drawn plot
    page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", plot)
    shot = page.screenshot(tmp_path / "cot_share_plot.png")
    print(f"screenshot of the CoT-share plot: {shot}")
    summary = page.text("#dyncot_cot_share_summary")
    last = rows[-1]
    assert f"step {last['current_steps']}: cot_share {last['cot_share']:.3f} (target 0.5), γ {last['gamma']:.4g}" \
        in summary
    changes, _ = view_changes(selection_records(out))
    assert changes, "two epochs of selection records"
    for change in changes:
        assert (f"epoch {change['epoch']}: view flipped for {change['changed']} of {change['samples']} samples "
                f"(flip share {change['share']:.3f})") in summary


def _bot_messages(page: Page) -> list:
    from selenium.webdriver.common.by import By

    return [e for e in page.driver.find_elements(By.CSS_SELECTOR, "[data-testid=bot]") if e.is_displayed()]


def _send(page: Page, text: str, mode: str) -> str:
    from selenium.webdriver.common.by import By

    page.choose(mode, elem_id="dyncot_chat_think")
    count = len(_bot_messages(page))
    query = next(e for e in page.driver.find_elements(By.CSS_SELECTOR, "textarea[placeholder='Input...']")
                 if e.is_displayed())
    query.send_keys(text)
    page.click("Submit")
    return wait_for(lambda: len(_bot_messages(page)) > count and DECISION.search(_bot_messages(page)[-1].text)
                    and _bot_messages(page)[-1].text, 120, "the reply and its decision")


def _split(shown: str) -> tuple[str, re.Match]:
    """(the reply as shown, whitespace collapsed, without the decision line; the decision)."""
    decision = DECISION.search(shown)
    return " ".join(shown[:decision.start()].split()), decision


def _as_shown(reply: str) -> str:
    """A raw reply as LlamaBoard's Chat tab shows it, whitespace collapsed: as is without ``<think>``; with it, its
    thought block (``chatter._format_response`` with the template's ``thought_words``: the summary line, the thought,
    then the answer, the tags dropped)."""
    from llamafactory.data.template import TEMPLATES
    from llamafactory.webui.locales import ALERTS

    opening, closing = TEMPLATES["qwen2_vl"].thought_words  # ("<think>\n", "\n</think>\n\n"): with the new lines
    if opening not in reply:
        return " ".join(reply.split())
    text = reply.replace(opening, "")
    thought, closed, answer = text.partition(closing)
    summary = ALERTS["info_thought" if closed else "info_thinking"]["en"]
    return " ".join(f"{summary} {thought} {answer}".split())


def test_chat_think_mode_per_message(page, board, cot_chat_model, cli_chat, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(cot_chat_model, model)
    settings = json.loads((model / "dyncot_think.json").read_text())
    (model / "dyncot_think.json").write_text(json.dumps({**settings, "threshold": 0.37}))

    page.tab("Chat")
    _set_model(page, str(model))
    page.type(json.dumps({"do_sample": False}), label="Extra arguments")
    page.click("Load model")
    wait_for(lambda: any("Model loaded" in (e.get_attribute("value") or "")
                         for e in page.driver.find_elements("css selector", "textarea")), 300, "the model to load")
    # the model's dyncot_think.json sets auto and its threshold
    wait_for(lambda: page.value(elem_id="dyncot_chat_think") == "auto", 30, "the model's think mode")
    assert float(page.value(elem_id="dyncot_chat_think_threshold")) == 0.37
    page.type("12", label="Maximum new tokens")

    never, decision_1 = _split(_send(page, PROMPTS[0], "never"))
    always, decision_2 = _split(_send(page, PROMPTS[1], "always"))  # same conversation, mode switched
    page.click("Clear history")
    wait_for(lambda: not _bot_messages(page), 30, "an empty chat")
    always_first, decision_3 = _split(_send(page, PROMPTS[0], "always"))

    assert "<think>" not in never and decision_1.group(3, 4) == ("plain", "never")
    assert decision_2.group(3, 4) == ("thinks", "always") and decision_3.group(3, 4) == ("thinks", "always")
    assert never == _as_shown(cli_chat("never"))
    assert always_first == _as_shown(cli_chat("always")) and cli_chat("always").startswith("<think>")
    # each reply's think_prob is the engine's own DEBUG line, in order
    logged = wait_for(lambda: (lines := DECISION.findall(board.log())) and len(lines) >= 3 and lines, 30,
                      "the engine's decision lines")
    assert [d.group(0) for d in (decision_1, decision_2, decision_3)] == \
        ["[dyncot] think_prob {}, threshold {}: {} ({})".format(*line) for line in logged[-3:]]
    assert decision_1.group(1) == decision_3.group(1)  # the same prompt: the same think_prob in both modes
