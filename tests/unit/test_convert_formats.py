"""The conversions added for real key layouts ComfyUI 0.3.75 does not read: the doubled kohya
prefix, PEFT adapters without their config, XLabs Flux LoRAs (names only; tensors pass
through untouched)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.paths import SHARED
from lora_ops.convert import convert_peft, convert_xlabs, detect_format, fix_doubled_prefix

KEYSETS = SHARED / "fixtures" / "real" / "keysets"


def _keyset(name: str) -> dict:
    data = json.loads((KEYSETS / f"{name}.json").read_text())
    return {k: torch.empty(v, device="meta") for k, v in data["keys"].items()}


def test_doubled_prefix_is_renamed_and_other_keys_kept():
    a = torch.zeros(4, 320)
    sd = {"lora_unet_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": a, "lora_te_x.alpha": 1}
    out = fix_doubled_prefix(sd)
    assert out.sd == {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": a, "lora_te_x.alpha": 1}
    assert out.sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] is a
    assert out.notes == ["renamed 1 modules from the doubled prefix lora_unet_unet_ to lora_unet_"]
    assert fix_doubled_prefix({"lora_unet_down_blocks_0.alpha": 1}) is None


@pytest.mark.skipif(not KEYSETS.is_dir(), reason="../shared/fixtures/real is not present")
def test_xlabs_streams_map_to_the_image_and_text_attention():
    sd = _keyset("invokeai.flux_lora_xlabs_format")
    assert detect_format(list(sd), {}, False) == "xlabs"
    out = convert_xlabs(sd)
    assert len(out.sd) == len(sd) == 24
    assert out.sd["diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight"] is \
        sd["double_blocks.0.processor.qkv_lora1.up.weight"]
    assert out.sd["diffusion_model.double_blocks.10.txt_attn.proj.lora_down.weight"] is \
        sd["double_blocks.10.processor.proj_lora2.down.weight"]


@pytest.mark.skipif(not KEYSETS.is_dir(), reason="../shared/fixtures/real is not present")
def test_peft_without_config_keeps_transformer_names_at_scale_one():
    sd = _keyset("invokeai.flux_lora_diffusers_base_model_format")
    assert detect_format(list(sd), {}, False) == "peft"
    out = convert_peft(sd, None)
    assert out.sd["transformer.proj_out.lora_up.weight"] is sd["base_model.model.proj_out.lora_B.weight"]
    assert not any(k.endswith(".alpha") for k in out.sd)
    assert "no adapter_config.json beside the file, so scale 1" in out.notes[0]
    with_config = convert_peft(sd, {"r": 4, "lora_alpha": 8})
    assert float(with_config.sd["transformer.proj_out.alpha"]) == 8.0
