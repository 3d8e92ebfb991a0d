"""The block editor knows the model: on Load LoRA after a run it shows the connected model's
family and real ids grouped by stack (a tiny HiDream: 16 double + 32 single blocks; a tiny
Wan: 40 blocks), its presets write a spec, and that spec applies to exactly those blocks
(checked on the patched weights). Before a run, the family picker lists every host family.

The tiny models are the host's own classes at a width of 32 with their real depths, loaded by
a test-only loader node (``tests/helpers/tiny_model_node``) in this module's own server,
because the host's detection fixes HiDream at full size.
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import Server

from helpers.browser_page import frontend_args, open_page
from helpers.paths import REPO
from helpers.tiny_families import TINY, write_lora, write_model

pytestmark = pytest.mark.e2e

LOAD, LORA_NODE, PREVIEW = 1, 2, 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, comfy_host, frontend):
    """A server for ``frontend`` with the test loader node, tiny HiDream and Wan models and a
    LoRA for each."""
    root = tmp_path_factory.mktemp(f"families-{frontend}")
    base = root / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "workbench_test_tiny").symlink_to(REPO / "tests" / "helpers" / "tiny_model_node")
    models = {}
    for kind in ("hidream", "wan"):
        sd = write_model(kind, base / "models" / "diffusion_models" / f"tiny-{kind}.safetensors")
        targets = write_lora(sd, base / "models" / "loras" / f"tiny-{kind}-lora.safetensors")
        models[kind] = (sd, targets)
    srv = Server(root, models=(), link_real=False, args=frontend_args(frontend))
    try:
        srv.wait_ready()
        yield srv, models
    finally:
        srv.stop()


@pytest.fixture
def tiny_page(browser, tiny, frontend):
    context, p = open_page(browser, tiny[0].url, frontend)
    try:
        yield p
        assert p.errors == [], f"errors from the pack's scripts: {p.errors}"
    finally:
        context.close()


def workflow(kind: str, blocks: str = "") -> dict:
    wf = {
        "last_node_id": 3, "last_link_id": 2, "version": 0.4,
        "links": [[1, LOAD, 0, LORA_NODE, 0, "MODEL"], [2, LORA_NODE, 2, PREVIEW, 0, "STRING"]],
        "nodes": [
            {"id": LOAD, "type": "WorkbenchTestTinyDiffusionModel", "pos": [40, 100], "size": [320, 80],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}],
             "widgets_values": [f"tiny-{kind}.safetensors"]},
            {"id": LORA_NODE, "type": "WorkbenchLoadLora", "pos": [420, 100], "size": [440, 260],
             "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
             "outputs": [{"name": "MODEL", "type": "MODEL"}, {"name": "CLIP", "type": "CLIP"},
                         {"name": "report", "type": "STRING", "links": [2]}],
             "widgets_values": [f"tiny-{kind}-lora.safetensors", 1.0, 1.0, blocks]},
            {"id": PREVIEW, "type": "PreviewAny", "pos": [900, 100], "size": [400, 200],
             "inputs": [{"name": "source", "type": "*", "link": 2}]},
        ]}
    for order, node in enumerate(wf["nodes"]):  # the fields the frontend's schema asks for
        node.update(flags={}, order=order, mode=0, properties={})
    return wf


def open_editor(page):
    page.js(f"() => app.graph.getNodeById({LORA_NODE}).widgets.find(w => w.name === 'Edit blocks…')"
            ".callback()")
    dialog = page.page.locator(".wb-dialog")
    dialog.wait_for(timeout=120_000)  # the first opening builds the family list on the server
    page.page.wait_for_function("document.querySelector('.wb-spec-canonical')?.textContent.startsWith('applies')",
                                timeout=120_000)
    return dialog


def groups(dialog) -> dict[str, int]:
    return {g.get_attribute("data-group"): g.locator("input[type=number]").count()
            for g in dialog.locator(".wb-group").all()}


def blocks_value(page) -> str:
    return page.js(f"() => app.graph.getNodeById({LORA_NODE}).widgets.find(w => w.name === 'blocks').value")


def report_blocks(entry) -> dict[str, str]:
    """``{block id: ratio}`` from the report's "modules per block" line of the last run."""
    text = entry["outputs"][str(LORA_NODE)]["workbench_text"][0]
    line = next(x for x in text.splitlines() if "modules per block:" in x)
    return {m.group(1): m.group(3) for m in re.finditer(r"(\w+) (\d+)x([-0-9.e]+)", line.split(":", 1)[1])}


def load_tiny(kind, sd):
    """The tiny model as the test loader node builds it, in this process."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models as sm

    cls_name, config = TINY[kind]
    model = getattr(sm, cls_name)(dict(config)).get_model({}, device="cpu")
    model.diffusion_model.load_state_dict(sd)
    dev = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev)


def patched_blocks(base, kind, models, spec) -> dict[str, float]:
    """Apply the tiny LoRA with ``spec`` in this process on the same tiny model and return,
    per block id, each weight's change as a multiple of its change with an empty spec."""
    import comfy.lora
    from lora_workbench.lora_ops.blocks import block_of
    from lora_workbench.nodes.lora_apply import apply_lora, load_lora_file

    sd, targets = models[kind]
    lora = load_lora_file(str(base / "models" / "loras" / f"tiny-{kind}-lora.safetensors"))
    model = load_tiny(kind, sd)
    patched, _, _ = apply_lora(model, None, lora, "tiny", 1.0, 1.0, spec)
    full, _, _ = apply_lora(model, None, lora, "tiny", 1.0, 1.0, "")
    ratios: dict[str, set[float]] = {}
    for key in targets:
        weight = sd[key[len("diffusion_model."):]].to(torch.float32)
        delta = comfy.lora.calculate_weight(patched.patches.get(key, []), weight.clone(), key) - weight
        ref = comfy.lora.calculate_weight(full.patches[key], weight.clone(), key) - weight
        ratios.setdefault(block_of(key), set()).add(round(float(delta.norm() / ref.norm()), 4))
    assert all(len(r) == 1 for r in ratios.values()), ratios  # one ratio per block
    return {b: r.pop() for b, r in ratios.items()}


@pytest.mark.parametrize("kind, label, expected_groups, preset, slider, expected", [
    ("hidream", "HiDream I1", {"Double-stream blocks": 16, "Single-stream blocks": 32},
     "Double blocks only", ("D03", "0.5"),
     {**{f"D{i:02d}": 1.0 for i in range(16)}, "D03": 0.5, **{f"S{i:02d}": 0.0 for i in range(32)}}),
    ("wan", "Wan 2.1 T2V", {"Blocks": 40}, "Second half", ("B39", "2"),
     {**{f"B{i:02d}": 0.0 for i in range(20)}, **{f"B{i:02d}": 1.0 for i in range(20, 39)}, "B39": 2.0}),
], ids=["hidream", "wan"])
def test_editor_shows_the_connected_model_and_its_spec_applies_to_those_blocks(
        tiny, tiny_page, comfy_host, kind, label, expected_groups, preset, slider, expected):
    server, models = tiny
    page = tiny_page
    page.load(workflow(kind))

    # Before a run: the picker offers every family the host loads, the model is not known yet.
    dialog = open_editor(page)
    assert "No run yet" in dialog.locator(".wb-model-family").inner_text()
    options = dialog.locator(".wb-family option").all_inner_texts()
    assert len(options) >= 66 and {"HiDream I1", "Wan 2.1 T2V 14B", "Qwen-Image", "Z-Image"} <= set(options)
    dialog.locator(".wb-cancel").click()

    entry = page.queue_and_wait(server.url)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert set(report_blocks(entry)) >= set(expected)  # the LoRA touches every block
    page.page.locator(".wb-results .wb-model-family").wait_for()
    assert label in page.page.locator(".wb-results .wb-model-family").inner_text()

    # After the run: the connected model's own family and ids, grouped by stack.
    dialog = open_editor(page)
    assert dialog.locator(".wb-model-family").inner_text() == f"Model: {label} (from the last run)"
    assert dialog.locator(".wb-family").input_value() == "model"
    found = groups(dialog)
    assert {g: n for g, n in found.items() if g in expected_groups} == expected_groups
    assert set(found) - set(expected_groups) == {"Input layers", "Output layers"}
    dialog.locator(".wb-preset").select_option(label=preset)
    page.page.wait_for_function("document.querySelector('.wb-spec-canonical').textContent.includes('=0')")
    block, value = slider
    box = dialog.locator(f"input[type=number][data-block='{block}']")
    box.fill(value)
    box.press("Tab")
    page.page.wait_for_function(f"document.querySelector('.wb-spec-text').value.includes('{block}={value}')")
    page.shot(f"block_editor_{kind}", clip={"x": 0, "y": 0, "width": 1400, "height": 900})
    dialog.locator(".wb-apply").click()
    dialog.wait_for(state="detached")
    spec = blocks_value(page)

    # The spec applies to exactly those blocks: in the server's run ...
    entry = page.queue_and_wait(server.url)
    assert entry["status"]["status_str"] == "success", entry["status"]
    applied = {b: float(r) for b, r in report_blocks(entry).items()}
    assert applied == {b: v for b, v in expected.items() if v != 0} | {"IN": 1.0, "OUT": 1.0}
    # ... and on the weights: each block's weight change is its ratio times the full change.
    ratios = patched_blocks(server.base, kind, models, spec)
    assert {b: ratios[b] for b in expected} == expected
    assert ratios["IN"] == ratios["OUT"] == 1.0
