"""A real server and a real Chromium for the browser tests.

The server is started the way a user starts it (``python -m app.cli serve``) on a free loopback
port with a temporary data dir, so the scheduler launches real trainer workers. Chromium is the
Debian package (Playwright cannot download its own build here): .ci/run installs it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.utils.waiting import PATIENCE_MS, PATIENCE_S, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = PATIENCE_S) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _cancel_live_runs(base: str) -> None:
    """Workers are detached (they outlive the server on purpose): stop any the test left running."""
    try:
        runs = json.loads(_get(f"{base}/api/runs?limit=100"))["runs"]
        for run in runs:
            if run["status"] in ("queued", "running"):
                request = urllib.request.Request(f"{base}/api/runs/{run['id']}/cancel", method="POST")
                urllib.request.urlopen(request, timeout=PATIENCE_S).close()
    except (OSError, ValueError, KeyError):
        pass


@pytest.fixture
def server(tmp_path):
    """The base URL of a freshly started server; stopped (and its live runs cancelled) afterwards."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        # one thread per worker (its workers inherit this): OpenMP threads spin while they wait, which on a
        # busy machine slows a step of the demo from hundredths of a second to seconds
        env=os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )

    def answers() -> bool:
        assert process.poll() is None, f"the server exited:\n{(tmp_path / 'server.log').read_text()}"
        return _get(f"{base}/api/runs") is not None

    try:
        wait_until(answers, what="the server to answer", interval=0.2, ignore=(urllib.error.URLError, OSError))
    except AssertionError:
        process.kill()
        log.close()
        raise
    yield base
    _cancel_live_runs(base)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


@pytest.fixture
def page(tmp_path):
    """A Chromium page; skipped, with the reason, only where Chromium is not installed."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does")
    from playwright.sync_api import expect, sync_playwright

    # every wait on the page (an action, an expectation) has the one bound, not Playwright's seconds
    expect.set_options(timeout=PATIENCE_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=PATIENCE_MS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(PATIENCE_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.js_errors = errors  # the test asserts the page raised none
        try:
            yield page
        finally:
            try:  # kept for a look after a failure; a page that died must not hide the test's own error
                page.screenshot(path=str(tmp_path / "last.png"), full_page=True)
            except Exception:
                pass
            browser.close()
