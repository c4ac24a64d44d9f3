"""DRESS speed: adaptive generation throughput and batched probe training.

    pytest benchmarks/test_dress_speed.py -s
    INTERVENTIONS_BENCH_MODEL=/path/to/SmolLM2 pytest benchmarks/test_dress_speed.py -s

1. Adaptive generation (``fit.adaptive`` + ``model.generate``, KV cache, one forward per token)
   in tokens/s, as a ratio to plain ``generate`` (goal >= 0.8) and to the paper's variant that
   reads ``a_cur`` from a separate unsteered forward (``dress.generate_separate``). The three
   are timed interleaved, ``ROUNDS`` times each, and compared by their medians, so a busy CPU
   slows all of them alike. The fit uses synthetic activations of the real model's shape
   (16 heads, K = 32 of d_head 64): the speed does not depend on their values.
2. Probe training for every head of the real model's geometry (30 x 9 heads, d_head 64,
   348 samples): one batched torch fit vs one sklearn ``LogisticRegression`` per head.

Figures go to ``benchmark.extra_info`` (``--benchmark-json``) and are printed.
"""

import statistics
import time

import pytest
import torch

import interventions as iv
from interventions.probes import fit_logistic
from interventions.recipes import dress

NEW_TOKENS = 24
ROUNDS = 3
pytestmark = pytest.mark.real


def _synthetic_fit(n_layers: int, n_heads: int, d_head: int, num_heads: int = 16):
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(n_layers, n_heads, d_head, generator=g)
    signal *= torch.rand(n_layers, n_heads, 1, generator=g)
    plain = torch.randn(80, n_layers, n_heads, d_head, generator=g)
    styled = torch.randn(80, n_layers, n_heads, d_head, generator=g) + signal
    return dress.fit_activations(styled, plain, num_heads, 1.0)


def _timed(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def test_adaptive_generation_throughput(benchmark, bench_model):
    model, tokenizer = bench_model
    g = iv.geometry(model)
    fit = _synthetic_fit(g.n_layers, g.n_heads, g.d_head)
    prompt = dress.format_prompt(tokenizer, "How do plants make food?")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    settings = dict(
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )

    def plain():
        return model.generate(ids, **settings)

    def adaptive():
        with fit.adaptive(model):
            return model.generate(ids, **settings)

    def separate():
        return dress.generate_separate(fit, model, ids, max_new_tokens=NEW_TOKENS)

    for fn in (plain, adaptive, separate):  # warm-up
        _timed(fn)
    times: dict[str, list[float]] = {"plain": [], "adaptive": [], "separate": []}
    for _ in range(ROUNDS):
        times["plain"].append(_timed(plain))
        times["adaptive"].append(_timed(adaptive))
        times["separate"].append(_timed(separate))
    median = {k: statistics.median(v) for k, v in times.items()}
    tokens_per_s = {k: NEW_TOKENS / v for k, v in median.items()}
    info = {
        "tokens_per_s": tokens_per_s,
        "adaptive_over_plain": tokens_per_s["adaptive"] / tokens_per_s["plain"],
        "adaptive_over_separate": tokens_per_s["adaptive"] / tokens_per_s["separate"],
        "layers_hooked": len(fit.by_layer()),
    }
    benchmark.extra_info.update(info)
    print(f"\nDRESS generation, {NEW_TOKENS} tokens, batch 1, median of {ROUNDS}: {info}")
    benchmark.pedantic(adaptive, rounds=1, iterations=1)


def test_batched_probes_vs_sklearn(benchmark):
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(0)
    n, p, d = 348, 30 * 9, 64
    y = torch.arange(n) % 2
    signal = torch.randn(p, d, generator=g) * torch.rand(p, 1, generator=g) * 0.3
    x = torch.randn(n, p, d, generator=g) + y[:, None, None] * signal

    batched = _timed(lambda: fit_logistic(x, y))
    info = {"batched_s": batched}
    # sklearn at its default tolerance, and at the one the parity tests need
    # (tests/recipes/test_dress.py): the batched Newton fit always solves to the tight one.
    for name, tol in (("default_tol", 1e-4), ("tight_tol", 1e-10)):
        start = time.perf_counter()
        for head in range(p):
            sklearn.LogisticRegression(C=1.0, max_iter=10000, tol=tol).fit(
                x[:, head].numpy(), y.numpy()
            )
        info[f"sklearn_per_head_{name}_s"] = time.perf_counter() - start
        info[f"speedup_vs_{name}"] = info[f"sklearn_per_head_{name}_s"] / batched
    benchmark.extra_info.update(info)
    print(f"\nprobes for {p} heads (n={n}, d={d}): {info}")
    benchmark.pedantic(lambda: fit_logistic(x, y), rounds=1, iterations=1)
