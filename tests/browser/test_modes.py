"""Every frontend x renderer x place: the editors, a run's results and ⚠ badge, and the recorded
provenance, on the floor and the newest frontend, in the classic canvas and in "Nodes 2.0" (Vue
nodes), on the root graph and on nodes inside a subgraph (built with the frontend's own
``convertToSubgraph``). One page per frontend and renderer; one short run per case (the
checkpoint stays loaded, only the LoRA node, a fetch and two previews execute)."""

from __future__ import annotations

import functools
import itertools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from helpers.browser_page import FLOOR, open_page
from helpers.paths import REAL_LORAS

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="needs ../shared fixtures")]

LOKR = "real/lycoris_lokr/smart_falcon_4_lokr.safetensors"
SMALL = REAL_LORAS / "cloneofsimo" / "analog_svd_rank4.safetensors"
CKPT, LOAD, PREVIEW, FETCH, PREVIEW2, STACK = 1, 2, 3, 4, 5, 6
_case = itertools.count(1)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def file_host(tmp_path_factory):
    """A plain static file server on loopback; ``url(name)`` serves a small real LoRA under a
    new name each time, so that every case downloads (and records) a new source."""
    folder = tmp_path_factory.mktemp("files")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def url(name: str) -> str:
        (folder / name).symlink_to(SMALL)
        return f"http://127.0.0.1:{httpd.server_address[1]}/{name}"

    yield url
    httpd.shutdown()


@pytest.fixture(scope="module", params=["classic", "nodes2"])
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def mode_page(browser, fe_server, frontend, mode):
    """One page per frontend and renderer, reused by the cases of both places."""
    requests.post(f"{fe_server.url}/settings/Comfy.VueNodes.Enabled", json=mode == "nodes2", timeout=30)
    context, page = open_page(browser, fe_server.url, frontend)
    try:
        assert page.js("() => !!app.ui.settings.getSettingValue('Comfy.VueNodes.Enabled')") is (mode == "nodes2")
        yield page
    finally:
        context.close()
        requests.post(f"{fe_server.url}/settings/Comfy.VueNodes.Enabled", json=False, timeout=30)


def workflow(url: str, save_as: str, strength: float) -> dict:
    rows = json.dumps([{"lora": LOKR, "strength_model": 0.5, "blocks": "MIDD"}])
    return {
        "last_node_id": 6, "last_link_id": 3, "version": 0.4,
        "links": [[1, CKPT, 0, LOAD, 0, "MODEL"], [2, LOAD, 2, PREVIEW, 0, "STRING"],
                  [3, FETCH, 2, PREVIEW2, 0, "STRING"]],
        "nodes": [
            {"id": CKPT, "type": "CheckpointLoaderSimple", "pos": [20, 80], "size": [300, 100],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}, {"name": "CLIP", "type": "CLIP"},
                         {"name": "VAE", "type": "VAE"}], "widgets_values": ["workbench-sd15.safetensors"]},
            {"id": LOAD, "type": "WorkbenchLoadLora", "pos": [360, 80], "size": [420, 220],
             "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
             "outputs": [{"name": "MODEL", "type": "MODEL"}, {"name": "CLIP", "type": "CLIP"},
                         {"name": "report", "type": "STRING", "links": [2]}],
             "widgets_values": [LOKR, strength, 1.0, ""]},
            {"id": PREVIEW, "type": "PreviewAny", "pos": [1240, 80], "size": [300, 160],
             "inputs": [{"name": "source", "type": "*", "link": 2}]},
            {"id": FETCH, "type": "WorkbenchFetchModel", "pos": [360, 340], "size": [420, 200],
             "outputs": [{"name": "filename", "type": "STRING"}, {"name": "sha256", "type": "STRING"},
                         {"name": "report", "type": "STRING", "links": [3]}],
             "widgets_values": [url, "loras", save_as, ""]},
            {"id": PREVIEW2, "type": "PreviewAny", "pos": [1240, 300], "size": [300, 160],
             "inputs": [{"name": "source", "type": "*", "link": 3}]},
            {"id": STACK, "type": "WorkbenchLoraStack", "pos": [820, 300], "size": [460, 300],
             "widgets_values": [rows]},
        ]}


# The node objects of the case: on the root graph or inside the subgraph node `sg`.
NODE = """([sg, id]) => { const root = app.rootGraph ?? app.graph;
    return (sg == null ? root : root.getNodeById(sg).subgraph).getNodeById(id); }"""


def node_js(page, sg, node_id: int, body: str):
    """Evaluate ``body`` (an expression of ``n``, the case's node ``node_id``)."""
    return page.js(f"([sg, id]) => {{ const n = ({NODE})([sg, id]); return {body}; }}", [sg, node_id])


def press(locator, frontend: str, mode: str) -> None:
    """Click ``locator``. On 1.32.9's Nodes 2.0 in this page, the Vue node body takes the pointer
    events over its widgets, the frontend's own button widget included (Playwright reports
    ``node-body-N intercepts pointer events``), so a real click reaches no widget there; the
    element's own click event is sent instead. (test_stack_editor_works_in_nodes_2 clicks the
    stack editor for real on 1.32.9, on a freshly reloaded page.)"""
    if frontend == FLOOR and mode == "nodes2":
        locator.dispatch_event("click")
    else:
        locator.click()


@pytest.mark.parametrize("place", ["root", "subgraph"])
def test_editors_results_and_provenance(mode_page, fe_server, file_host, frontend, mode, place, request):
    if frontend == FLOOR and mode == "nodes2":
        # Open finding (strict: this case fails loudly once it passes): after a run the results
        # reach the node (checked below) but their panel, a DOM widget the pack adds to the node
        # then, does not show on 1.32.9's Nodes 2.0; it does on 1.58.1 and in the classic canvas.
        request.applymarker(pytest.mark.xfail(strict=True, reason="1.32.9 Nodes 2.0 does not show the results "
                                                                  "panel added after a run"))
    page = mode_page
    case = next(_case)
    name = f"prov-{frontend}-{mode}-{place}-{case}.safetensors"
    url = file_host(name)
    page.load(workflow(url, f"browser/{name}", round(0.5 + case / 100, 2)))
    sg = None
    if place == "subgraph":
        sg = page.js("""(ids) => { const g = app.rootGraph ?? app.graph;
            const made = g.convertToSubgraph(new Set(ids.map((id) => g.getNodeById(id))));
            app.canvas.openSubgraph(made.subgraph, made.node); return made.node.id; }""", [LOAD, FETCH, STACK])
        assert page.js("() => app.canvas.graph !== (app.rootGraph ?? app.graph)")  # the canvas shows the subgraph
        inner = page.js("(sg) => (app.rootGraph ?? app.graph).getNodeById(sg).subgraph.nodes.map(n => n.type)", sg)
        assert {"WorkbenchLoadLora", "WorkbenchFetchModel", "WorkbenchLoraStack"} <= set(inner)
        ids = page.js("""(sg) => Object.fromEntries((app.rootGraph ?? app.graph).getNodeById(sg).subgraph.nodes
            .map(n => [n.type, n.id]))""", sg)
        load, fetch, stack = ids["WorkbenchLoadLora"], ids["WorkbenchFetchModel"], ids["WorkbenchLoraStack"]
    else:
        load, fetch, stack = LOAD, FETCH, STACK
    page.page.wait_for_timeout(500)

    # The stack editor: its rows, and an edit that lands in the node's own JSON widget.
    # Only what is on screen counts: DOM widgets of nodes outside the shown graph are hidden.
    rows = page.page.locator(".wb-stack .wb-row >> visible=true")
    rows.first.wait_for()
    assert rows.count() == 1
    press(page.page.locator(".wb-stack .wb-add >> visible=true"), frontend, mode)
    assert rows.count() == 2
    assert len(json.loads(node_js(page, sg, stack, "n.widgets.find(w => w.name === 'loras').value"))) == 2
    # The JSON widget and the replaced source widgets are hidden in place, in both renderers.
    hidden = node_js(page, sg, stack,
                     "[n.widgets.find(w => w.name === 'loras')].map(w => [w.hidden, w.options.hidden])[0]")
    assert hidden == [True, True]
    shown_json = page.js("() => [...document.querySelectorAll('textarea')].filter(t => t.offsetParent && "
                         "t.value.includes('\"lora\"')).length")
    assert shown_json == 0
    assert page.page.locator(".wb-source >> visible=true").count() == 2  # Load LoRA's and Fetch Model's pickers
    # Load LoRA's block editor button shows its caption, never the raw widget name.
    caption = node_js(page, sg, load, "[n.widgets.find(w => w.type === 'button')].map(w => w.label ?? w.name)[0]")
    assert caption == "Edit blocks…"
    if mode == "nodes2":
        assert page.page.get_by_role("button", name="Edit blocks…").count() == 1
        assert page.page.get_by_text("workbench_edit_blocks").count() == 0
        press(page.page.get_by_role("button", name="Edit blocks…"), frontend, mode)
    else:
        node_js(page, sg, load, "n.widgets.find(w => w.type === 'button').callback()")
    dialog = page.page.locator(".wb-dialog")
    dialog.wait_for()
    dialog.locator(".wb-cancel").click()
    dialog.wait_for(state="detached")

    # A run: results and the ⚠ badge on Load LoRA (its CLIP is not connected), the fetched
    # file's source recorded on Fetch Model, found by execution id ("<subgraph node>:<node>").
    entry = page.queue_and_wait(fe_server.url)
    assert entry["status"]["status_str"] == "success", entry["status"]
    page.page.wait_for_function(f"({NODE})({json.dumps([sg, load])}).widgets.some(w => w.name === 'workbench_results')")
    warning = node_js(page, sg, load, "n.widgets.find(w => w.name === 'workbench_results')?.entries?.[0]?.warning")
    assert "connect clip" in warning
    models = node_js(page, sg, fetch, "n.properties?.models")
    assert [(m["name"], m["url"], m["directory"]) for m in models] == [(f"browser/{name}", url, "loras")]
    saved = json.dumps(page.js("() => (app.rootGraph ?? app.graph).serialize()"))
    assert url in saved  # the saved workflow carries it (inside the subgraph's definition there)
    # On screen: the results panel with its badge.
    page.page.locator(".wb-results .wb-badge >> visible=true").first.wait_for(timeout=10_000)
    assert "connect clip" in page.page.locator(".wb-results .wb-warning-text >> visible=true").first.inner_text()
    page.shot(f"{mode}_{place}")
    assert page.errors == [], f"errors from the pack's scripts: {page.errors}"
    if place == "subgraph":
        page.js("() => app.canvas.setGraph?.(app.rootGraph ?? app.graph)")
    for made in (fe_server.base / "models" / "loras" / "browser").glob("prov-*"):
        made.unlink()
