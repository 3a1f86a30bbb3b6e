"""serve's page in a real browser: headless Chromium loads ``/`` from the real server, uploads an image and
reads the top-5 off the page; they must be what the server's JSON and ``predict`` say for the same file.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them:
``tools/install_chromium.sh``); without them the tests fail and say so. The screenshots go to
``$RESNET_BOTTLENECK_ARTIFACTS`` when set (CI keeps that folder), else to pytest's temporary folder
(``serve-page.png``, ``serve-page-error.png``; the path is printed).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import chromium_flags, random_variables

from resnet_bottleneck import create_model
from resnet_bottleneck.cli import main
from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, save_variables

ROOT = Path(__file__).resolve().parents[1]
MODEL = "resnet_tiny"
NAME = "tiny-model.v2"  # served under --name: the page must take its name from the server, not the file
#: Class names with markup in them: the page must show them as text, never run them.
LABELS = [f'<img src=x onerror="window.pwned={i}"><b>class {i}</b> & co' for i in range(10)]
WAIT_S = 30  # the longest any one wait for the page may take


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [
        name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if not os.access(path, os.X_OK)
    ]
    if missing:
        pytest.fail(
            f"the page test needs headless Chromium: {' and '.join(missing)} not found; install Debian's packages "
            "(`apt-get install -y chromium chromium-driver`; make test does this as root or with sudo)",
            pytrace=False,
        )
    return chromium, driver


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny random model whose class names hold markup, an image, and a text file that is no image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("serve_page")
    model = create_model(MODEL, num_classes=10)
    meta = {"model": MODEL, "format": CHECKPOINT_FORMAT, "image_size": "32", "classes": json.dumps(LABELS)}
    save_variables(root / "tiny.safetensors", random_variables(model, (1, 32, 32, 3), seed=4), meta)
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((160, 120), Image.BICUBIC).save(root / "cat.jpg", quality=90)
    (root / "notes.txt").write_text("not an image at all\n")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET (or a POST of ``data``) to a loopback ``url``."""
    assert url.startswith("http://127.0.0.1:"), url
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=WAIT_S) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    """``python -m resnet_bottleneck serve`` on the tiny model, on a free loopback port, once ready: its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "resnet_bottleneck", "serve", "--weights", str(files / "tiny.safetensors")]
    argv += ["--name", NAME, "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # JAX's import and the first compile, on a busy 2-core machine
        while True:
            assert process.poll() is None, f"serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if _request(f"{url}/v2/health/ready")[0] == 200:
                    break
            except OSError:  # not listening yet
                pass
            assert time.monotonic() < deadline, f"serve not ready after 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium through chromedriver, with a fresh profile and no background traffic."""
    chromium, driver = _browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        pytest.fail(f"the page test needs selenium (the [test] extra): {err}", pytrace=False)

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tmp_path_factory.mktemp("chromium_profile")
    for flag in chromium_flags(profile, "--window-size=900,1000"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_page_load_timeout(WAIT_S)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """Where the screenshots go: ``$RESNET_BOTTLENECK_ARTIFACTS``, else pytest's temporary folder."""
    folder = os.environ.get("RESNET_BOTTLENECK_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _screenshot(browser, path: Path) -> None:
    assert browser.save_screenshot(str(path)), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {path}")


def _rows(browser) -> list:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, "#predictions .prediction")


def _page_predictions(browser) -> list[tuple[int, str, str, float]]:
    """(index, label text, probability text, bar width / track width) of each row the page shows."""
    from selenium.webdriver.common.by import By

    shown = []
    for row in _rows(browser):
        fill = row.find_element(By.CSS_SELECTOR, ".bar .fill").size["width"]
        track = row.find_element(By.CSS_SELECTOR, ".bar").size["width"]
        label = row.find_element(By.CSS_SELECTOR, ".label").text
        probability = row.find_element(By.CSS_SELECTOR, ".probability").text
        shown.append((int(row.get_attribute("data-index")), label, probability, fill / track))
    return shown


def _load(browser, url: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/")
    assert browser.find_element(By.ID, "model").text == NAME
    assert browser.find_element(By.CSS_SELECTOR, 'meta[name="model"]').get_attribute("content") == NAME
    assert browser.title.startswith(NAME)
    assert _rows(browser) == []


def _wait(browser, condition, what: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(lambda b: condition(b))
    except TimeoutException:
        status = browser.find_element(By.ID, "status").text
        raise AssertionError(f"the page did not show {what} within {WAIT_S} s; #status says {status!r}") from None


def _assert_shows(browser, expected: list[dict]) -> None:
    """The page's rows are ``expected`` (the server's predictions): same classes, labels, percentages, bars."""
    from selenium.webdriver.common.by import By

    shown = _page_predictions(browser)
    assert [(i, label) for i, label, _, _ in shown] == [(p["index"], p["label"]) for p in expected]
    for (_, _, text, bar), p in zip(shown, expected):
        assert text.endswith("%") and abs(float(text[:-1]) - 100 * p["probability"]) <= 0.05 + 1e-9, (text, p)
        assert abs(bar - p["probability"]) <= 0.01, (bar, p)  # the bar's width is the probability
    # the markup in the class names stayed text: nothing of it became an element, nothing of it ran
    assert browser.find_elements(By.CSS_SELECTOR, "#predictions img, #predictions b") == []
    assert browser.execute_script("return window.pwned === undefined")


def test_the_page_shows_the_servers_top5_for_an_uploaded_image(server, browser, files, artifacts, capsys):
    from selenium.webdriver.common.by import By

    image = files / "cat.jpg"
    status, answer = _request(f"{server}/predictions/{NAME}?topk=5", image.read_bytes())
    assert status == 200 and answer["model"] == NAME and len(answer["predictions"]) == 5, answer
    # predict's own answer for the same file: the server (and so the page) must give it
    assert main(["predict", str(image), "--weights", str(files / "tiny.safetensors"), "--json"]) == 0
    (predicted,) = json.loads(capsys.readouterr().out)
    assert [(p["index"], p["label"]) for p in answer["predictions"]] == [
        (p["class"], p["label"]) for p in predicted["top5"]
    ]
    np.testing.assert_allclose(
        [p["probability"] for p in answer["predictions"]], [p["probability"] for p in predicted["top5"]], atol=1e-5
    )

    _load(browser, server)
    browser.find_element(By.ID, "file").send_keys(str(image))
    _wait(browser, lambda b: len(_rows(b)) == 5, "5 predictions")
    _assert_shows(browser, answer["predictions"])
    assert "cat.jpg" in browser.find_element(By.ID, "status").text
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")
    preview = browser.find_element(By.ID, "preview")
    _wait(browser, lambda b: preview.is_displayed() and preview.get_property("naturalWidth") == 160, "the image")
    assert preview.get_attribute("alt") == "The chosen image, cat.jpg"
    # offline-capable: the page names nothing elsewhere, and all it loaded came from this server (or the user)
    with urllib.request.urlopen(f"{server}/", timeout=WAIT_S) as reply:
        source = reply.read().decode()
    assert all(u.startswith("data:") for u in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', source)), source[:500]
    assert "@import" not in source and "url(" not in source
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(f"{server}/") or u.startswith(("blob:", "data:")) for u in loaded), loaded
    _screenshot(browser, artifacts / "serve-page.png")


def test_an_image_dropped_on_the_page_is_classified(server, browser, files):
    """The drop zone: a drop event carrying the image's bytes, as a drag from the desktop delivers it."""
    from selenium.webdriver.common.by import By

    data = (files / "cat.jpg").read_bytes()
    _, answer = _request(f"{server}/predictions/{NAME}?topk=5", data)
    _load(browser, server)
    browser.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));""",
        base64.b64encode(data).decode(),
    )
    _wait(browser, lambda b: len(_rows(b)) == 5, "5 predictions")
    _assert_shows(browser, answer["predictions"])
    assert "dropped.jpg" in browser.find_element(By.ID, "status").text


def test_a_file_that_is_no_image_shows_the_servers_error(server, browser, files, artifacts):
    from selenium.webdriver.common.by import By

    notes = files / "notes.txt"
    status, answer = _request(f"{server}/predictions/{NAME}?topk=5", notes.read_bytes())
    assert status == 400 and answer["error"], answer
    _load(browser, server)
    browser.find_element(By.ID, "file").send_keys(str(files / "cat.jpg"))
    _wait(browser, lambda b: len(_rows(b)) == 5, "5 predictions")
    browser.find_element(By.ID, "file").send_keys(str(notes))  # a second choice replaces the first's answer
    line = browser.find_element(By.ID, "status")
    _wait(browser, lambda b: "error" in line.get_attribute("class"), "an error")
    assert answer["error"] in line.text and "notes.txt" in line.text and "400" in line.text, line.text
    assert _rows(browser) == []
    assert not browser.find_element(By.ID, "preview").is_displayed()  # no broken image
    _screenshot(browser, artifacts / "serve-page-error.png")
    assert _request(f"{server}/v2/health/ready")[0] == 200  # and the server is still ready


def test_the_page_is_usable_from_the_keyboard_and_labelled(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _load(browser, server)
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "file"  # the first stop is the chooser
    labels = browser.execute_script("return Array.from(document.getElementById('file').labels, l => l.id)")
    assert labels == ["drop"]  # the drop zone is the chooser's label: a click anywhere on it opens the chooser
    line = browser.find_element(By.ID, "status")
    assert line.get_attribute("role") == "status" and line.get_attribute("aria-live") == "polite"
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"


def test_a_missing_browser_fails_the_test_and_says_what_to_install(monkeypatch):
    """Without Chromium the page tests fail (never skip) and name the packages."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(pytest.fail.Exception, match=r"chromium and chromium-driver not found; .*apt-get install -y"):
        _browser_paths()
