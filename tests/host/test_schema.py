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


# DESIGN.md's node catalogue: required inputs in order, optional inputs, output names.
DESIGN = {
    "WorkbenchFetchModel": (["source", "directory"], [], ["filename", "sha256", "report"]),
    "WorkbenchLoadCheckpoint": (["source"], [], ["MODEL", "CLIP", "VAE"]),
    "WorkbenchLoadLora": (["model", "source", "strength_model", "strength_clip", "blocks"], ["clip"],
                          ["MODEL", "CLIP", "report"]),
    "WorkbenchLoraStack": (["loras"], ["lora_stack"], ["stack", "lora_stack"]),
    "WorkbenchApplyLoraStack": (["model", "stack"], ["clip"], ["MODEL", "CLIP", "report"]),
    "WorkbenchLoraBlockInfo": (["model", "source"], ["clip"], ["report", "plot"]),
    "WorkbenchExtractLora": (["base", "tuned", "rank", "filename_prefix"], [], ["lora_name", "report", "plot"]),
    "WorkbenchExtractLoraFromModels": (["model_base", "model_tuned", "rank", "filename_prefix"],
                                       ["clip_base", "clip_tuned"], ["lora_name", "report", "plot"]),
}


def test_golden_file_follows_the_design_catalogue(comfy_host):
    """Required inputs exactly as DESIGN.md lists them; optional ones may only be appended."""
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) == set(DESIGN)
    for node_id, (required, optional, outputs) in DESIGN.items():
        got_required = [i["name"] for i in golden[node_id]["inputs"] if i["section"] == "required"]
        got_optional = [i["name"] for i in golden[node_id]["inputs"] if i["section"] == "optional"]
        assert got_required == required, node_id
        assert got_optional[: len(optional)] == optional, node_id
        assert [o["name"] for o in golden[node_id]["outputs"]] == outputs, node_id


def test_every_input_and_output_has_a_tooltip_and_every_node_a_description(comfy_host):
    from lora_workbench.nodes import NODES

    for cls in NODES:
        s = cls.GET_SCHEMA()
        assert s.description, s.node_id
        assert all(i.tooltip for i in s.inputs), s.node_id
        assert all(o.tooltip for o in s.outputs), s.node_id


def test_every_node_has_a_help_page(comfy_host):
    from lora_workbench.nodes import NODES

    for cls in NODES:
        page = REPO / "web" / "docs" / f"{cls.GET_SCHEMA().node_id}.md"
        text = page.read_text()
        assert text.startswith("# ") and "## Inputs" in text and "## Outputs" in text and "## Common errors" in text


LOCALES = REPO / "locales" / "en" / "nodeDefs.json"


def node_defs(node_cls) -> dict:
    """The frontend's i18n entry for one node (``locales/<lang>/nodeDefs.json``): display name,
    description, and per input and output (outputs by index) the name and tooltip."""
    s = node_cls.GET_SCHEMA()
    entry = {"display_name": s.display_name, "description": s.description, "inputs": {}, "outputs": {}}
    for i in s.inputs:
        entry["inputs"][i.id] = {"name": i.display_name or i.id, "tooltip": i.tooltip}
    for n, o in enumerate(s.outputs):
        entry["outputs"][str(n)] = {"name": o.display_name or o.id, "tooltip": o.tooltip}
    return entry


def test_english_locale_matches_the_nodes(comfy_host):
    """locales/en/nodeDefs.json is the nodes' own text (``UPDATE_GOLDEN=1`` rewrites it)."""
    from lora_workbench.nodes import NODES

    current = {cls.GET_SCHEMA().node_id: node_defs(cls) for cls in NODES}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        LOCALES.parent.mkdir(parents=True, exist_ok=True)
        LOCALES.write_text(json.dumps(current, indent=2, ensure_ascii=False) + "\n")
    assert json.loads(LOCALES.read_text()) == current
