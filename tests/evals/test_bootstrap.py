"""Bootstrap intervals and paired tests (interventions/evals/bootstrap.py): by hand on small
cases, against scipy's exact binomial test, and coverage on simulated scores."""

import math

import pytest
import torch
from scipy.stats import binomtest

from interventions.evals import bootstrap


def test_interval_of_two_values_by_hand():
    # resampled means of (0, 1) are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    ci = bootstrap.interval([0.0, 1.0], resamples=20_000)
    assert (ci.mean, ci.low, ci.high, ci.n, ci.confidence) == (0.5, 0.0, 1.0, 2, 0.95)
    narrow = bootstrap.interval([0.0, 1.0], confidence=0.4, resamples=20_000)
    assert narrow.low == narrow.high == 0.5
    assert str(ci) == "0.500 [0.000, 1.000]"


def test_interval_of_constant_scores_has_no_width_and_is_seeded():
    assert bootstrap.interval([0.3] * 7) == bootstrap.Interval(0.3, 0.3, 0.3, 0.95, 7)
    values = torch.rand(30, generator=torch.Generator().manual_seed(1))
    assert bootstrap.interval(values, seed=3) == bootstrap.interval(values.tolist(), seed=3)
    assert bootstrap.interval(values, seed=3) != bootstrap.interval(values, seed=4)


def test_95_percent_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    generator = torch.Generator().manual_seed(0)
    covered = 0
    for trial in range(200):
        sample = (torch.rand(60, generator=generator) < 0.3).double()  # a share, true mean 0.3
        ci = bootstrap.interval(sample, resamples=1000, seed=trial)
        covered += ci.low <= 0.3 <= ci.high
    assert 0.88 <= covered / 200 <= 0.99, covered


@pytest.mark.parametrize(("wins", "losses"), [(9, 1), (3, 3), (0, 5), (12, 30), (0, 0)])
def test_sign_test_equals_scipys_exact_binomial_test(wins, losses):
    expected = 1.0 if wins + losses == 0 else binomtest(wins, wins + losses).pvalue
    assert bootstrap.sign_test(wins, losses) == pytest.approx(expected, rel=1e-9)
    assert bootstrap.sign_test(9, 1) == pytest.approx(2 * 11 / 1024)


def test_paired_counts_wins_losses_ties_and_tests_the_difference():
    a = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    b = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    test = bootstrap.paired(a, b)
    assert (test.wins, test.losses, test.ties) == (9, 1, 2)
    assert test.p_sign == pytest.approx(2 * 11 / 1024)
    d = torch.tensor(a) - torch.tensor(b)
    assert test.difference.mean == pytest.approx(float(d.mean()))
    assert test.difference == bootstrap.interval(d, seed=0)  # the same resamples of a − b
    assert 0 < test.difference.low < test.difference.high and test.p_bootstrap < 0.01
    same = bootstrap.paired(a, a)
    assert (same.wins, same.losses, same.p_sign, same.p_bootstrap) == (0, 0, 1.0, 1.0)
    shuffled = bootstrap.paired(b, a)  # the other way round: the mirror image
    assert shuffled.difference.mean == -test.difference.mean
    assert (shuffled.wins, shuffled.losses) == (1, 9) and shuffled.p_sign == test.p_sign
    assert "9/1/2" in str(test)


def test_paired_p_value_is_calibrated_under_no_difference():
    generator = torch.Generator().manual_seed(2)
    small = 0
    for trial in range(100):
        a, b = torch.randn(40, generator=generator), torch.randn(40, generator=generator)
        small += bootstrap.paired(a, b, resamples=500, seed=trial).p_bootstrap < 0.05
    assert small <= 12, small  # about 5 of 100 expected


def test_interval_overlap():
    a, b = bootstrap.Interval(0.3, 0.2, 0.4, 0.95, 10), bootstrap.Interval(0.5, 0.41, 0.6, 0.95, 10)
    assert not a.overlaps(b) and not b.overlaps(a)
    assert a.overlaps(bootstrap.Interval(0.5, 0.4, 0.6, 0.95, 10))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: bootstrap.interval([]), ValueError, r"non-empty 1-D list of scores"),
        (lambda: bootstrap.interval([[1.0, 2.0]]), ValueError, r"got shape \(1, 2\)"),
        (lambda: bootstrap.interval([1.0, math.nan]), ValueError, r"NaN or infinite"),
        (lambda: bootstrap.interval("0.5"), TypeError, r"1-D tensor or a list of numbers"),
        (lambda: bootstrap.interval([1.0], confidence=1.0), ValueError, r"confidence must be"),
        (lambda: bootstrap.interval([1.0], resamples=10), ValueError, r"resamples must be an"),
        (lambda: bootstrap.paired([1.0, 2.0], [1.0]), ValueError, r"same examples, got 2 and 1"),
        (lambda: bootstrap.sign_test(-1, 2), ValueError, r"wins must be an integer >= 0"),
    ],
)
def test_bad_input_is_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()
