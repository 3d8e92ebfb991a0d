"""lora_ops.identify on every real LoRA fixture and keyset: format, family and rank.

The expected values are written from ``shared/fixtures/real/SOURCES.md`` and the files' own
metadata and shapes (the rank is the first dimension of their ``lora_down``/``lora_A``
tensors; full LoKr factors have none), not from this code's output.
"""

from __future__ import annotations

import json

import pytest

from helpers.paths import REAL_LORAS, SHARED
from lora_ops.families import FamilyRef, mismatch
from lora_ops.identify import describe, describe_file

KEYSETS = SHARED / "fixtures" / "real" / "keysets"
pytestmark = pytest.mark.skipif(not KEYSETS.is_dir(), reason="../shared/fixtures/real is not present")

# name -> (format, family id, width, rank range or None, adapter kind that must be named)
KEYSET_EXPECT = {
    # SOURCES.md: "anima_* (kohya, kohya+te, LoKr+DoRA, PEFT)", InvokeAI's Anima samples.
    "invokeai.anima_lora_kohya_format": ("kohya", "anima", 2048, (8, 8), "LoRA"),
    "invokeai.anima_lora_kohya_with_te_format": ("kohya", "anima", 2048, (8, 8), "LoRA"),
    "invokeai.anima_lora_lokr_format": ("ComfyUI", "anima", None, None, "DoRA"),
    # PEFT's lora_A/lora_B behind "diffusion_model.": the naming ai-toolkit writes (as in
    # InvokeAI's flux_lora_aitoolkit sample below).
    "invokeai.anima_lora_peft_format": ("ai-toolkit", "anima", 2048, (8, 8), "LoRA"),
    # FLUX.1-Depth-dev-lora: BFL's own release, BFL names without a prefix.
    "invokeai.flux_control_lora_format": ("BFL", "flux1", 3072, (64, 128), "LoRA"),
    "invokeai.flux_lokr_bfl_format": ("BFL", "flux1", 3072, None, "LoKr"),
    "invokeai.flux_lora_aitoolkit_format": ("ai-toolkit", "flux1", 3072, (16, 16), "LoRA"),
    "invokeai.flux_lora_diffusers_base_model_format": ("PEFT", "flux1", 3072, (4, 4), "LoRA"),
    # "lora_transformer_" + diffusers names: kohya-style flattened keys (civitai 838594, DoRA).
    "invokeai.flux_lora_diffusers_dora_format": ("kohya", "flux1", 3072, (4, 4), "DoRA"),
    "invokeai.flux_lora_diffusers_format": ("diffusers", "flux1", 3072, (32, 32), "LoRA"),
    "invokeai.flux_lora_diffusers_no_proj_mlp_format": ("diffusers", "flux1", 3072, (16, 16), "LoRA"),
    "invokeai.flux_lora_diffusers_v2_format": ("diffusers", "flux1", 3072, None, "LoRA"),  # no shapes
    "invokeai.flux_lora_diffusers_with_norm_out_format": ("diffusers", "flux1", 3072, (64, 64), "LoRA"),
    "invokeai.flux_lora_kohya_format": ("kohya", "flux1", 3072, (16, 16), "LoRA"),
    "invokeai.flux_lora_kohya_with_te1_and_te3_format": ("kohya", "flux1", 3072, (128, 128), "LoRA"),
    "invokeai.flux_lora_kohya_with_te1_format": ("kohya", "flux1", 3072, (4, 4), "LoRA"),
    "invokeai.flux_lora_xlabs_format": ("xlabs", "flux1", 3072, (16, 16), "LoRA"),
    # "ss_base_model_version=krea2, ss_network_dim=32" (its note).
    "invokeai.krea2_lora_kohya_format": ("kohya", "krea2", 6144, (32, 32), "LoRA"),
    # "Diffusers/PEFT-format Qwen Image" (its note): diffusers names, kohya suffixes.
    "invokeai.qwen_image_lora_diffusers_format": ("diffusers", "qwen_image", 3072, (64, 64), "LoRA"),
    "invokeai.qwen_image_lora_kohya_format": ("kohya", "qwen_image", 3072, None, "LoKr"),
    # lora-inspector-rs: software ai-toolkit, "transformer.*.lora_A/B"; metadata claims sd_1.5.
    "lora-inspector-rs.flux1_diffusers": ("diffusers", "flux1", 3072, (32, 32), "LoRA"),
    # modelspec.architecture flux-1-dev/lora, ss_network_dim 2.
    "lora-inspector-rs.flux1_kohya": ("kohya", "flux1", 3072, (2, 2), "LoRA"),
    # ss_base_model_version flux2_klein_9b, software ai-toolkit.
    "lora-inspector-rs.flux2_klein_diffusers": ("ai-toolkit", "flux2", 4096, (64, 64), "LoRA"),
    # "PEFT keys with the adapter name inside" (MiniMax-H3).
    "lora-inspector-rs.h3_diffusers": ("PEFT", "minimax_h3", 5376, (128, 128), "LoRA"),
    # ss_base_model_version krea2, software ai-toolkit, LoKr with full lokr_w1/lokr_w2.
    "lora-inspector-rs.krea2_lycoris": ("ai-toolkit", "krea2", 6144, None, "LoKr"),
    # Qwen-Image-Lightning: dotted diffusers module names with lora_down/lora_up/alpha.
    "lora-inspector-rs.qwen_image_kohya": ("diffusers", "qwen_image", 3072, (64, 64), "LoRA"),
    # add_detail.safetensors, SD1.5 kohya.
    "lora-inspector-rs.sd15_kohya": ("kohya", "sd1", 768, (32, 32), "LoRA"),
    # anyaXL: modelspec stable-diffusion-xl-v1-base/lora, ss_network_dim 32.
    "lora-inspector-rs.sdxl_kohya": ("kohya", "sdxl", 2048, (32, 32), "LoRA"),
    # SGM input_blocks_* names with lora_te1_/lora_te2_; key names only.
    "lora-inspector-rs.sdxl_lokr_keys_only": ("kohya", "sdxl", 2048, None, "LoKr"),
}

FILE_EXPECT = {
    "cloneofsimo/analog_svd_rank4.safetensors": ("cloneofsimo", "sd1", 768, (4, 4), "LoRA"),
    "cloneofsimo/lora_disney.safetensors": ("cloneofsimo", "sd1", 768, (1, 1), "LoRA"),
    "diffusers_attnproc/catundchat__stable-diffusion-v1.5-lora/pytorch_lora_weights.safetensors":
        ("diffusers (attention processors)", "sd1", 768, (4, 4), "LoRA"),
    "diffusers_attnproc/Haseebae__Synthetic_dataset_generator_with_stable_diffusion/pytorch_lora_weights.safetensors":
        ("diffusers (attention processors)", "sd1", 768, (4, 4), "LoRA"),
    "diffusers/timohavdk__sd-lora/pytorch_lora_weights.safetensors": ("diffusers", "sd1", 768, (4, 4), "LoRA"),
    "lycoris_lokr/smart_falcon_4_lokr.safetensors": ("kohya", "sd1", 768, (4, 4), "LoKr"),
    "peft/anirudh-ak__peft-gpt2/adapter_model.safetensors": ("PEFT", None, None, (8, 8), "LoRA"),
    # truncated: the header is intact and says what it was
    "edge_cases/Srikanth1408__Stable_Diffusion-Hackathon/pytorch_lora_weights.safetensors":
        ("diffusers (attention processors)", "sdxl", 2048, (4, 4), "LoRA"),
}


def _check(info, expect):
    fmt, family, width, ranks, kind = expect
    assert info.format == fmt
    assert (info.family.id if info.family else None) == family, info.family_evidence
    assert (info.family.width if info.family else None) == width
    assert info.rank_range == ranks
    assert kind in info.kinds


def test_every_keyset_and_fixture_is_covered():
    assert {p.stem for p in KEYSETS.glob("*.json")} == set(KEYSET_EXPECT)
    files = {str(p.relative_to(REAL_LORAS)) for p in REAL_LORAS.rglob("*.safetensors")}
    assert files - set(FILE_EXPECT) == {"edge_cases/HK200202-hub__emojii/lora.safetensors"}  # LFS pointer


@pytest.mark.parametrize("name", sorted(KEYSET_EXPECT))
def test_keyset(name):
    data = json.loads((KEYSETS / f"{name}.json").read_text())
    keys = data["keys"] if isinstance(data["keys"], dict) else dict.fromkeys(data["keys"])
    _check(describe(keys, data.get("metadata"), data.get("dtypes")), KEYSET_EXPECT[name])


@pytest.mark.parametrize("path", sorted(FILE_EXPECT))
def test_real_file(path):
    info = describe_file(REAL_LORAS / path, with_hashes=False)
    _check(info, FILE_EXPECT[path])


def test_git_lfs_pointer_is_not_described():
    with pytest.raises(ValueError):
        describe_file(REAL_LORAS / "edge_cases" / "HK200202-hub__emojii" / "lora.safetensors")


def test_metadata_that_contradicts_the_shapes_is_noted():
    data = json.loads((KEYSETS / "lora-inspector-rs.flux1_diffusers.json").read_text())
    info = describe(data["keys"], data["metadata"], data["dtypes"])
    assert "its metadata says ss_base_model_version=sd_1.5, but its shapes are Flux.1's" in info.notes
    assert info.metadata["trainer"] == "ai-toolkit" and info.metadata["trigger words"] == "DB4RZ"
    assert info.metadata["epochs"] == "20" and info.metadata["steps"] == "2000"


def test_training_metadata_of_a_kohya_file():
    data = json.loads((KEYSETS / "lora-inspector-rs.flux1_kohya.json").read_text())
    md = describe(data["keys"], data["metadata"]).metadata
    assert md["base model name"] == "691639.safetensors"
    assert md["base model hash"].startswith("sd_model_hash b04b3ba1, new_sd_model_hash 4610115bb0c8")
    assert md["resolution"] == "1024x1024" and md["epochs"] == "9 of 10" and md["steps"] == "1080"
    assert md["network dim/alpha (metadata)"] == "2/16"


def test_text_encoders_touched_are_named():
    data = json.loads((KEYSETS / "invokeai.flux_lora_kohya_with_te1_and_te3_format.json").read_text())
    parts = describe(data["keys"]).parts
    assert parts["text encoder 1 (CLIP-L)"] == 72 and parts["text encoder 3 (T5-XXL)"] == 168
    assert parts["diffusion model: double_blocks 0-18, single_blocks 0-37"] == 304


@pytest.mark.parametrize("lora, model, expected", [
    (FamilyRef("sd2", 1024), FamilyRef("sd1", 768), "made for SD2.x (text context 1024); this model is SD1.x (768)"),
    (FamilyRef("sdxl", 2048), FamilyRef("sd1", 768), "made for SDXL (text context 2048); this model is SD1.x (768)"),
    (FamilyRef("flux1", 3072), FamilyRef("chroma", 3072), None),
    (FamilyRef("anima", 2048, by_layout_only=True), FamilyRef("cosmos_predict2", 2048), None),
    (FamilyRef("flux2", 4096), FamilyRef("flux2", 6144),
     "made for Flux.2 Klein 9B (hidden 4096), a model ComfyUI 0.3.75 is too old to load (a newer ComfyUI loads "
     "Flux.2 Klein 9B models); this model is Flux.2 dev (6144)"),
    (FamilyRef("krea2", 6144), FamilyRef("flux1", 3072),
     "made for Krea 2 (hidden 6144), a model ComfyUI 0.3.75 is too old to load (a newer ComfyUI loads Krea 2 "
     "models); this model is Flux.1 (3072)"),
    (None, FamilyRef("sd1", 768), None),
])
def test_family_mismatch_wording(lora, model, expected):
    assert mismatch(lora, model, "0.3.75", {"SD15", "Flux", "Flux2", "Chroma"}) == expected


def test_a_newer_host_with_the_family_is_not_called_too_old():
    text = mismatch(FamilyRef("krea2", 6144), FamilyRef("flux1", 3072), "0.30.0", {"Krea2", "Flux"})
    assert text == "made for Krea 2 (hidden 6144); this model is Flux.1 (3072)"
