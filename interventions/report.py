"""Files of per-head scores: CSV and JSON tables, top-k lists, heatmaps and comparisons.

The head-scores recipe computes plain data (``HeadScores``, ``Comparison``, each with a
JSON-ready ``to_dict``); this module writes it, reading only the tables' public attributes (the
core never imports a recipe), and reads JSON back for ``HeadScores.from_dict``.

>>> from interventions import report
>>> report.save_table(table, "runs/heads")        # scores_*.csv, topk_*.json, heatmap_*.png
>>> report.save_json(table, "runs/heads/table.json")
>>> table = head_scores.HeadScores.from_dict(report.load_json("runs/heads/table.json"))
>>> report.save_comparison(diff, "runs/cmp")      # comparison.json, comparison_heatmap.png

Every CSV and JSON file is written whole or not at all: its text is built in memory, written to
a temporary file in the same folder and moved over the target, so a failed write leaves the old
file.
"""

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from interventions import plot
from interventions.checks import choice

if TYPE_CHECKING:  # the writers read these tables' attributes; the core never imports a recipe
    from interventions.recipes.head_scores import Comparison, HeadScores

CSV_COLUMNS = {
    "raw": [
        "out_raw",
        "ent_raw",
        "task_raw",
        "out_resid_raw",
        "ent_all_raw",
        "ent_nosink_raw",
        "sink_raw",
    ],
    "norm": ["out_norm", "ent_norm", "task_norm"],
    "combined": [
        "rank_out",
        "rank_ent",
        "rank_task",
        "combined",
        "combined_layer",
        "combined_global",
    ],
}
HEATMAPS = {  # file -> (raw metric, panel title)
    "heatmap_out.png": ("out", "S_out: E‖y_h‖"),
    "heatmap_out_resid.png": ("out_resid", "E‖W_O^h y_h‖"),
    "heatmap_ent.png": ("ent", "attention entropy H (low = focused)"),
    "heatmap_sink.png": ("sink", "attention mass on the first token"),
    "heatmap_task.png": ("task", "S_task: attention mass on the task span"),
}
COMPARISON_PANELS = ("out", "out_resid", "ent", "task")  # log ratios in comparison_heatmap.png


def write_csv(
    table: "HeadScores", path: str | Path, kind: Literal["raw", "norm", "combined"]
) -> Path:
    """One row per (layer, head). ``raw``: out_raw, ent_raw, task_raw, then the other raw
    metrics; ``norm``: the layer-normalised, sign-adjusted scores; ``combined``: ranks and
    fusion. Values are written with ``repr`` (they read back bit-exactly)."""
    columns = CSV_COLUMNS[choice("kind", kind, CSV_COLUMNS)]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["layer", "head", *columns])
    for row in table.rows():
        writer.writerow([row["layer"], row["head"], *(repr(row[c]) for c in columns)])
    return _write(path, text.getvalue())


def save_json(scores: "HeadScores | Comparison", path: str | Path) -> Path:
    """``scores.to_dict()`` as JSON (NaN as null); ``HeadScores.from_dict(load_json(path))``
    reads a table back."""
    return _write(path, _json(scores.to_dict()))


def load_json(path: str | Path) -> Any:
    """The data of a JSON file (``save_json``'s), with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON at line {error.lineno} ({error.msg})") from None


def plain(value: Any) -> Any:
    """``value`` as JSON-ready Python: arrays to nested lists, numpy scalars to numbers, keys to
    strings, NaN and infinities to None (JSON has neither)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return plain(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def save_table(
    table: "HeadScores",
    folder: str | Path,
    *,
    top_k: int = 10,
    top_k_per_layer: int = 3,
    plots: bool = True,
) -> list[Path]:
    """Write scores_raw.csv, scores_norm.csv, scores_combined.csv, topk_global.json,
    topk_per_layer.json and (with ``plots``) heatmap_*.png and heatmaps.png into ``folder``.
    Returns the paths written."""
    if plots:
        plot.require_matplotlib()  # before any file, not after the CSVs
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_csv(table, folder / f"scores_{kind}.csv", kind) for kind in CSV_COLUMNS]
    per_layer = {str(k): v for k, v in table.top_k_per_layer(top_k_per_layer).items()}
    written.append(_write(folder / "topk_global.json", _json(table.top_k(top_k))))
    written.append(_write(folder / "topk_per_layer.json", _json(per_layer)))
    if plots:
        written += save_heatmaps(table, folder)
    return written


def save_heatmaps(table: "HeadScores", folder: str | Path) -> list[Path]:
    """heatmap_{out,out_resid,ent,sink,task,combined}.png and heatmaps.png (every panel)."""
    folder = Path(folder)
    layers, heads = table.layers, table.heads
    written = [
        plot.heatmaps({title: table.raw[metric]}, layers, heads, folder / name)
        for name, (metric, title) in HEATMAPS.items()
    ]
    scope = table.config.get("rank_scope", "layer")
    combined = {f"S_combined (ranks within {scope})": table.combined}
    written.append(plot.heatmaps(combined, layers, heads, folder / "heatmap_combined.png"))
    panels = {title.split(":")[0]: table.raw[metric] for metric, title in HEATMAPS.values()}
    panels["S_combined"] = table.combined
    written.append(plot.heatmaps(panels, layers, heads, folder / "heatmaps.png"))
    return written


def save_comparison(
    comparison: "Comparison", folder: str | Path, *, plots: bool = True
) -> list[Path]:
    """Write comparison.json and (with ``plots``) comparison_heatmap.png, the log ratios."""
    if plots:
        plot.require_matplotlib()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [save_json(comparison, folder / "comparison.json")]
    if plots:
        panels = {f"log(after/before) {m}": comparison.log_ratio[m] for m in COMPARISON_PANELS}
        path = folder / "comparison_heatmap.png"
        written.append(
            plot.heatmaps(panels, comparison.layers, comparison.heads, path, diverging=True)
        )
    return written


def _json(value: Any) -> str:
    return json.dumps(plain(value), indent=1, allow_nan=False)


def _write(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` whole: a temporary file beside it, then an atomic rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
