"""Every model family the pinned host loads, built at full size on the meta device with the
host's own classes and configurations: block ids cover it, one prefix per numbered stack,
numbered in depth order. No memory and no lock needed (meta tensors only).

A class the host adds later fails ``test_every_host_class_has_a_full_size_config`` until it
is described in ``nodes/host_family_configs.py`` and its weights are mapped in
``lora_ops/block_names.py``.
"""

from __future__ import annotations

import importlib.util
import logging
import re

import pytest

from helpers.aio import run_async
from helpers.paths import REPO

_spec = importlib.util.spec_from_file_location("host_family_configs", REPO / "nodes" / "host_family_configs.py")
_configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_configs)
FULL_SIZE = _configs.FULL_SIZE

MAX_OTHER = 0.01  # share of patchable (>= 2-D) weights allowed outside every block id


@pytest.fixture(scope="module")
def families(comfy_host):
    import lora_workbench.nodes.host_families as hf

    return hf


def test_every_host_class_has_a_full_size_config(families):
    classes = [cls.__name__ for cls in families.model_classes()]
    missing = [name for name in classes if name not in FULL_SIZE]
    assert not missing, (f"the host loads model classes without a full-size configuration: {missing}; "
                         "add them to nodes/host_family_configs.py FULL_SIZE and map their weights")
    stale = sorted(set(FULL_SIZE) - set(classes))
    assert not stale, f"FULL_SIZE names classes the host does not have: {stale}"


def test_an_unknown_class_is_refused_by_name(families):
    NewFamily = type("NewFamily", (), {"unet_config": {"image_model": "new"}})

    with pytest.raises(families.UnknownFamilyError, match="NewFamily has no full-size configuration"):
        families.configs_of(NewFamily)


def _built(families, cls_name):
    cls = next(c for c in families.model_classes() if c.__name__ == cls_name)
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        for label, config in families.configs_of(cls):
            yield label, families.weight_shapes(families.build_meta(cls, config))
    finally:
        logging.disable(previous)


@pytest.mark.parametrize("cls_name", sorted(FULL_SIZE))
def test_family_at_full_size(families, cls_name):
    from lora_workbench.lora_ops.blocks import block_of, id_prefix

    for label, shapes in _built(families, cls_name):
        patchable = [k for k, s in shapes.items() if len(s) >= 2]
        other = [k for k in patchable if block_of(k) == "OTHER"]
        assert len(other) <= MAX_OTHER * len(patchable), (
            f"{label}: {len(other)} of {len(patchable)} weights have no block id, e.g. {other[:5]}")
        top_of: dict[str, set[str]] = {}
        order: dict[str, list[int]] = {}
        for key in shapes:  # registration order: the order the model runs its modules in
            bid = block_of(key)
            prefix = id_prefix(bid)
            if prefix is None:
                continue
            top_of.setdefault(prefix, set()).add(key.split(".")[1])
            n = int(bid[len(prefix):])
            seen = order.setdefault(prefix, [])
            if n not in seen:
                seen.append(n)
        for prefix, tops in top_of.items():
            assert len(tops) == 1, f"{label}: prefix {prefix} mixes the stacks {sorted(tops)}"
        for prefix, numbers in order.items():
            assert numbers == sorted(numbers), f"{label}: {prefix} ids are not numbered in depth order: {numbers}"


def _ids(families, cls_name, variant=0):
    from lora_workbench.lora_ops.blocks import block_of

    shapes = list(_built(families, cls_name))[variant][1]
    return {block_of(k) for k in shapes}


def _count(ids, prefix):
    return len([b for b in ids if re.fullmatch(prefix + r"[0-9]+", b)])


@pytest.mark.parametrize("cls_name, variant, stacks", [
    ("HiDream", 0, {"D": 16, "S": 32}),
    ("AuraFlow", 0, {"D": 4, "S": 32}),
    ("Flux", 0, {"D": 19, "S": 38}),
    ("Flux2", 0, {"D": 8, "S": 48}),
    ("WAN21_T2V", 0, {"B": 40}),
    ("WAN21_T2V", 1, {"B": 30}),
    ("WAN21_Vace", 0, {"B": 40, "V": 8}),
    ("WAN22_S2V", 0, {"B": 40, "A": 12}),
    ("WAN22_Animate", 0, {"B": 40, "F": 8}),
    ("QwenImage", 0, {"B": 60}),
    ("ZImage", 0, {"B": 30, "NR": 2, "CR": 2}),
    ("Omnigen2", 0, {"B": 32, "NR": 2, "CR": 2, "RR": 2}),
    ("CosmosT2V", 0, {"B": 28}),
    ("StableAudio", 0, {"B": 24}),
    ("SD3", 0, {"J": 38}),
    ("Stable_Cascade_C", 0, {"D0_": 24, "D1_": 72, "U0_": 72, "U1_": 24}),
    ("SD15", 0, {"IN": 12, "M": 1, "OUT": 12}),
    ("SDXL", 0, {"IN": 9, "M": 1, "OUT": 9}),
])
def test_published_depths(families, cls_name, variant, stacks):
    ids = _ids(families, cls_name, variant)
    assert {p: _count(ids, p) for p in stacks} == stacks
    assert {"IN", "OUT"} <= ids and "OTHER" not in ids


def test_the_family_picker_lists_every_family_with_its_stacks(families):
    index = families.family_index()
    sizes = sum(1 + len(variants) for _label, _extra, variants in FULL_SIZE.values())
    assert len(index) == sizes and len({label for label, _c, _u in index.values()}) == sizes
    assert {"sd1", "sdxl", "flux", "HiDream", "WAN21_T2V", "WAN21_T2V:1"} <= set(index)
    hidream = dict(families.family_layout("HiDream")["groups"])
    assert len(hidream["Double-stream blocks"]) == 16 and len(hidream["Single-stream blocks"]) == 32
    assert dict(families.family_layout("flux")["groups"])["Text encoders"] == ["TE.clip_l", "TE.t5xxl"]
    presets = dict(families.family_layout("ZImage")["presets"])
    assert presets["First half"] == "default=1, B15-B29=0"


def test_editor_routes_serve_the_families_and_parse_against_a_models_ids(families):
    """The block editor's routes on a real aiohttp app (no ComfyUI server needed)."""

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from lora_workbench.nodes import web_routes

    async def scenario():
        routes = web.RouteTableDef()
        web_routes.register(routes)
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            listing = await (await client.get("/lora_workbench/blocks")).json()
            assert listing["families"]["HiDream"] == {"label": "HiDream I1"} and "OUTALL" in listing["presets"]
            wan = await (await client.get("/lora_workbench/blocks/WAN21_T2V")).json()
            assert dict(wan["groups"])["Blocks"][-1] == "B39"
            bad = await client.get("/lora_workbench/blocks/NoSuchFamily")
            assert bad.status == 400 and "unknown family 'NoSuchFamily'" in (await bad.json())["error"]
            ids = ["IN", "OUT"] + [f"D{i:02d}" for i in range(16)] + [f"S{i:02d}" for i in range(32)]
            parsed = await (await client.post("/lora_workbench/spec", json={"text": "S*=0", "ids": ids})).json()
            assert parsed["canonical"] == "default=0, IN=1, D00-D15=1, OUT=1" and parsed["ratios"]["D15"] == 1
            by_family = await (await client.post("/lora_workbench/spec",
                                                 json={"text": "FLUXALL", "family": "flux"})).json()
            assert by_family["ratios"]["S37"] == 1 and by_family["ratios"]["TE.t5xxl"] == 1
            junk = await client.post("/lora_workbench/spec", json={"text": "", "ids": ["IN", "<script>"]})
            assert junk.status == 400 and "ids must be a list of block ids" in (await junk.json())["error"]
            fmt = await (await client.post("/lora_workbench/spec/format",
                                           json={"ratios": {"D03": 0.5}, "ids": ids})).json()
            assert fmt["canonical"] == "default=0.5"

    run_async(scenario())
