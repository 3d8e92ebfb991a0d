"""Parity with core's loader and extension loading on newer hosts: the LoRA's metadata as the
``lora_metadata`` attachment, routes registered from ``ComfyExtension.on_load()``."""

from __future__ import annotations

import pytest

from helpers.aio import run_async
from helpers.meta_models import meta_model
from helpers.paths import REAL_LORAS

pytestmark = [pytest.mark.host,
              pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")]

LOKR = REAL_LORAS / "lycoris_lokr" / "smart_falcon_4_lokr.safetensors"
ATTNPROC = (REAL_LORAS / "diffusers_attnproc" / "catundchat__stable-diffusion-v1.5-lora"
            / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def meta_sd15(comfy_host):
    """The full-size SD1.5 UNet on the meta device in the host's ModelPatcher."""
    import comfy.model_patcher
    import torch

    return comfy.model_patcher.ModelPatcher(meta_model("SD15").model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def test_lora_metadata_is_attached_like_newer_core_loaders(meta_sd15, apply):
    lokr = apply.load_lora_file(str(LOKR))
    assert lokr.metadata.get("ss_network_module")  # a kohya file with training metadata
    patched, _clip, _report = apply.apply_lora(meta_sd15, None, lokr, LOKR.name, 1.0, 1.0, "")
    assert patched.get_attachment("lora_metadata") == lokr.metadata
    assert meta_sd15.get_attachment("lora_metadata") is None  # the input model is left as it was

    # A stack: the last LoRA with metadata wins, as with core loaders chained in that order.
    attnproc = apply.load_lora_file(str(ATTNPROC))
    prepared = [apply.prepare_lora(meta_sd15, None, f, str(f.path), 1.0, 1.0, "") for f in (attnproc, lokr)]
    stacked, _ = apply.add_prepared(meta_sd15, None, prepared)
    assert stacked.get_attachment("lora_metadata") == lokr.metadata
    stacked, _ = apply.add_prepared(meta_sd15, None, prepared[::-1])
    assert stacked.get_attachment("lora_metadata") == attnproc.metadata


def test_routes_are_registered_from_on_load_once(nodes, monkeypatch):
    """A newer host calls on_load() and then get_node_list(); 0.3.75 only get_node_list(). The
    host's server module cannot be imported in this process (its ``utils`` package clashes with
    the test tree's imports), so a module with the one thing the pack uses of it,
    ``PromptServer.instance.routes`` (a real aiohttp route table), stands in for it."""
    import sys
    from types import ModuleType

    from aiohttp import web
    from lora_workbench.nodes import web_routes

    class PromptServer:
        instance = None

    PromptServer.instance = type("Instance", (), {"routes": web.RouteTableDef()})()
    stand_in = ModuleType("server")
    stand_in.PromptServer = PromptServer
    monkeypatch.setitem(sys.modules, "server", stand_in)
    monkeypatch.setattr(web_routes, "_registered", False)
    ext = nodes.LoraWorkbenchExtension()
    run_async(ext.on_load())
    routes = PromptServer.instance.routes
    paths = sorted(r.path for r in routes)
    assert paths == ["/lora_workbench/blocks", "/lora_workbench/blocks/{family}", "/lora_workbench/spec",
                     "/lora_workbench/spec/format"]
    assert len(run_async(ext.get_node_list())) == len(nodes.NODES)
    assert sorted(r.path for r in routes) == paths  # not registered twice
