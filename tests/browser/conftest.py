"""Browser tests: Debian's headless Chromium, driven by Playwright, against the real frontend
that the pinned ComfyUI serves (the session's test server). Screenshots go to
``artifacts/screenshots/``."""

from __future__ import annotations

import os
import shutil

import pytest

from helpers.browser_page import Page


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: `make test` installs it (scripts/setup_browser.sh) as root")
        pytest.skip("chromium is not installed (run `make browser` as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        p = Page(context.new_page(), server.url)
        yield p
        assert p.errors == [], f"errors from the pack's scripts: {p.errors}"
    finally:
        context.close()
