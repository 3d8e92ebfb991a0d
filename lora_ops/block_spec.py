"""One entry point for every block-spec notation: :func:`parse_spec`.

Accepted, recognised by shape:

* empty: ratio 1 everywhere;
* the canonical named form (``default=1, IN04-IN08=0, TE=0.5``; :mod:`lora_ops.blocks`);
* a preset name of the A1111 LoRA Block Weight extension or of the Inspire pack (``OUTALL``,
  ``SD-MIDD0.2``, ``FLUX-DBL-FRONT7``; case-insensitive);
* a positional vector, optionally with a ``label:`` prefix: A1111 layouts by length (12, 17,
  20, 26, 61), Inspire preset layouts for the lengths only Inspire uses (21, 27, 58; 20 on a
  model with double blocks) and for vectors labelled like Inspire's presets (``SD-``,
  ``SDXL-``, ``FLUX-``);
* Inspire's ``%`` syntax (``%default=0, out2-5=1``), numbered among the LoRA's own blocks.

See :mod:`lora_ops.block_formats` for the exact semantics of the imported notations.
"""

from __future__ import annotations

from .block_formats import (
    A1111_LAYOUTS,
    FormatError,
    a1111_vector,
    inspire_percent,
    inspire_vector,
    is_vector,
    lookup_preset,
    parse_values,
)
from .blocks import BlockSpec, BlockSpecError, parse_named, sort_key

INSPIRE_FAMILIES = ("SD-", "SDXL-", "FLUX-")


def parse_spec(text: str, block_ids, present_ids=None) -> BlockSpec:
    """Parse ``text`` in any supported notation for a model whose block ids are ``block_ids``.

    ``present_ids``: the block ids the LoRA actually touches (only Inspire's ``%`` syntax
    needs them; defaults to ``block_ids``). Returns a :class:`lora_ops.blocks.BlockSpec` with
    a ratio for every id in ``block_ids``. Raises :class:`lora_ops.blocks.BlockSpecError`
    naming the bad token and listing the valid ids.
    """
    ids = sorted(set(block_ids), key=sort_key)
    t = (text or "").strip()
    try:
        if t.startswith("%"):
            return BlockSpec(inspire_percent(t, ids, list(present_ids if present_ids is not None else ids)))
        preset = lookup_preset(t)
        if preset is not None:
            tool, vector = preset
            values = parse_values(vector, allow_letters=True)
            return BlockSpec(a1111_vector(values, ids) if tool == "a1111" else inspire_vector(values, ids))
        if is_vector(t):
            values = parse_values(t, allow_letters=True)
            has_double = any(b.startswith("D") for b in ids)
            # Inspire's preset lines are labelled by family ("SDXL-OUTALL:1,0,..."): keep its reading.
            inspire_label = t.split(":", 1)[0].strip().upper().startswith(INSPIRE_FAMILIES) if ":" in t else False
            if len(values) in A1111_LAYOUTS and not (len(values) == 20 and has_double) and not inspire_label:
                return BlockSpec(a1111_vector(values, ids))
            return BlockSpec(inspire_vector(values, ids))
    except FormatError as e:
        raise BlockSpecError(f"block spec {t[:80]!r}: {e}", e.token, ids) from None
    return parse_named(t, ids)
