"""Block-id groups and DiT presets for the block editor, and the new families' ids."""

from __future__ import annotations

import pytest

from lora_ops.block_layout import family_presets, layout_of
from lora_ops.block_spec import parse_spec
from lora_ops.blocks import block_of

HIDREAM = ["IN", "OUT"] + [f"D{i:02d}" for i in range(16)] + [f"S{i:02d}" for i in range(32)]
WAN = ["IN", "OUT"] + [f"B{i:02d}" for i in range(40)]
ZIMAGE = ["IN", "OUT", "NR00", "NR01", "CR00", "CR01"] + [f"B{i:02d}" for i in range(30)]
SD15 = (["IN", "OUT", "TE.clip_l"] + [f"IN{i:02d}" for i in range(12)] + ["M00"]
        + [f"OUT{i:02d}" for i in range(12)])


@pytest.mark.parametrize("key, block", [
    ("diffusion_model.double_stream_blocks.15.block.attn1.to_q.weight", "D15"),     # HiDream
    ("diffusion_model.single_stream_blocks.31.block.ff_i.shared_experts.w1.weight", "S31"),
    ("diffusion_model.caption_projection.48.linear.weight", "IN"),
    ("diffusion_model.double_layers.3.attn.w1q.weight", "D03"),                       # AuraFlow
    ("diffusion_model.single_layers.31.mlp.c_fc1.weight", "S31"),
    ("diffusion_model.modF.1.weight", "OUT"),
    ("diffusion_model.blocks.block27.blocks.0.block.attn.to_q.0.weight", "B27"),      # Cosmos 1.0
    ("diffusion_model.down_blocks.1.5.attention.attn.in_proj_weight", "D1_05"),      # Stable Cascade
    ("diffusion_model.up_blocks.0.71.channelwise.0.weight", "U0_71"),
    ("diffusion_model.transformer.layers.23.self_attn.to_qkv.weight", "B23"),        # Stable Audio
    ("diffusion_model.noise_refiner.1.attention.qkv.weight", "NR01"),                # Z-Image
    ("diffusion_model.context_refiner.0.feed_forward.w1.weight", "CR00"),
    ("diffusion_model.ref_image_refiner.1.attn.to_q.weight", "RR01"),                # OmniGen2
    ("diffusion_model.vace_blocks.7.self_attn.q.weight", "V07"),                     # Wan VACE
    ("diffusion_model.audio_injector.injector.11.q.weight", "A11"),                  # Wan S2V
    ("diffusion_model.audio_injector.injector_adain_layers.11.linear.weight", "A11"),
    ("diffusion_model.face_adapter.fuser_blocks.7.linear1_kv.weight", "F07"),        # Wan Animate
    ("diffusion_model.txt_in.individual_token_refiner.blocks.1.mlp.fc1.weight", "IN"),
    ("diffusion_model.double_stream_modulation_img.lin.weight", "IN"),               # Flux.2
    ("diffusion_model.lyric_encoder.encoders.5.self_attn.linear_q.weight", "L05"),   # ACE-Step
])
def test_new_family_ids(key, block):
    assert block_of(key) == block


def test_groups_follow_the_stacks_in_reading_order():
    assert [label for label, _ in layout_of(HIDREAM)] == [
        "Input layers", "Double-stream blocks", "Single-stream blocks", "Output layers"]
    groups = dict(layout_of(ZIMAGE))
    assert groups["Noise refiner"] == ["NR00", "NR01"] and groups["Context refiner"] == ["CR00", "CR01"]
    assert len(groups["Blocks"]) == 30 and groups["Blocks"][0] == "B00"
    assert dict(layout_of(SD15))["Input blocks"] == [f"IN{i:02d}" for i in range(12)]


def test_cascade_levels_are_separate_groups_and_ranges():
    ids = ["IN", "OUT"] + [f"D0_{i:02d}" for i in range(24)] + [f"D1_{i:02d}" for i in range(72)]
    groups = dict(layout_of(ids))
    assert len(groups["Down level 0"]) == 24 and len(groups["Down level 1"]) == 72
    r = parse_spec("d1_3-D1_5=0, D0_*=0.5", ids).ratios
    assert [r[f"D1_{i:02d}"] for i in range(2, 7)] == [1, 0, 0, 0, 1]
    assert r["D0_23"] == 0.5 and r["D1_00"] == 1
    assert set(parse_spec("D*=0", ids).ratios[b] for b in ids if b.startswith("D")) == {0}


def _apply(ids, spec):
    return parse_spec(spec, ids).ratios


def test_dit_presets_select_exactly_their_blocks():
    presets = dict(family_presets(HIDREAM))
    assert list(presets) == ["All blocks", "No blocks", "Double blocks only", "Single blocks only",
                             "First half", "Second half"]
    double = _apply(HIDREAM, presets["Double blocks only"])
    assert {b for b, v in double.items() if v == 0} == {f"S{i:02d}" for i in range(32)}
    first = _apply(HIDREAM, presets["First half"])
    # 48 blocks in depth order: D00-D15 then S00-S07 are the first half
    assert {b for b, v in first.items() if v == 1} == {"IN", "OUT", *HIDREAM[2:18], *[f"S{i:02d}" for i in range(8)]}
    second = _apply(HIDREAM, presets["Second half"])
    assert all(second[b] == 1 - first[b] for b in HIDREAM if b not in ("IN", "OUT"))
    assert set(_apply(HIDREAM, presets["No blocks"]).values()) == {0}


def test_presets_of_single_stack_families_and_unets():
    wan = dict(family_presets(WAN))
    assert "Double blocks only" not in wan
    assert wan["First half"] == "default=1, B20-B39=0" and wan["Second half"] == "default=1, B00-B19=0"
    z = _apply(ZIMAGE, dict(family_presets(ZIMAGE))["Second half"])
    assert z["NR00"] == z["CR01"] == 1 and z["B14"] == 0 and z["B15"] == 1  # refiners keep 1
    assert family_presets(SD15) == []  # the A1111 and Inspire presets are the UNet's


def test_in_star_on_a_unet_is_the_numbered_input_blocks_only():
    # Decision: P* selects one numbered stack. A1111 users expect IN* = IN00-IN11; the
    # embedders (time_embed, label_emb: id IN) and output layers (OUT) are named on their own.
    r = _apply(SD15, "IN*=0, OUT*=0.5")
    assert all(r[f"IN{i:02d}"] == 0 for i in range(12)) and r["IN"] == 1
    assert all(r[f"OUT{i:02d}"] == 0.5 for i in range(12)) and r["OUT"] == 1
    r = _apply(SD15, "IN=0")
    assert r["IN"] == 0 and r["IN00"] == 1
    assert _apply(SD15, "TE*=0")["TE.clip_l"] == 0 and _apply(SD15, "TE=0")["TE.clip_l"] == 0


def test_a1111_flux_vector_still_maps_onto_flux_ids():
    flux = ["IN", "OUT", "TE.clip_l", "TE.t5xxl"] + [f"D{i:02d}" for i in range(19)] + [f"S{i:02d}" for i in range(38)]
    values = ["1", "0.5", "0"] + ["1"] * 19 + ["0"] * 38 + ["0.25"]
    r = parse_spec(",".join(values), flux).ratios
    assert r["TE.clip_l"] == 1 and r["TE.t5xxl"] == 0.5 and r["IN"] == 0 and r["OUT"] == 0.25
    assert r["D18"] == 1 and r["S00"] == 0
