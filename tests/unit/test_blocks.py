"""Block ids from weight names, and the canonical block-spec grammar."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_ops.block_spec import parse_spec
from lora_ops.blocks import BlockSpecError, block_of, canonical_text, sort_key

SD15_IDS = (["IN", "OUT", "TE.clip_l"] + [f"IN{i:02d}" for i in range(12)] + ["M00"]
            + [f"OUT{i:02d}" for i in range(12)])


@pytest.mark.parametrize("key, block", [
    ("diffusion_model.input_blocks.4.1.proj_in.weight", "IN04"),
    ("diffusion_model.input_blocks.10.0.in_layers.2.weight", "IN10"),
    ("diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight", "M00"),
    ("diffusion_model.output_blocks.11.1.proj_out.weight", "OUT11"),
    ("diffusion_model.time_embed.0.weight", "IN"),
    ("diffusion_model.label_emb.0.0.weight", "IN"),
    ("diffusion_model.out.2.weight", "OUT"),
    ("diffusion_model.double_blocks.7.img_attn.proj.weight", "D07"),
    (("diffusion_model.double_blocks.18.img_attn.qkv.weight", (0, 0, 3072)), "D18"),
    ("diffusion_model.single_blocks.37.linear1.weight", "S37"),
    ("diffusion_model.joint_blocks.3.x_block.attn.qkv.weight", "J03"),
    ("diffusion_model.blocks.21.self_attn.q.weight", "B21"),
    ("diffusion_model.transformer_blocks.59.attn.to_q.weight", "B59"),
    ("diffusion_model.layers.5.attention.qkv.weight", "B05"),
    ("diffusion_model.img_in.weight", "IN"),
    ("diffusion_model.final_layer.linear.weight", "OUT"),
    ("diffusion_model.some_new_thing.weight", "OTHER"),
    ("clip_l.transformer.text_model.encoder.layers.3.mlp.fc1.weight", "TE.clip_l"),
    ("t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight", "TE.t5xxl"),
])
def test_block_of(key, block):
    assert block_of(key) == block


def test_reading_order():
    ids = ["TE.clip_l", "OUT", "OUT10", "OUT02", "M00", "IN11", "IN02", "IN"]
    assert sorted(ids, key=sort_key) == ["IN", "IN02", "IN11", "M00", "OUT02", "OUT10", "OUT", "TE.clip_l"]


def test_empty_spec_is_one_everywhere():
    spec = parse_spec("", SD15_IDS)
    assert set(spec.ratios.values()) == {1.0}
    assert spec.canonical() == "default=1"


def test_named_spec_with_ranges_wildcards_negatives_and_precedence():
    spec = parse_spec("OUT03-OUT05=0.8, default=0.5, TE=0, IN04-IN08=0, IN05=-1, M00=1, OUT*=0.25", SD15_IDS)
    r = spec.ratios
    assert r["IN00"] == 0.5 and r["IN"] == 0.5
    assert [r[f"IN{i:02d}"] for i in range(4, 9)] == [0, -1, 0, 0, 0]
    assert r["M00"] == 1
    assert r["OUT03"] == r["OUT05"] == 0.8            # range beats wildcard whatever the order
    assert r["OUT00"] == r["OUT11"] == 0.25
    assert r["OUT"] == 0.5                            # OUT* is the numbered output blocks only
    assert r["TE.clip_l"] == 0
    assert parse_spec(spec.canonical(), SD15_IDS).ratios == r


@pytest.mark.parametrize("text, token", [
    ("IN04", "IN04"),
    ("OUT99=1", "OUT99"),
    ("IN08-IN04=0", "IN08-IN04"),
    ("IN04-OUT04=0", "IN04-OUT04"),
    ("M00=abc", "M00=abc"),
    ("M00=nan", "M00=nan"),
    ("D*=0", "D*"),
])
def test_bad_specs_name_the_token_and_list_valid_ids(text, token):
    with pytest.raises(BlockSpecError) as e:
        parse_spec(text, SD15_IDS)
    assert token in e.value.token or e.value.token in text
    assert f"{token!r}" in str(e.value) or token in str(e.value)
    assert "IN00, IN01" in str(e.value) and "TE.clip_l" in str(e.value)


def test_canonical_merges_runs_and_picks_the_common_default():
    ratios = {b: 1.0 for b in SD15_IDS}
    for b in ("IN04", "IN05", "IN06", "IN08"):
        ratios[b] = 0.0
    assert canonical_text(ratios) == "default=1, IN04-IN06=0, IN08=0"


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(SD15_IDS),
                       st.sampled_from([0.0, 0.5, 1.0, -1.0, 0.25, 2.0]), min_size=1))
def test_canonical_text_round_trips(partial):
    full = {b: partial.get(b, 1.0) for b in SD15_IDS}
    assert parse_spec(canonical_text(full), SD15_IDS).ratios == full


def test_ids_are_case_insensitive_zero_padded_and_en_dash_ranges_work():
    r = parse_spec("in4=0, te.CLIP_L=0.5, out3\u2013out5=2, m0=-1", SD15_IDS).ratios
    assert r["IN04"] == 0 and r["TE.clip_l"] == 0.5 and r["M00"] == -1
    assert r["OUT03"] == r["OUT04"] == r["OUT05"] == 2 and r["OUT06"] == 1


@pytest.mark.parametrize("text, fragment", [
    ("IN01=1_0", "is not a number"),
    ("IN01=\u0661", "is not a number"),           # Arabic-Indic digit
    ("IN01=\uff11", "is not a number"),           # full-width digit
    ("IN01=1e309", "is not a number"),
    ("IN01=101", "between -100 and 100"),
    ("IN01=1\tIN02=0", "separate parts with commas"),
    ("TE.clip_l=0.5, TE.clip_l=0", "given twice"),
    ("default=0, default=1", "given twice"),
    ("in04=1, IN4=0", "given twice"),
])
def test_strict_values_and_duplicate_selectors(text, fragment):
    with pytest.raises(BlockSpecError, match=fragment):
        parse_spec(text, SD15_IDS)


def test_text_encoder_selector_without_text_encoder_is_a_note_not_an_error():
    model_only = [b for b in SD15_IDS if not b.startswith("TE")]
    spec = parse_spec("TE=0, OUT*=0.5", model_only)
    assert spec.ratios["OUT03"] == 0.5
    assert spec.notes == ("TE=0 skipped: no text encoder is connected",)


def test_canonical_text_is_exact():
    ratios = {b: 1.0 for b in SD15_IDS}
    ratios["IN01"] = 0.1 + 0.2
    ratios["IN02"] = 1.23456789
    ratios["IN04"] = -0.0
    text = canonical_text(ratios)
    assert text == "default=1, IN01=0.30000000000000004, IN02=1.23456789, IN04=0"
    assert parse_spec(text, SD15_IDS).ratios == ratios


def test_block_of_reads_only_ascii_digits():
    assert block_of("diffusion_model.input_blocks.\u0663.0.weight") == "OTHER"
