"""After a fetching node runs in the browser, the workflow records where its model came from
(the frontend's own properties.models convention), without any token."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import MIRROR_LORA, MIRROR_TOKEN

from helpers.paths import REAL_LORAS

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="needs ../shared fixtures")]


def test_fetch_node_records_the_model_in_the_saved_workflow(browser, fe_mirror, frontend):
    from helpers.browser_page import open_page

    hub, srv = fe_mirror
    context, page = open_page(browser, srv.url, frontend)
    try:
        page.load({
            "last_node_id": 2, "last_link_id": 1, "version": 0.4, "links": [[1, 1, 2, 2, 0, "STRING"]],
            "nodes": [
                {"id": 1, "type": "WorkbenchFetchModel", "pos": [40, 100], "size": [420, 200],
                 "outputs": [{"name": "filename", "type": "STRING"}, {"name": "sha256", "type": "STRING"},
                             {"name": "report", "type": "STRING", "links": [1]}],
                 "widgets_values": ["urn:air:sd1:lora:civitai:7001@70011", "loras", "", ""]},
                {"id": 2, "type": "PreviewAny", "pos": [520, 100], "size": [500, 200],
                 "inputs": [{"name": "source", "type": "*", "link": 1}]},
            ]})
        entry = page.queue_and_wait(srv.url)
        assert entry["status"]["status_str"] == "success", entry["status"]
        page.page.wait_for_function("(app.rootGraph ?? app.graph).getNodeById(1).properties?.models?.length > 0")
        workflow = page.js("() => (app.rootGraph ?? app.graph).serialize()")
        node = next(n for n in workflow["nodes"] if n["id"] == 1)
        sha = hashlib.sha256(MIRROR_LORA.read_bytes()).hexdigest()
        assert node["properties"]["models"] == [{
            "name": MIRROR_LORA.name, "url": f"{hub.api_base}/api/download/models/70011", "hash": sha,
            "hash_type": "sha256", "directory": "loras"}]
        assert MIRROR_TOKEN not in json.dumps(workflow)
        assert page.errors == []
    finally:
        context.close()
