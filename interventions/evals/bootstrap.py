"""Error bars for per-example scores: percentile bootstrap intervals of a mean, and paired
comparisons of two methods scored on the same examples (paired bootstrap and exact sign test).

A table of means over a few hundred questions is only as good as its error bars: one answer
of 124 is 0.008 of a share. Every method scored on the same questions is compared per question,
which removes the questions' own difficulty from the comparison.

    from interventions.evals import bootstrap
    ci = bootstrap.interval(per_question_scores)              # Interval(mean, low, high, ...)
    test = bootstrap.paired(dress_scores, prompting_scores)   # a − b, per question
    print(ci, test)                                           # 0.325 [0.242, 0.411] ...
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interventions.checks import integer, number

DEFAULT_RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    """A mean with its percentile bootstrap interval (``low``, ``high``) at ``confidence``."""

    mean: float
    low: float
    high: float
    confidence: float
    n: int

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class Paired:
    """Method a against method b on the same examples: the mean difference ``a − b`` with its
    paired bootstrap interval and two-sided p-value, and the exact two-sided sign test over the
    examples where they differ (``wins``: a higher, ``losses``: b higher)."""

    difference: Interval
    p_bootstrap: float
    wins: int
    losses: int
    ties: int
    p_sign: float

    def __str__(self) -> str:
        return (
            f"a − b {self.difference} (p {self.p_bootstrap:.3g}); a/b/tie "
            f"{self.wins}/{self.losses}/{self.ties}, sign test p {self.p_sign:.3g}"
        )


def _values(name: str, values: object) -> Float[Tensor, " n"]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Tensor, Sequence)):
        raise TypeError(f"{name} must be a 1-D tensor or a list of numbers, got {values!r}")
    x = torch.as_tensor(values, dtype=torch.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D list of scores, got shape {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or infinite scores: the mean is undefined")
    return x


def _settings(confidence: object, resamples: object) -> tuple[float, int]:
    confidence = number("confidence", confidence, above=0, below=1)
    return confidence, integer("resamples", resamples, minimum=100)


def _resampled_means(
    x: Float[Tensor, " n"], resamples: int, seed: int
) -> Float[Tensor, " resamples"]:
    """Means of ``resamples`` resamples of ``x`` with replacement (indices drawn once per
    call from ``seed``, so paired columns resampled together stay paired)."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(x), (resamples, len(x)), generator=generator)
    return x[index].mean(1)


def _interval(x: Tensor, means: Tensor, confidence: float) -> Interval:
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype))
    return Interval(float(x.mean()), float(low), float(high), confidence, len(x))


def interval(
    values: Sequence[float] | Tensor,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The mean of ``values`` and its percentile bootstrap interval."""
    x = _values("values", values)
    confidence, resamples = _settings(confidence, resamples)
    return _interval(x, _resampled_means(x, resamples, seed), confidence)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the probability, under a fair coin, of a split at least as
    uneven as ``wins`` against ``losses`` (ties left out before)."""
    wins, losses = integer("wins", wins, minimum=0), integer("losses", losses, minimum=0)
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(
    a: Sequence[float] | Tensor,
    b: Sequence[float] | Tensor,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Paired:
    """Compare two methods scored on the same examples (``a[i]`` and ``b[i]``: example i)."""
    x, y = _values("a", a), _values("b", b)
    if len(x) != len(y):
        raise ValueError(
            f"paired scores must cover the same examples, got {len(x)} and {len(y)} scores"
        )
    confidence, resamples = _settings(confidence, resamples)
    d = x - y
    means = _resampled_means(d, resamples, seed)
    # two-sided: twice the smaller share of resampled mean differences on either side of 0
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return Paired(
        difference=_interval(d, means, confidence),
        p_bootstrap=p,
        wins=wins,
        losses=losses,
        ties=len(d) - wins - losses,
        p_sign=sign_test(wins, losses),
    )


__all__ = ["DEFAULT_RESAMPLES", "Interval", "Paired", "interval", "paired", "sign_test"]
