"""Shared argument checks (interventions/checks.py)."""

import pytest

from interventions import checks


def test_choice_returns_an_option_and_refuses_anything_else():
    norms = ("zscore", "percentile")
    assert checks.choice("norm", "zscore", norms) == "zscore"
    assert checks.choice("kind", "raw", {"raw": 1, "norm": 2}) == "raw"  # a mapping's keys
    message = r"norm must be one of \['zscore', 'percentile'\], got 'z'"
    with pytest.raises(ValueError, match=message):
        checks.choice("norm", "z", norms)
    with pytest.raises(ValueError, match=r"mode must be one of \['a'\], got None"):
        checks.choice("mode", None, iter(["a"]))
