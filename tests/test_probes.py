"""Batched logistic-regression probes (interventions/probes.py) against sklearn and numpy."""

import numpy as np
import pytest
import torch
from einops import rearrange

import interventions as iv
from interventions.models import tiny
from interventions.probes import (
    effect_size,
    fit_logistic,
    pair_features,
    probe_pairs,
    rank_probes,
    split_pairs,
)


def _sklearn_scores(x_train, y_train, x_val, y_val, c=1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    acc, loss = [], []
    for p in range(x_train.shape[1]):
        # a tight tol: at its default (1e-4) lbfgs stops after 3-4 iterations on the tiny models'
        # near-zero activations, and samples with |logit| ~ 1e-4 flip
        clf = LogisticRegression(C=c, max_iter=10000, tol=1e-10)
        clf.fit(x_train[:, p].double().numpy(), y_train.numpy())
        acc.append(clf.score(x_val[:, p].double().numpy(), y_val.numpy()))
        loss.append(log_loss(y_val.numpy(), clf.predict_proba(x_val[:, p].double().numpy())[:, 1]))
    return np.array(acc), np.array(loss)


def test_batched_probes_match_sklearn_on_synthetic_data():
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(0)
    n, p, d = 200, 24, 8
    y = torch.randint(0, 2, (n,), generator=g)
    signal = torch.randn(p, d, generator=g) * torch.linspace(0, 0.8, p)[:, None]
    x = torch.randn(n, p, d, generator=g) + y[:, None, None] * signal
    train, val = torch.arange(160), torch.arange(160, 200)
    probes = fit_logistic(x[train], y[train])
    assert probes.converged
    acc, loss = _sklearn_scores(x[train], y[train], x[val], y[val])
    ours = probes.accuracy(x[val], y[val]).numpy()
    assert np.abs(ours - acc).max() <= 0.02
    np.testing.assert_allclose(probes.log_loss(x[val], y[val]).numpy(), loss, atol=1e-3)


def _head_activations(n_pairs: int = 217) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-token ``attn.heads`` of a tiny random llama (3 layers x 4 heads, d_head 8) for
    ``n_pairs`` pairs of sequences that differ in their last three tokens: near-zero
    activations and a weak signal (validation accuracies 0.56-0.73), as in DRESS's captures."""
    model = tiny("llama", n_kv_heads=4, n_layers=3)
    g = torch.Generator().manual_seed(0)
    plain = torch.randint(3, 99, (n_pairs, 12), generator=g)
    styled = plain.clone()
    styled[:, -3:] = torch.randint(3, 12, (n_pairs, 3), generator=g)
    acts = []
    for ids in (styled, plain):
        with torch.no_grad(), iv.capture(model, "layers.*.attn.heads", positions=-1) as cache:
            model(ids)
        acts.append(rearrange(cache.stack("layers.*.attn.heads", dim=1), "n l h d -> n (l h) d"))
    return acts[0], acts[1]


def test_batched_probes_match_sklearn_on_head_activations():
    pytest.importorskip("sklearn")
    styled, plain = _head_activations()
    paired = probe_pairs(styled, plain, val_ratio=0.2, seed=42)
    train, val = split_pairs(len(styled), 0.2, 42)
    x_train, y_train = pair_features(styled[train], plain[train])
    x_val, y_val = pair_features(styled[val], plain[val])
    acc, _ = _sklearn_scores(x_train, y_train, x_val, y_val)
    ours = paired.ranking.val_accuracy.numpy()
    assert len(x_val) == 86
    assert np.abs(ours - acc).max() <= 0.02, "within 2 points of sklearn, per head"


def test_ranking_breaks_ties_by_loss_then_effect():
    # four probes, all perfectly accurate on validation: order by log-loss, then effect size
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 1] * 20)
    scale = torch.tensor([3.0, 6.0, 6.0, 1.5])
    x = (2 * y[:, None, None] - 1) * scale[None, :, None] + 0.1 * torch.randn(40, 4, 2, generator=g)
    x[:, 2] = x[:, 1]  # probes 1 and 2 see the same data: the same classifier and loss ...
    probes = fit_logistic(x, y)
    probes.weight[2], probes.bias[2] = probes.weight[1], probes.bias[1]
    effect = torch.tensor([1.0, 1.0, 5.0, 1.0])  # ... and probe 2 has the larger effect
    ranking = rank_probes(probes, x, y, effect=effect)
    assert ranking.val_accuracy.eq(1).all()
    assert ranking.order.tolist() == [2, 1, 0, 3]
    ties = ranking.ties(2)
    assert (ties.tied_at_cutoff, ties.tied_selected, ties.tied_at_top) == (4, 2, 4)
    assert ties.decided_by_tiebreak and "ties broken" in str(ties)


def test_effect_size_is_cohens_d_along_mass_mean():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 3, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([1] * 12 + [0] * 18)
    xn, yn = x.numpy(), y.numpy().astype(bool)
    for p in range(3):
        diff = xn[yn, p].mean(0) - xn[~yn, p].mean(0)
        u = diff / np.linalg.norm(diff)
        a, b = xn[yn, p] @ u, xn[~yn, p] @ u
        pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / (30 - 2)
        np.testing.assert_allclose(effect_size(x, y)[p], np.linalg.norm(diff) / np.sqrt(pooled))


def test_probe_errors():
    with pytest.raises(ValueError, match="single class"):
        fit_logistic(torch.randn(4, 1, 2), torch.ones(4))
    with pytest.raises(ValueError, match=r"\[n, n_probes, d\]"):
        fit_logistic(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="empty"):
        split_pairs(3, 0.1)
    x, y = torch.randn(4, 1, 2), torch.tensor([0, 1, 0, 1])
    for c in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="c must be a finite number > 0"):
            fit_logistic(x, y, c=c)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1, got True"):
        fit_logistic(x, y, max_iter=True)
