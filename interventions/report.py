"""Files of head scores: CSV and JSON tables, top-k lists, heatmaps and comparisons.

The recipe (``interventions.recipes.head_scores``) computes plain data (``HeadScores``,
``Comparison``, both with ``to_dict``); this module writes and reads it. It sits with
``interventions.cli`` above the recipes (it imports the recipe; the core never imports it).

>>> from interventions import report
>>> report.save_table(table, "runs/heads")        # scores_*.csv, topk_*.json, heatmap_*.png
>>> report.save_json(table, "runs/heads/table.json")
>>> table = report.load_table("runs/heads/table.json")
>>> report.save_comparison(diff, "runs/cmp")      # comparison.json, comparison_heatmap.png

Every CSV and JSON file is written whole or not at all: its text is built in memory, written to
a temporary file in the same folder and moved over the target, so a failed write leaves the old
file.
"""

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Literal

from interventions import plot
from interventions.recipes.head_scores import FUSIONS, SCORES, Comparison, HeadScores, plain

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
    "norm": [f"{s}_norm" for s in SCORES],
    "combined": [*(f"rank_{s}" for s in SCORES), *FUSIONS],
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
    table: HeadScores, path: str | Path, kind: Literal["raw", "norm", "combined"]
) -> Path:
    """One row per (layer, head). ``raw``: out_raw, ent_raw, task_raw, then the other raw
    metrics; ``norm``: the layer-normalised, sign-adjusted scores; ``combined``: ranks and
    fusion. Values are written with ``repr`` (they read back bit-exactly)."""
    if kind not in CSV_COLUMNS:
        raise ValueError(f"kind must be one of {list(CSV_COLUMNS)}, got {kind!r}")
    columns = CSV_COLUMNS[kind]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["layer", "head", *columns])
    for row in table.rows():
        writer.writerow([row["layer"], row["head"], *(repr(row[c]) for c in columns)])
    return _write(path, text.getvalue())


def save_json(scores: HeadScores | Comparison, path: str | Path) -> Path:
    """``scores.to_dict()`` as JSON (NaN as null); ``load_table`` reads a table back."""
    return _write(path, _json(scores.to_dict()))


def load_table(path: str | Path) -> HeadScores:
    """The ``HeadScores`` that ``save_json`` wrote to ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"head-score table {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not a head-score table (invalid JSON at line {error.lineno}: {error.msg})"
        ) from None
    return HeadScores.from_dict(data)


def save_table(
    table: HeadScores,
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


def save_heatmaps(table: HeadScores, folder: str | Path) -> list[Path]:
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
    comparison: Comparison, folder: str | Path, *, plots: bool = True
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
