"""The public contract: every node's id, inputs (names, types, order, defaults) and outputs.

A change to ``tests/golden/node_schemas.json`` is a change to the public API (DESIGN.md:
ids and input names are forever, new inputs are appended and optional). To record a
deliberate change: ``UPDATE_GOLDEN=1 make test``, then review the diff.
"""

from __future__ import annotations

import json
import os

import pytest

from helpers.paths import REPO

pytestmark = pytest.mark.host

GOLDEN = REPO / "tests" / "golden" / "node_schemas.json"


def contract(node_cls) -> dict:
    info = node_cls.GET_NODE_INFO_V1()
    inputs = []
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            opts = spec[1] if len(spec) > 1 else {}
            kind = spec[0] if isinstance(spec[0], str) else "COMBO"
            entry = {"name": name, "type": kind, "section": section}
            for k in ("default", "min", "max", "step", "multiline"):
                if k in opts:
                    entry[k] = opts[k]
            inputs.append(entry)
    outputs = [{"name": n, "type": t} for n, t in zip(info["output_name"], info["output"], strict=True)]
    return {"display_name": info["display_name"], "category": info["category"],
            "output_node": info["output_node"], "inputs": inputs, "outputs": outputs}


def test_node_schemas_match_the_golden_file(comfy_host):
    from lora_workbench.nodes import NODES

    current = {cls.GET_SCHEMA().node_id: contract(cls) for cls in NODES}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert current == golden, "node schemas changed: see the module docstring"


def test_golden_inputs_are_only_ever_appended(comfy_host):
    """Against DESIGN.md's contract: the required input names, in order, per node."""
    golden = json.loads(GOLDEN.read_text())
    design = {"WorkbenchLoadLora": ["model", "source", "strength_model", "strength_clip", "blocks"]}
    for node_id, names in design.items():
        required = [i["name"] for i in golden[node_id]["inputs"] if i["section"] == "required"]
        assert required == names
        assert [i["name"] for i in golden[node_id]["inputs"] if i["section"] == "optional"][:1] == ["clip"]


def test_every_input_and_output_has_a_tooltip_and_every_node_a_description(comfy_host):
    from lora_workbench.nodes import NODES

    for cls in NODES:
        s = cls.GET_SCHEMA()
        assert s.description, s.node_id
        assert all(i.tooltip for i in s.inputs), s.node_id
        assert all(o.tooltip for o in s.outputs), s.node_id
