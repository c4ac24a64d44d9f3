"""Shared argument checks (interventions/checks.py)."""

import pytest

from interventions import checks

INF, NAN = float("inf"), float("nan")


def test_choice_returns_an_option_and_refuses_anything_else():
    norms = ("zscore", "percentile")
    assert checks.choice("norm", "zscore", norms) == "zscore"
    assert checks.choice("kind", "raw", {"raw": 1, "norm": 2}) == "raw"  # a mapping's keys
    message = r"norm must be one of \['zscore', 'percentile'\], got 'z'"
    with pytest.raises(ValueError, match=message):
        checks.choice("norm", "z", norms)
    with pytest.raises(ValueError, match=r"mode must be one of \['a'\], got None"):
        checks.choice("mode", None, iter(["a"]))


def test_interval_is_an_ordered_pair_of_numbers():
    interval = checks.interval
    assert interval("clamp", (0, 2)) == (0.0, 2.0)
    assert interval("clamp", [-INF, 1.5]) == (-INF, 1.5)  # an open side
    assert interval("clamp", (1.0, 1.0)) == (1.0, 1.0)
    assert interval("clamp", None, optional=True) is None
    with pytest.raises(TypeError, match=r"clamp must be \(low, high\), got None"):
        interval("clamp", None)
    with pytest.raises(TypeError, match=r"clamp must be None or \(low, high\), got 2.0"):
        interval("clamp", 2.0, optional=True)
    with pytest.raises(TypeError, match=r"clamp must be \(low, high\), got \(1, 2, 3\)"):
        interval("clamp", (1, 2, 3))
    with pytest.raises(ValueError, match=r"clamp\[0\] \(low\) must be a number, got nan"):
        interval("clamp", (NAN, 2.0))
    with pytest.raises(TypeError, match=r"clamp\[1\] \(high\) must be a number, got True"):
        interval("clamp", (0.0, True))
    with pytest.raises(ValueError, match=r"clamp must be \(low, high\) with low <= high, got"):
        interval("clamp", (2.0, 1.0))
