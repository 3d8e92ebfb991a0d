"""Browser tests: Debian's headless Chromium, driven by Playwright, against the real frontends
that the pinned ComfyUI serves: the floor the host pins (its venv's comfyui-frontend-package)
and each newer one of ``scripts/frontends.txt``, served through ``--front-end-root``. Every
browser test runs once per frontend, with one server per frontend for the whole session.
Screenshots go to ``artifacts/screenshots/<frontend>/`` (with ``UPDATE_SCREENSHOTS=1``, the
newest frontend's also to the README's ``docs/screenshots/``)."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import mirror_servers, running_server

from helpers.browser_page import FLOOR, FRONTENDS, frontend_args, open_page


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


# Newest first: pytest groups the tests by frontend and stops a newer frontend's own servers
# when it moves on to the next, so only the floor's (the e2e tests' server) outlives its group
# and no two servers hold the full-size checkpoint for long.
@pytest.fixture(scope="session", params=FRONTENDS[::-1])
def frontend(request) -> str:
    """The frontend version under test; tests are grouped by it, one server each."""
    return request.param


@pytest.fixture(scope="session")
def fe_server(frontend, request, tmp_path_factory):
    """The session's ComfyUI server for ``frontend``: the e2e ``server`` for the floor, a second
    one started with ``--front-end-root`` for a newer frontend."""
    if frontend == FLOOR:
        yield request.getfixturevalue("server")
        return
    with running_server(tmp_path_factory.mktemp(f"server-{frontend}"), f"server-{frontend}.log",
                        settings={"allow_loopback": True}, args=frontend_args(frontend)) as srv:
        yield srv


@pytest.fixture(scope="session")
def fe_mirror(frontend, request, tmp_path_factory):
    """The ``mirror`` pair (fake hub, ComfyUI without models) serving ``frontend``."""
    if frontend == FLOOR:
        yield request.getfixturevalue("mirror")
        return
    with mirror_servers(tmp_path_factory.mktemp(f"mirror-{frontend}"), args=frontend_args(frontend)) as pair:
        yield pair


@pytest.fixture
def page(browser, fe_server, frontend):
    context, p = open_page(browser, fe_server.url, frontend)
    try:
        yield p
        assert p.errors == [], f"errors from the pack's scripts: {p.errors}"
    finally:
        context.close()
