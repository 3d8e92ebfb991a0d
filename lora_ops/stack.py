"""LoRA stack rows: the ``loras`` JSON of ``WorkbenchLoraStack`` and the ``LORA_STACK`` type.

A row (DESIGN.md) is a JSON object::

    {"on": true, "lora": "<source>", "strength_model": 1.0, "strength_clip": 1.0, "blocks": "<spec>"}

Missing keys take these defaults; unknown keys are kept untouched (a newer editor's fields
survive an older pack). Rows apply in list order.

``LORA_STACK`` is the de-facto type of other node packs (Comfyroll, Efficiency, LoRA
Manager): a list of ``(lora name, strength_model, strength_clip)`` 3-tuples. It carries no
block spec, so rows converted to it lose theirs (the stack node says so in its report).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

ROW_DEFAULTS = {"on": True, "lora": "", "strength_model": 1.0, "strength_clip": 1.0, "blocks": ""}
MAX_STRENGTH = 100.0


class StackError(ValueError):
    """A stack row that cannot be used; the message names the row, the key and the fix."""


def _number(row_label: str, key: str, value) -> float:
    # bool is an int subclass in Python: JSON true is not a strength.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StackError(f"{row_label}: {key} is {json.dumps(value)}; give a number between "
                         f"-{MAX_STRENGTH:g} and {MAX_STRENGTH:g}.")
    if abs(value) > MAX_STRENGTH:
        raise StackError(f"{row_label}: {key} is {value:g}, outside -{MAX_STRENGTH:g}..{MAX_STRENGTH:g}.")
    return float(value)


def normalise_row(row, index: int) -> dict:
    """One row with defaults filled in and types checked (``index`` counts from 1)."""
    label = f"row {index}"
    if not isinstance(row, dict):
        raise StackError(f"{label} is {json.dumps(row)[:80]}; each row must be an object like "
                         '{"lora": "name.safetensors", "strength_model": 1.0}.')
    out = {**ROW_DEFAULTS, **row}
    if not isinstance(out["on"], bool):
        raise StackError(f"{label}: on is {json.dumps(out['on'])}; use true or false.")
    for key in ("lora", "blocks"):
        if not isinstance(out[key], str):
            raise StackError(f"{label}: {key} is {json.dumps(out[key])}; it must be a string.")
    if out["on"] and not out["lora"].strip():
        raise StackError(f"{label} is on but names no lora; set its lora or turn it off.")
    for key in ("strength_model", "strength_clip"):
        out[key] = _number(f"{label} ({out['lora']})", key, out[key])
    return out


def parse_rows(text: str) -> list[dict]:
    """Rows from the ``loras`` JSON text (empty text means no rows).

    Raises :class:`StackError` for invalid JSON (with line and column), a value that is not
    a list, or a row that :func:`normalise_row` refuses.
    """
    if not (text or "").strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise StackError(f"loras is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. It must be "
                         'a list of rows like [{"lora": "name.safetensors", "strength_model": 1.0}].') from None
    if not isinstance(data, list):
        raise StackError("loras must be a JSON list of rows, e.g. "
                         '[{"lora": "name.safetensors", "strength_model": 1.0}].')
    return [normalise_row(row, i + 1) for i, row in enumerate(data)]


def rows_from_lora_stack(stack: Iterable | None) -> list[dict]:
    """Rows from a ``LORA_STACK`` (list of ``(name, strength_model, strength_clip)``).

    Entries named ``"None"`` (what several packs emit for an empty slot) are skipped.
    Raises :class:`StackError` for an entry that is not such a 3-tuple.
    """
    rows = []
    for i, entry in enumerate(stack or []):
        label = f"LORA_STACK entry {i + 1}"
        if not isinstance(entry, (list, tuple)) or len(entry) != 3 or not isinstance(entry[0], str):
            raise StackError(f"{label} is {entry!r}; expected (lora name, strength_model, strength_clip).")
        if entry[0] == "None":
            continue
        rows.append({**ROW_DEFAULTS, "lora": entry[0],
                     "strength_model": _number(label, "strength_model", entry[1]),
                     "strength_clip": _number(label, "strength_clip", entry[2])})
    return rows


def to_lora_stack(rows: Iterable[dict]) -> list[tuple[str, float, float]]:
    """The rows that are on, as ``LORA_STACK`` 3-tuples (block specs are not carried)."""
    return [(r["lora"], r["strength_model"], r["strength_clip"]) for r in rows if r["on"]]
