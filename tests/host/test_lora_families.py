"""Real LoRA key layouts on full-size models of their families, built on the meta device
(no memory): every keyset of ``shared/fixtures/real/keysets`` goes through the pack's own
load path; LoRAs made for another family are refused in one line naming both."""

from __future__ import annotations

import json
import re
import types

import pytest

from helpers.meta_models import meta_model, meta_text_encoder
from helpers.paths import REAL_LORAS, SHARED

KEYSETS = SHARED / "fixtures" / "real" / "keysets"

pytestmark = [pytest.mark.host,
              pytest.mark.skipif(not KEYSETS.is_dir(), reason="../shared/fixtures/real is not present")]

_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


def materialise(keyset: dict) -> dict:
    """The keyset as a LoRA state dict of its recorded shapes and dtypes: every tensor on the
    meta device except the ``.alpha`` scalars, which the loader reads as numbers (set to the
    module's rank, i.e. scale 1)."""
    import torch

    keys, dtypes = keyset["keys"], keyset.get("dtypes") or {}
    sd = {}
    for key, shape in keys.items():
        dtype = getattr(torch, _DTYPES.get(dtypes.get(key), "float16"))
        if key.endswith(".alpha") and shape == []:
            module = key[: -len(".alpha")]
            down = next((keys[module + s] for s in (".lora_down.weight", ".lokr_w1_b", ".hada_w1_b")
                         if keys.get(module + s)), [1])
            sd[key] = torch.tensor(float(down[0]), dtype=dtype)
        else:
            sd[key] = torch.empty(shape, dtype=dtype, device="meta")
    return sd


def meta_clip(family: str):
    """The text encoders of a family on the meta device, as the pack reads a CLIP: only its
    ``cond_stage_model`` (weight names and shapes) is used to match a LoRA. The keysets tested
    here carry text-encoder keys only for SD1.5, SDXL and Flux.1."""
    if family not in ("SD15", "SDXL", "Flux.1 dev"):
        return None
    return types.SimpleNamespace(cond_stage_model=meta_text_encoder(family))


# keyset -> (full-size meta model it goes onto, None when the pack applies every key, a
# number of modules reported as not fitting (a warning), else a pattern the error must
# match). Families the host loads go onto their own model; families newer than the host go
# onto the host model closest to them (same hidden size or names).
TOO_OLD = "a model ComfyUI 0.3.75 is too old to load"
EXPECT = {
    "invokeai.anima_lora_kohya_format": ("Cosmos-Predict2 2B", f"made for Anima.*{TOO_OLD}"),
    "invokeai.anima_lora_kohya_with_te_format": ("Cosmos-Predict2 2B", f"made for Anima.*{TOO_OLD}"),
    "invokeai.anima_lora_lokr_format": ("Cosmos-Predict2 2B", f"made for Anima.*{TOO_OLD}"),
    "invokeai.anima_lora_peft_format": ("Cosmos-Predict2 2B", f"made for Anima.*{TOO_OLD}"),
    "invokeai.flux_control_lora_format": ("Flux.1 dev", None),
    # hand-written LoKr factors whose Kronecker products fit only the fused qkv weight
    "invokeai.flux_lokr_bfl_format": ("Flux.1 dev", 5),
    "invokeai.flux_lora_aitoolkit_format": ("Flux.1 dev", None),
    "invokeai.flux_lora_diffusers_base_model_format": ("Flux.1 dev", None),
    "invokeai.flux_lora_diffusers_dora_format": ("Flux.1 dev", None),
    "invokeai.flux_lora_diffusers_format": ("Flux.1 dev", None),
    "invokeai.flux_lora_diffusers_no_proj_mlp_format": ("Flux.1 dev", None),
    "invokeai.flux_lora_diffusers_v2_format": ("Flux.1 dev", None),
    "invokeai.flux_lora_diffusers_with_norm_out_format": ("Flux.1 dev", None),
    "invokeai.flux_lora_kohya_format": ("Flux.1 dev", None),
    "invokeai.flux_lora_kohya_with_te1_and_te3_format": ("Flux.1 dev", None),
    "invokeai.flux_lora_kohya_with_te1_format": ("Flux.1 dev", None),
    "invokeai.flux_lora_xlabs_format": ("Flux.1 dev", None),
    "invokeai.krea2_lora_kohya_format": ("Flux.2 dev", f"made for Krea 2 \\(hidden 6144\\).*{TOO_OLD}"),
    "invokeai.qwen_image_lora_diffusers_format": ("Qwen-Image", None),
    "invokeai.qwen_image_lora_kohya_format": ("Qwen-Image", "fits nothing in this model"),
    "lora-inspector-rs.flux1_diffusers": ("Flux.1 dev", None),
    "lora-inspector-rs.flux1_kohya": ("Flux.1 dev", None),
    "lora-inspector-rs.flux2_klein_diffusers": (
        "Flux.2 dev", f"made for Flux.2 Klein 9B \\(hidden 4096\\).*{TOO_OLD}.*this model is Flux.2 dev \\(6144\\)"),
    "lora-inspector-rs.h3_diffusers": ("Qwen-Image", f"made for MiniMax-H3.*{TOO_OLD}"),
    "lora-inspector-rs.krea2_lycoris": ("Flux.2 dev", f"made for Krea 2 \\(hidden 6144\\).*{TOO_OLD}"),
    "lora-inspector-rs.qwen_image_kohya": ("Qwen-Image", None),
    "lora-inspector-rs.sd15_kohya": ("SD15", None),
    "lora-inspector-rs.sdxl_kohya": ("SDXL", None),
}
# A key list only (no shapes), the union of several LyCORIS algorithms' key names per module
# (LoHa and LoKr and OFT for the same layer), not one file's state dict: no LoRA of it can be
# materialised; `inspect` still tells it (tests/unit/test_identify.py).
NOT_A_FILE = {"lora-inspector-rs.sdxl_lokr_keys_only"}


def test_every_keyset_has_an_expectation():
    names = {p.stem for p in KEYSETS.glob("*.json")}
    assert names == set(EXPECT) | NOT_A_FILE


def _fill_missing_shapes(keys: dict, model) -> dict:
    """Shapes for a keyset that recorded names only (LoRA modules): from the weight each
    module patches, found through the host's own key map (rank 16)."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    out = {}
    for key, shape in keys.items():
        if shape is not None:
            out[key] = shape
            continue
        module, role = re.match(r"^(.*)\.lora\.(down|up)\.weight$", key).groups()
        target = key_map[module]
        weight, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
        rows = offset[2] if offset else shapes[weight][0]
        out[key] = [16, shapes[weight][1]] if role == "down" else [rows, 16]
    return out


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_real_keyset_on_the_full_size_model_of_its_family(comfy_host, apply, name):
    from lora_workbench.lora_ops.blocks import block_of

    target, error = EXPECT[name]
    keyset = json.loads((KEYSETS / f"{name}.json").read_text())
    model, clip = meta_model(target), meta_clip(target)
    keyset["keys"] = _fill_missing_shapes(keyset["keys"], model)
    lora = apply.LoraFile(name, materialise(keyset), keyset.get("metadata") or {}, None)
    if isinstance(error, int):
        report = apply.prepare_lora(model, clip, lora, name, 1.0, 1.0, "").report
        assert len(report.misfits) == error and report.applied > 0
        assert all(re.fullmatch(r"this model's weight has shape \[[0-9, ]+\], the LoRA's change has shape "
                                r"\[[0-9, ]+\]", why) for _, why in report.misfits)
        return
    if error is not None:
        with pytest.raises(apply.LoraApplyError, match=error) as e:
            apply.prepare_lora(model, clip, lora, name, 1.0, 1.0, "")
        assert "\n" not in str(e.value) and name in str(e.value)
        return
    report = apply.prepare_lora(model, clip, lora, name, 1.0, 1.0, "").report
    assert report.unused_keys == [] and report.misfits == [] and report.unmatched_patches == [], report.text()
    assert report.applied > 0
    # Every applied module has a block id (depends on lora_ops.blocks knowing the family's
    # layout: part A of issue 13).
    matched = apply.match_lora(model, clip, lora, name)
    assert [k for k, *_ in matched.fitting if block_of(k) == "OTHER"] == []


def _kohya_lora_for(model, rank: int = 4) -> dict:
    """A LoRA for every 2-D weight of ``model``'s UNet, named by the host's own key map in
    kohya form (``lora_unet_...``), bf16 tensors on the meta device, alpha = rank."""
    import comfy.lora
    import torch

    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    sd = {}
    for lora_key, weight in comfy.lora.model_lora_keys_unet(model.model, {}).items():
        if lora_key.startswith("lora_unet_") and isinstance(weight, str) and len(shapes.get(weight, ())) == 2:
            out_f, in_f = shapes[weight]
            sd[f"{lora_key}.lora_up.weight"] = torch.empty(out_f, rank, dtype=torch.bfloat16, device="meta")
            sd[f"{lora_key}.lora_down.weight"] = torch.empty(rank, in_f, dtype=torch.bfloat16, device="meta")
            sd[f"{lora_key}.alpha"] = torch.tensor(float(rank))
    return sd


def _diffusers_lora_for(model, rank: int = 4) -> dict:
    """The same, under diffusers names (``unet.down_blocks.0...to_k.lora.down.weight``), as
    the host's ``unet_to_diffusers`` names this UNet's weights."""
    import comfy.utils
    import torch

    shapes = {k: tuple(v.shape) for k, v in model.model.diffusion_model.state_dict().items()}
    sd = {}
    for diffusers, comfy_name in comfy.utils.unet_to_diffusers(model.model.model_config.unet_config).items():
        if diffusers.endswith(".weight") and len(shapes.get(comfy_name, ())) == 2:
            module = "unet." + diffusers[: -len(".weight")]
            out_f, in_f = shapes[comfy_name]
            sd[f"{module}.lora.up.weight"] = torch.empty(out_f, rank, dtype=torch.bfloat16, device="meta")
            sd[f"{module}.lora.down.weight"] = torch.empty(rank, in_f, dtype=torch.bfloat16, device="meta")
    return sd


@pytest.mark.parametrize("names", ["kohya", "diffusers"])
def test_sd2_lora_on_sd15_is_refused_naming_both_families(comfy_host, apply, names):
    build = _kohya_lora_for if names == "kohya" else _diffusers_lora_for
    lora = apply.LoraFile("sd2-style.safetensors", build(meta_model("SD21")), {}, None)
    with pytest.raises(apply.LoraApplyError) as e:
        apply.apply_lora(meta_model("SD15"), None, lora, "sd2-style.safetensors", 1.0, 1.0, "")
    text = str(e.value)
    assert "made for SD2.x (text context 1024); this model is SD1.x (768)" in text
    assert "\n" not in text and "sd2-style.safetensors" in text


def test_a_lora_that_fits_whole_is_never_refused_by_its_family(comfy_host, apply):
    """A LoRA told as Anima (its metadata) built on Cosmos-Predict2 2B's own weights: Anima's
    DiT is that model, every module fits, so it applies (with a note) instead of being
    refused as a family ComfyUI 0.3.75 cannot load."""
    import comfy.lora
    import torch

    model = meta_model("Cosmos-Predict2 2B")
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    sd = {}
    for lora_key, weight in comfy.lora.model_lora_keys_unet(model.model, {}).items():
        if lora_key.startswith("diffusion_model.blocks.") and isinstance(weight, str) and \
                len(shapes.get(weight, ())) == 2:
            sd[f"{lora_key}.lora_up.weight"] = torch.empty(shapes[weight][0], 8, device="meta")
            sd[f"{lora_key}.lora_down.weight"] = torch.empty(8, shapes[weight][1], device="meta")
    lora = apply.LoraFile("anima-style", sd, {"ss_base_model_version": "anima"}, None)
    _, _, report = apply.apply_lora(model, None, lora, "anima-style", 1.0, 1.0, "")
    assert report.model_modules == len(sd) // 2 > 200 and not report.misfits and not report.unused_keys
    assert "its shapes look Anima 2B (hidden 2048), but every module fits this model" in report.text()


def test_sdxl_lora_on_sd15_is_refused_naming_both_families(comfy_host, apply):
    keyset = json.loads((KEYSETS / "lora-inspector-rs.sdxl_kohya.json").read_text())
    lora = apply.LoraFile("anyaXL", materialise(keyset), keyset["metadata"], None)
    with pytest.raises(apply.LoraApplyError, match=re.escape(
            "LoRA anyaXL is made for SDXL (text context 2048); this model is SD1.x (768)")):
        apply.apply_lora(meta_model("SD15"), meta_clip("SD15"), lora, "anyaXL", 1.0, 1.0, "")


def test_doubled_kohya_prefix_applies_every_module(comfy_host, apply):
    """diffusers names behind a doubled kohya prefix (lora_unet_unet_down_blocks_...), as a
    real mis-converted file has them: built from the real diffusers fixture's tensors."""
    real = apply.load_lora_file(str(REAL_LORAS / "diffusers" / "timohavdk__sd-lora" /
                                    "pytorch_lora_weights.safetensors"))
    sd = {}
    for key, value in real.sd.items():
        module, suffix = re.match(r"^unet\.(.*)\.lora\.(down|up)\.weight$", key).groups()
        sd[f"lora_unet_unet_{module.replace('.', '_')}.lora_{suffix}.weight"] = value
    lora = apply.LoraFile("misconverted", sd, {}, None)
    model, _, report = apply.apply_lora(meta_model("SD15"), None, lora, "misconverted", 1.0, 1.0, "")
    assert report.model_modules == 128 and report.unused_keys == [] and report.misfits == []
    assert "renamed 128 modules from the doubled prefix lora_unet_unet_ to lora_unet_" in report.text()
    assert len(model.patches) == 128


def test_inpainting_conv_in_is_a_plain_warning_not_a_family_error(comfy_host, apply, caplog):
    """A 9-channel conv_in (inpainting) on a 4-channel SD1.5: the rest applies, the misfit is
    worded as expected vs found shape, and no core log line leaks out."""
    import torch

    sd = _kohya_lora_for(meta_model("SD15"))
    sd["lora_unet_conv_in.lora_down.weight"] = torch.empty(4, 9, 3, 3, dtype=torch.bfloat16, device="meta")
    sd["lora_unet_conv_in.lora_up.weight"] = torch.empty(320, 4, 1, 1, dtype=torch.bfloat16, device="meta")
    lora = apply.LoraFile("inpaint", sd, {}, None)
    _, _, report = apply.apply_lora(meta_model("SD15"), None, lora, "inpaint", 1.0, 1.0, "")
    assert [k for k, _ in report.misfits] == ["diffusion_model.input_blocks.0.0.weight"]
    why = report.misfits[0][1]
    assert why == "this model's weight has shape [320, 4, 3, 3], the LoRA's change has shape [320, 9, 3, 3]"
    assert report.model_modules > 100
    assert "ERROR" not in report.text() and "is invalid" not in report.text()
    assert not [r for r in caplog.records if "is invalid" in r.getMessage()]


def _native_lora_for(model, rank: int = 4) -> dict:
    """A LoRA for every 2-D weight of ``model``, under ComfyUI's own names
    (``diffusion_model.<weight>``, as ai-toolkit and ComfyUI write them), on meta."""
    import comfy.lora
    import torch

    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    sd = {}
    for lora_key, weight in comfy.lora.model_lora_keys_unet(model.model, {}).items():
        if lora_key == weight[: -len(".weight")] and len(shapes.get(weight, ())) == 2:
            sd[f"{lora_key}.lora_up.weight"] = torch.empty(shapes[weight][0], rank, device="meta")
            sd[f"{lora_key}.lora_down.weight"] = torch.empty(rank, shapes[weight][1], device="meta")
    return sd


# meta model -> the family and width a LoRA of every one of its layers is told as (published
# sizes); the Cosmos-Predict2 2B layout is told as Anima's (the same DiT), from the layout only.
OWN_FAMILY = {
    "SD15": ("sd1", 768), "SD21": ("sd2", 1024), "SDXL": ("sdxl", 2048), "Flux.1 dev": ("flux1", 3072),
    "Flux.2 dev": ("flux2", 6144), "Qwen-Image": ("qwen_image", 3072), "Cosmos-Predict2 2B": ("anima", 2048),
    "Wan 2.1 14B": ("wan", 5120), "Wan 2.1 1.3B": ("wan", 1536), "Z-Image": ("zimage", 3840),
    "HiDream": ("hidream", None), "HunyuanVideo": ("hunyuan_video", 3072), "SD3.5 Large": ("sd3", 2432),
    "LTXV 2B": ("ltxv", 2048),
}


@pytest.mark.parametrize("target", sorted(OWN_FAMILY))
def test_a_lora_of_every_layer_is_told_as_its_family_and_applies_whole(comfy_host, apply, target):
    from lora_workbench.lora_ops.identify import describe

    model = meta_model(target)
    sd = _native_lora_for(model)
    info = describe({k: tuple(v.shape) for k, v in sd.items()})
    assert (info.family.id, info.family.width) == OWN_FAMILY[target], info.family_evidence
    lora = apply.LoraFile(target, sd, {}, None)
    report = apply.prepare_lora(model, None, lora, target, 1.0, 1.0, "").report
    assert report.model_modules == len(sd) // 2 and not report.misfits and not report.unused_keys


@pytest.mark.parametrize("target", sorted(OWN_FAMILY))
def test_every_layer_a_lora_patches_has_a_block_id(comfy_host, apply, target):
    from lora_workbench.lora_ops.blocks import block_of

    model = meta_model(target)
    lora = apply.LoraFile(target, _native_lora_for(model), {}, None)
    fitting = apply.match_lora(model, None, lora, target).fitting
    assert [k for k, *_ in fitting if block_of(k) == "OTHER"] == []


@pytest.mark.parametrize("source, target, expected", [
    ("Wan 2.1 1.3B", "Wan 2.1 14B", "made for Wan 2.1 1.3B (hidden 1536); this model is Wan 2.x 14B (5120)"),
    ("Z-Image", "Qwen-Image", "made for Z-Image (hidden 3840); this model is Qwen-Image"),
    ("SD3.5 Large", "Flux.1 dev", "made for SD3.5 Large (hidden 2432); this model is Flux.1 (3072)"),
    ("HiDream", "Flux.1 dev", "made for HiDream; this model is Flux.1 (hidden 3072)"),
    ("Flux.1 dev", "SDXL", "made for Flux.1 (hidden 3072); this model is SDXL (text context 2048)"),
    ("Flux.1 dev", "HunyuanVideo", "made for Flux.1 (hidden 3072); this model is HunyuanVideo (3072)"),
    ("SDXL", "SD21", "made for SDXL (text context 2048); this model is SD2.x (1024)"),
])
def test_a_lora_of_another_family_is_refused_naming_both(comfy_host, apply, source, target, expected):
    lora = apply.LoraFile(source, _native_lora_for(meta_model(source)), {}, None)
    with pytest.raises(apply.LoraApplyError, match=re.escape(f"LoRA {source} is {expected}. ")):
        apply.prepare_lora(meta_model(target), None, lora, source, 1.0, 1.0, "")
