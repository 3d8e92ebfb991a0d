"""A page of the real frontend on a test server, for the browser tests."""

from __future__ import annotations

import time

from helpers.paths import REPO

SHOTS = REPO / "artifacts" / "screenshots"


class Page:
    """A page on the test server with the frontend loaded; ``errors`` collects uncaught page
    errors that come from this pack's scripts."""

    def __init__(self, page, url: str):
        self.page = page
        self.url = url
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)) if "lora-workbench" in str(e.stack or e) else None)
        page.on("console", lambda m: self.errors.append(m.text)
                if m.type == "error" and "lora-workbench" in m.text else None)
        self.open()

    def open(self) -> None:
        import requests

        # A new user gets the template browser on the first visit; this is not a first visit.
        requests.post(f"{self.url}/settings/Comfy.TutorialCompleted", json=True, timeout=30)
        self.page.goto(self.url)
        self.page.wait_for_function("window.app?.graph && window.comfyAPI?.api?.api", timeout=120_000)
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
            const n = app.graph.getNodeById(id), c = app.canvas;
            c.ds.scale = scale; c.ds.offset = [-n.pos[0] + 120 / scale, -n.pos[1] + 200 / scale];
            c.setDirty(true, true); c.draw(true, true);
            const r = c.canvas.getBoundingClientRect();
            return {x: r.left + 120 - 8, y: r.top + 200 - 40 * scale, width: n.size[0] * scale + 16,
                    height: (n.size[1] + 40) * scale + 16};
        }""", [node_id, scale])

    def shot(self, name: str, clip: dict | None = None) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.wait_for_timeout(800)  # DOM widgets follow the canvas on the next frames
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), clip=clip)

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
