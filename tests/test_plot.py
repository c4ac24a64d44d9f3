"""Figures: per-head heatmaps, patching maps, the logit lens and attention patterns; one PNG per
call, bad input refused before anything is written."""

import sys

import numpy as np
import pytest
import torch

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


# --- patching maps, the logit lens, attention patterns -------------------------------------------


def test_patching_map_draws_a_labelled_layer_by_column_png(tmp_path):
    pytest.importorskip("matplotlib")
    values = np.array([[0.0, 1.5, -2.0], [np.nan, 0.5, 3.0]])
    narrow = plot.patching_map(values[:, :1], [0, 1], ["0 'a'"], tmp_path / "narrow.png")
    path = plot.patching_map(values, [0, 1], ["0 'a'", "1 'b'", "2 'c'"], tmp_path / "map.png")
    assert path.read_bytes()[:8] == PNG
    assert _width(path) > _width(narrow)  # one column per position


def test_patching_map_refuses_values_of_another_shape(tmp_path):
    with pytest.raises(ValueError, match=r"values has shape \(2, 3\), expected \(2, 2\)"):
        plot.patching_map(np.zeros((2, 3)), [0, 1], ["a", "b"], tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_logit_lens_writes_the_top_token_of_each_cell(tmp_path):
    pytest.importorskip("matplotlib")
    logprobs = np.log(np.array([[0.9, 0.1], [0.5, 0.2]]))
    tokens = [[" Paris", "\n"], ["x", "y"]]
    path = plot.logit_lens(
        logprobs, tokens, ["layers.0.resid_post", "x"], ["0", "1"], tmp_path / "l.png"
    )
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="tokens must be 2 rows"):
        plot.logit_lens(logprobs, tokens[:1], ["a", "b"], ["0", "1"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_attention_patterns_one_panel_per_head(tmp_path):
    pytest.importorskip("matplotlib")
    pattern = np.tril(np.ones((3, 4, 4))) / np.arange(1, 5)[:, None]
    one = plot.attention_patterns(pattern[:1], tmp_path / "one.png", heads=[2])
    three = plot.attention_patterns(pattern, tmp_path / "3.png", tokens=["a", "b", "c", "d"])
    assert _width(three) > 2 * _width(one)
    with pytest.raises(ValueError, match=r"pattern must be \[heads, queries, keys\]"):
        plot.attention_patterns(pattern[0], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="tokens has 2 labels"):
        plot.attention_patterns(pattern, tmp_path / "bad.png", tokens=["a", "b"])
    assert not (tmp_path / "bad.png").exists()


def test_results_of_patching_and_the_lens_plot_themselves(llama, tmp_path):
    pytest.importorskip("matplotlib")
    import interventions as iv

    result = iv.patching(llama, [5, 6, 7], [5, 9, 7], answers=(1, 2), progress=False)
    assert result.plot(tmp_path / "map.png", normalized=True).read_bytes()[:8] == PNG

    class Decoder:
        def decode(self, tokens):
            return f"t{tokens[0]}"

    lens = iv.logit_lens(llama, torch.tensor([[5, 6, 7]]), tokenizer=Decoder())
    assert lens.plot(tmp_path / "lens.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="row 1 is out of range"):
        lens.plot(tmp_path / "bad.png", row=1)
    with pytest.raises(ValueError, match="no token strings"):
        iv.logit_lens(llama, torch.tensor([[5, 6, 7]])).plot(tmp_path / "bad.png")
