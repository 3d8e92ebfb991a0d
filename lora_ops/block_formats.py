"""Importers for the block-weight notations of other tools, into block-id ratio tables.

Users arrive with specs from two popular tools; each importer turns them into the same
``{block id: ratio}`` table that the canonical grammar (:mod:`lora_ops.blocks`) produces,
and the reports show the canonical text of the result.

**A1111 LoRA Block Weight** (hako-mikan/sd-webui-lora-block-weight). Positional vectors
whose length selects a fixed slot table:

====== ==============================================================================
length slots
====== ==============================================================================
12     SDXL LoRA: BASE, IN04, IN05, IN07, IN08, M00, OUT00-OUT05
17     SD1.x/SD2.x LoRA: BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03-OUT11
20     SDXL LyCORIS: BASE, IN00-IN08, M00, OUT00-OUT08
26     SD1.x/SD2.x LyCORIS: BASE, IN00-IN11, M00, OUT00-OUT11
61     Flux (Forge): CLIP, T5, IN, D00-D18, S00-S37, OUT
====== ==============================================================================

BASE is the text encoder (every ``TE.*`` id). As in that extension, UNet blocks missing from
the chosen table get 0 (a 17-vector silences IN00, IN03, ... on a LoCon), while the layers
outside any block (``IN``/``OUT`` embedders and output layers) keep 1.

**Inspire pack** (ltdrdata/ComfyUI-Inspire-Pack, ``LoraLoaderBlockWeight``). Its vectors
are positional over the blocks *the LoRA contains*; its presets assume the usual layouts:
SD 17 (as A1111's), SD-LyC 27 (BASE, IN01-IN11, three middle sub-blocks, OUT00-OUT11),
SDXL 12 (as A1111's), SDXL-LyC 21 (BASE, IN01-IN08, three middle sub-blocks, OUT00-OUT08),
FLUX 58 (BASE, D00-D18, S00-S37) and FLUX-DBL 20 (BASE, D00-D18). Inspire's BASE covers the
text encoder and every layer outside a block. When a vector is shorter than the layout,
Inspire repeats the last value for the remaining blocks; that is kept, so ``FLUX-DBL-ALL``
(twenty 1s) enables the single blocks too, exactly as in Inspire. Here the middle block is
one id (``M00``), so the three middle slots must agree. Letters in presets: ``A`` = 4.0,
``B`` = 1.0 (the loader's defaults), ``a``/``b`` half of those; ``R``/``U`` (random) are
refused, since a workflow must reproduce its result. Inspire's ``%`` syntax
(``%default=1, base=0, in=0, out2-5=0.5, mid=1, double3=0.2, single10-20=0``) numbers the
blocks 1-based among those the LoRA contains.
"""

from __future__ import annotations

import re

from .blocks import _ID_RE, MAX_RATIO, parse_ratio, sort_key


def _r(prefix: str, lo: int, hi: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(lo, hi + 1)]


A1111_LAYOUTS: dict[int, list[str]] = {
    12: ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", *_r("OUT", 0, 5)],
    17: ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *_r("OUT", 3, 11)],
    20: ["BASE", *_r("IN", 0, 8), "M00", *_r("OUT", 0, 8)],
    26: ["BASE", *_r("IN", 0, 11), "M00", *_r("OUT", 0, 11)],
    61: ["CLIP", "T5", "IN", *_r("D", 0, 18), *_r("S", 0, 37), "OUT"],
}

INSPIRE_LAYOUTS: dict[int, list[str]] = {
    17: A1111_LAYOUTS[17],
    27: ["BASE", *_r("IN", 1, 11), "M00", "M00", "M00", *_r("OUT", 0, 11)],
    12: A1111_LAYOUTS[12],
    21: ["BASE", *_r("IN", 1, 8), "M00", "M00", "M00", *_r("OUT", 0, 8)],
    20: ["BASE", *_r("D", 0, 18)],
    58: ["BASE", *_r("D", 0, 18), *_r("S", 0, 37)],
}

_ONES = ",".join(["1"] * 17)

# The presets the A1111 extension writes as its defaults (17 values, FLUXALL 61).
A1111_PRESETS: dict[str, str] = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": _ONES,
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": ",".join(["0.5"] * 17),
    "FLUXALL": ",".join(["1"] * 61),
}


def _onehot(n: int, on: list[int], base: str = "1") -> str:
    return ",".join(base if i == 0 else ("1" if i in on else "0") for i in range(n))


def _span(n: int, lo: int, hi: int) -> str:
    return _onehot(n, list(range(lo, hi + 1)))


# The presets of the Inspire pack's resources/lbw-preset.txt (the @ lines there are XY-plot
# generators, not presets).
INSPIRE_PRESETS: dict[str, str] = {
    **{f"SD-{k}": A1111_PRESETS[k] for k in ("NONE", "ALL", "INS", "IND", "INALL", "MIDD", "OUTD", "OUTS",
                                            "OUTALL", "ALL0.5")},
    "SD-MIDD0.2": "1,0,0,0,0,0,0.2,0.4,0.4,0.2,0,0,0,0,0,0,0",
    "SD-MIDD0.8": "1,0,0,0,0,0.5,0.8,0.8,0.4,0,0,0,0,0,0,0,0",
    "SD-MOUT": "1,0,0,0,0,0,1,1,1,1,1,1,1,1,0.5,0,0",
    "SD-ROUT": "1,1,1,1,1,1,1,1,R,R,R,R,R,R,R,R,R",
    "SD-AOUT": "A,1,1,1,1,1,1,1,1,1,1,1,A,A,A,A,A",
    "SD-AB": "A,B,B,B,B,B,B,B,B,B,B,B,A,A,A,A,A",
    "SD-LyC-NONE": ",".join(["0"] * 27),
    "SD-LyC-ALL": ",".join(["1"] * 27),
    "SD-LyC-INALL": _span(27, 1, 11),
    "SD-LyC-MIDALL": _span(27, 12, 14),
    "SD-LyC-OUTALL": _span(27, 15, 26),
    "SDXL-NONE": ",".join(["0"] * 12),
    "SDXL-ALL": ",".join(["1"] * 12),
    "SDXL-INALL": _span(12, 1, 4),
    "SDXL-MIDALL": _span(12, 5, 5),
    "SDXL-OUTALL": _span(12, 6, 11),
    "SDXL-LyC-NONE": ",".join(["0"] * 21),
    "SDXL-LyC-ALL": ",".join(["1"] * 21),
    "SDXL-LyC-INALL": _span(21, 1, 8),
    "SDXL-LyC-MIDALL": _span(21, 9, 11),
    "SDXL-LyC-OUTALL": _span(21, 12, 20),
    "FLUX-DBL-ALL": ",".join(["1"] * 20),
    "FLUX-DBL-FRONT7": _span(20, 1, 7),
    "FLUX-DBL-MID6": _span(20, 8, 13),
    "FLUX-DBL-TAIL6": _span(20, 14, 19),
    "FLUX-SINGLE-ALL": _span(58, 20, 57),
    "FLUX-SINGLE-1to10": _span(58, 20, 29),
    "FLUX-SINGLE-11to20": _span(58, 30, 39),
    "FLUX-SINGLE-21to30": _span(58, 40, 49),
    "FLUX-SINGLE-31to37": _span(58, 50, 57),
    "FLUX-ALL": ",".join(["1"] * 58),
}

INSPIRE_LETTERS = {"A": 4.0, "B": 1.0, "a": 2.0, "b": 0.5}


class FormatError(ValueError):
    """A spec in another tool's notation that cannot be imported; ``token`` is the bad part."""

    def __init__(self, message: str, token: str):
        self.token = token
        super().__init__(message)


def preset_names() -> list[str]:
    """Every preset name accepted as a whole spec (A1111 names, then Inspire names)."""
    return [*A1111_PRESETS, *INSPIRE_PRESETS]


def lookup_preset(text: str) -> tuple[str, str] | None:
    """``(tool, vector text)`` of a preset name (case-insensitive), or None."""
    key = text.strip().upper()
    for tool, table in (("a1111", A1111_PRESETS), ("inspire", INSPIRE_PRESETS)):
        for name, vec in table.items():
            if name.upper() == key:
                return tool, vec
    return None


def parse_values(text: str, allow_letters: bool) -> list[float]:
    """The numbers of a comma-separated vector (an optional ``label:`` prefix is dropped)."""
    if ":" in text:
        text = text.split(":", 1)[1]
    values = []
    for raw in text.split(","):
        tok = raw.strip()
        if allow_letters and tok in INSPIRE_LETTERS:
            values.append(INSPIRE_LETTERS[tok])
            continue
        if tok in ("R", "r", "U", "u"):
            raise FormatError(f"vector entry {tok!r} asks for a random value; a workflow must reproduce "
                              "its result, so write the numbers you want instead", tok)
        value = parse_ratio(tok)
        if value is None:
            raise FormatError(f"vector entry {tok!r} is not a number between -{MAX_RATIO:g} and {MAX_RATIO:g}", tok)
        values.append(value)
    return values


def is_vector(text: str) -> bool:
    """Whether ``text`` looks like a positional vector (``[label:]v,v,...``, 12 or more entries)."""
    body = text.split(":", 1)[1] if ":" in text else text
    return body.count(",") >= 11 and "=" not in body


def _fill(ids: list[str], slot_values: dict[str, float], base: float, base_covers_non_blocks: bool,
          missing_blocks: float) -> dict[str, float]:
    ratios = {}
    for bid in ids:
        if bid in slot_values:
            ratios[bid] = slot_values[bid]
        elif bid.startswith("TE"):
            ratios[bid] = base
        elif _ID_RE.match(bid):
            ratios[bid] = missing_blocks
        else:  # IN / OUT / OTHER: layers outside any block
            ratios[bid] = base if base_covers_non_blocks else 1.0
    return ratios


def _check_family(layout: list[str], ids: list[str], what: str) -> None:
    blocks = [s for s in layout if _ID_RE.match(s)]
    if not set(blocks) & set(ids):
        model_blocks = sorted((b for b in ids if _ID_RE.match(b)), key=sort_key)
        shown = f"{model_blocks[0]}..{model_blocks[-1]}" if model_blocks else "none"
        raise FormatError(f"{what} is for models with blocks {blocks[0]}..{blocks[-1]}; this model's blocks "
                          f"are {shown}", what)


def _check_same_stacks(layout: list[str], ids: list[str], what: str) -> None:
    """A positional vector fits a DiT only when the model has exactly its numbered blocks: the
    same D/S stacks at other depths (Flux.2, HiDream, AuraFlow) would silently lose values."""
    prefixes = {"D", "S"}
    want = {s for s in layout if (m := _ID_RE.match(s)) and m.group(1) in prefixes}
    have = {b for b in ids if (m := _ID_RE.match(b)) and m.group(1) in prefixes}
    if have != want:
        def span(blocks):
            by = {}
            for b in sorted(blocks, key=sort_key):
                by.setdefault(_ID_RE.match(b).group(1), []).append(b)
            return ", ".join(f"{v[0]}-{v[-1]}" for v in by.values())
        raise FormatError(f"{what} is laid out for {span(want)}; this model has {span(have)}, so values would be "
                          "lost or blocks left at 0. Write a named spec instead (e.g. `D*=1, S*=0.5`)", what)


def a1111_vector(values: list[float], ids: list[str]) -> dict[str, float]:
    """Ratios for an A1111 positional vector (12/17/20/26/61 values) on a model with ``ids``."""
    layout = A1111_LAYOUTS.get(len(values))
    if layout is None:
        raise FormatError(f"an A1111 vector has 12, 17, 20, 26 or 61 values, not {len(values)}", str(len(values)))
    _check_family(layout, ids, f"a {len(values)}-value A1111 vector")
    if len(values) == 61:
        _check_same_stacks(layout, ids, "a 61-value A1111 vector (Flux.1's double and single blocks)")
    slots = dict(zip(layout, values, strict=True))
    if len(values) == 61:
        named = {"CLIP": "TE.clip_l", "T5": "TE.t5xxl"}
        slot_values = {named.get(k, k): v for k, v in slots.items()}
        return _fill(ids, slot_values, slots["CLIP"], False, 0.0)
    return _fill(ids, {k: v for k, v in slots.items() if k != "BASE"}, slots["BASE"], False, 0.0)


def inspire_vector(values: list[float], ids: list[str]) -> dict[str, float]:
    """Ratios for an Inspire preset vector (17/27/12/21/20/58 values) in its usual layout."""
    layout = INSPIRE_LAYOUTS.get(len(values))
    if layout is None:
        raise FormatError(f"an Inspire preset vector has 12, 17, 20, 21, 27 or 58 values, not {len(values)}",
                          str(len(values)))
    _check_family(layout, ids, f"a {len(values)}-value Inspire vector")
    slot_values: dict[str, float] = {}
    for slot, v in zip(layout[1:], values[1:], strict=True):
        if slot in slot_values and slot_values[slot] != v:
            raise FormatError(f"the middle block is one block here (M00); its three Inspire slots must agree, "
                              f"not {slot_values[slot]:g} and {v:g}", slot)
        slot_values[slot] = v
    # Inspire repeats the last value over the remaining blocks of the model.
    last = values[-1]
    family = {m.group(1) for s in layout if (m := _ID_RE.match(s))}
    for bid in ids:
        m = _ID_RE.match(bid)
        if m and m.group(1) in family | ({"S"} if "D" in family else set()) and bid not in slot_values:
            slot_values[bid] = last if _after_layout(bid, layout) else 0.0
    return _fill(ids, slot_values, values[0], True, 0.0)


def _after_layout(bid: str, layout: list[str]) -> bool:
    return sort_key(bid) > max(sort_key(s) for s in layout if _ID_RE.match(s))


_PCT_GROUPS = {"in": "IN", "mid": "M", "out": "OUT", "double": "D", "single": "S"}
_PCT_TOKEN = re.compile(r"^(base|default|[a-z]+?)(\d+)?(?:-(\d+))?$")


def inspire_percent(text: str, ids: list[str], present: list[str]) -> dict[str, float]:
    """Ratios for Inspire's ``%`` syntax, numbering blocks among ``present`` (the LoRA's)."""
    body = text.strip()[1:]
    default = 1.0
    base = None
    assigned: dict[str, float] = {}
    by_group: dict[str, list[str]] = {}
    for bid in sorted(present, key=sort_key):
        m = _ID_RE.match(bid)
        if m:
            by_group.setdefault(m.group(1), []).append(bid)
    for raw in body.split(","):
        tok = raw.strip()
        if not tok:
            continue
        sel, eq, val = (s.strip() for s in tok.partition("="))
        value = parse_ratio(val) if eq else None
        if value is None:
            raise FormatError(f"Inspire % entry {tok!r} needs name=number (between -{MAX_RATIO:g} and "
                              f"{MAX_RATIO:g})", tok)
        m = _PCT_TOKEN.match(sel.lower())
        if not m:
            raise FormatError(f"Inspire % entry {tok!r}: unknown selector {sel!r}", tok)
        name, lo, hi = m.group(1), m.group(2), m.group(3)
        if name == "default" and lo is None:
            default = value
            continue
        if name == "base" and lo is None:
            base = value
            continue
        if name not in _PCT_GROUPS:
            raise FormatError(f"Inspire % entry {tok!r}: {name!r} is not one of base, default, in, mid, out, "
                              "double, single", tok)
        group = by_group.get(_PCT_GROUPS[name], [])
        if lo is None:
            chosen = group
        else:
            a, b = int(lo), int(hi or lo)
            if a < 1 or b < a or b > len(group):
                raise FormatError(f"Inspire % entry {tok!r}: this LoRA has {len(group)} {name} blocks "
                                  f"({', '.join(group) or 'none'}), numbered from 1", tok)
            chosen = group[a - 1:b]
        for bid in chosen:
            assigned[bid] = value
    ratios = {}
    for bid in ids:
        if bid in assigned:
            ratios[bid] = assigned[bid]
        elif not _ID_RE.match(bid):  # TE and non-block layers: Inspire's BASE
            ratios[bid] = default if base is None else base
        else:
            ratios[bid] = default
    return ratios
