"""The stack editor, the block editor and the results on the node, in the real frontend."""

from __future__ import annotations

import json

import pytest
import requests

from helpers.paths import REAL_LORAS, REPO

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="needs ../shared fixtures")]

EXAMPLE = REPO / "example_workflows" / "lora_stack_with_block_weights.json"
STACK, APPLY = 2, 3
ANALOG = "real/cloneofsimo/analog_svd_rank4.safetensors"
ROOT = "(app.rootGraph ?? app.graph)"  # app.graph is deprecated on newer frontends


def loras_value(page) -> str:
    return page.js(f"() => {ROOT}.getNodeById({STACK}).widgets.find(w => w.name === 'loras').value")


def row(page, i: int):
    return page.page.locator(f".wb-stack .wb-row[data-index='{i}']")


def set_field(locator, value: str) -> None:
    locator.fill(value)
    locator.press("Tab")  # "change" fires when the field loses focus, as for a person


def spec_ratios(fe_server, text: str) -> dict:
    r = requests.post(f"{fe_server.url}/lora_workbench/spec", json={"text": text, "family": "sd1"}, timeout=30)
    assert r.ok, r.text
    return r.json()["ratios"]


def test_edit_rows_and_blocks_then_run(page, fe_server):
    page.load(json.loads(EXAMPLE.read_text()))
    page.focus(STACK, 1.0)
    rows = page.page.locator(".wb-stack .wb-row")
    assert rows.count() == 2
    original = json.loads(loras_value(page))

    # Add a row, choose a LoRA, move it up to second place; change a strength; turn nothing off.
    page.page.locator(".wb-stack .wb-add").click()
    assert rows.count() == 3
    set_field(row(page, 2).locator(".wb-lora"), ANALOG)
    set_field(row(page, 2).locator(".wb-strength-model"), "0.7")
    row(page, 2).locator(".wb-up").click()
    set_field(row(page, 0).locator(".wb-strength-model"), "0.5")

    # The block editor of the first row: one slider value changed, applied as canonical text.
    row(page, 0).locator(".wb-edit-blocks").click()
    dialog = page.page.locator(".wb-dialog")
    dialog.wait_for()
    page.page.wait_for_function("document.querySelector('.wb-spec-canonical')?.textContent.startsWith('applies')")
    m00 = dialog.locator("input[type=number][data-block='M00']")
    set_field(m00, "0.3")
    page.page.wait_for_function("document.querySelector('.wb-spec-text').value.includes('M00=0.3')")
    page.shot("block_editor", clip={"x": 0, "y": 0, "width": 1400, "height": 900})
    dialog.locator(".wb-apply").click()
    dialog.wait_for(state="detached")

    rows_now = json.loads(loras_value(page))
    assert [r["lora"] for r in rows_now] == [original[0]["lora"], ANALOG, original[1]["lora"]]
    assert rows_now[0]["strength_model"] == 0.5 and rows_now[1]["strength_model"] == 0.7
    ratios = spec_ratios(fe_server, rows_now[0]["blocks"])
    assert ratios["M00"] == 0.3 and ratios["OUT05"] == 1 and ratios["IN04"] == 0  # the rest kept as it was
    assert rows_now[2] == original[1]  # untouched rows stay exactly as they were

    # The saved workflow and the API prompt carry exactly the edited JSON.
    saved = page.js("async () => { const p = await app.graphToPrompt(); return p; }")
    assert saved["output"][str(STACK)]["inputs"]["loras"] == loras_value(page)
    node = next(n for n in saved["workflow"]["nodes"] if n["id"] == STACK)
    assert node["widgets_values"] == [loras_value(page)]
    page.focus(STACK, 1.0)
    page.shot("stack_editor", clip=page.focus(STACK, 1.0))

    entry = page.queue_and_wait(fe_server.url)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["prompt"][2][str(STACK)]["inputs"]["loras"] == loras_value(page)
    results = page.page.locator(".wb-results .wb-result")
    results.first.wait_for()
    assert results.count() >= 3  # the apply node's three LoRAs (and the block info's one)
    page.shot("results_after_run", clip=page.focus(APPLY, 1.0))

    # Reload the page and open the saved workflow again: the editor shows the same rows.
    workflow = saved["workflow"]
    page.open()
    page.load(workflow)
    assert json.loads(loras_value(page)) == rows_now
    assert page.page.locator(".wb-stack .wb-row").count() == 3
    assert row(page, 1).locator(".wb-lora").input_value() == ANALOG
    assert row(page, 0).locator(".wb-blocks").input_value() == rows_now[0]["blocks"]


def test_hand_edited_json_loads_unchanged(page):
    workflow = json.loads(EXAMPLE.read_text())
    stack = next(n for n in workflow["nodes"] if n["id"] == STACK)
    hand = f'[ {{"lora": "{ANALOG}", "blocks": "MIDD", "note": "kept"}} ]'
    stack["widgets_values"] = [hand]
    page.load(workflow)
    assert loras_value(page) == hand  # not reformatted on load
    assert row(page, 0).locator(".wb-strength-model").input_value() == "1"  # defaults shown
    set_field(row(page, 0).locator(".wb-strength-clip"), "0.25")
    assert json.loads(loras_value(page)) == [{"lora": ANALOG, "blocks": "MIDD", "note": "kept",
                                              "strength_clip": 0.25}]


@pytest.mark.parametrize("blocks,warning", [("", "connect clip"), ("default=0", "nothing applied")],
                         ids=["partly-applied", "applies-nothing"])
def test_a_lora_that_does_not_apply_fully_shows_a_warning(page, fe_server, blocks, warning):
    workflow = {
        "last_node_id": 3, "last_link_id": 2, "version": 0.4, "links": [[1, 1, 0, 2, 0, "MODEL"],
                                                                          [2, 2, 2, 3, 0, "STRING"]],
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 100], "size": [320, 100],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}, {"name": "CLIP", "type": "CLIP"},
                         {"name": "VAE", "type": "VAE"}], "widgets_values": ["workbench-sd15.safetensors"]},
            {"id": 2, "type": "WorkbenchLoadLora", "pos": [420, 100], "size": [420, 200],
             "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
             "outputs": [{"name": "MODEL", "type": "MODEL"}, {"name": "CLIP", "type": "CLIP"},
                         {"name": "report", "type": "STRING", "links": [2]}],
             "widgets_values": ["real/lycoris_lokr/smart_falcon_4_lokr.safetensors", 1.0, 1.0, blocks]},
            {"id": 3, "type": "PreviewAny", "pos": [900, 100], "size": [400, 200],
             "inputs": [{"name": "source", "type": "*", "link": 2}]},
        ]}
    page.load(workflow)
    entry = page.queue_and_wait(fe_server.url)
    assert entry["status"]["status_str"] == "success", entry["status"]
    badge = page.page.locator(".wb-results .wb-badge")
    badge.wait_for()
    assert warning in page.page.locator(".wb-results .wb-warning-text").first.inner_text()
    if not blocks:
        page.shot("load_lora_warning", clip=page.focus(2, 1.0))


def test_block_editor_takes_a_pasted_a1111_vector(page):
    page.load(json.loads(EXAMPLE.read_text()))
    page.focus(STACK, 1.0)
    row(page, 1).locator(".wb-edit-blocks").click()
    dialog = page.page.locator(".wb-dialog")
    dialog.wait_for()
    text = dialog.locator(".wb-spec-text")
    text.fill("1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1")  # A1111 17-value SD1.x vector: OUT blocks on
    page.page.wait_for_function("document.querySelector('.wb-spec-canonical').textContent.includes('OUT03-OUT11')")
    values = page.js("() => Object.fromEntries([...document.querySelectorAll('.wb-dialog input[type=number]')]"
                     ".map(i => [i.dataset.block, Number(i.value)]))")
    assert values["OUT05"] == 1 and values["IN04"] == 0 and values["M00"] == 0 and values["TE.clip_l"] == 1
    dialog.locator(".wb-family").select_option("flux")  # regrouped as double/single blocks
    assert dialog.locator("input[type=number][data-block='S37']").count() == 1
    dialog.locator(".wb-cancel").click()
    assert json.loads(loras_value(page))[1]["blocks"] == "MIDD"  # Cancel changes nothing


@pytest.fixture
def vue_nodes(fe_server):
    """The "Nodes 2.0" renderer (Vue) for one test, then back to the classic canvas."""
    requests.post(f"{fe_server.url}/settings/Comfy.VueNodes.Enabled", json=True, timeout=30)
    yield
    requests.post(f"{fe_server.url}/settings/Comfy.VueNodes.Enabled", json=False, timeout=30)


def test_stack_editor_works_in_nodes_2(vue_nodes, page):
    page.page.reload()
    page.open()
    assert page.js("() => app.ui.settings.getSettingValue('Comfy.VueNodes.Enabled')") is True
    page.load(json.loads(EXAMPLE.read_text()))
    page.page.locator(".wb-stack .wb-row").first.wait_for()
    assert page.page.locator(".wb-stack .wb-row").count() == 2
    page.page.locator(".wb-stack .wb-add").click()
    set_field(row(page, 2).locator(".wb-lora"), ANALOG)
    assert json.loads(loras_value(page))[2]["lora"] == ANALOG
    saved = page.js("async () => (await app.graphToPrompt()).output")
    assert saved[str(STACK)]["inputs"]["loras"] == loras_value(page)
    page.shot("stack_editor_nodes2", clip={"x": 0, "y": 0, "width": 1400, "height": 900})


def test_source_picker_and_extraction_result(page, fe_server):
    attnproc = "real/diffusers_attnproc/catundchat__stable-diffusion-v1.5-lora/pytorch_lora_weights.safetensors"
    workflow = {
        "last_node_id": 5, "last_link_id": 4, "version": 0.4,
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 0, 3, 0, "MODEL"], [3, 2, 0, 3, 1, "MODEL"],
                  [4, 3, 1, 4, 0, "STRING"]],
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 100], "size": [320, 100],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1, 2]}, {"name": "CLIP", "type": "CLIP"},
                         {"name": "VAE", "type": "VAE"}], "widgets_values": ["workbench-sd15.safetensors"]},
            {"id": 2, "type": "LoraLoaderModelOnly", "pos": [40, 260], "size": [320, 90],
             "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [3]}], "widgets_values": [attnproc, 1.0]},
            {"id": 3, "type": "WorkbenchExtractLoraFromModels", "pos": [420, 100], "size": [460, 520],
             "inputs": [{"name": "model_base", "type": "MODEL", "link": 2},
                        {"name": "model_tuned", "type": "MODEL", "link": 3}],
             "outputs": [{"name": "lora_name", "type": "STRING"}, {"name": "report", "type": "STRING", "links": [4]},
                         {"name": "plot", "type": "IMAGE"}],
             "widgets_values": [4, "browser/extracted"]},
            {"id": 4, "type": "PreviewAny", "pos": [920, 100], "size": [400, 300],
             "inputs": [{"name": "source", "type": "*", "link": 4}]},
            {"id": 5, "type": "WorkbenchLoadLora", "pos": [40, 420], "size": [360, 240],
             "widgets_values": ["", 1.0, 1.0, ""]},
        ]}
    page.load(workflow)
    # The picker on Load LoRA's source offers the loras folder and writes the widget.
    picker = page.page.locator(".wb-source").first
    options = page.js("() => [...document.querySelectorAll('#wb-files-loras option')].map(o => o.value)")
    assert attnproc in options
    set_field(picker, attnproc)
    assert page.js(f"() => {ROOT}.getNodeById(5).widgets.find(w => w.name === 'source').value") == attnproc
    page.js(f"() => {ROOT}.remove({ROOT}.getNodeById(5))")  # not part of the run

    entry = page.queue_and_wait(fe_server.url)
    assert entry["status"]["status_str"] == "success", entry["status"]
    result = page.page.locator(".wb-results .wb-result").first
    result.wait_for()
    assert "layers extracted" in result.inner_text()
    page.page.wait_for_function(f"(n => n.imgs?.length > 0 && n.imgs[0].complete)({ROOT}.getNodeById(3))")
    page.shot("extraction_result", clip=page.focus(3, 1.0))
    for made in (fe_server.base / "models" / "loras" / "browser").glob("extracted_*"):
        made.unlink()


@pytest.mark.parametrize("path", sorted((REPO / "example_workflows").glob("*.json")), ids=lambda p: p.stem)
def test_every_example_loads_with_its_model_entries(page, path):
    workflow = json.loads(path.read_text())
    page.load(workflow)
    loaded = page.js("() => (app.rootGraph ?? app.graph).serialize()")
    assert len(loaded["nodes"]) == len(workflow["nodes"])
    shipped = {n["id"]: n["properties"].get("models") for n in workflow["nodes"] if n["properties"].get("models")}
    for node in loaded["nodes"]:
        if node["id"] in shipped:
            assert node["properties"]["models"] == shipped[node["id"]]  # kept by the frontend's validation
    page.page.wait_for_timeout(500)
    alerts = page.js("() => [...document.querySelectorAll('.p-toast-message')].map(t => t.innerText)")
    assert not [a for a in alerts if "Invalid workflow" in a or "rror" in a], alerts
    page.shot(f"example_{path.stem}", clip={"x": 0, "y": 0, "width": 1400, "height": 900})
