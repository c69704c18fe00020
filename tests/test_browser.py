"""Browser tests: headless Chromium shows report.html and the neuroglancer viewer, not a blank page.

Chromium is driven through chromedriver's W3C WebDriver HTTP API (no selenium needed).
Screenshots are saved under ``test-artifacts/browser/`` for people to look at. The tests skip
when chromium or chromedriver is missing (Debian: ``apt-get install chromium
chromium-driver``), unless ``NEUROFLOOD_REQUIRE_BROWSER=1`` (CI sets it), where they fail.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuroflood.cli import main
from neuroflood.distributed import free_port
from neuroflood.volume import write_volume

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # software WebGL for neuroglancer without a GPU
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("NEUROFLOOD_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = WebDriver()
    yield driver
    driver.close()


class WebDriver:
    """A minimal client of chromedriver's W3C WebDriver API: one headless Chromium session."""

    def __init__(self, width: int = 1400, height: int = 1000):
        port = free_port()
        self.process = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        self.profile = tempfile.mkdtemp(prefix="nf-chromium-")
        deadline = time.time() + 20
        while True:
            try:
                self._call("GET", "/status")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        options = {"binary": CHROMIUM, "args": [*CHROME_ARGS, f"--window-size={width},{height}", f"--user-data-dir={self.profile}"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        self.session = "/session/" + self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["value"]

    def get(self, url: str) -> None:
        self._call("POST", f"{self.session}/url", {"url": url})

    def run(self, script: str):
        return self._call("POST", f"{self.session}/execute/sync", {"script": script, "args": []})

    def screenshot(self) -> np.ndarray:
        png = base64.b64decode(self._call("GET", f"{self.session}/screenshot"))
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def close(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            self.process.terminate()
            self.process.wait(timeout=20)
            shutil.rmtree(self.profile, ignore_errors=True)


def _save(pixels: np.ndarray, name: str) -> None:
    Image.fromarray(pixels).save(ARTIFACTS / name)


def _colourful_fraction(pixels: np.ndarray) -> float:
    """Fraction of strongly coloured pixels (segmentation colours; UI chrome is grey)."""
    p = pixels.astype(int)
    return float(((p.max(-1) - p.min(-1)) > 60).mean())


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    from neuroflood.synthetic import make_em_volume

    image, labels = make_em_volume((40, 64, 64), seed=3)
    path = tmp_path_factory.mktemp("browser") / "synth.h5"
    write_volume(f"{path}:image", image)
    write_volume(f"{path}:labels", labels)
    seg = labels.copy()
    seg[:, :, 32:] += 1  # splits and merges: the error map has colour
    write_volume(f"{path}:seg", seg)
    return path


def test_report_html_renders(browser, volumes, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", f"{volumes}:seg", f"{volumes}:labels", "--image", f"{volumes}:image", "--out", str(out)]) == 0
    browser.get((out / "report.html").resolve().as_uri())
    state = browser.run(
        "return {title: document.title, images: document.images.length,"
        " loaded: Array.from(document.images).every(i => i.complete && i.naturalWidth > 100),"
        " rows: document.querySelectorAll('td').length}"
    )
    assert state["title"] == "neuroflood evaluation" and state["images"] == 3 and state["loaded"], state
    assert state["rows"] > 40
    browser.run("document.querySelector('figure').scrollIntoView()")
    pixels = browser.screenshot()
    _save(pixels, "report_html.png")
    assert pixels.std() > 20, "the screenshot is blank"
    assert _colourful_fraction(pixels) > 0.05, "the overlay figure is not visible"


def test_neuroglancer_viewer_renders(browser, volumes):
    cmd = [sys.executable, "-m", "neuroflood", "view", f"{volumes}:image", f"{volumes}:labels", f"{volumes}:seg"]
    viewer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = viewer.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), (url, viewer.stderr.read() if viewer.poll() is not None else "")
        browser.get(url)
        deadline, pixels = time.time() + 60, None
        while time.time() < deadline:  # data arrives chunk by chunk; wait until segments show
            time.sleep(1.0)
            pixels = browser.screenshot()
            if _colourful_fraction(pixels) > 0.15:
                break
        _save(pixels, "neuroglancer.png")
        layers = browser.run("return Array.from(document.querySelectorAll('.neuroglancer-layer-item-label')).map(e => e.textContent)")
        assert layers == ["synth.h5:image", "synth.h5:labels", "synth.h5:seg"]
        assert pixels.std() > 20, "the viewer screenshot is blank"
        assert _colourful_fraction(pixels) > 0.15, "the viewer shows its UI but no segmentation"
    finally:
        viewer.send_signal(signal.SIGINT)
        try:
            assert viewer.wait(timeout=20) == 0
        finally:
            if viewer.poll() is None:
                viewer.kill()
