"""Statistics of activations: streaming reducers that merge, and ``tally``, one pass for many sites.

A ``Reducer`` keeps a running sum of per-sample terms and the number of samples: ``Mean``,
``MeanNorm`` (of the L2 norm over the last dimension) and ``SecondMoment`` (``E[x xᵀ]``).
Reducers of the same kind ``merge`` (halves of a dataset, or shards of several processes, give
the statistic of the whole), and ``state_dict`` / ``load_state_dict`` are what a file stores.
"""

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor


class Reducer:
    """Streaming statistic over samples ``[n, *features]``; ``value`` is the result so far.

    Subclasses write ``summand(x)``: the sum over the samples of ``x`` of the term averaged.
    Sums are kept in float32 on the device the samples come from.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total: Tensor | None = None

    def summand(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, x: Tensor) -> None:
        part = self.summand(x.float())
        self.total = part if self.total is None else self.total + part
        self.count += x.shape[0]

    @property
    def value(self) -> Tensor:
        if self.total is None:
            raise ValueError("nothing was reduced yet: run a forward first")
        return self.total / self.count

    def reset(self) -> None:
        """Forget every sample seen."""
        self.count, self.total = 0, None

    def merge(self, other: "Reducer") -> "Reducer":
        """Add the samples ``other`` has seen (a reducer of the same kind); returns ``self``.

        The merged statistic is the one of all samples together, whatever way they were split.
        """
        if type(other) is not type(self):
            raise TypeError(
                f"{type(self).__name__}.merge takes another {type(self).__name__}, got "
                f"{type(other).__name__}: only reducers of one kind add up"
            )
        if other.total is None:
            return self
        if self.total is None:
            self.total = other.total.clone()
        else:
            if other.total.shape != self.total.shape:
                raise ValueError(
                    f"{type(self).__name__}.merge: the other reducer's statistic has shape "
                    f"{tuple(other.total.shape)}, this one's {tuple(self.total.shape)}; merge "
                    "reducers of the same site of the same model"
                )
            self.total = self.total + other.total.to(self.total.device)
        self.count += other.count
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """``{"count": int64 scalar, "total": float32 sum}`` (no total before any sample)."""
        state = {"count": torch.tensor(self.count, dtype=torch.int64)}
        if self.total is not None:
            state["total"] = self.total.detach()
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> "Reducer":
        """Take the state ``state_dict`` gave (of a reducer of this kind); returns ``self``."""
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, Mapping) or set(state) - {"count", "total"}:
            keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"{name}: expected the keys 'count' and 'total', got {keys}")
        count, total = state.get("count"), state.get("total")
        if not isinstance(count, Tensor) or count.ndim != 0 or count.is_floating_point():
            raise ValueError(f"{name}: 'count' must be an integer scalar tensor, got {count!r}")
        count = int(count)
        if count < 0 or (count == 0) != (total is None):
            raise ValueError(
                f"{name}: a count of {count} with {'no' if total is None else 'a'} total; a state "
                "has a total exactly when it counted samples"
            )
        if total is not None:
            if not isinstance(total, Tensor) or not total.is_floating_point():
                raise ValueError(f"{name}: 'total' must be a float tensor, got {total!r}")
            if not bool(torch.isfinite(total).all()):
                raise ValueError(f"{name}: 'total' holds NaN or infinite values")
        self.count, self.total = count, None if total is None else total.float()
        return self


class Mean(Reducer):
    """Running mean over samples (float32 accumulation)."""

    def summand(self, x: Float[Tensor, "n ..."]) -> Float[Tensor, "..."]:
        return x.sum(0)


class MeanNorm(Reducer):
    """Running mean of the L2 norm over the last dimension."""

    def summand(self, x: Float[Tensor, "n ... d"]) -> Float[Tensor, "..."]:
        return x.norm(dim=-1).sum(0)


class SecondMoment(Reducer):
    """Running uncentred second moment ``E[x xᵀ]`` (``total`` is ``Σ x xᵀ``)."""

    def summand(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "d d"]:
        x = x.reshape(x.shape[0], -1)
        return x.T @ x
