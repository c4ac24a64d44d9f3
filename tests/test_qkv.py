"""The attn.q / attn.k / attn.v sites: per head, before rotary; k and v per KV head (GQA).

The battery in test_architectures.py checks what they capture on every architecture; these
tests check edits and refusals on a few."""

from dataclasses import replace

import pytest
import torch
from generation import generate

import interventions as iv
from interventions.adapters import _REGISTRY
from interventions.models import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def by_hand(model, ids, module, start, vector):
    """Logits with ``vector`` added to ``module``'s output features [start, start + len)."""

    def hook(mod, args, output):
        output = output.clone()
        output[..., start : start + vector.numel()] += vector
        return output

    handle = module.register_forward_hook(hook)
    try:
        return logits(model, ids)
    finally:
        handle.remove()


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gpt2"])
def test_a_head_bias_at_v_is_the_vector_added_to_that_heads_values(model_type, ids):
    """AddBias(heads=[1]) at attn.v changes the output exactly as adding the vector to KV head 1's
    slice of the value projection's output by hand (v_proj, or c_attn / qkv_proj after the
    queries and keys)."""
    model = tiny(model_type, n_kv_heads=None if model_type == "gpt2" else 2, n_layers=2)
    table, g = iv.adapter(model), iv.geometry(model)
    vector = torch.randn(g.d_head)
    if table.v_proj is not None:
        module, start = table.block_module(model, 1, table.v_proj), g.d_head
    else:
        module = table.block_module(model, 1, table.qkv_proj)
        start = (g.n_heads + g.n_kv_heads + 1) * g.d_head
    expected = by_hand(model, ids, module, start, vector)
    with iv.intervene(model, {"layers.1.attn.v": iv.AddBias(vector, heads=[1])}):
        edited = logits(model, ids)
    assert not torch.allclose(edited, logits(model, ids))
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-6)


def test_a_query_bias_reaches_the_query_heads_only(llama, ids):
    g = iv.geometry(llama)
    vector = torch.randn(g.n_heads, g.d_head)
    q_proj = iv.adapter(llama).block_module(llama, 0, "self_attn.q_proj")
    expected = by_hand(llama, ids, q_proj, 0, vector.flatten())
    with iv.intervene(llama, {"layers.0.attn.q": iv.AddBias(vector)}):
        torch.testing.assert_close(logits(llama, ids), expected, rtol=0, atol=1e-6)


def test_k_and_v_have_the_kv_heads_and_q_the_query_heads(llama):
    g = iv.geometry(llama)
    assert (g.n_heads, g.n_kv_heads) == (4, 2)
    assert [iv.ops.site_heads(iv.parse(f"layers.0.attn.{x}"), g) for x in "qkv"] == [4, 2, 2]
    with pytest.raises(ValueError, match="the model has 2 KV heads there"):
        iv.attach(llama, {"layers.0.attn.k": iv.AddBias(torch.ones(g.d_head), heads=[2])})
    with pytest.raises(ValueError, match=r"expected \[8\] or \[2, 8\] \(every head of the site"):
        iv.attach(llama, {"layers.0.attn.k": iv.Ablate("mean", mean=torch.ones(4, g.d_head))})
    iv.attach(llama, {"layers.0.attn.k": iv.Ablate("mean", mean=torch.ones(2, g.d_head))}).remove()
    with pytest.raises(ValueError, match=r"expected \[8\] or \[2, 8\]"):
        iv.attach(llama, {"layers.0.attn.v": iv.AddBias(torch.ones(4, g.d_head))})
    iv.attach(llama, {"layers.0.attn.q": iv.AddBias(torch.ones(4, g.d_head))}).remove()


def test_captures_select_heads_and_positions_as_at_attn_heads(llama, ids):
    sites = ["layers.0.attn.heads", "layers.0.attn.k"]
    with torch.no_grad(), iv.capture(llama, sites) as full:
        llama(ids)
    with torch.no_grad(), iv.capture(llama, sites, heads=[0, 1], positions=[-1]) as part:
        llama(ids)
    k = part["layers.0.attn.k"]
    assert k.shape == part["layers.0.attn.heads"].shape == (ids.shape[0], 1, 2, 8)
    assert torch.equal(k, full["layers.0.attn.k"][:, -1:, [0, 1]])


def test_a_projection_wider_than_the_geometry_is_refused(llama, monkeypatch):
    """A q_proj of another width than n_heads x d_head (a gated query, a wrong config_keys) is
    refused by name, and the model keeps no hook."""
    table = iv.adapter(llama)
    monkeypatch.setitem(_REGISTRY, "llama", replace(table, q_proj="mlp.up_proj"))
    with pytest.raises(
        ValueError, match=r"mlp.up_proj produces 64 features.*4 query heads of d_head 8 = 32"
    ):
        iv.attach(llama, {"layers.0.resid_pre": iv.Capture(), "layers.0.attn.q": iv.Capture()})
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in llama.modules())


def test_fused_layouts_not_verified_are_refused_with_what_to_use(tiny_models):
    model = tiny_models("gpt_neox")
    with pytest.raises(NotImplementedError, match=r"attention.query_key_value.*use attn.in"):
        iv.attach(model, {"layers.0.attn.v": iv.Capture()})
    with pytest.raises(NotImplementedError, match="module:gpt_neox.layers"):
        iv.attach(model, {"layers.0.attn.q": iv.Capture()})


def test_q_k_v_edits_survive_cached_generate(llama, ids):
    """An edit at attn.v with positions=-1 under cached generate equals the uncached one."""
    g = iv.geometry(llama)
    plan = {"layers.*.attn.v": iv.AddBias(torch.randn(g.d_head), heads=[0], positions=-1)}
    cached, _ = generate(llama, ids, plan, use_cache=True, new=4)
    recomputed, _ = generate(llama, ids, plan, use_cache=False, new=4)
    assert torch.equal(cached, recomputed)


@pytest.mark.real
def test_on_smollm2_v_is_what_attention_mixes_and_a_module_site_reads_act_fn(real_model):
    """SmolLM2-135M (9 query heads, 3 KV heads): attn.q / attn.k / attn.v have the stated shapes,
    the pattern applied to v gives attn.heads, and a module site sees the MLP activation."""
    model, tokenizer = real_model
    g = iv.geometry(model)
    ids = tokenizer("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    names = [f"layers.5.{kind}" for kind in ("attn.q", "attn.k", "attn.v", "attn.pattern")]
    names += ["layers.5.attn.heads", "layers.5.mlp.act", "module:model.layers.5.mlp.act_fn:output"]
    with torch.no_grad(), iv.capture(model, names) as cache:
        model(ids)
    b, t = ids.shape
    assert (g.n_heads, g.n_kv_heads) == (9, 3)
    assert cache["layers.5.attn.q"].shape == (b, t, 9, g.d_head)
    assert cache["layers.5.attn.k"].shape == cache["layers.5.attn.v"].shape == (b, t, 3, g.d_head)
    v = cache["layers.5.attn.v"].repeat_interleave(3, dim=2)
    mixed = torch.einsum("bhqk,bkhd->bqhd", cache["layers.5.attn.pattern"], v)
    torch.testing.assert_close(mixed, cache["layers.5.attn.heads"], rtol=1e-4, atol=1e-4)
    act = cache["module:model.layers.5.mlp.act_fn:output"]
    up = model.model.layers[5].mlp.up_proj
    with torch.no_grad(), iv.capture(model, "layers.5.mlp.in") as inputs:
        model(ids)
    torch.testing.assert_close(act * up(inputs["layers.5.mlp.in"]), cache["layers.5.mlp.act"])
