"""Fetching nodes record their models in the workflow that images embed, also for a node inside
a subgraph: its execution id is the path of subgraph nodes ("12:5"), resolved through the saved
workflow's subgraph definitions (the frontend's workflow format, ``definitions.subgraphs``)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.host

SUB = "0b6c3f1e-5d7a-4c43-9a55-2f6c1d7e8a90"
ENTRY = {"name": "a.safetensors", "url": "https://example.org/a.safetensors", "hash": "ab" * 32,
         "hash_type": "sha256", "directory": "loras"}


def workflow() -> dict:
    return {"nodes": [{"id": 5, "type": "WorkbenchFetchModel"}, {"id": 12, "type": SUB}],
            "definitions": {"subgraphs": [{"id": SUB, "nodes": [{"id": 5, "type": "WorkbenchFetchModel"},
                                                                  {"id": 7, "type": "PreviewAny"}]}]}}


def test_a_node_inside_a_subgraph_gets_the_entry(comfy_host):
    from lora_workbench.nodes.fetching import record_models

    wf = workflow()
    record_models({"workflow": wf}, "12:5", [ENTRY])
    assert wf["definitions"]["subgraphs"][0]["nodes"][0]["properties"]["models"] == [ENTRY]
    assert "properties" not in wf["nodes"][0]  # the root graph's node 5 is another node


def test_a_root_node_and_unknown_paths(comfy_host):
    from lora_workbench.nodes.fetching import record_models

    wf = workflow()
    record_models({"workflow": wf}, "5", [ENTRY])
    assert wf["nodes"][0]["properties"]["models"] == [ENTRY]
    before = repr(wf)
    record_models({"workflow": wf}, "99:5", [ENTRY])  # no such subgraph node: nothing written
    record_models({"workflow": wf}, "12:99", [ENTRY])
    assert repr(wf) == before
