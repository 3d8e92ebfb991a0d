"""Compare ModelPatcher patch lists."""

from __future__ import annotations

import torch


def describe(patches: dict) -> dict:
    """A patcher's patch lists with adapters reduced to their class and weights: tensors by
    identity (both paths must reference the file's own tensors), other values by value."""

    def weights(adapter):
        ws = getattr(adapter, "weights", adapter[1] if isinstance(adapter, tuple) else ())
        return tuple(("tensor", id(w)) if isinstance(w, torch.Tensor) else w for w in ws)

    return {key: [(p[0], type(p[1]).__name__, weights(p[1]), p[2], p[3], p[4]) for p in plist]
            for key, plist in patches.items()}
