"""Files of head scores: CSV, JSON (NaN as null) read back exactly, top-k lists, heatmaps,
comparisons; a failed write leaves the old file. Tables built from raw grids (no model)."""

import json
import math
import sys

import numpy as np
import pytest

from interventions import report
from interventions.recipes import head_scores as hs

LAYERS, HEADS = [0, 2], [1, 3, 5]


def _table(task_nan=False, scale=1.0):
    rng = np.random.default_rng(0)
    raw = {m: rng.uniform(0.1, 1.0, (2, 3)) * scale for m in hs.RAW_METRICS}
    if task_nan:
        raw["task"] = np.full((2, 3), math.nan)  # no task span anywhere
    return hs.build_table(raw, LAYERS, HEADS, config={"model": "m"}, stats={"samples": 4})


def test_json_roundtrip_is_exact_and_nan_is_null(tmp_path):
    table = _table(task_nan=True)
    path = report.save_json(table, tmp_path / "t.json")
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["raw"]["task"][0] == [None, None, None]
    again = hs.HeadScores.from_dict(report.load_json(path))
    assert (again.layers, again.heads) == (LAYERS, HEADS)
    for metric in hs.RAW_METRICS:
        np.testing.assert_array_equal(again.raw[metric], table.raw[metric])
    np.testing.assert_array_equal(again.rank["task"], table.rank["task"])  # all NaN
    np.testing.assert_array_equal(again.combined, table.combined)
    assert again.config == table.config and again.stats == table.stats
    assert report.plain(again.top_k(3)) == report.plain(table.top_k(3))  # NaN != NaN, None == None


def test_loading_refuses_what_is_not_a_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        report.load_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": [0],')
    with pytest.raises(ValueError, match=r"bad.json: invalid JSON at line 1"):
        report.load_json(bad)
    report.save_json(hs.compare(_table(), _table(scale=2.0)), bad)
    with pytest.raises(ValueError, match="expected format 'interventions.head_scores/1'"):
        hs.HeadScores.from_dict(report.load_json(bad))
    with pytest.raises(ValueError, match="not a head-score table: .* got 'list'"):
        hs.HeadScores.from_dict([1, 2])


def test_plain_is_json_ready():
    value = {1: np.float32(0.5), "x": (np.array([1.0, np.nan]), math.inf, np.int64(3), True)}
    assert report.plain(value) == {"1": 0.5, "x": [[1.0, None], None, 3, True]}
    json.dumps(report.plain(value), allow_nan=False)


def test_csv_has_one_row_per_head_and_exact_values(tmp_path):
    table = _table()
    path = report.write_csv(table, tmp_path / "raw.csv", "raw")
    lines = path.read_text().splitlines()
    assert lines[0] == "layer,head," + ",".join(report.CSV_COLUMNS["raw"])
    assert len(lines) == 1 + 2 * 3
    layer, head, out = lines[-1].split(",")[:3]
    assert (int(layer), int(head), float(out)) == (2, 5, table.raw["out"][1, 2])
    with pytest.raises(ValueError, match=r"kind must be one of \['raw', 'norm', 'combined'\]"):
        report.write_csv(table, tmp_path / "x.csv", "ranks")


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    table = _table()
    path = tmp_path / "raw.csv"
    path.write_text("keep me")
    rows = table.rows()
    monkeypatch.setattr(table, "rows", lambda: [*rows[:3], {"layer": 9}])  # a row without values
    with pytest.raises(KeyError):
        report.write_csv(table, path, "raw")
    assert path.read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == ["raw.csv"]


def test_save_table_writes_every_file(tmp_path):
    pytest.importorskip("matplotlib")
    table = _table(task_nan=True)
    written = report.save_table(table, tmp_path / "run", top_k=4, top_k_per_layer=2)
    names = {p.name for p in written}
    assert names == {p.name for p in (tmp_path / "run").iterdir()}
    assert {"scores_raw.csv", "scores_norm.csv", "scores_combined.csv"} <= names
    assert set(report.HEATMAPS) | {"heatmap_combined.png", "heatmaps.png"} <= names
    top = json.loads((tmp_path / "run" / "topk_global.json").read_text())
    assert top == report.plain(table.top_k(4)) and top[0]["rank_task"] is None
    per_layer = json.loads((tmp_path / "run" / "topk_per_layer.json").read_text())
    assert list(per_layer) == ["0", "2"] and all(len(v) == 2 for v in per_layer.values())


def test_save_table_without_matplotlib_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="heatmaps need matplotlib"):
        report.save_table(_table(), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert report.save_table(_table(), tmp_path / "run", plots=False)  # CSV and JSON only


def test_save_comparison(tmp_path):
    pytest.importorskip("matplotlib")
    diff = hs.compare(_table(), _table(scale=2.0))
    written = report.save_comparison(diff, tmp_path)
    assert [p.name for p in written] == ["comparison.json", "comparison_heatmap.png"]
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["format"] == "interventions.head_scores.comparison/1"
    np.testing.assert_allclose(data["ratio"]["out"], 2.0)
    assert data == diff.to_dict()
