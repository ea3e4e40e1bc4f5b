"""Headless Chromium driven by Selenium, for the browser tests and the README's screenshots.

Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``; ``make test``
installs them) are used as they are: the driver's path is given, so Selenium never looks for or downloads one
(``SE_OFFLINE``), and Chromium starts with its background networking off (this machine's network is closed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1")


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver), or skip saying what to install (``make test`` installs both only when it runs as
    root with apt-get)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        missing = " and ".join(name for name, found in (("chromium", chromium), ("chromedriver", driver)) if not found)
        pytest.skip(f"{missing} not found: install chromium and chromium-driver (Debian/Ubuntu: sudo apt-get "
                    "install -y chromium chromium-driver; make test does it when run as root)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (make install adds it)")
    return chromium, driver


@contextmanager
def chromium(width: int = 1280, height: int = 900):
    """A headless Chromium session (a fresh profile, removed afterwards)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = browser_paths()
    os.environ.setdefault("SE_OFFLINE", "true")
    profile = tempfile.mkdtemp(prefix="kneuron-chromium-")
    options = Options()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def charts_drawn(driver) -> int:
    """How many ECharts instances on the page have drawn a canvas."""
    return int(driver.execute_script(
        "return Array.from(document.querySelectorAll('.chart')).filter(e => typeof echarts !== 'undefined' && "
        "echarts.getInstanceByDom(e) && e.querySelector('canvas')).length"))


def screenshot(driver, path: Path, limit: int = 4000) -> Path:
    """A PNG of the whole page (at most ``limit`` pixels high), through Chromium's own full-page capture."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], limit), "scale": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
