"""Block ids of model weights, and the canonical block-spec grammar.

Block ids are derived from the model's own weight names (ComfyUI's state-dict keys, as
``comfy.lora.load_lora`` returns them as patch keys), never from a fixed table, so every
depth of every family gets the right ids:

=====================================================  =====================================
weight name (after ``diffusion_model.``)               block id
=====================================================  =====================================
``input_blocks.N.``                                    ``IN{N:02}`` (UNet: SD1.x, SD2.x, SDXL)
``middle_block.``                                      ``M00``
``output_blocks.N.``                                   ``OUT{N:02}``
``double_blocks.N.`` / ``single_blocks.N.``            ``D{N:02}`` / ``S{N:02}`` (Flux, Chroma,
                                                       HunyuanVideo)
``joint_blocks.N.``                                    ``J{N:02}`` (SD3)
``blocks.N.``, ``transformer_blocks.N.``, ``layers.N`` ``B{N:02}`` (Wan, PixArt, Qwen-Image,
                                                       LTXV, Lumina2 and other DiTs)
input embedders (``time_embed``, ``img_in``, ...)      ``IN``
output layers (``out.``, ``final_layer``, ...)         ``OUT``
any other model weight                                 ``OTHER``
text encoder ``<name>.`` (``clip_l``, ``t5xxl``, ...)  ``TE.<name>``
=====================================================  =====================================

The ids of UNet blocks are those of the A1111 LoRA Block Weight extension (IN00..., M00,
OUT00...), so values carry over between tools.

Canonical spec grammar (order-free, comma separated ``selector=value``; the notations of
other tools are imported by :mod:`lora_ops.block_formats`):

* ``default=V``: every block not named otherwise (without it, 1).
* ``ID=V``: one block id, e.g. ``M00=0.5``, ``TE.clip_l=0``.
* ``A-B=V``: an inclusive range of ids with the same letter prefix, e.g. ``IN04-IN08=0``,
  ``S20-S37=0``.
* ``P*=V``: every id starting with ``P``, e.g. ``D*=1``, ``TE*=0``; ``TE=V`` is ``TE*=V``.
* Values are decimal numbers between -100 and 100 and may be negative. More specific
  selectors win in this order: default < wildcard < range < exact id, whatever their order
  in the text; a selector may appear once.
* Ids are case-insensitive and zero-padded on reading (``in4`` is ``IN04``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .block_names import model_block_of

MODEL_PREFIX = "diffusion_model."


def block_of(weight_key: str | tuple) -> str:
    """The block id of one model or text-encoder weight.

    ``weight_key`` is a ComfyUI state-dict key such as
    ``"diffusion_model.input_blocks.4.1.proj_in.weight"`` or
    ``"clip_l.transformer.text_model.encoder.layers.3.mlp.fc1.weight"``, or a patch key tuple
    ``(key, (dim, start, length))`` (a slice of a fused weight), whose first item is used.
    Keys outside ``diffusion_model.`` are taken as text-encoder weights, named as the CLIP
    patcher's state dict names them: ``TE.<first component>``. (A MODEL's state dict also
    holds non-weight entries such as ``model_sampling.sigmas``; callers pass only its
    ``diffusion_model.`` keys, which are the only ones LoRA patches target.)
    """
    key = weight_key[0] if isinstance(weight_key, tuple) else weight_key
    if not key.startswith(MODEL_PREFIX):
        return "TE." + key.split(".", 1)[0]
    return model_block_of(key[len(MODEL_PREFIX):])


# A numbered id: its prefix (letters, plus ``<level>_`` for Stable Cascade's level stacks)
# and its index: ``IN04`` -> ("IN", "04"), ``D1_05`` -> ("D1_", "05").
_ID_RE = re.compile(r"^([A-Za-z]+(?:[0-9]+_)?)([0-9]+)$")

# Reading order of the stacks: input side, UNet blocks, refiners and encoders that run before
# the main stack, the main stacks, what runs beside or after them, output layers.
_STACK_RANK = {"IN": 1, "M": 2, "OUT": 3, "L": 4, "NR": 5, "CR": 5, "RR": 5, "D": 6, "S": 7, "J": 6, "B": 6,
               "V": 8, "A": 8, "F": 8, "P": 8, "NB": 9, "DS": 6, "U": 7, "US": 7, "UR": 7}


def id_prefix(block_id: str) -> str | None:
    """The stack prefix of a numbered id (``D07`` -> ``D``, ``D1_05`` -> ``D1_``), or None
    for an id outside the numbered stacks (``IN``, ``OUT``, ``OTHER``, ``TE.*``)."""
    m = _ID_RE.match(block_id)
    return m.group(1) if m else None


def sort_key(block_id: str) -> tuple:
    """Order ids the way a user reads a model: embedders, blocks in depth order, outputs,
    text encoders last (``IN < IN00 < ... < M00 < OUT00 < ... < NR00 < D00 < S00 ... < OUT
    < TE.*``)."""
    if block_id.startswith("TE"):
        return (12, block_id, 0, 0)
    m = _ID_RE.match(block_id)
    if m:
        letters = re.match(r"[A-Za-z]+", m.group(1)).group(0)
        level = int(m.group(1)[len(letters):-1] or 0) if m.group(1).endswith("_") else -1
        return (_STACK_RANK.get(letters, 8) + 0.5 * (letters not in ("IN", "M", "OUT")), letters, level,
                int(m.group(2)))
    return ({"IN": 0, "OUT": 10}.get(block_id, 11), block_id, 0, 0)


class BlockSpecError(ValueError):
    """A block spec that cannot be parsed or names ids this model does not have.

    Attributes: ``token`` (the offending part of the spec) and ``valid_ids`` (the ids the
    model has, in reading order), so a message can show the user what to write instead.
    """

    def __init__(self, message: str, token: str, valid_ids: list[str]):
        self.token = token
        self.valid_ids = valid_ids
        shown = ", ".join(valid_ids) if valid_ids else "(none)"
        super().__init__(f"{message}. Valid block ids for this model: {shown}")


@dataclass(frozen=True)
class BlockSpec:
    """A parsed spec: ``ratios`` maps every block id of the model to its ratio (float);
    ``notes`` are remarks for the report (e.g. a text-encoder selector without a text
    encoder connected)."""

    ratios: dict[str, float]
    notes: tuple[str, ...] = ()

    def ratio(self, block_id: str) -> float:
        return self.ratios.get(block_id, 1.0)

    def canonical(self) -> str:
        """The applied spec as canonical text: ``default=V`` for the most common ratio, then
        the exceptions in reading order with consecutive ids merged into ranges."""
        return canonical_text(self.ratios)


def format_ratio(v: float) -> str:
    """Shortest text that reads back as exactly ``v`` (``1``, ``0.5``, ``0.30000000000000004``)."""
    if v == 0:
        return "0"  # also for -0.0
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def canonical_text(ratios: dict[str, float]) -> str:
    """Canonical spec text for a full id -> ratio table (see :meth:`BlockSpec.canonical`)."""
    if not ratios:
        return "default=1"
    counts: dict[float, int] = {}
    for v in ratios.values():
        counts[v] = counts.get(v, 0) + 1
    default = max(counts, key=lambda v: (counts[v], v == 1.0))
    parts = [f"default={format_ratio(default)}"]
    run: list[str] = []

    def flush():
        if run:
            sel = run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}"
            parts.append(f"{sel}={format_ratio(ratios[run[0]])}")
            run.clear()

    prev = None
    for bid in sorted(ratios, key=sort_key):
        v = ratios[bid]
        if v == default:
            flush()
            prev = None
            continue
        m, pm = _ID_RE.match(bid), (_ID_RE.match(prev) if prev else None)
        if (run and m and pm and m.group(1) == pm.group(1) and int(m.group(2)) == int(pm.group(2)) + 1
                and ratios[prev] == v):
            run.append(bid)
        else:
            flush()
            run.append(bid)
        prev = bid
    flush()
    return ", ".join(parts)


# Ratios are bounded like the strength widgets, so a spec cannot multiply a strength
# into absurd (or infinite) territory.
MAX_RATIO = 100.0
_NUMBER = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")


def parse_ratio(text: str) -> float | None:
    """A ratio from ASCII decimal text, or None when it is not one within +-MAX_RATIO."""
    if not _NUMBER.match(text):
        return None
    v = float(text)
    return v if math.isfinite(v) and abs(v) <= MAX_RATIO else None


def parse_named(text: str, block_ids: list[str] | set[str]) -> BlockSpec:
    """Parse a canonical (named) block spec against the ids of one model.

    (:func:`lora_ops.block_spec.parse_spec` accepts this and the other tools' notations.)

    ``text``: the spec (empty or whitespace means ratio 1 everywhere); parts are separated
    by commas, semicolons or newlines; ids are case-insensitive and ``IN4`` means ``IN04``.
    ``block_ids``: the ids this model (and its text encoders) have, from :func:`block_of`.
    Returns a :class:`BlockSpec` with a ratio for every id in ``block_ids``. A ``TE``
    selector when no text encoder is connected is skipped with a note, so a saved spec keeps
    working on a model-only chain.

    Raises :class:`BlockSpecError` naming the bad token and listing the valid ids when a
    part is not ``selector=value``, a value is not a number within +-100, a selector is
    given twice, a range mixes prefixes or runs backwards, or a selector matches none of
    this model's ids.
    """
    ids = sorted(set(block_ids), key=sort_key)
    default = None
    seen: set[str] = set()
    notes: list[str] = []
    # (specificity, ids, value): more specific assignments win whatever their order.
    assignments: list[tuple[int, list[str], float]] = []
    for raw in re.split(r"[,\n;]", text or ""):
        token = raw.strip()
        if not token:
            continue
        if "=" not in token:
            raise BlockSpecError(f"block spec part {token!r} is not of the form ID=value", token, ids)
        sel, _, val = (s.strip() for s in token.partition("="))
        value = parse_ratio(val)
        if value is None:
            hint = " (separate parts with commas)" if re.search(r"\s", val) else ""
            raise BlockSpecError(f"block spec part {token!r}: {val!r} is not a number between "
                                 f"-{MAX_RATIO:g} and {MAX_RATIO:g}{hint}", token, ids)
        key = _normalise_selector(sel)
        if key.upper() in seen:
            raise BlockSpecError(f"block spec selector {sel!r} is given twice", token, ids)
        seen.add(key.upper())
        if key.upper() == "DEFAULT":
            default = value
            continue
        if key.upper().startswith("TE") and not any(b.startswith("TE") for b in ids):
            notes.append(f"{token} skipped: no text encoder is connected")
            continue
        specificity, matched = _select(key, ids, token)
        assignments.append((specificity, matched, value))
    base = 1.0 if default is None else default
    ratios = {bid: base for bid in ids}
    for _, matched, value in sorted(assignments, key=lambda a: a[0]):
        for bid in matched:
            ratios[bid] = value
    return BlockSpec(ratios, tuple(notes))


def _normalise_selector(sel: str) -> str:
    """``in4`` -> ``IN04``, ``te.CLIP_L`` kept for case-insensitive matching, en dash -> ``-``."""
    sel = sel.replace("\u2013", "-").replace("\u2014", "-")

    def fix(part: str) -> str:
        m = _ID_RE.match(part.strip())
        return f"{m.group(1).upper()}{int(m.group(2)):02d}" if m else part.strip()

    if "-" in sel and not sel.upper().startswith("TE"):
        lo, _, hi = sel.partition("-")
        return f"{fix(lo)}-{fix(hi)}"
    return fix(sel)


def _select(sel: str, ids: list[str], token: str) -> tuple[int, list[str]]:
    upper_ids = {b.upper(): b for b in ids}
    if sel.upper() == "TE" or (sel.endswith("*") and sel.upper().startswith("TE")) or sel == "*":
        prefix = (sel[:-1] if sel.endswith("*") else sel).upper()
        matched = [b for b in ids if b.upper().startswith(prefix)]
        specificity = 1
    elif sel.endswith("*"):
        # One stack: the numbered ids of exactly this prefix (IN* is IN00.., not the
        # embedders' IN; D* is every down level of Stable Cascade, D1_* one level).
        want = sel[:-1].upper()
        matched = [b for b in ids if (m := _ID_RE.match(b)) and want in (
            m.group(1).upper(), re.match(r"[A-Za-z]+", m.group(1)).group(0).upper())]
        specificity = 1
    elif "-" in sel:
        lo, _, hi = (s.strip().upper() for s in sel.partition("-"))
        mlo, mhi = _ID_RE.match(lo), _ID_RE.match(hi)
        if not (mlo and mhi) or mlo.group(1) != mhi.group(1) or int(mlo.group(2)) > int(mhi.group(2)):
            raise BlockSpecError(f"block spec range {sel!r} must run upwards between ids of one "
                                 "kind, like IN04-IN08", token, ids)
        prefix, a, b = mlo.group(1), int(mlo.group(2)), int(mhi.group(2))
        matched = [x for x in ids if (m := _ID_RE.match(x)) and m.group(1) == prefix
                   and a <= int(m.group(2)) <= b]
        specificity = 2
    else:
        matched = [upper_ids[sel.upper()]] if sel.upper() in upper_ids else []
        specificity = 3
    if not matched:
        raise BlockSpecError(f"block spec selector {sel!r} matches no block of this model", token, ids)
    return specificity, matched
