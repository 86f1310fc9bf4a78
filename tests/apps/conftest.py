"""Shared set-up of the app tests: a real headless Chromium driven by Selenium."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium (the system's package, driven by Selenium; a 1280x1100 window,
    a fresh profile, the page's console kept for ``driver.get_log("browser")``), quit and
    its profile removed after the test. Skips where selenium, chromium or chromedriver is
    missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "needs chromium and chromedriver from the system's packages "
            "(apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path / "chromium_profile"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1100",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
