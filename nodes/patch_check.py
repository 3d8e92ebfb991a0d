"""Will a patch fit its weight? Asked of ComfyUI's own patch code, on shapes only."""

from __future__ import annotations

import logging
from collections import OrderedDict

import comfy.lora
import torch


class _MisfitFilter(logging.Filter):
    """Collects, and keeps out of the log, the lines ComfyUI's patch code logs about one
    weight (it logs misfits instead of raising): the pack reports them in its own words."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.key in message:
            self.messages.append(message)
            return False
        return True


def split_patch_key(key) -> tuple[str, tuple | None, object]:
    """``(weight name, offset, function)`` of a patch key: a weight name, or a tuple
    ``(name, (dim, start, length)[, function])`` for a slice of a fused weight."""
    if isinstance(key, str):
        return key, None, None
    return key[0], key[1], (key[2] if len(key) > 2 else None)


def _shape_signature(value):
    """What a shape check of ``value`` can depend on: tensor shapes and dtypes, the
    structure around them, the adapter class and its attributes outside ``.weights``; plain
    numbers inside the weights (alpha) do not matter."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(_shape_signature(v) for v in value)
    if hasattr(value, "weights") and hasattr(value, "calculate_weight"):
        return (type(value).__name__, _shape_signature(value.weights), _extra_signature(value))
    return value if isinstance(value, (str, type(None))) else "n"


# Attributes every adapter has that a shape check does not read.
_NOT_READ = frozenset({"weights", "loaded_keys"})


def _extra_signature(adapter) -> tuple:
    """An adapter's attributes outside ``.weights``, exactly (numbers too): newer hosts keep
    values there that ``calculate_weight`` uses. Comfy-Org/ComfyUI commit 2bffe2f4ce57,
    comfy/weight_adapter/lokr.py: ``LoKrAdapter`` stores the LoRA key (``key``) and a
    ``row_offset`` it reads from the file, and narrows the Kronecker product to those rows,
    so two LoKr patches with equal weights but another offset or key fit differently."""
    attrs = getattr(adapter, "__dict__", {})
    return tuple(sorted((name, _shape_signature(v) if isinstance(v, (torch.Tensor, list, tuple)) else
                         (v if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__))
                        for name, v in attrs.items() if name not in _NOT_READ))


_MISFIT_MEMO: OrderedDict = OrderedDict()


def patch_misfit(key, patch, weight_shape) -> str | None:
    """Why ``patch`` cannot be applied to a weight of ``weight_shape``, or None if it fits.

    Runs ComfyUI's own ``calculate_weight`` on the meta device (shapes only, no data, no
    memory), so every adapter type is checked by the code that will apply it; the host logs
    a misfit rather than raising, so its warnings naming ``key`` are collected. Results are
    remembered per shape signature: a LoRA's many same-shaped modules are checked once.
    """
    base, offset, function = split_patch_key(key)
    memo_key = (_shape_signature(patch), tuple(weight_shape), offset, function)
    if memo_key in _MISFIT_MEMO:
        return _MISFIT_MEMO[memo_key]
    why = _patch_misfit(base, offset, function, patch, weight_shape)
    _MISFIT_MEMO[memo_key] = why
    if len(_MISFIT_MEMO) > 4096:
        _MISFIT_MEMO.popitem(last=False)
    return why


def _patch_misfit(base, offset, function, patch, weight_shape) -> str | None:
    weight = torch.empty(weight_shape, dtype=torch.float32, device="meta")
    capture = _MisfitFilter(base)
    # ComfyUI logs through the root logger itself (logging.error), whose filters see every
    # such record once the level lets it through.
    root = logging.getLogger()
    level = root.level
    root.addFilter(capture)
    root.setLevel(min(level or logging.WARNING, logging.WARNING))
    raised = False
    try:
        comfy.lora.calculate_weight([(1.0, patch, 1.0, offset, function)], weight, base)
    except Exception:  # a misfit the host did not catch itself: worded below like the others
        raised = True
    finally:
        root.removeFilter(capture)
        root.setLevel(level)
    if not raised and not capture.messages:
        return None
    shape = list(weight_shape)
    if offset is not None:  # the patch targets a slice of a fused weight
        shape[offset[0]] = offset[2]
    delta = delta_shape(patch)
    if delta is None:
        return f"this model's weight has shape {shape}, which the LoRA's change does not fit"
    return f"this model's weight has shape {shape}, the LoRA's change has shape {delta}"


def delta_shape(patch) -> list[int] | None:
    """The shape of the weight change a patch makes, read from its tensors' shapes (LoRA,
    LoHa, LoKr, full diffs); None for other adapter types."""
    if isinstance(patch, tuple) and len(patch) == 2 and patch[0] in ("diff", "set"):
        return list(patch[1][0].shape)
    kind, w = type(patch).__name__, getattr(patch, "weights", None)
    if w is None:
        return None
    if kind == "LoRAAdapter":
        if w[5] is not None:  # reshape_weight
            return [int(v) for v in w[5].tolist()]
        return [w[0].shape[0], *w[1].shape[1:]]
    if kind == "LoHaAdapter":
        return [w[0].shape[0], w[1].shape[1]]
    if kind == "LoKrAdapter":
        w1 = w[0].shape if w[0] is not None else (w[3].shape[0], w[4].shape[1])
        w2 = w[1].shape if w[1] is not None else (w[5].shape[0], w[6].shape[1])
        return [w1[0] * w2[0], w1[1] * w2[1]]
    return None
