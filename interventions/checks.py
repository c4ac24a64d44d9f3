"""Argument checks shared by the interventions and the recipes, so that every refusal reads the
same way: the
argument, what it must be and the value received. A bool is not an integer (``True`` is not one
step) and a float is not an integer; NaN and infinities are never silently used."""

import math
import numbers
from collections.abc import Iterable, Mapping

from torch import Tensor


def integer(name: str, value: object, *, minimum: int | None = 1) -> int:
    """``value`` as an int (at least ``minimum`` unless it is None)."""
    expected = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def number(
    name: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    infinite: bool = False,
) -> float:
    """``value`` as a float inside the bounds given; finite unless ``infinite`` (NaN never)."""
    bounds = [
        f"{op} {bound:g}"
        for op, bound in ((">", above), (">=", at_least), ("<", below), ("<=", at_most))
        if bound is not None
    ]
    expected = ("a number" if infinite else "a finite number") + "".join(
        f" {'and ' if i else ''}{b}" for i, b in enumerate(bounds)
    )
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
    x = float(value)
    inside = (
        (above is None or x > above)
        and (at_least is None or x >= at_least)
        and (below is None or x < below)
        and (at_most is None or x <= at_most)
    )
    if math.isnan(x) or (math.isinf(x) and not infinite) or not inside:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return x


def indices(name: str, values: object, n: int, *, what: str = "layer", hint: str = "") -> list[int]:
    """``values`` as a non-empty list of distinct integers in ``0..n-1`` (in the order given).
    ``hint`` says what to pass instead of an empty list."""
    if isinstance(values, Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(
            f"{name} must be a list of {what} indices (0..{n - 1}), got {values!r} "
            f"({type(values).__name__})"
        )
    values = list(values)
    if not values:
        raise ValueError(f"{name} is empty: " + (hint or f"pass at least one {what} index"))
    out = [integer(f"{name}[{i}]", v, minimum=None) for i, v in enumerate(values)]
    bad = [v for v in out if not 0 <= v < n]
    if bad:
        raise ValueError(
            f"{name}: {what} index {bad} out of range: the model has {n} {what}s (valid 0..{n - 1})"
        )
    repeated = sorted({v for v in out if out.count(v) > 1})
    if repeated:
        raise ValueError(f"{name} repeats {what} {repeated}: give each {what} once, got {out}")
    return out


def choice(name: str, value: object, options: Iterable[object]) -> object:
    """``value`` if it is one of ``options``, else a ValueError that lists them."""
    options = list(options)
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value
