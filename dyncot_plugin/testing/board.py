"""Drive LlamaBoard (``llamafactory-cli webui``) from tests: the real server on 127.0.0.1, offline, and a real
headless Chromium through Selenium.

The server runs with Gradio's analytics and version check off (``GRADIO_ANALYTICS_ENABLED=False``), no share link
(``GRADIO_SHARE`` unset: LlamaBoard's default), and ``BROWSER=true`` so that LlamaBoard's ``launch(inbrowser=True)``
opens nothing on the server's side. Chromium runs headless with its background networking off (the network is
closed here: without these flags it keeps retrying refused connections) and a fresh profile.

:func:`browser_missing` says why a browser test cannot run (no Selenium, no Chromium or chromedriver); tests skip
with that reason. ``.ci/run`` installs Debian's ``chromium`` and ``chromium-driver``; Selenium comes with the
``test`` extra.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dyncot_plugin.testing.lf_runner import llamafactory_cli, offline_env

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)


def _first(paths: tuple[str, ...], name: str) -> str | None:
    return next((p for p in paths if os.path.isfile(p)), None) or shutil.which(name)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if _first(CHROMIUM, "chromium") is None:
        return "no Chromium (apt-get install chromium chromium-driver; .ci/run installs them as root)"
    if _first(CHROMEDRIVER, "chromedriver") is None:
        return "no chromedriver (apt-get install chromium-driver)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def webui_env(port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an offline LlamaBoard server on ``127.0.0.1:port`` (its Start runs ``llamafactory-cli`` from
    ``PATH``, as in an activated venv: the one next to this interpreter comes first)."""
    path = os.pathsep.join([os.path.dirname(llamafactory_cli()), os.environ.get("PATH", "")])
    return offline_env({
        "PATH": path,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "BROWSER": "true",  # launch(inbrowser=True): the server opens no browser of its own
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
        "MPLBACKEND": "agg",
        **(extra or {}),
    })


class Board:
    """``llamafactory-cli webui`` (or ``webchat RECIPE``) started in ``workdir`` (where LlamaBoard keeps
    ``saves/``, ``llamaboard_config/`` and ``llamaboard_cache/``), its output in ``workdir/server.log``."""

    def __init__(self, workdir: str | Path, command: tuple[str, ...] = ("webui",), env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = self.workdir / "server.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([llamafactory_cli(), *command], cwd=self.workdir, stdout=self._log,
                                        stderr=subprocess.STDOUT, env=webui_env(self.port, env))

    def wait_ready(self, timeout: float = 300) -> Board:
        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the web UI exited ({self.process.returncode}):\n{self.log()[-4000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return self
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"the web UI did not answer within {timeout}s:\n{self.log()[-4000:]}")
                time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def children(self) -> list[Any]:
        """The server's child processes now (a training run LlamaBoard started, for one)."""
        import psutil

        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()


def chromium(window: tuple[int, int] = (1600, 2400)) -> Any:
    """A headless Chromium (Selenium WebDriver) with a fresh profile; ``quit()`` it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='dyncot-chromium-')}")
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.binary_location = _first(CHROMIUM, "chromium")
    return webdriver.Chrome(options=options, service=Service(_first(CHROMEDRIVER, "chromedriver")))


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition", poll: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); TimeoutError naming ``what``."""
    deadline = time.time() + timeout
    last_error: Exception | None = None
    while time.time() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 (an element not there yet, a stale one: poll again)
            last_error = err
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})"
                                                                          if last_error else ""))


def _literal(text: str) -> str:
    """An XPath string literal for ``text``."""
    if "'" not in text:
        return f"'{text}'"
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


class Page:
    """A LlamaBoard page in the browser, with the few gestures the tests need. Elements are found the way a user
    finds them: LlamaBoard's by their label (they have no ids), the plugin's by their ``elem_id``."""

    def __init__(self, driver: Any, url: str):
        self.driver, self.url = driver, url

    def open(self, label: str = "Model name") -> Page:
        self.driver.get(self.url)
        wait_for(lambda: self.labelled(label), 120, "the page to load")
        time.sleep(1.0)  # LlamaBoard's resume() and change_lang() settle the labels and defaults
        return self

    # -------------------------------------------------------------------------------------------- finding
    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def labelled(self, label: str) -> Any:
        """The visible Gradio block whose label reads ``label``."""
        from selenium.webdriver.common.by import By

        xpath = (f"//span[@data-testid='block-info' and normalize-space()={_literal(label)}]"
                 "/ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' block ')][1]")
        found = [e for e in self.driver.find_elements(By.XPATH, xpath) if e.is_displayed()]
        if not found:
            raise LookupError(f"no visible element labelled {label!r}")
        return found[0]

    def block(self, label: str | None = None, elem_id: str | None = None) -> Any:
        return self.find(f"#{elem_id}") if elem_id else self.labelled(label)

    def button(self, text: str) -> Any:
        from selenium.webdriver.common.by import By

        found = [b for b in self.driver.find_elements(By.XPATH, f"//button[normalize-space()={_literal(text)}]")
                 if b.is_displayed()]
        if not found:
            raise LookupError(f"no visible button {text!r}")
        return found[0]

    # -------------------------------------------------------------------------------------------- gestures
    def click(self, text: str) -> None:
        element = wait_for(lambda: self.button(text), 30, f"button {text!r}")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()

    def tab(self, name: str) -> None:
        from selenium.webdriver.common.by import By

        wait_for(lambda: [t for t in self.driver.find_elements(By.XPATH, f"//button[@role='tab' and "
                                                               f"normalize-space()={_literal(name)}]")
                          if t.is_displayed()], 30, f"tab {name!r}")[0].click()
        time.sleep(0.3)

    def expand(self, elem_id: str | None = None, text: str | None = None) -> None:
        """Open an accordion (by its id, or by its title for LlamaBoard's)."""
        from selenium.webdriver.common.by import By

        if elem_id:
            head = self.find(f"#{elem_id} > button")
        else:
            head = wait_for(lambda: [b for b in self.driver.find_elements(
                By.XPATH, f"//button[contains(@class, 'label-wrap') and .//span[normalize-space()={_literal(text)}]]")
                if b.is_displayed()], 30, f"accordion {text!r}")[0]
        if "open" not in (head.get_attribute("class") or ""):
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", head)
            head.click()
            time.sleep(0.3)

    def type(self, text: str, label: str | None = None, elem_id: str | None = None, enter: bool = False) -> None:
        """Replace a textbox's or number box's content as a user would (select all, type), then leave it."""
        from selenium.webdriver.common.keys import Keys

        block = wait_for(lambda: self.block(label, elem_id), 30, f"field {label or elem_id!r}")
        field = block.find_elements("css selector", "textarea, input[type=number], input:not([type])")[0]
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(text)
        field.send_keys(Keys.ENTER if enter else Keys.TAB)
        time.sleep(0.2)

    def choose(self, value: str, label: str | None = None, elem_id: str | None = None) -> None:
        """Pick ``value`` in a drop-down (typed in, then its option clicked; a custom value is entered)."""
        from selenium.webdriver.common.keys import Keys

        block = wait_for(lambda: self.block(label, elem_id), 30, f"drop-down {label or elem_id!r}")
        field = block.find_element("css selector", "input")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
        field.click()
        time.sleep(0.2)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(value)
        time.sleep(0.3)
        options = [o for o in block.find_elements("css selector", "li[data-testid=dropdown-option]")
                   if o.get_attribute("aria-label") == value]
        if options:
            options[0].click()
        else:
            field.send_keys(Keys.ENTER)
        time.sleep(0.2)
        field.send_keys(Keys.ESCAPE)
        time.sleep(0.2)

    def clear(self, label: str | None = None, elem_id: str | None = None) -> None:
        """Empty a multi-select drop-down (its "clear" cross; nothing to do when nothing is selected)."""
        block = wait_for(lambda: self.block(label, elem_id), 30, f"drop-down {label or elem_id!r}")
        for cross in block.find_elements("css selector", ".remove-all"):
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", cross)
            cross.click()
            time.sleep(0.3)

    def check(self, value: bool, elem_id: str) -> None:
        box = self.find(f"#{elem_id} input[type=checkbox]")
        if box.is_selected() != value:
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
            box.click()

    # -------------------------------------------------------------------------------------------- reading
    def value(self, label: str | None = None, elem_id: str | None = None) -> str:
        block = self.block(label, elem_id)
        field = block.find_elements("css selector", "textarea, input")[0]
        return field.get_attribute("value") or ""

    def text(self, css: str) -> str:
        return self.find(css).text

    def screenshot(self, path: str | Path) -> str:
        self.driver.save_screenshot(str(path))
        return str(path)


__all__ = ["CHROMIUM_FLAGS", "Board", "Page", "browser_missing", "chromium", "free_port", "wait_for", "webui_env"]
