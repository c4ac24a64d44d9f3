"""torch.compile with a plan, and what a capture's own copy costs.

- ``compiled-bare``: ``torch.compile(model)`` (inductor) without a plan, paired with the eager
  bare forward: what compiling buys on this model.
- ``compiled-steer``: the steering plan of ``test_overhead`` (one vector added to every head of
  ``attn.heads`` at every layer) on the compiled model, paired with the compiled bare forward
  (``x_compiled_bare``: what the plan costs under compile) and with eager steering
  (``x_eager_steer``: what compiling buys a steered sweep). Both graphs, with and without the
  plan, are compiled during the warm-up; the timed calls recompile nothing (checked).
- ``capture-owned``: capture ``resid_post`` at every layer, records cloned so that no later
  in-place op of the model can change them, paired with a capture that keeps views (the
  behaviour before records owned their data): ``x_views`` is the price of the copy.

Each case reports medians of paired ratios (each pair a call of the case and one of its
baseline back to back, the order alternating) in ``extra_info``; ``run.py`` lists them under
"Other benchmarks". Run: ``python benchmarks/run.py --tests benchmarks/test_compile.py --models
tiny --machine <name>-compile``.
"""

from __future__ import annotations

from statistics import median
from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor

import interventions as iv

if TYPE_CHECKING:  # the fixtures' types; conftest is not imported at run time
    from conftest import Specs


class ViewCapture(iv.Capture):
    """A capture that keeps the model's own tensors (views), as records were kept before."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.records:
            self.records.append([])
        self.records[-1].append(x.detach())
        return x


class Graphs:
    """A count of the graphs dynamo hands to inductor."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, graph_module, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.count += 1
        return compile_fx(graph_module, example_inputs)


@pytest.fixture(scope="module")
def compiled(specs: Specs):
    spec = specs["tiny"]
    torch._dynamo.reset()
    graphs = Graphs()
    model = torch.compile(spec.model, backend=graphs)
    plan = {"layers.*.attn.heads": iv.AddBias(spec.vector)}
    with torch.no_grad():
        eager_bare = spec.model(spec.ids).logits
        with iv.intervene(spec.model, plan):
            eager_steer = spec.model(spec.ids).logits
            torch.testing.assert_close(model(spec.ids).logits, eager_steer, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(spec.ids).logits, eager_bare, atol=1e-5, rtol=1e-5)
    yield spec, model, plan, graphs
    torch._dynamo.reset()


def test_compiled_bare(compiled, timer, pair_timer, benchmark) -> None:
    spec, model, _, graphs = compiled
    benchmark.group = "compile"
    bare = lambda: spec.model(spec.ids)  # noqa: E731
    case = lambda: model(spec.ids)  # noqa: E731
    timer(spec, case, "forward")
    benchmark.extra_info["x_eager_bare"] = median(pair_timer(spec, "forward", bare, case))


def test_compiled_steer(compiled, timer, pair_timer, benchmark) -> None:
    spec, model, plan, graphs = compiled
    benchmark.group = "compile"
    call = lambda: model(spec.ids)  # noqa: E731
    before = graphs.count
    with iv.intervene(spec.model, plan):
        timer(spec, call, "forward")
        eager = lambda: spec.model(spec.ids)  # noqa: E731
        benchmark.extra_info["x_eager_steer"] = median(pair_timer(spec, "forward", eager, call))
    steered = pair_timer(spec, "forward", call, call, lambda: iv.intervene(spec.model, plan))
    benchmark.extra_info["x_compiled_bare"] = median(steered)
    assert graphs.count == before, "a timed call recompiled"
    benchmark.extra_info["graphs"] = graphs.count


@pytest.mark.parametrize("model_name", ["tiny", "real"])
def test_capture_owned(model_name: str, specs: Specs, timer, pair_timer, benchmark) -> None:
    spec = specs[model_name]
    benchmark.group = "capture copy"
    sites = iv.expand("layers.*.resid_post", spec.geometry.n_layers)

    def capture(kind: type[iv.Capture]):
        def run() -> None:
            with iv.intervene(spec.model, {site: kind() for site in sites}):
                spec.model(spec.ids)

        return run

    timer(spec, capture(iv.Capture), "forward")
    views = pair_timer(spec, "forward", capture(ViewCapture), capture(iv.Capture))
    benchmark.extra_info["x_views"] = median(views)
    benchmark.extra_info["model"] = model_name
