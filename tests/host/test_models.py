"""The generated test models are real ComfyUI architectures in the exact checkpoint layout."""

from __future__ import annotations

import pytest

from helpers.host_models import load_checkpoint, load_tiny_diffusion_model, manifest
from helpers.paths import MODELS
from lora_ops.blocks import block_of
from lora_ops.safetensors_io import read_header

pytestmark = pytest.mark.host


def test_every_generated_file_is_a_valid_safetensors_file_with_its_config():
    for name, entry in manifest().items():
        h = read_header(MODELS / name)
        assert h.metadata["workbench.family"] == entry["family"]
        assert all(t.dtype == "F16" for k, t in h.tensors.items() if "position_ids" not in k)


@pytest.mark.parametrize("name, unet_blocks", [
    ("workbench-sd15-tiny.safetensors", 4),
    ("workbench-sd15.safetensors", 12),
])
def test_sd15_checkpoints_load_through_core_detection(comfy_host, name, unet_blocks):
    import comfy.supported_models

    model, clip, vae = load_checkpoint(name)
    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert clip is not None and vae is not None
    ids = {block_of(k) for k in model.model.state_dict() if k.startswith("diffusion_model.")}
    assert "OTHER" not in ids and not any(i.startswith("TE") for i in ids)
    assert {f"IN{i:02d}" for i in range(unet_blocks)} <= ids and "M00" in ids
    assert {f"OUT{i:02d}" for i in range(unet_blocks)} <= ids
    assert {block_of(k) for k in clip.patcher.model.state_dict()} == {"TE.clip_l"}
    # Every tensor of the file was consumed: UNet, CLIP and VAE keys all matched.
    file_keys = set(read_header(MODELS / name).tensors)
    unet = {"model." + k for k in model.model.state_dict() if k.startswith("diffusion_model.")}
    assert unet <= file_keys


def test_tiny_sdxl_and_flux_build_their_real_classes(comfy_host):
    import comfy.model_base

    sdxl = load_tiny_diffusion_model("workbench-sdxl-tiny.safetensors")
    assert type(sdxl.model) is comfy.model_base.SDXL
    # channel_mult [1, 2, 2] with one res block per level: conv_in, 3 levels, 2 downsamples
    ids = {block_of(k) for k in sdxl.model.state_dict() if k.startswith("diffusion_model.")}
    assert ids == {f"IN{i:02d}" for i in range(6)} | {f"OUT{i:02d}" for i in range(6)} | {"M00", "IN", "OUT"}
    flux = load_tiny_diffusion_model("workbench-flux-tiny.safetensors")
    assert type(flux.model) is comfy.model_base.Flux
    ids = {block_of(k) for k in flux.model.state_dict() if k.startswith("diffusion_model.")}
    assert {"D00", "D01", "S00", "S01", "S02", "IN", "OUT"} <= ids and "D02" not in ids
