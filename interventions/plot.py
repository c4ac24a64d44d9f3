"""Figures of per-head values: one heatmap panel per (layer x head) grid, in one PNG.

matplotlib is an optional extra (``pip install 'interventions[plot]'``); it is imported only
when a figure is drawn, and ``require_matplotlib()`` lets a long job fail before it starts
rather than after. The figure is built with ``matplotlib.figure.Figure`` (no pyplot), so no
global state and no display backend are touched.

>>> from interventions import plot
>>> plot.heatmaps({"E|y_h|": grid}, layers, heads, "heads.png")            # viridis
>>> plot.heatmaps({"log(after/before)": change}, layers, heads, "change.png", diverging=True)
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Float

Grid = Float[np.ndarray, "layers heads"]


def require_matplotlib() -> type:
    """matplotlib's ``Figure`` class, or an ImportError that says how to install it or turn the
    figures off."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "heatmaps need matplotlib: pip install 'interventions[plot]' (or matplotlib), or "
            "turn plots off (plots=False, --no-plots)"
        ) from None
    return Figure


def heatmaps(
    panels: Mapping[str, Grid],
    layers: Sequence[int],
    heads: Sequence[int],
    path: str | Path,
    *,
    diverging: bool = False,
) -> Path:
    """One PNG at ``path`` with a layer x head heatmap per panel (title -> grid
    ``[len(layers), len(heads)]``); NaN cells are left blank. ``diverging``: a red/blue scale
    centred at 0 and symmetric around it, for changes (differences, log ratios)."""
    grids = _checked(panels, len(layers), len(heads))
    figure_class = require_matplotlib()
    width = 1.4 + 0.38 * len(heads)
    fig = figure_class(
        figsize=(len(grids) * width + 0.4, 1.4 + 0.2 * len(layers)), layout="constrained"
    )
    for k, (title, grid) in enumerate(grids.items()):
        ax = fig.add_subplot(1, len(grids), k + 1)
        values = np.ma.masked_invalid(grid)
        if diverging:
            finite = np.abs(grid[np.isfinite(grid)])
            lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
            image = ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        else:
            image = ax.imshow(values, cmap="viridis", aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(len(heads)), [str(h) for h in heads], fontsize=7)
        step = max(1, len(layers) // 15)  # at most ~15 layer labels stay readable
        ticks = list(range(0, len(layers), step))
        ax.set_yticks(ticks, [str(layers[t]) for t in ticks], fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _checked(panels: Mapping[str, Grid], n_layers: int, n_heads: int) -> dict[str, np.ndarray]:
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError(
            f"panels must be a non-empty mapping of title -> [layers, heads] grid, got {panels!r}"
        )
    if n_layers == 0 or n_heads == 0:
        raise ValueError(
            f"layers and heads must be non-empty, got {n_layers} layers and {n_heads} heads"
        )
    grids = {}
    for title, grid in panels.items():
        array = np.asarray(grid, dtype=float)
        if array.shape != (n_layers, n_heads):
            raise ValueError(
                f"panel {title!r} has shape {array.shape}, expected ({n_layers}, {n_heads}) "
                "= (len(layers), len(heads))"
            )
        grids[str(title)] = array
    return grids
