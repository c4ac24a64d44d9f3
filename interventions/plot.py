"""Figures, one PNG per call: per-head heatmaps (one panel per (layer x head) grid), patching
maps, the logit lens and attention patterns.

matplotlib is an optional extra (``pip install 'interventions[plot]'``); it is imported only
when a figure is drawn, and ``require_matplotlib()`` lets a long job fail before it starts
rather than after. The figure is built with ``matplotlib.figure.Figure`` (no pyplot), so no
global state and no display backend are touched.

>>> from interventions import plot
>>> plot.heatmaps({"E|y_h|": grid}, layers, heads, "heads.png")            # viridis
>>> plot.heatmaps({"log(after/before)": change}, layers, heads, "change.png", diverging=True)
>>> plot.patching_map(result.values, result.layers, result.columns, "map.png")  # iv.patching
>>> plot.attention_patterns(cache["layers.3.attn.pattern"][0], "attn.png", tokens=tokens)
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
        _draw(ax, fig, grid, diverging)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(len(heads)), [str(h) for h in heads], fontsize=7)
        _layer_ticks(ax, layers)
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


def patching_map(
    values: Float[np.ndarray, "layers columns"],
    layers: Sequence[int],
    columns: Sequence[str],
    path: str | Path,
    *,
    title: str = "patching",
    diverging: bool = True,
) -> Path:
    """One PNG at ``path``: a layer x column heatmap of a patching map (``iv.patching``'s
    ``values``, ``layers`` and ``columns``: positions with their tokens, or heads), the columns
    labelled; by default on a red/blue scale centred at 0."""
    grid = _grid("values", values, len(layers), len(columns))
    figure_class = require_matplotlib()
    fig = figure_class(
        figsize=(2.0 + 0.5 * len(columns), 1.6 + 0.22 * len(layers)), layout="constrained"
    )
    ax = fig.add_subplot(1, 1, 1)
    _draw(ax, fig, grid, diverging)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("head" if all(c.startswith("head") for c in columns) else "position")
    ax.set_ylabel("layer")
    ax.set_xticks(range(len(columns)), list(columns), fontsize=7, rotation=60, ha="right")
    _layer_ticks(ax, layers)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def logit_lens(
    logprobs: Float[np.ndarray, "sites positions"],
    tokens: Sequence[Sequence[str]],
    sites: Sequence[str],
    positions: Sequence[str],
    path: str | Path,
    *,
    title: str = "logit lens: top-1 token and its probability",
) -> Path:
    """One PNG at ``path``: a site x position grid coloured by the probability of each cell's
    top token (``exp(logprobs)``), the token written in the cell (``tokens[site][position]``);
    from ``iv.logit_lens``: ``lens.top_logprobs[:, row, :, 0]`` and its ``top_tokens``."""
    grid = _grid("logprobs", logprobs, len(sites), len(positions))
    if len(tokens) != len(sites) or any(len(row) != len(positions) for row in tokens):
        raise ValueError(
            f"tokens must be {len(sites)} rows (sites) of {len(positions)} strings (positions)"
        )
    figure_class = require_matplotlib()
    fig = figure_class(
        figsize=(2.0 + 0.9 * len(positions), 1.6 + 0.28 * len(sites)), layout="constrained"
    )
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.exp(grid), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(tokens):
        for j, token in enumerate(row):
            shade = "white" if np.exp(grid[i, j]) > 0.6 else "black"
            ax.text(j, i, repr(token)[1:-1][:8], ha="center", va="center", fontsize=6, color=shade)
    fig.colorbar(image, ax=ax, shrink=0.8, label="p(top token)")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(positions)), list(positions), fontsize=7, rotation=60, ha="right")
    ax.set_yticks(range(len(sites)), list(sites), fontsize=6)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def attention_patterns(
    pattern: Float[np.ndarray, "heads queries keys"],
    path: str | Path,
    *,
    tokens: Sequence[str] | None = None,
    heads: Sequence[int] | None = None,
    title: str = "attention",
) -> Path:
    """One PNG at ``path``: a query x key panel per head of one layer's ``attn.pattern`` of one
    row (``cache["layers.3.attn.pattern"][0]``), ``tokens`` labelling both axes."""
    array = np.asarray(pattern, dtype=float)
    if array.ndim != 3 or array.shape[1] != array.shape[2] or 0 in array.shape:
        raise ValueError(
            f"pattern must be [heads, queries, keys] with as many queries as keys, got shape "
            f"{array.shape}; pass one row of the capture: cache[site][0]"
        )
    heads = list(range(array.shape[0])) if heads is None else list(heads)
    if len(heads) != array.shape[0]:
        raise ValueError(f"heads names {len(heads)} heads, the pattern has {array.shape[0]}")
    if tokens is not None and len(tokens) != array.shape[1]:
        raise ValueError(f"tokens has {len(tokens)} labels, the pattern {array.shape[1]} positions")
    figure_class = require_matplotlib()
    side = 1.2 + 0.25 * array.shape[1]
    fig = figure_class(figsize=(len(heads) * side + 0.6, side + 0.4), layout="constrained")
    for k, head in enumerate(heads):
        ax = fig.add_subplot(1, len(heads), k + 1)
        image = ax.imshow(array[k], cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"{title} head {head}", fontsize=8)
        if tokens is not None:
            labels = [repr(t)[1:-1][:8] for t in tokens]
            ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
            ax.set_yticks(range(len(labels)), labels if k == 0 else [], fontsize=6)
        ax.set_xlabel("key")
        if k == 0:
            ax.set_ylabel("query")
    fig.colorbar(image, ax=ax, shrink=0.8)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _grid(name: str, values: object, n_rows: int, n_columns: int) -> np.ndarray:
    if n_rows == 0 or n_columns == 0:
        raise ValueError(f"{name}: rows and columns must be non-empty, got {n_rows} x {n_columns}")
    array = np.asarray(values, dtype=float)
    if array.shape != (n_rows, n_columns):
        raise ValueError(f"{name} has shape {array.shape}, expected ({n_rows}, {n_columns})")
    return array


def _draw(ax: object, fig: object, grid: np.ndarray, diverging: bool) -> None:
    values = np.ma.masked_invalid(grid)
    if diverging:
        finite = np.abs(grid[np.isfinite(grid)])
        lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        image = ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    else:
        image = ax.imshow(values, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8)


def _layer_ticks(ax: object, layers: Sequence[int]) -> None:
    step = max(1, len(layers) // 15)  # at most ~15 layer labels stay readable
    ticks = list(range(0, len(layers), step))
    ax.set_yticks(ticks, [str(layers[t]) for t in ticks], fontsize=7)
