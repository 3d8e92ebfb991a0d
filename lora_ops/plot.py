"""Pictures for reports, drawn with matplotlib's object API (no pyplot global state, so it
is safe in ComfyUI's worker thread and needs no display)."""

from __future__ import annotations

import numpy as np


def heat_strip(labels: list[str], values: list[float], title: str, counts: list[int] | None = None,
               value_label: str = "||dW||_F") -> np.ndarray:
    """A one-row heat map: one cell per label, coloured by value (viridis, 0 at the bottom).

    ``labels``/``values``/``counts``: same length, in display order; counts are printed in
    the cells. Returns an RGB image as a float32 array of shape (height, width, 3) in [0, 1]
    (height 220 px; width grows with the number of cells, at least 640 px).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(len(labels), 1)
    width_in = max(6.4, 0.32 * n + 1.6)
    fig = Figure(figsize=(width_in, 2.2), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.06, 0.38, 0.84, 0.42))
    data = np.asarray(values if values else [0.0], dtype=np.float64)[None, :]
    vmax = float(data.max()) if data.size and data.max() > 0 else 1.0
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
    ax.set_yticks([])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_title(title, fontsize=9)
    if counts is not None:
        for i, c in enumerate(counts):
            shade = "black" if data[0, i] > 0.6 * vmax else "white"
            ax.text(i, 0, str(c), ha="center", va="center", fontsize=6, color=shade)
    cax = fig.add_axes((0.92, 0.38, 0.015, 0.42))
    bar = fig.colorbar(im, cax=cax)
    bar.ax.tick_params(labelsize=6)
    bar.set_label(value_label, fontsize=7)
    return _rgb(canvas)


def retained_energy_plot(curves: dict[str, list[float]], title: str, chosen_rank: int | None = None) -> np.ndarray:
    """Retained energy (fraction of ||dW||_F^2, 0..1) against rank, one line per block.

    ``curves``: block id -> retained energy at rank 1, 2, ... (in display order). Returns an
    RGB float32 array (height, width, 3) in [0, 1], 900 x 400 px.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.13, 0.7, 0.78))
    cmap = colormaps["viridis"]
    n = max(len(curves), 1)
    for i, (block, ys) in enumerate(curves.items()):
        ax.plot(range(1, len(ys) + 1), ys, color=cmap(i / max(n - 1, 1)), linewidth=1.2, label=block)
    if chosen_rank:
        ax.axvline(chosen_rank, color="0.4", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("rank", fontsize=8)
    ax.set_ylabel("retained energy", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=6, ncol=2 if n > 14 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _rgb(canvas)


def _rgb(canvas) -> np.ndarray:
    """The drawn canvas as float32 RGB in [0, 1], shape (height, width, 3)."""
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba(), dtype=np.float32) / 255.0
    return np.ascontiguousarray(rgba[..., :3])
