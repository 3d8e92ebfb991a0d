"""What the block editor shows for a model: its block ids grouped by stack, and presets.

Both come from the model's own weight names (:func:`lora_ops.blocks.block_of`), so a
connected model and a family picked before a run get the same groups. The ids each family of
the pinned host (ComfyUI 0.3.75) has, built at full size (``nodes/host_families.py``; the
full-size test ``tests/host/test_families.py`` checks every one):

=====================================  ====================================================
family                                 block ids (in reading order)
=====================================  ====================================================
SD 1.x, SD 2.x (+ unCLIP, Lotus-D,     ``IN``, ``IN00``-``IN11``, ``M00``, ``OUT00``-``OUT11``,
x4 upscaler, Zero123, SVD, SV3D)       ``OUT``
SDXL (+ refiner 12/12, SSD-1B, Vega)   ``IN``, ``IN00``-``IN08``, ``M00``, ``OUT00``-``OUT08``, ``OUT``
KOALA 700M / 1B                        ``IN``, ``IN00``-``IN05``, (1B: ``M00``), ``OUT00``-``OUT05``, ``OUT``
Flux.1 dev/schnell/Fill, Chroma        ``IN``, ``D00``-``D18``, ``S00``-``S37``, ``OUT``
Chroma Radiance                        as Chroma, plus ``NB00``-``NB03`` (NeRF head)
Flux.2 dev                             ``IN``, ``D00``-``D07``, ``S00``-``S47``, ``OUT``
HiDream I1                             ``IN``, ``D00``-``D15``, ``S00``-``S31``, ``OUT``
AuraFlow (Pony V7)                     ``IN``, ``D00``-``D03``, ``S00``-``S31``, ``OUT``
HunyuanVideo (+ I2V, SkyReels),        ``IN``, ``D00``-``D19``, ``S00``-``S39``, ``OUT``
HunyuanImage 2.1 (+ refiner)
HunyuanVideo 1.5 (+ SR)                ``IN``, ``D00``-``D53``, ``OUT``
Hunyuan3D 2.0 / mini                   ``IN``, ``D00``-``D15`` / ``D07``, ``S00``-``S31`` / ``S15``, ``OUT``
SD3 Medium / SD3.5 Large               ``IN``, ``J00``-``J23`` / ``J37``, ``OUT``
Wan 2.1/2.2 14B (T2V, I2V, Fun,        ``IN``, ``B00``-``B39``, ``OUT``
Camera, HuMo); 1.3B and 2.2 5B
                                       ``B00``-``B29``
Wan VACE 14B / 1.3B                    ``IN``, ``B00``-``B39`` / ``B29``, ``V00``-``V07`` / ``V14``, ``OUT``
Wan 2.2 S2V                            ``IN``, ``B00``-``B39``, ``A00``-``A11`` (audio injectors), ``OUT``
Wan 2.2 Animate                        ``IN``, ``B00``-``B39``, ``F00``-``F07`` (face fusers), ``OUT``
Qwen-Image                             ``IN``, ``B00``-``B59``, ``OUT``
Z-Image / Lumina 2                     ``IN``, ``CR00``-``CR01``, ``NR00``-``NR01``, ``B00``-``B29`` / ``B25``, ``OUT``
OmniGen2                               ``IN``, ``CR00``-``CR01``, ``NR00``-``NR01``, ``RR00``-``RR01``,
                                       ``B00``-``B31``, ``OUT``
LTX-Video 2B / 13B                     ``IN``, ``B00``-``B27`` / ``B47``, ``OUT``
Mochi                                  ``IN``, ``B00``-``B47``, ``OUT``
Cosmos 1.0 7B / 14B, Predict2 2B / 14B ``IN``, ``B00``-``B27`` / ``B35``, ``OUT``
PixArt α/Σ                             ``IN``, ``B00``-``B27``, ``OUT``
Hunyuan-DiT                            ``IN``, ``B00``-``B39``, ``OUT``
Hunyuan3D 2.1                          ``IN``, ``B00``-``B20``, ``OUT``
Stable Audio 1.0                       ``IN``, ``B00``-``B23``, ``OUT``
ACE-Step                               ``IN``, ``L00``-``L05`` (lyric encoder), ``B00``-``B23``,
                                       ``P00``-``P01`` (projectors), ``OUT``
Stable Cascade C                       ``IN``, ``D0_00``-``D0_23``, ``D1_00``-``D1_71`` (down levels),
                                       ``DS01``, ``U0_00``-``U0_71``, ``U1_00``-``U1_23`` (up levels), ``US00``, ``OUT``
Stable Cascade B                       ``IN``, down levels ``D0_``-``D3_``, ``DS01``-``DS03``, up levels
                                       ``U0_``-``U3_``, ``UR00``-``UR03``, ``US00``-``US02``, ``OUT``
=====================================  ====================================================

``IN`` is every input layer (embedders, conditioning encoders), ``OUT`` every output layer;
text encoders add ``TE.<name>`` when a CLIP is connected. ``P*`` selects one numbered
stack: ``IN*`` is ``IN00``-``IN11`` without ``IN``, as in A1111; ``D*`` on Stable Cascade is
every down level, ``D1_*`` one level.
"""

from __future__ import annotations

from .block_names import stack_label
from .blocks import _ID_RE, id_prefix, sort_key

_UNET_LABELS = {"IN": "Input blocks", "M": "Middle block", "OUT": "Output blocks"}
_MAIN_STACKS = ("D", "S", "J", "B", "U")


def layout_of(ids) -> list[list]:
    """Block ids grouped by stack: ``[[label, [id, ...]], ...]`` in reading order.

    ``ids``: block ids (from :func:`lora_ops.blocks.block_of`), in any order, repeats
    allowed (a model's weight names mapped through ``block_of``). Groups: input layers
    (``IN``), each numbered stack (UNet input/middle/output blocks, double/single blocks,
    refiners, ...), output layers (``OUT``), anything unmapped (``OTHER``), text encoders.
    """
    groups: dict[str, list[str]] = {}
    for bid in sorted(set(ids), key=sort_key):
        if bid.startswith("TE"):
            key = "Text encoders"
        elif bid in ("IN", "OUT", "OTHER"):
            key = {"IN": "Input layers", "OUT": "Output layers", "OTHER": "Other layers"}[bid]
        else:
            prefix = id_prefix(bid) or bid
            key = _UNET_LABELS.get(prefix) or stack_label(prefix) or f"{prefix} blocks"
        groups.setdefault(key, []).append(bid)
    return [[label, members] for label, members in groups.items()]


def family_presets(ids) -> list[list[str]]:
    """Presets for a DiT model with ``ids``: ``[[name, canonical spec], ...]``.

    All, none; double/single blocks only (when it has both ``D`` and ``S`` blocks); first
    and second half of its main stacks (double, single, joint, main blocks and Cascade
    levels in depth order; refiners and side stacks keep 1). UNet models get none here: the
    A1111 and Inspire presets are theirs. Layers outside the blocks and text encoders keep 1
    except in "None".
    """
    ids = sorted(set(ids), key=sort_key)
    numbered = [b for b in ids if _ID_RE.match(b)]
    if not numbered or any(id_prefix(b) in ("IN", "M", "OUT") for b in numbered):
        return []

    letters = {b: _ID_RE.match(b).group(1).rstrip("0123456789_") for b in numbered}
    out = [["All blocks", "default=1"], ["No blocks", "default=0"]]
    if {"D", "S"} <= set(letters.values()) and not any(p.endswith("_") for p in map(id_prefix, numbered)):
        out.append(["Double blocks only", "default=1, S*=0"])
        out.append(["Single blocks only", "default=1, D*=0"])
    main = [b for b in numbered if letters[b] in _MAIN_STACKS]
    if len(main) >= 2:
        half = (len(main) + 1) // 2
        out.append(["First half", _zero_spec(main[half:])])
        out.append(["Second half", _zero_spec(main[:half])])
    return out


def _zero_spec(zero: list[str]) -> str:
    """``default=1`` and the ids of ``zero`` (in reading order) at 0, as ranges per stack."""
    parts, run = ["default=1"], []
    for bid in zero + [""]:
        if run and (not bid or id_prefix(bid) != id_prefix(run[-1])
                    or int(_ID_RE.match(bid).group(2)) != int(_ID_RE.match(run[-1]).group(2)) + 1):
            parts.append(f"{run[0]}=0" if len(run) == 1 else f"{run[0]}-{run[-1]}=0")
            run = []
        if bid:
            run.append(bid)
    return ", ".join(parts)
