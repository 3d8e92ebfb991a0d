"""A page of the real frontend on a test server, for the browser tests."""

from __future__ import annotations

import os
import time
from importlib.metadata import version

import pytest

from helpers.paths import HOST_ENV, REPO

# The frontends every browser test runs on: the floor the pinned host installs (its venv's
# comfyui-frontend-package) and each newer one of scripts/frontends.txt, which set-up installs
# beside it and the host serves through --front-end-root.
FLOOR = version("comfyui-frontend-package")
NEWER = [line.split("==", 1)[1].strip() for line in (REPO / "scripts" / "frontends.txt").read_text().splitlines()
         if line.strip() and not line.startswith("#")]
FRONTENDS = [FLOOR, *NEWER]
NEWEST = FRONTENDS[-1]


def frontend_static(frontend: str):
    """The folder of a newer frontend's files, as set-up installs it."""
    return HOST_ENV / "frontends" / frontend / "comfyui_frontend_package" / "static"

SHOTS = REPO / "artifacts" / "screenshots"
# The README's screenshots: taken on the newest tested frontend, what users see today.
README_SHOTS = REPO / "docs" / "screenshots"

# API endpoints that newer frontends call and the pinned host (ComfyUI 0.3.75) does not have
# yet: a failed request to one of them, and the frontend's own complaint about it, is the host
# being older than the frontend, never the pack. (1.58.1 lists queue and history through
# /api/jobs, which newer hosts serve.)
NEWER_HOST_ENDPOINTS = ("/api/jobs",)


def console_error_source(text: str, url: str = "") -> str:
    """Who a console or page error comes from, by one rule for every test: ``"host"`` when it
    names an endpoint of :data:`NEWER_HOST_ENDPOINTS` (in its text or the URL it is about);
    ``"input"`` for a 400 answer of the pack's own routes (a spec the user is still typing: the
    editor shows the route's message, and Chromium logs every 4xx response); ``"pack"`` when it
    names this pack's scripts or routes otherwise; else ``"frontend"``."""
    where = f"{text} {url}"
    if any(endpoint in where for endpoint in NEWER_HOST_ENDPOINTS):
        return "host"
    if "/lora_workbench/" in url and "status of 400" in text:
        return "input"
    if "lora-workbench" in where or "/lora_workbench/" in where:
        return "pack"
    return "frontend"


class Page:
    """A page on the test server with the frontend loaded. Console and page errors are sorted
    by :func:`console_error_source`: ``errors`` holds the pack's own (tests fail on them),
    ``host_gaps`` the ones from endpoints the pinned host lacks, ``rejected_inputs`` the pack's
    routes refusing a spec, ``frontend_errors`` the rest."""

    def __init__(self, page, url: str, frontend: str = "", newest: bool = False):
        self.page = page
        self.url = url
        self.frontend = frontend
        self.newest = newest
        self.errors: list[str] = []
        self.host_gaps: list[str] = []
        self.frontend_errors: list[str] = []
        self.rejected_inputs: list[str] = []
        page.on("pageerror", lambda e: self._sort(str(e), str(e.stack or "")))
        page.on("console", lambda m: self._sort(m.text, (m.location or {}).get("url", ""))
                if m.type == "error" else None)
        self.open()

    def _sort(self, text: str, url: str) -> None:
        source = console_error_source(text, url)
        {"pack": self.errors, "host": self.host_gaps, "frontend": self.frontend_errors,
         "input": self.rejected_inputs}[source].append(
            f"{text} ({url})" if url else text)

    def open(self) -> None:
        import requests

        # A new user gets the template browser on the first visit; this is not a first visit.
        requests.post(f"{self.url}/settings/Comfy.TutorialCompleted", json=True, timeout=30)
        self.page.goto(self.url)
        self.page.wait_for_function("(window.app?.rootGraph ?? window.app?.graph) && window.comfyAPI?.api?.api",
                                    timeout=120_000)
        # Our extensions are loaded once the editors' node hooks exist.
        self.page.wait_for_function("window.app.extensions?.some(e => e.name === 'LoraWorkbench.Editors')",
                                    timeout=60_000)
        if self.page.locator(".p-dialog-mask").count():
            self.page.keyboard.press("Escape")

    def load(self, workflow: dict) -> None:
        self.page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
        self.page.wait_for_timeout(500)

    def js(self, code: str, arg=None):
        return self.page.evaluate(code, arg)

    def focus(self, node_id: int, scale: float = 1.0) -> dict:
        """Put node ``node_id`` at the top left of the canvas at ``scale``; returns its screen box."""
        return self.js("""([id, scale]) => {
            const n = app.canvas.graph.getNodeById(id), c = app.canvas;
            c.ds.scale = scale; c.ds.offset = [-n.pos[0] + 120 / scale, -n.pos[1] + 200 / scale];
            c.setDirty(true, true); c.draw(true, true);
            const r = c.canvas.getBoundingClientRect();
            return {x: r.left + 120 - 8, y: r.top + 200 - 40 * scale, width: n.size[0] * scale + 16,
                    height: (n.size[1] + 40) * scale + 16};
        }""", [node_id, scale])

    def shot(self, name: str, clip: dict | None = None) -> None:
        """``artifacts/screenshots/<frontend>/<name>.png``; with ``UPDATE_SCREENSHOTS=1``, on the
        newest frontend, also the README's copy in ``docs/screenshots/`` when the README shows
        one of that name (a plain test run never changes tracked files)."""
        folder = SHOTS / (self.frontend or "frontend")
        folder.mkdir(parents=True, exist_ok=True)
        self.page.wait_for_timeout(800)  # DOM widgets follow the canvas on the next frames
        self.page.screenshot(path=str(folder / f"{name}.png"), clip=clip)
        if os.environ.get("UPDATE_SCREENSHOTS") == "1" and self.newest and (README_SHOTS / f"{name}.png").exists():
            (README_SHOTS / f"{name}.png").write_bytes((folder / f"{name}.png").read_bytes())

    def queue_and_wait(self, http_url: str, timeout: float = 600) -> dict:
        """Queue the open workflow through the frontend (its own UI-to-API conversion) and
        return the finished /history entry."""
        import requests

        before = set(requests.get(f"{http_url}/history", timeout=30).json())
        self.js("() => window.app.queuePrompt(0, 1)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = requests.get(f"{http_url}/history", timeout=30).json()
            new = [k for k in history if k not in before]
            if new and history[new[0]].get("status", {}).get("completed") is not None:
                return history[new[0]]
            time.sleep(0.5)
        raise TimeoutError("the queued workflow did not finish")


def open_page(browser, url: str, frontend: str):
    """A new browser context and a :class:`Page` of ``frontend`` at ``url``; close the context."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    return context, Page(context.new_page(), url, frontend, newest=frontend == NEWEST)


def frontend_args(frontend: str) -> tuple[str, ...]:
    """The host's arguments that serve ``frontend`` (none for the floor)."""
    if frontend == FLOOR:
        return ()
    static = frontend_static(frontend)
    if not (static / "index.html").is_file():
        pytest.fail(f"frontend {frontend} is not installed at {static}: run `make setup`")
    return ("--front-end-root", str(static))
