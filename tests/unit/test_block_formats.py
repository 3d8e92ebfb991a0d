"""Importers of A1111 and Inspire block-weight notations, table-driven against the real
preset files of both tools (../shared/fixtures/real/lbw_presets)."""

from __future__ import annotations

import pytest

from helpers.paths import SHARED
from lora_ops.block_formats import A1111_LAYOUTS, A1111_PRESETS, INSPIRE_PRESETS, parse_values
from lora_ops.block_spec import parse_spec
from lora_ops.blocks import BlockSpecError

PRESETS = SHARED / "fixtures" / "real" / "lbw_presets"
needs_presets = pytest.mark.skipif(not PRESETS.is_dir(), reason="../shared/fixtures/real is not present")


def ids_unet(n_in: int) -> list[str]:
    return (["IN", "OUT", "TE.clip_l"] + [f"IN{i:02d}" for i in range(n_in)] + ["M00"]
            + [f"OUT{i:02d}" for i in range(n_in)])


SD15 = ids_unet(12)
SDXL = ids_unet(9) + ["TE.clip_g"]
FLUX = ["IN", "OUT", "TE.clip_l", "TE.t5xxl"] + [f"D{i:02d}" for i in range(19)] + [f"S{i:02d}" for i in range(38)]


def read_presets(path):
    out = {}
    for line in path.read_text().replace("\r", "").splitlines():
        if line.strip() and not line.startswith("@"):
            name, vec = line.split(":", 1)
            out[name] = vec
    return out


@pytest.mark.parametrize("length, ids", [(12, SDXL), (17, SD15), (20, SDXL), (26, SD15), (61, FLUX)])
def test_every_a1111_slot_maps_to_its_id(length, ids):
    layout = A1111_LAYOUTS[length]
    for i, slot in enumerate(layout):
        vec = ",".join("1" if j == i else "0" for j in range(length))
        r = parse_spec(vec, ids).ratios
        # IN/OUT (layers outside blocks) count only where they are the slot under test
        ones = sorted(b for b, v in r.items() if v == 1 and (b not in ("IN", "OUT") or b == slot))
        if slot == "BASE":
            expected = sorted(b for b in ids if b.startswith("TE"))
        elif slot == "CLIP":
            expected = ["TE.clip_l"]
        elif slot == "T5":
            expected = ["TE.t5xxl"]
        else:
            expected = [slot]
        assert ones == expected, (length, slot)
        if length != 61:  # A1111: layers outside blocks keep 1 in every UNet vector
            assert r["IN"] == r["OUT"] == 1


def test_a1111_17_vector_silences_blocks_outside_its_table():
    r = parse_spec(",".join(["1"] * 17), SD15).ratios
    assert r["IN00"] == r["IN03"] == r["IN09"] == r["OUT00"] == r["OUT02"] == 0
    assert r["IN01"] == r["M00"] == r["OUT11"] == r["TE.clip_l"] == 1


@needs_presets
def test_a1111_presets_match_the_extension_defaults():
    shipped = read_presets(PRESETS / "sd-webui-lora-block-weight" / "lbwpresets.default.txt")
    assert set(shipped) == set(A1111_PRESETS)
    for name, vec in shipped.items():
        assert parse_values(A1111_PRESETS[name], True) == parse_values(vec, True), name


@needs_presets
def test_inspire_presets_match_the_pack_file():
    shipped = read_presets(PRESETS / "inspire_pack" / "lbw-preset.txt")
    assert set(shipped) == set(INSPIRE_PRESETS)
    for name, vec in shipped.items():
        if "R" in vec:
            continue
        assert parse_values(INSPIRE_PRESETS[name], True) == parse_values(vec, True), name


@pytest.mark.parametrize("name, ids, expected", [
    ("OUTALL", SD15, "default=0, IN=1, OUT03-OUT11=1, OUT=1, TE.clip_l=1"),
    ("outall", SD15, "default=0, IN=1, OUT03-OUT11=1, OUT=1, TE.clip_l=1"),
    # IN06 is not a slot of the 17-value table (it holds no attention), so it is 0
    ("MIDD", SD15, "default=0, IN=1, IN05=1, IN07-IN08=1, M00=1, OUT03-OUT06=1, OUT=1, TE.clip_l=1"),
    ("NONE", SD15, "default=0, IN=1, OUT=1"),
    ("ALL0.5", SD15, "default=0.5, IN=1, IN00=0, IN03=0, IN06=0, IN09-IN11=0, OUT00-OUT02=0, OUT=1"),
    ("FLUXALL", FLUX, "default=1"),
    ("SDXL-OUTALL", SDXL, "default=1, IN00-IN08=0, M00=0"),
    ("SD-LyC-MIDALL", SD15, "default=0, IN=1, M00=1, OUT=1, TE.clip_l=1"),
    ("SDXL-LyC-INALL", SDXL, "default=1, IN00=0, M00=0, OUT00-OUT08=0"),
    # A = 4 (Inspire's default); Inspire's BASE also covers the layers outside blocks
    ("SD-AOUT", SD15, "default=1, IN=4, IN00=0, IN03=0, IN06=0, IN09-IN11=0, OUT00-OUT02=0, OUT07-OUT11=4, "
                      "OUT=4, TE.clip_l=4"),
    ("FLUX-DBL-FRONT7", FLUX, "default=0, IN=1, D00-D06=1, OUT=1, TE.clip_l=1, TE.t5xxl=1"),
    # as in Inspire, the last of 20 values carries on over the single blocks
    ("FLUX-DBL-ALL", FLUX, "default=1"),
    ("FLUX-SINGLE-11to20", FLUX, "default=0, IN=1, S10-S19=1, OUT=1, TE.clip_l=1, TE.t5xxl=1"),
])
def test_presets_resolve_to_the_intended_blocks(name, ids, expected):
    assert parse_spec(name, ids).canonical() == expected


def test_labelled_inspire_vector_from_a_real_workflow():
    # save-load-lbw.workflow.json carries "SDXL-OUTALL:1,0,0,0,0,0,1,1,1,1,1,1" as its vector
    assert parse_spec("SDXL-OUTALL:1,0,0,0,0,0,1,1,1,1,1,1", SDXL).canonical() == \
        parse_spec("SDXL-OUTALL", SDXL).canonical()


STANDARD_SD15_LORA = ["IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00"] + [f"OUT{i:02d}" for i in range(3, 12)] \
    + ["TE.clip_l"]


def test_inspire_percent_syntax_from_a_real_workflow():
    # named-lbw.workflow.json: in1-3 are the LoRA's first three input blocks, out4 its fourth output block
    r = parse_spec("% mid=0.4, default=0.2, in1-3=0.7, out4=1.0", SD15, STANDARD_SD15_LORA).ratios
    assert (r["IN01"], r["IN02"], r["IN04"], r["IN05"]) == (0.7, 0.7, 0.7, 0.2)
    assert r["M00"] == 0.4 and r["OUT06"] == 1.0 and r["OUT03"] == 0.2
    assert r["TE.clip_l"] == r["IN"] == 0.2


def test_inspire_percent_base_and_dit_groups():
    present = ["D00", "D01", "D02", "S00", "S01", "TE.clip_l"]
    r = parse_spec("%default=1, base=0, double2-3=0.5, single2=-1", FLUX, present).ratios
    assert (r["D00"], r["D01"], r["D02"], r["S00"], r["S01"]) == (1, 0.5, 0.5, 1, -1)
    assert r["TE.clip_l"] == r["IN"] == 0


@pytest.mark.parametrize("text, ids, fragment", [
    ("1,0,0,0,0,0,0,0,0,0,0,0,0", SD15, "not 13"),
    ("SD-ROUT", SD15, "random"),
    (",".join(["1"] * 16 + ["x"]), SD15, "'x' is not a number"),
    (",".join(["1"] * 17), FLUX, "this model's blocks are D00..S37"),
    ("1," + ",".join(["1"] * 11) + ",1,0,1," + ",".join(["1"] * 12), SD15, "must agree"),
    ("%out12=1", SD15, "has 9 out blocks"),
    ("%face=1", SD15, "'face' is not one of"),
])
def test_bad_imported_specs_name_the_problem(text, ids, fragment):
    present = STANDARD_SD15_LORA if ids is SD15 else None
    with pytest.raises(BlockSpecError) as e:
        parse_spec(text, ids, present)
    assert fragment in str(e.value)
    assert "Valid block ids for this model" in str(e.value)


def _model_for(layout):
    if any(x.startswith("D") for x in layout):
        return FLUX
    return SDXL if "OUT11" not in layout and len(layout) in (12, 20, 21) else SD15


@pytest.mark.parametrize("name", sorted(A1111_PRESETS) + sorted(n for n, v in INSPIRE_PRESETS.items() if "R" not in v))
def test_every_shipped_preset_puts_each_value_on_its_slot_id(name):
    from lora_ops.block_formats import INSPIRE_LAYOUTS, INSPIRE_LETTERS

    tool_a1111 = name in A1111_PRESETS
    vector = (A1111_PRESETS if tool_a1111 else INSPIRE_PRESETS)[name]
    values = parse_values(vector, True)
    layout = (A1111_LAYOUTS if tool_a1111 else INSPIRE_LAYOUTS)[len(values)]
    ids = _model_for(layout)
    r = parse_spec(name, ids).ratios
    te_value = values[0]
    for slot, v in zip(layout, values, strict=True):
        if slot in ("BASE", "CLIP"):
            assert r["TE.clip_l"] == v, (name, slot)
        elif slot == "T5":
            assert r["TE.t5xxl"] == v, (name, slot)
        else:
            assert r[slot] == v, (name, slot)
    assert r["TE.clip_l"] == te_value
    assert set(INSPIRE_LETTERS) >= {c for c in vector if c.isalpha()} - {"e"}


@pytest.mark.parametrize("doubles, singles", [(8, 48), (16, 32), (20, 40)])  # Flux.2 dev, HiDream, HunyuanVideo
def test_flux_a1111_vector_is_refused_on_other_double_single_depths(doubles, singles):
    """A 61-value vector is Flux.1's D00-D18/S00-S37: on the same stacks at other depths it
    would drop values or leave blocks at 0 without a word, so it is an error naming both."""
    ids = ["IN", *[f"D{i:02d}" for i in range(doubles)], *[f"S{i:02d}" for i in range(singles)], "OUT"]
    with pytest.raises(BlockSpecError, match=rf"D00-D18, S00-S37; this model has D00-D{doubles - 1:02d}, "
                                             rf"S00-S{singles - 1:02d}"):
        parse_spec(",".join(["1"] * 61), ids)
