"""Heatmaps of (layer, head) grids: one PNG per call, one panel per grid, bad grids refused."""

import sys

import numpy as np
import pytest

from interventions import plot

PNG = b"\x89PNG\r\n\x1a\n"


def _width(path):
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
        return image.size[0]


def test_one_panel_per_grid_in_one_png(tmp_path):
    pytest.importorskip("matplotlib")
    grid = np.arange(6.0).reshape(2, 3)
    one = plot.heatmaps({"a": grid}, [0, 5], [1, 2, 3], tmp_path / "one.png")
    three = plot.heatmaps({"a": grid, "b": -grid, "c": grid}, [0, 5], [1, 2, 3], tmp_path / "3.png")
    assert one == tmp_path / "one.png" and one.read_bytes()[:8] == PNG
    assert _width(three) > 2 * _width(one)  # the panels sit side by side


def test_diverging_nan_and_constant_grids_are_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    change = np.array([[0.5, np.nan], [-2.0, 0.0]])
    panels = {"change": change, "none": np.full((2, 2), np.nan), "zero": np.zeros((2, 2))}
    path = plot.heatmaps(panels, [0, 1], [0, 1], tmp_path / "d.png", diverging=True)
    assert path.read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    "panels,layers,heads,message",
    [
        ({}, [0], [0], "panels must be a non-empty mapping"),
        ([np.zeros((1, 1))], [0], [0], "panels must be a non-empty mapping"),
        ({"a": np.zeros((2, 3))}, [0, 1], [0, 1], r"panel .a. has shape \(2, 3\), expected"),
        ({"a": np.zeros((0, 0))}, [], [], "layers and heads must be non-empty"),
    ],
)  # fmt: skip
def test_bad_panels_are_refused_before_anything_is_written(
    tmp_path, panels, layers, heads, message
):
    with pytest.raises(ValueError, match=message):
        plot.heatmaps(panels, layers, heads, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'interventions\[plot\]'.*--no-plots"):
        plot.require_matplotlib()
    with pytest.raises(ImportError, match="heatmaps need matplotlib"):
        plot.heatmaps({"a": np.zeros((1, 1))}, [0], [0], tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
