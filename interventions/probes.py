"""Batched logistic-regression probes: many probes trained at once as one torch optimisation.

ITI-style head selection (Li et al., 2023, "Inference-Time Intervention") trains one linear probe
per attention head. Here every probe is a row of one ``[n_probes, d]`` weight, and all of them are
fitted together by batched Newton steps (damped, with a backtracking line search) on the sum of
their objectives. The objectives do not interact, so the joint optimum is each probe's own
optimum, the same one ``sklearn.linear_model.LogisticRegression(C=c)`` finds:

    minimise over (w, b):  ½‖w‖² + c · Σᵢ [softplus(zᵢ) − yᵢ zᵢ],   zᵢ = w·xᵢ + b

(L2 penalty on the weight, not on the intercept). ``d`` is small (a head's ``d_head``), so the
exact ``(d+1)²`` Hessian of every probe fits in memory and a few Newton steps converge.

    x = features            # [n, n_probes, d], e.g. rearrange(acts, "n l h d -> n (l h) d")
    probes = fit_logistic(x[train], y[train])
    ranking = rank_probes(probes, x[val], y[val], effect=effect_size(x[train], y[train]))
    ranking.top(16); ranking.ties(16)

With few validation samples many probes reach the same accuracy (often 1.0), so ``rank_probes``
breaks ties by validation log-loss, then by effect size, and ``ties`` reports how many probes
shared the accuracy at the cut-off.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor

Labels = Int[Tensor, " n"]


def _labels(y: Tensor, n: int) -> Tensor:
    y = torch.as_tensor(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must be [n={n}], got shape {tuple(y.shape)}")
    values = set(torch.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0/1 (or bool), got values {sorted(values)}")
    if len(values) < 2:
        raise ValueError("labels contain a single class: a probe needs both classes")
    return y.double()


def _check_features(x: Tensor) -> None:
    if x.ndim != 3:
        raise ValueError(f"features must be [n, n_probes, d], got shape {tuple(x.shape)}")


@dataclass
class LogisticProbes:
    """``n_probes`` logistic-regression probes: ``p(y=1 | x) = σ(weight[p]·x + bias[p])``."""

    weight: Float[Tensor, "probes d"]
    bias: Float[Tensor, " probes"]
    c: float
    n_iter: int
    converged: bool

    def logits(self, x: Float[Tensor, "n probes d"]) -> Float[Tensor, "n probes"]:
        _check_features(x)
        w = self.weight.to(x.device, torch.float64)
        return einsum(x.double(), w, "n p d, p d -> n p") + self.bias.to(x.device, torch.float64)

    def predict(self, x: Float[Tensor, "n probes d"]) -> Int[Tensor, "n probes"]:
        return (self.logits(x) > 0).long()

    def correct(self, x: Float[Tensor, "n probes d"], y: Labels) -> Int[Tensor, " probes"]:
        """Number of correctly classified samples per probe (exact, for tie detection)."""
        y = _labels(y, x.shape[0]).to(x.device)
        return (self.predict(x) == y[:, None].long()).sum(0)

    def accuracy(self, x: Float[Tensor, "n probes d"], y: Labels) -> Float[Tensor, " probes"]:
        return self.correct(x, y).double() / x.shape[0]

    def log_loss(self, x: Float[Tensor, "n probes d"], y: Labels) -> Float[Tensor, " probes"]:
        """Mean binary cross-entropy per probe (``sklearn.metrics.log_loss``)."""
        y = _labels(y, x.shape[0]).to(x.device)
        z = self.logits(x)
        return (F.softplus(z) - y[:, None] * z).mean(0)


def _objective(
    w: Float[Tensor, "p e"], xa: Float[Tensor, "p n e"], y: Float[Tensor, " n"], c: float
) -> Float[Tensor, " p"]:
    z = einsum(xa, w, "p n e, p e -> p n")
    return 0.5 * (w[:, :-1] ** 2).sum(-1) + c * (F.softplus(z) - y * z).sum(-1)


def fit_logistic(
    x: Float[Tensor, "n probes d"],
    y: Labels,
    *,
    c: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-9,
) -> LogisticProbes:
    """Fit one L2-regularised logistic regression per probe, all at once (float64 Newton).

    ``x[:, p]`` are probe ``p``'s samples, ``y`` the labels shared by all probes; ``c`` is
    sklearn's inverse regularisation strength. Converged when every probe's Newton decrement
    is below ``tol`` (relative to the objective).
    """
    _check_features(x)
    if not 0 < c < math.inf:  # NaN fails too
        raise ValueError(f"c must be a finite number > 0, got {c}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    n, p, d = x.shape
    y = _labels(y, n).to(x.device)
    ones = x.new_ones(n, p, 1, dtype=torch.float64)
    xa = rearrange(torch.cat([x.double(), ones], dim=-1), "n p e -> p n e")  # intercept column
    w = xa.new_zeros(p, d + 1)
    penalty = torch.ones(d + 1, dtype=torch.float64, device=x.device)
    penalty[-1] = 1e-12  # no penalty on the intercept (a tiny jitter keeps H invertible)
    f = _objective(w, xa, y, c)
    converged, iteration = False, 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 - used after the loop
        z = einsum(xa, w, "p n e, p e -> p n")
        s = torch.sigmoid(z)
        grad = c * einsum(xa, s - y, "p n e, p n -> p e") + w * (penalty > 1e-6)
        curvature = c * s * (1 - s)
        hessian = einsum(xa * curvature[..., None], xa, "p n e, p n f -> p e f")
        hessian = hessian + torch.diag_embed(penalty.expand(p, -1))
        step = torch.linalg.solve(hessian, grad[..., None])[..., 0]
        decrement = (grad * step).sum(-1)  # Newton decrement λ², per probe
        if bool((decrement <= tol * (1 + f.abs())).all()):
            converged = True
            break
        # backtracking line search per probe (Armijo), vectorised over probes
        t = torch.ones(p, dtype=torch.float64, device=x.device)
        accepted = torch.zeros(p, dtype=torch.bool, device=x.device)
        new_w, new_f = w.clone(), f.clone()
        for _ in range(30):
            trial = w - t[:, None] * step
            f_trial = _objective(trial, xa, y, c)
            ok = ~accepted & (f_trial <= f - 0.25 * t * decrement)
            new_w[ok], new_f[ok] = trial[ok], f_trial[ok]
            accepted |= ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t / 2)
        w, f = new_w, new_f
    return LogisticProbes(
        weight=w[:, :-1].contiguous(),
        bias=w[:, -1].contiguous(),
        c=c,
        n_iter=iteration,
        converged=converged,
    )


def effect_size(x: Float[Tensor, "n probes d"], y: Labels) -> Float[Tensor, " probes"]:
    """Cohen's d of each probe's samples along its mass-mean direction ``μ₁ − μ₀``.

    ``|μ₁ − μ₀|`` divided by the pooled standard deviation of the projections on the unit
    mass-mean direction: how far apart the two classes sit, in units of their spread.
    """
    _check_features(x)
    y = _labels(y, x.shape[0]).to(x.device).bool()
    xd = x.double()
    pos, neg = xd[y], xd[~y]
    diff = pos.mean(0) - neg.mean(0)  # [p, d]
    norm = diff.norm(dim=-1)
    unit = diff / norm.clamp_min(1e-30)[:, None]
    proj_pos = einsum(pos, unit, "n p d, p d -> n p")
    proj_neg = einsum(neg, unit, "n p d, p d -> n p")
    dof = max(pos.shape[0] + neg.shape[0] - 2, 1)
    pooled = (
        (proj_pos - proj_pos.mean(0)).pow(2).sum(0) + (proj_neg - proj_neg.mean(0)).pow(2).sum(0)
    ) / dof
    return norm / pooled.sqrt().clamp_min(1e-30)


@dataclass
class Ties:
    """How many probes shared the validation accuracy at a top-``k`` cut-off."""

    k: int
    cutoff_accuracy: float  # accuracy of the k-th best probe
    tied_at_cutoff: int  # probes with exactly that accuracy
    tied_selected: int  # ... of which inside the top k
    top_accuracy: float
    tied_at_top: int  # probes with the best accuracy

    @property
    def decided_by_tiebreak(self) -> bool:
        """True when the top k depended on log-loss / effect size (ties straddle the cut)."""
        return self.tied_at_cutoff > self.tied_selected

    def __str__(self) -> str:
        broken = (
            ", ties broken by val log-loss then effect size" if self.decided_by_tiebreak else ""
        )
        return (
            f"top {self.k}: cut-off accuracy {self.cutoff_accuracy:.3f} shared by "
            f"{self.tied_at_cutoff} probes ({self.tied_selected} selected{broken}); "
            f"best accuracy {self.top_accuracy:.3f} reached by {self.tied_at_top}"
        )


@dataclass
class ProbeRanking:
    """Probes ranked by validation accuracy, then validation log-loss, then effect size."""

    order: Int[Tensor, " probes"]  # probe indices, best first
    val_correct: Int[Tensor, " probes"]
    n_val: int
    val_loss: Float[Tensor, " probes"]
    effect: Float[Tensor, " probes"]
    train_accuracy: Float[Tensor, " probes"]

    @property
    def val_accuracy(self) -> Float[Tensor, " probes"]:
        return self.val_correct.double() / self.n_val

    def top(self, k: int) -> list[int]:
        if not 1 <= k <= len(self.order):
            raise ValueError(f"k must be in 1..{len(self.order)}, got {k}")
        return self.order[:k].tolist()

    def ties(self, k: int) -> Ties:
        top = self.top(k)
        correct = self.val_correct
        cutoff = correct[top[-1]]
        tied = correct == cutoff
        best = correct.max()
        return Ties(
            k=k,
            cutoff_accuracy=float(cutoff) / self.n_val,
            tied_at_cutoff=int(tied.sum()),
            tied_selected=int(tied[top].sum()),
            top_accuracy=float(best) / self.n_val,
            tied_at_top=int((correct == best).sum()),
        )


def rank_probes(
    probes: LogisticProbes,
    x_val: Float[Tensor, "n probes d"],
    y_val: Labels,
    *,
    effect: Float[Tensor, " probes"],
    train_accuracy: Float[Tensor, " probes"] | None = None,
) -> ProbeRanking:
    """Rank by validation accuracy (exact counts), then lower log-loss, then larger effect."""
    correct = probes.correct(x_val, y_val).cpu()
    loss = probes.log_loss(x_val, y_val).cpu()
    effect = effect.double().cpu()
    order = torch.arange(len(correct))
    # stable sorts from the least to the most significant key
    for key in (-effect, loss, -correct.double()):
        order = order[torch.sort(key[order], stable=True).indices]
    return ProbeRanking(
        order=order,
        val_correct=correct,
        n_val=x_val.shape[0],
        val_loss=loss,
        effect=effect,
        train_accuracy=(
            torch.full_like(loss, float("nan")) if train_accuracy is None else train_accuracy.cpu()
        ),
    )


def split_pairs(n_pairs: int, val_ratio: float = 0.2, seed: int = 42) -> tuple[Tensor, Tensor]:
    """Shuffle pair indices with ``seed`` and split them: ``(train, val)`` index tensors.

    Split pairs, not prompts, so both prompts of a pair fall on the same side.
    """
    if not 0 < val_ratio < 1:
        raise ValueError(f"val_ratio must be in (0, 1), got {val_ratio}")
    n_val = round(n_pairs * val_ratio)
    if n_val < 1 or n_val >= n_pairs:
        raise ValueError(
            f"{n_pairs} pairs with val_ratio {val_ratio} leave an empty train or validation set"
        )
    perm = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def pair_features(
    positive: Float[Tensor, "pairs probes d"], negative: Float[Tensor, "pairs probes d"]
) -> tuple[Float[Tensor, "n probes d"], Labels]:
    """Stack the two sides of pairs as samples: ``(x, y)`` with y = 1 for ``positive``."""
    if positive.shape != negative.shape:
        raise ValueError(
            f"paired features differ in shape: {tuple(positive.shape)} vs {tuple(negative.shape)}"
        )
    x = torch.cat([positive, negative], dim=0)
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).long()
    return x, y


@dataclass
class PairedProbes:
    """Probes trained on paired samples, with their ranking and the split used."""

    probes: LogisticProbes
    ranking: ProbeRanking
    train: Int[Tensor, " n_train"]  # pair indices
    val: Int[Tensor, " n_val"]


def probe_pairs(
    positive: Float[Tensor, "pairs probes d"],
    negative: Float[Tensor, "pairs probes d"],
    *,
    val_ratio: float = 0.2,
    seed: int = 42,
    c: float = 1.0,
    max_iter: int = 100,
) -> PairedProbes:
    """Split pairs, fit every probe on the train pairs, rank them on the validation pairs."""
    train, val = split_pairs(positive.shape[0], val_ratio, seed)
    x_train, y_train = pair_features(positive[train], negative[train])
    x_val, y_val = pair_features(positive[val], negative[val])
    probes = fit_logistic(x_train, y_train, c=c, max_iter=max_iter)
    ranking = rank_probes(
        probes,
        x_val,
        y_val,
        effect=effect_size(x_train, y_train),
        train_accuracy=probes.accuracy(x_train, y_train),
    )
    return PairedProbes(probes=probes, ranking=ranking, train=train, val=val)


__all__ = [
    "LogisticProbes",
    "PairedProbes",
    "ProbeRanking",
    "Ties",
    "effect_size",
    "fit_logistic",
    "pair_features",
    "probe_pairs",
    "rank_probes",
    "split_pairs",
]
