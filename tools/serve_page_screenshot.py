"""Take docs/images/serve-page.png: serve's page in headless Chromium, showing a real model's answer.

Trains ``resnet_tiny`` on scikit-learn's digits (``resnet-bottleneck train``, about a minute on two cores;
``--weights`` to serve a model you have instead), serves it with ``resnet-bottleneck serve`` on a free
loopback port, uploads one of the run's held-out digits (enlarged, as a PNG) through the page's file chooser,
waits for the top-5 and saves the screenshot. Needs Debian's ``chromium`` and ``chromium-driver``.

    python tools/serve_page_screenshot.py [--out docs/images/serve-page.png] [--weights RUN_OR_FILE] [--digit N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import chromium_flags  # noqa: E402  (the page test's browser, the same flags)


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnet_bottleneck", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    return env


def _digit(weights: Path, index: int, out: Path) -> int:
    """Save the run's held-out digit ``index`` as a 160x160 PNG at ``out``; its class."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "src"))
    from resnet_bottleneck.inference import held_out_split
    from resnet_bottleneck.io.safetensors import load_variables

    model_file = weights / "model.safetensors" if weights.is_dir() else weights
    found = held_out_split(load_variables(model_file)[1], str(model_file))
    if found is None:
        raise SystemExit(f"{weights} records no held-out digits: pass a digits run")
    images = found[0]
    Image.fromarray(images.images[index]).resize((160, 160), Image.BICUBIC).save(out)
    return int(images.labels[index])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "serve-page.png")
    parser.add_argument("--weights", type=Path, help="a digits run or its model file (default: train one)")
    parser.add_argument("--digit", type=int, default=3, help="which held-out digit to show (default 3)")
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = args.weights
        if weights is None:
            weights = tmp / "run"
            subprocess.run(_command("train", "--epochs", "10", "--out", str(weights)), check=True, env=_env())
        image = tmp / "digit.png"
        print(f"the held-out digit is a {_digit(weights, args.digit, image)}")
        port = _free_port()
        server = subprocess.Popen(_command("serve", "--weights", str(weights), "--port", str(port)), env=_env())
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"serve exited with {server.returncode}")
                try:
                    with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("serve was not ready within 180 s")
                time.sleep(0.5)
            options = webdriver.ChromeOptions()
            options.binary_location = "/usr/bin/chromium"
            for flag in chromium_flags(tmp / "profile", "--window-size=760,900", "--hide-scrollbars"):
                options.add_argument(flag)
            browser = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
            try:
                browser.get(f"{url}/")
                browser.find_element(By.ID, "file").send_keys(str(image))
                WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".prediction")) >= 5)
                rows = browser.find_elements(By.CSS_SELECTOR, ".prediction")
                print(json.dumps([row.text.replace("\n", " ") for row in rows]))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(args.out))
                print(f"saved {args.out}")
            finally:
                browser.quit()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
