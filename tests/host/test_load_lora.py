"""WorkbenchLoadLora's engine in-process: identical to core at ratio 1, block ratios, errors."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from helpers.host_models import load_checkpoint, load_tiny_diffusion_model
from helpers.patches import describe
from helpers.paths import REAL_LORAS

pytestmark = [pytest.mark.host,
              pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")]

LOKR = REAL_LORAS / "lycoris_lokr" / "smart_falcon_4_lokr.safetensors"


# The real fixtures core 0.3.75 loads by itself (HOST.md), with its patch counts.
CORE_LOADS = [
    ("lycoris_lokr/smart_falcon_4_lokr.safetensors", 278, 72),
    ("diffusers_attnproc/catundchat__stable-diffusion-v1.5-lora/pytorch_lora_weights.safetensors", 128, 0),
    ("diffusers_attnproc/Haseebae__Synthetic_dataset_generator_with_stable_diffusion/pytorch_lora_weights.safetensors",
     128, 0),
]


@pytest.mark.parametrize("path, unet, te", CORE_LOADS)
def test_empty_spec_gives_exactly_the_core_lora_loader_patches(sd15, apply, path, unet, te):
    import comfy.sd

    model, clip = sd15
    lora = apply.load_lora_file(str(REAL_LORAS / path))
    core_model, core_clip = comfy.sd.load_lora_for_models(model, clip, lora.sd, 0.8, 0.6)
    ours_model, ours_clip, report = apply.apply_lora(model, clip, lora, path, 0.8, 0.6, "")
    assert describe(ours_model.patches) == describe(core_model.patches)
    assert describe(ours_clip.patcher.patches) == describe(core_clip.patcher.patches)
    assert (report.model_modules, report.clip_modules) == (unet, te)
    assert report.unused_keys == [] and report.unmatched_patches == [] and report.misfits == []
    assert report.spec == "default=1"
    assert model.patches == {} and clip.patcher.patches == {}  # inputs untouched


def test_block_ratios_scale_strength_per_block_with_one_call_per_strength(sd15, apply):
    import comfy.model_patcher

    model, clip = sd15
    lora = apply.load_lora_file(str(LOKR))
    real_add = comfy.model_patcher.ModelPatcher.add_patches
    with mock.patch.object(comfy.model_patcher.ModelPatcher, "add_patches", autospec=True,
                           side_effect=real_add) as spy:
        m, c, report = apply.apply_lora(model, clip, lora, "lokr", 0.8, 0.6,
                                        "OUT09-OUT11=0.5, IN01=0, TE=-1")
    strengths = {}
    for key, plist in m.patches.items():
        bid = apply.block_of(key)
        strengths.setdefault(bid, set()).add(plist[0][0])
    assert "IN01" not in strengths
    assert strengths["OUT10"] == {0.8 * 0.5} and strengths["M00"] == {0.8}
    assert {p[0][0] for p in c.patcher.patches.values()} == {-0.6}
    # model: 0.8 and 0.4; clip: -0.6 -> three add_patches calls in all
    assert spy.call_count == 3
    _, _, full = apply.apply_lora(model, clip, lora, "lokr", 0.8, 0.6, "")
    assert report.zero_modules == full.modules_per_block["IN01"] > 0
    assert "IN01" not in report.modules_per_block
    assert report.model_modules == 278 - full.modules_per_block["IN01"]
    assert report.spec == "default=1, IN01=0, OUT09-OUT11=0.5, TE.clip_l=-1"
    text = report.text()
    assert f"OUT10 {full.modules_per_block['OUT10']}x0.5" in text
    assert "TE.clip_l 72x-1" in text
    assert f"{full.modules_per_block['IN01']} modules left out: strength 0 in their block" in text


def test_ratio_zero_everywhere_on_the_model_leaves_only_the_text_encoder(sd15, apply):
    model, clip = sd15
    lora = apply.load_lora_file(str(LOKR))
    m, c, report = apply.apply_lora(model, clip, lora, "lokr", 1.0, 1.0, "default=0, TE=1")
    assert m.patches == {}
    assert len(c.patcher.patches) == 72
    assert report.zero_modules == 278


def test_bad_spec_fails_before_anything_is_patched(sd15, apply):
    from lora_workbench.lora_ops.blocks import BlockSpecError  # the pack's own copy of the engine

    model, clip = sd15
    lora = apply.load_lora_file(str(LOKR))
    with pytest.raises(BlockSpecError, match="'D00'"):
        apply.apply_lora(model, clip, lora, "lokr", 1.0, 1.0, "D00=0")
    assert model.patches == {}


# Every real LoRA fixture: all of its modules apply to the SD1.5 architecture, or it fails
# with an error that says why. (Core 0.3.75 makes 0 patches, silently, from the diffusers
# "unet." + ".lora.down" file, both cloneofsimo files and the PEFT adapter.)
APPLIES = [
    # path, format, UNet modules, text-encoder modules
    ("lycoris_lokr/smart_falcon_4_lokr.safetensors", "comfy", 278, 72),
    ("diffusers_attnproc/catundchat__stable-diffusion-v1.5-lora/pytorch_lora_weights.safetensors", "comfy", 128, 0),
    ("diffusers_attnproc/Haseebae__Synthetic_dataset_generator_with_stable_diffusion/pytorch_lora_weights.safetensors",
     "comfy", 128, 0),
    ("diffusers/timohavdk__sd-lora/pytorch_lora_weights.safetensors", "diffusers", 128, 0),
    ("cloneofsimo/analog_svd_rank4.safetensors", "cloneofsimo", 144, 48),
    ("cloneofsimo/lora_disney.safetensors", "cloneofsimo", 144, 48),
]


@pytest.mark.parametrize("path, fmt, unet, te", APPLIES)
def test_real_fixture_applies_every_module(sd15, apply, path, fmt, unet, te):
    model, clip = sd15
    lora = apply.load_lora_file(str(REAL_LORAS / path))
    m, c, report = apply.apply_lora(model, clip, lora, path, 1.0, 1.0, "")
    assert (report.format, report.model_modules, report.clip_modules) == (fmt, unet, te)
    assert report.unused_keys == [] and report.misfits == [] and report.unmatched_patches == []
    assert len(m.patches) == unet and len(c.patcher.patches) == te


def test_cloneofsimo_embeddings_are_reported_not_dropped_silently(sd15, apply):
    model, clip = sd15
    lora = apply.load_lora_file(str(REAL_LORAS / "cloneofsimo" / "lora_disney.safetensors"))
    _, _, report = apply.apply_lora(model, clip, lora, "disney", 1.0, 1.0, "")
    text = report.text()
    assert "<s1>: a textual-inversion embedding" in text and "<s2>: a textual-inversion embedding" in text
    assert "converted 144 cloneofsimo UNet modules (module order attn1-ff-attn2)" in text


@pytest.mark.parametrize("path, message", [
    ("peft/anirudh-ak__peft-gpt2/adapter_model.safetensors", "PEFT base model: gpt2"),
    ("cloneofsimo/lora_disney.pt", "is not a .safetensors file"),
    ("edge_cases/HK200202-hub__emojii/lora.safetensors", "Git LFS pointer"),
    ("edge_cases/Srikanth1408__Stable_Diffusion-Hackathon/pytorch_lora_weights.safetensors", "truncated download"),
])
def test_real_fixtures_that_cannot_apply_say_why(sd15, apply, path, message):
    model, clip = sd15
    with pytest.raises(apply.LoraApplyError, match=message) as e:
        lora = apply.load_lora_file(str(REAL_LORAS / path))
        apply.apply_lora(model, clip, lora, path, 1.0, 1.0, "")
    assert path.split("/")[-1] in str(e.value) or path in str(e.value)


def test_shape_misfits_are_reported_and_not_patched(comfy_host, apply):
    """An SD1.5 LoRA on the two-level SD1.x model: names match, many shapes do not."""
    model, clip, _ = load_checkpoint("workbench-sd15-tiny.safetensors")
    lora = apply.load_lora_file(str(LOKR))
    m, _, report = apply.apply_lora(model, clip, lora, "lokr", 1.0, 1.0, "")
    assert report.misfits and report.model_modules > 0
    misfit_keys = {k for k, _ in report.misfits}
    assert not misfit_keys & set(m.patches)
    assert "NOT applied because their shape does not fit" in report.text()
    # every patch that was added computes without a shape error
    for key in list(m.patches)[:20]:
        assert apply.patch_misfit(key, m.patches[key][0][1], m.model.state_dict()[key].shape) is None


def test_text_encoder_keys_without_clip_say_connect_clip(sd15, apply):
    model, _ = sd15
    lora = apply.load_lora_file(str(LOKR))
    _, clip_out, report = apply.apply_lora(model, None, lora, "lokr", 1.0, 1.0, "TE=0.5")
    assert clip_out is None and report.clip_modules == 0
    text = report.text()
    assert "text-encoder keys NOT applied: connect the clip input" in text
    assert "TE=0.5 skipped: no text encoder is connected" in text


def test_non_finite_strength_is_refused(sd15, apply):
    model, clip = sd15
    lora = apply.load_lora_file(str(LOKR))
    with pytest.raises(apply.LoraApplyError, match="strength_model is nan"):
        apply.apply_lora(model, clip, lora, "lokr", float("nan"), 1.0, "")


def test_strength_zero_is_reported_as_nothing_applied(sd15, apply):
    model, clip = sd15
    lora = apply.load_lora_file(str(LOKR))
    m, c, report = apply.apply_lora(model, clip, lora, "lokr", 0.0, 0.0, "")
    assert m.patches == {} and c.patcher.patches == {}
    assert "nothing applied: every module has strength 0" in report.text()


def test_flux_double_and_single_block_ratios(comfy_host, apply):
    """A LoRA in ComfyUI's own key format for every linear weight of the tiny Flux model."""
    import comfy.lora

    flux = load_tiny_diffusion_model("workbench-flux-tiny.safetensors")
    sd = flux.model.state_dict()
    key_map = comfy.lora.model_lora_keys_unet(flux.model, {})
    g = torch.Generator().manual_seed(0)
    lora = {}
    for lora_key, weight_key in key_map.items():
        if not isinstance(weight_key, str) or not lora_key.startswith("diffusion_model.") or sd[weight_key].ndim != 2:
            continue
        out_f, in_f = sd[weight_key].shape
        lora[f"{lora_key}.lora_up.weight"] = torch.randn(out_f, 2, generator=g)
        lora[f"{lora_key}.lora_down.weight"] = torch.randn(2, in_f, generator=g)
    lora_file = apply.LoraFile("flux-test", lora, {}, None)
    m, _, report = apply.apply_lora(flux, None, lora_file, "flux-test", 1.0, 1.0, "default=0.5, D*=1, S01-S02=0")
    ratio = {apply.block_of(k): p[0][0] for k, p in m.patches.items()}
    assert ratio["D00"] == ratio["D01"] == 1.0
    assert ratio["S00"] == ratio["IN"] == ratio["OUT"] == 0.5
    assert "S01" not in ratio and "S02" not in ratio
    assert report.unused_keys == []
