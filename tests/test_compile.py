"""torch.compile: a compiled model runs the plan attached to it, and only that plan.

Dynamo compiles with the counting backend below (no code generation, so a compile takes a
second): what these tests check is which hooks a compiled forward runs, decided by dynamo's
guards, whatever the backend. One test runs AOTAutograd (functionalisation, as inductor does).
"""

import pytest
import torch

import interventions as iv


class Compiles:
    """A dynamo backend that runs each graph as it is and counts the graphs compiled."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts as a fresh process does: nothing compiled, dynamo's default guards."""
    config = torch._dynamo.config
    saved = config.skip_nnmodule_hook_guards  # a config module: monkeypatch would delete it
    torch._dynamo.reset()
    config.skip_nnmodule_hook_guards = True
    yield
    config.skip_nnmodule_hook_guards = saved
    torch._dynamo.reset()


def steering_plan(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.resid_post": iv.AddBias(torch.randn(32, generator=g)),
        "layers.1.attn.heads": iv.AddBias(torch.randn(8, generator=g), heads=[1], positions=-1),
        "layers.1.resid_mid": iv.Rescale(1.5),
        "layers.2.mlp.out": iv.Project(torch.randn(2, 32, generator=g)),
    }


def test_a_model_compiled_before_the_plan_runs_it_and_recompiles_only_when_it_changes(model, ids):
    with torch.no_grad():
        bare = model(ids).logits
        plan = steering_plan()
        with iv.intervene(model, plan):
            steered = model(ids).logits
        compiles = Compiles()
        compiled = torch.compile(model, backend=compiles)
        torch.testing.assert_close(compiled(ids).logits, bare, atol=1e-5, rtol=1e-5)
        for target in (model, compiled):  # the plan attached to the model or to its wrapper
            with iv.intervene(target, plan):
                torch.testing.assert_close(compiled(ids).logits, steered, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(compiled(ids).logits, bare, atol=1e-5, rtol=1e-5)
        before = compiles.graphs
        for _ in range(2):  # the same plan again, and the bare model again: nothing new
            with iv.intervene(model, plan):
                torch.testing.assert_close(compiled(ids).logits, steered, atol=1e-5, rtol=1e-5)
                compiled(ids)
            compiled(ids)
        assert compiles.graphs == before
        with iv.intervene(model, steering_plan(seed=1)):  # another plan: compiled anew
            other = compiled(ids).logits
        assert not torch.allclose(other, steered)
        assert compiles.graphs > before


def test_a_model_compiled_inside_the_block_drops_the_plan_after_it(model, ids):
    with torch.no_grad():
        bare = model(ids).logits
        with iv.intervene(model, steering_plan()):
            compiled = torch.compile(model, backend=Compiles())
            steered = compiled(ids).logits
        assert not torch.allclose(steered, bare, atol=1e-3)
        torch.testing.assert_close(compiled(ids).logits, bare, atol=1e-5, rtol=1e-5)


def test_captures_on_a_compiled_model_equal_eager(model, ids):
    sites = ["layers.*.attn.heads", "layers.1.resid_mid", "layers.2.mlp.act", "logits"]
    with torch.no_grad():
        with iv.capture(model, sites, positions=-1) as eager:
            model(ids)
        # fullgraph: a capture compiles into the graph, with no break to fall back on
        compiled = torch.compile(model, backend=Compiles(), fullgraph=True)
        with iv.capture(compiled, sites, positions=-1) as cache:
            compiled(ids)
        assert list(cache) == list(eager)
        for name in eager:
            torch.testing.assert_close(cache[name], eager[name], atol=1e-5, rtol=1e-5)
        with iv.capture(compiled, "layers.0.resid_post", reduce=iv.Mean) as mean:
            compiled(ids)
        torch.testing.assert_close(mean["layers.0.resid_post"], eager_mean(model, ids))


def eager_mean(model, ids):
    with iv.capture(model, "layers.0.resid_post", reduce=iv.Mean) as mean:
        model(ids)
    return mean["layers.0.resid_post"]


def test_generate_on_a_model_compiled_in_place_steers_as_eager(llama, ids):
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                  output_logits=True)  # fmt: skip
    plan = {"layers.1.mlp.out": iv.AddBias(torch.ones(32), positions="generated")}
    with iv.intervene(llama, plan):
        eager = torch.stack(llama.generate(ids, **kwargs).logits)
    llama.compile(backend=Compiles())
    with iv.intervene(llama, plan):
        compiled = torch.stack(llama.generate(ids, **kwargs).logits)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_aot_autograd_runs_the_plan_and_trains_a_bias(llama, ids):
    bias = iv.AddBias(torch.zeros(32), trainable=True)
    compiled = torch.compile(llama, backend="aot_eager")
    with iv.intervene(llama, {"layers.0.resid_post": bias}):
        compiled(ids).logits.square().mean().backward()
    eager_bias = iv.AddBias(torch.zeros(32), trainable=True)
    with iv.intervene(llama, {"layers.0.resid_post": eager_bias}):
        llama(ids).logits.square().mean().backward()
    torch.testing.assert_close(bias.vector.grad, eager_bias.vector.grad, atol=1e-5, rtol=1e-4)
