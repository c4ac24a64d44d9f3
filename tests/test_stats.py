import pytest
import torch

import interventions as iv
from interventions import ops, stats

REDUCERS = [stats.Mean, stats.MeanNorm, stats.SecondMoment]


def test_the_reducers_live_in_stats_under_their_old_names():
    assert iv.Mean is stats.Mean is ops.Mean
    assert iv.Reducer is stats.Reducer is ops.Reducer
    assert iv.SecondMoment is stats.SecondMoment and iv.MeanNorm is stats.MeanNorm


@pytest.mark.parametrize("kind", REDUCERS)
def test_merging_two_halves_gives_the_statistic_of_the_whole(kind):
    x = torch.randn(10, 6, dtype=torch.float64)
    whole, first, second = kind(), kind(), kind()
    whole.update(x)
    first.update(x[:4])
    second.update(x[4:])
    assert first.merge(second) is first
    assert first.count == 10
    torch.testing.assert_close(first.value, whole.value)
    empty = kind()
    assert empty.merge(first).count == 10  # into an empty one: a copy, not the same tensor
    assert empty.total is not first.total
    torch.testing.assert_close(empty.value, whole.value)
    assert first.merge(kind()).count == 10  # an empty one adds nothing


def test_merge_refuses_other_kinds_and_shapes():
    mean = stats.Mean()
    mean.update(torch.ones(2, 3))
    with pytest.raises(TypeError, match="Mean.merge takes another Mean, got SecondMoment"):
        mean.merge(stats.SecondMoment())
    other = stats.Mean()
    other.update(torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"has shape \(4,\), this one's \(3,\)"):
        mean.merge(other)
    assert mean.count == 2


@pytest.mark.parametrize("kind", REDUCERS)
def test_a_state_round_trip_restores_the_reducer(kind):
    reducer = kind()
    assert kind().load_state_dict(reducer.state_dict()).count == 0
    reducer.update(torch.randn(5, 4))
    state = reducer.state_dict()
    assert state["count"].dtype == torch.int64 and state["count"].ndim == 0
    loaded = kind().load_state_dict(state)
    assert loaded.count == 5 and torch.equal(loaded.value, reducer.value)
    reducer.reset()
    assert reducer.count == 0 and reducer.total is None


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ({"count": torch.tensor(2), "mean": torch.ones(3)}, "expected the keys"),
        ({"count": torch.tensor(2.0), "total": torch.ones(3)}, "integer scalar"),
        ({"count": torch.tensor(0), "total": torch.ones(3)}, "a count of 0 with a total"),
        ({"count": torch.tensor(3)}, "a count of 3 with no total"),
        ({"count": torch.tensor(3), "total": torch.ones(3, dtype=torch.long)}, "float tensor"),
        ({"count": torch.tensor(3), "total": torch.tensor([1.0, float("nan")])}, "NaN"),
        ([1, 2], "expected the keys"),
    ],
)
def test_a_bad_state_is_refused(state, words):
    with pytest.raises(ValueError, match=words):
        stats.Mean().load_state_dict(state)


def test_capture_clear_resets_its_reducer(llama, ids):
    capture = iv.Capture(reduce=iv.Mean())
    with iv.intervene(llama, {"layers.0.resid_post": capture}):
        llama(ids)
    assert capture.reduce.count == 18
    capture.clear()
    assert capture.reduce.count == 0 and capture.reduce.total is None
