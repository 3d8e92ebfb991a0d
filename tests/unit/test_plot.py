"""The heat strip is a real RGB picture whose colours follow the values."""

from __future__ import annotations

import numpy as np

from lora_ops.plot import heat_strip


def test_heat_strip_is_rgb_float_and_orders_colours_by_value():
    labels = [f"OUT{i:02d}" for i in range(12)]
    img = heat_strip(labels, [float(i) for i in range(12)], "test", counts=list(range(12)))
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] == 220 and img.shape[1] >= 640
    assert 0.0 <= img.min() and img.max() <= 1.0
    # viridis runs from dark purple (low) to yellow (high): the last cell is brighter
    row = img[int(img.shape[0] * 0.45)]
    cols = [int(img.shape[1] * (0.06 + 0.84 * (i + 0.5) / 12)) for i in (0, 11)]
    assert row[cols[1]].sum() > row[cols[0]].sum() + 0.5


def test_empty_and_all_zero_inputs_still_draw():
    assert heat_strip([], [], "nothing").shape[2] == 3
    assert heat_strip(["IN"], [0.0], "zero").shape[2] == 3
