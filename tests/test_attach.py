import copy

import pytest
import torch

import interventions as iv
from interventions.sites import all_sites

DECOMPOSITION = [
    "resid_pre",
    "attn.heads",
    "attn.out",
    "resid_mid",
    "mlp.act",
    "mlp.out",
    "resid_post",
]


def hooks_on(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_empty_plan_and_captures_are_bit_identical(model, ids):
    bare = model(ids).logits
    with iv.intervene(model, {}):
        assert torch.equal(model(ids).logits, bare)
    every_site = [s for s in all_sites(3) if s.kind != "attn.pattern"]
    with iv.capture(model, every_site) as cache:
        assert torch.equal(model(ids).logits, bare)
    assert len(cache) == len(every_site)
    assert torch.equal(cache["logits"], bare)
    assert hooks_on(model) == 0


def test_decomposition_holds(model, ids):
    a, g = iv.adapter(model), iv.geometry(model)
    sites = [f"layers.{i}.{k}" for i in range(3) for k in DECOMPOSITION] + ["embed"]
    with iv.capture(model, sites) as cache:
        model(ids)
    assert torch.equal(cache["embed"], cache["layers.0.resid_pre"])
    for i in range(3):
        c = {k: cache[f"layers.{i}.{k}"] for k in DECOMPOSITION}
        assert c["attn.heads"].shape == (2, 9, g.n_heads, g.d_head)
        o_proj = a.block_module(model, i, a.o_proj)
        through_o = c["attn.heads"].flatten(2) @ a.weight(o_proj).T
        through_o = through_o + (0 if o_proj.bias is None else o_proj.bias)
        torch.testing.assert_close(through_o, c["attn.out"], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            c["resid_mid"], c["resid_pre"] + c["attn.out"], atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            c["resid_post"], c["resid_mid"] + c["mlp.out"], atol=1e-6, rtol=0
        )
        down = a.block_module(model, i, a.down_proj)
        through_down = c["mlp.act"] @ a.weight(down).T + (0 if down.bias is None else down.bias)
        torch.testing.assert_close(through_down, c["mlp.out"], atol=1e-5, rtol=0)
        if i + 1 < 3:
            assert torch.equal(cache[f"layers.{i + 1}.resid_pre"], c["resid_post"])


def test_add_bias_on_one_head_shifts_attn_out_by_its_o_proj_columns(model, ids):
    a, g = iv.adapter(model), iv.geometry(model)
    v = torch.randn(g.d_head)
    head = 2
    with iv.capture(model, "layers.1.attn.out") as before:
        model(ids)
    with iv.capture(
        model, "layers.1.attn.out", plan={"layers.1.attn.heads": iv.AddBias(v, heads=[head])}
    ) as after:  # noqa: E501
        model(ids)
    w = a.weight(a.block_module(model, 1, a.o_proj))
    expected = w[:, head * g.d_head : (head + 1) * g.d_head] @ v
    change = after["layers.1.attn.out"] - before["layers.1.attn.out"]
    torch.testing.assert_close(change, expected.expand_as(change), atol=1e-5, rtol=0)


def test_resid_edits_reach_the_next_block(model, ids):
    v = torch.randn(32)
    for kind in ("resid_pre", "resid_mid", "resid_post", "attn.in", "mlp.in", "embed"):
        site = "embed" if kind == "embed" else f"layers.1.{kind}"
        with iv.capture(model, site, plan={site: iv.AddBias(v)}) as cache:
            steered = model(ids).logits
        with iv.capture(model, site) as plain:
            bare = model(ids).logits
        torch.testing.assert_close(cache[site], plain[site] + v, atol=1e-5, rtol=0)
        assert not torch.allclose(steered, bare), kind


def test_resid_mid_edit_equals_adding_to_attn_out(model, ids):
    v = torch.randn(32)
    with iv.intervene(model, {"layers.1.resid_mid": iv.AddBias(v)}):
        via_mid = model(ids).logits
    with iv.intervene(model, {"layers.1.attn.out": iv.AddBias(v)}):
        via_out = model(ids).logits
    torch.testing.assert_close(via_mid, via_out, atol=1e-5, rtol=0)


def test_pattern_under_default_attention(model, ids):
    implementation = model.config._attn_implementation
    with iv.capture(model, "layers.*.attn.pattern") as cache:
        model(ids)
    pattern = cache["layers.1.attn.pattern"]
    assert pattern.shape == (2, 4, 9, 9)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 9))
    assert torch.all(pattern.triu(1) == 0)  # causal
    assert model.config._attn_implementation == implementation
    with pytest.raises(ValueError, match="can only be captured"):
        iv.attach(model, {"layers.0.attn.pattern": iv.Rescale(2.0)})


def test_no_hook_remains_after_an_error(model, ids):
    assert hooks_on(model) == 0
    plan = {"layers.*.attn.heads": iv.AddBias(torch.ones(8))}
    with pytest.raises(RuntimeError, match="boom"), iv.intervene(model, plan):
        model(ids)
        raise RuntimeError("boom")
    assert hooks_on(model) == 0
    with pytest.raises(RuntimeError, match="boom"), iv.capture(model, "layers.*.resid_post"):
        raise RuntimeError("boom")
    assert hooks_on(model) == 0
    handle = iv.attach(model, {"layers.0.attn.out": iv.Rescale(0.5)})
    assert hooks_on(model) > 0
    handle.remove()
    handle.remove()
    assert hooks_on(model) == 0


class Boom(iv.Intervention):
    def forward(self, x):
        raise RuntimeError("inside the forward")


def test_no_hook_remains_after_an_error_inside_a_hook(model, ids):
    plan = {"layers.1.mlp.out": Boom()}
    with pytest.raises(RuntimeError, match="inside the forward"), iv.intervene(model, plan):
        model(ids)
    assert hooks_on(model) == 0


def test_bad_input_errors_name_what_was_expected(model):
    with pytest.raises(ValueError, match="Did you mean: layers.0.attn.heads"):
        iv.attach(model, {"layers.0.attn.head": iv.AddBias(torch.ones(8))})
    with pytest.raises(ValueError, match=r"vector has shape \(7,\), expected \[8\]"):
        iv.attach(model, {"layers.0.attn.heads": iv.AddBias(torch.ones(7))})
    with pytest.raises(ValueError, match=r"vector has shape \(8,\), expected \[32\]"):
        iv.attach(model, {"layers.0.resid_post": iv.AddBias(torch.ones(8))})
    with pytest.raises(ValueError, match=r"head index \[4\] out of range.*4 heads"):
        iv.attach(model, {"layers.0.attn.heads": iv.AddBias(torch.ones(8), heads=[1, 4])})
    with pytest.raises(ValueError, match="heads can only be selected at head sites"):
        iv.attach(model, {"layers.0.attn.out": iv.AddBias(torch.ones(32), heads=[1])})
    with pytest.raises(ValueError, match="has 3 layers"):
        iv.attach(model, {"layers.3.attn.out": iv.AddBias(torch.ones(32))})
    with pytest.raises(TypeError, match="expected an Intervention"):
        iv.attach(model, {"layers.0.attn.out": torch.ones(32)})
    with pytest.raises(ValueError, match="appears twice"):
        iv.attach(
            model, {"layers.0.attn.out": iv.Rescale(2.0), "layers.*.attn.out": iv.Rescale(1.0)}
        )
    with pytest.raises(ValueError, match="positions='last' is not understood"):
        iv.Capture(positions="last")
    assert hooks_on(model) == 0


def test_gradients_flow_through_trainable_bias_and_kept_captures(model, ids):
    bias = iv.AddBias(torch.zeros(32), trainable=True)
    with iv.capture(
        model, "layers.2.resid_post", keep_grad=True, plan={"layers.0.resid_post": bias}
    ) as cache:  # noqa: E501
        logits = model(ids).logits
    captured = cache["layers.2.resid_post"]
    assert captured.requires_grad
    (captured.pow(2).sum() + logits.sum()).backward()
    assert bias.vector.grad is not None and bias.vector.grad.abs().sum() > 0
    assert all(
        p.grad is not None for p in model.get_submodule(iv.adapter(model).layers)[1].parameters()
    )


def test_detached_capture_by_default_and_cpu_move(model, ids):
    with iv.capture(model, "layers.0.mlp.out", device="cpu") as cache:
        model(ids)
    assert not cache["layers.0.mlp.out"].requires_grad


def test_streaming_reduction_matches_full_capture(model):
    batches = [torch.randint(3, 99, (3, 6)) for _ in range(4)]
    with iv.capture(model, "layers.1.attn.heads") as full:
        for batch in batches:
            model(batch)
    everything = torch.cat(full.records("layers.1.attn.heads"), dim=0)  # [12, 6, h, d]
    with (
        iv.capture(model, "layers.1.attn.heads", reduce=iv.Mean) as mean,
        iv.capture(model, "layers.1.attn.heads", reduce=iv.MeanNorm) as norm,
        iv.capture(model, "layers.1.resid_post", reduce=iv.SecondMoment) as moment,
        iv.capture(model, "layers.1.resid_post") as resid,
    ):
        for batch in batches:
            model(batch)
    torch.testing.assert_close(mean["layers.1.attn.heads"], everything.mean((0, 1)))
    torch.testing.assert_close(norm["layers.1.attn.heads"], everything.norm(dim=-1).mean((0, 1)))
    r = torch.cat(resid.records("layers.1.resid_post")).reshape(-1, 32)
    torch.testing.assert_close(moment["layers.1.resid_post"], r.T @ r / r.shape[0])


def test_cache_records_and_errors(llama, ids):
    with iv.capture(llama, "layers.0.attn.out") as cache:
        llama(ids)
        llama(ids[:1])
    assert [r.shape[0] for r in cache.records("layers.0.attn.out")] == [2, 1]
    assert cache["layers.0.attn.out"].shape[0] == 1
    with pytest.raises(KeyError, match="was not captured"):
        cache["layers.1.attn.out"]
    assert cache.stack("layers.0:1.attn.out").shape == (1, 1, 9, 32)


def test_float32_vectors_act_on_bfloat16_models(ids):
    from interventions.models import tiny

    model = tiny("llama", n_kv_heads=2).to(torch.bfloat16)
    plan = {
        "layers.0.attn.heads": iv.AddBias(torch.randn(8), heads=[0]),
        "layers.1.mlp.out": iv.Rescale(2.0),
    }
    with iv.capture(model, "layers.1.mlp.out", plan=plan) as cache:
        steered = model(ids).logits
    assert steered.dtype == torch.bfloat16 and cache["layers.1.mlp.out"].dtype == torch.bfloat16
    assert not torch.equal(steered, model(ids).logits)


def test_offloaded_models_capture_steer_and_generate_as_in_memory(model, ids, offload):
    sites = ["layers.*.attn.heads", "layers.*.resid_mid", "layers.1.attn.pattern", "logits"]
    plan = {
        "layers.1.attn.heads": iv.AddBias(torch.randn(8), heads=[1]),
        "layers.2.mlp.out": iv.Rescale(0.5),
    }
    plain = model(ids).logits
    with iv.capture(model, sites) as expected:
        model(ids)
    with iv.intervene(model, plan):
        steered = model(ids).logits
        generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    offloaded = offload(model)
    with iv.capture(offloaded, sites) as cache:
        offloaded(ids)
    assert list(cache) == list(expected)
    for name in expected:
        assert torch.equal(cache[name], expected[name]), name
    with iv.intervene(offloaded, plan):
        assert torch.equal(offloaded(ids).logits, steered)
        assert torch.equal(offloaded.generate(ids, max_new_tokens=4, do_sample=False), generated)
    assert torch.equal(offloaded(ids).logits, plain)


def training_without_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.train()


def checkpointed(model, reentrant: bool):
    """``model`` with activation checkpointing on every block (active in training mode)."""
    options = {"use_reentrant": reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    return model


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_activation_checkpointing_replays_edits_and_records_once(model, ids, reentrant):
    # checkpointing runs each block's forward again inside backward, hooks included: edits must
    # act again (same gradients), captures must not record the replay
    sites = ["layers.0.resid_post", "layers.1.attn.heads", "layers.1.mlp.out", "layers.2.resid_mid"]

    def run(model):
        g = torch.Generator().manual_seed(0)
        plan = {
            "layers.0.resid_mid": iv.AddBias(torch.randn(32, generator=g), trainable=True),
            "layers.1.attn.heads": iv.AddBias(torch.randn(8, generator=g), trainable=True),
        }
        with (
            iv.capture(model, sites, plan=plan) as cache,
            iv.capture(model, "layers.2.mlp.out", reduce=iv.Mean) as mean,
        ):
            model(ids, labels=ids).loss.backward()
        grads = [p.vector.grad for p in plan.values()]
        return cache, mean["layers.2.mlp.out"], grads, model.get_input_embeddings().weight.grad

    training_without_dropout(model)
    expected, expected_mean, expected_grads, expected_embed_grad = run(model)
    model.zero_grad()
    cache, mean, grads, embed_grad = run(checkpointed(model, reentrant))
    for name in sites:
        assert len(cache.records(name)) == 1
        torch.testing.assert_close(cache[name], expected[name], rtol=0, atol=0)
    torch.testing.assert_close(mean, expected_mean)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)
    torch.testing.assert_close(embed_grad, expected_embed_grad)


def test_kept_captures_hand_out_the_same_gradients_under_checkpointing(model, ids):
    # the replay inside backward must rebuild the record's place in the graph, not record again
    sites = ["layers.0.resid_post", "layers.1.attn.heads", "layers.2.mlp.out"]

    def run(model):
        with iv.capture(model, sites, keep_grad=True, positions=[1, 4]) as cache:
            model(ids, labels=ids).loss.backward()
        assert all(len(cache.records(site)) == 1 for site in sites)
        return [cache[site].grad for site in sites]

    training_without_dropout(model)
    expected = run(model)
    model.zero_grad()
    for grad, expected_grad in zip(run(checkpointed(model, False)), expected, strict=True):
        assert grad.abs().sum() > 0
        torch.testing.assert_close(grad, expected_grad)


def test_peft_models_capture_steer_and_generate(model, ids, lora):
    wrapped = lora(model)
    table = iv.adapter(model)
    assert isinstance(table.block_module(wrapped, 1, table.o_proj).base_layer, torch.nn.Module)
    plain = wrapped(ids).logits
    assert not torch.allclose(plain, model(ids).logits)  # the adapter acts
    with iv.intervene(wrapped, {}):
        assert torch.equal(wrapped(ids).logits, plain)
    with iv.capture(wrapped, ["layers.1.attn.heads", "layers.1.attn.out", "logits"]) as cache:
        wrapped(ids)
    # the heads go through the adapted o_proj (base weight + LoRA branch) to give attn.out
    o_proj = table.block_module(wrapped, 1, table.o_proj)
    attn_out = o_proj(cache["layers.1.attn.heads"].flatten(-2))
    assert torch.equal(attn_out, cache["layers.1.attn.out"])
    assert torch.equal(cache["logits"], plain)
    # steering a wrapped model equals steering the same weights merged into a plain model
    merged = copy.deepcopy(wrapped).merge_and_unload()
    assert type(merged) is type(model)
    plan = {"layers.1.attn.heads": iv.AddBias(torch.randn(2, 8), heads=[0, 3], positions=-1)}
    with iv.intervene(wrapped, plan):
        steered = wrapped(ids).logits
        cached = wrapped.generate(ids, max_new_tokens=4, do_sample=False)
        recomputed = wrapped.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    with iv.intervene(merged, plan):
        torch.testing.assert_close(merged(ids).logits, steered, atol=1e-5, rtol=0)
    assert not torch.allclose(steered, plain)
    assert torch.equal(cached, recomputed)
    assert hooks_on(wrapped) == 0


def test_captures_own_their_data_when_the_model_edits_in_place_later(model, ids):
    """A hook sees the output before the rest of the block runs; Falcon then adds the attention
    output into the MLP output in place. A record that is a view would change with it."""
    table = iv.adapter(model)
    down = table.block_module(model, 1, table.down_proj)
    mlp_out = []

    def edit_in_place_after_the_capture(module, args, output):
        mlp_out.append(output.detach().clone())
        output.add_(100.0)  # what a later in-place op of the block does

    with iv.capture(model, ["layers.1.mlp.out", "layers.1.mlp.act"]) as cache:
        handle = down.register_forward_hook(edit_in_place_after_the_capture)  # after ours
        try:
            model(ids)
        finally:
            handle.remove()
    assert torch.equal(cache["layers.1.mlp.out"], mlp_out[0])
    weight = table.weight(down)
    bias = 0 if down.bias is None else down.bias
    expected = cache["layers.1.mlp.act"] @ weight.T + bias
    torch.testing.assert_close(cache["layers.1.mlp.out"], expected)


def test_negative_positions_follow_each_rows_end_on_right_padded_batches(model):
    long_row = torch.tensor([[5, 6, 7, 8, 9, 10]])
    short_row = torch.tensor([[11, 12, 13]])
    batch = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    vector = torch.randn(32, generator=torch.Generator().manual_seed(0))
    plan = {"layers.0.resid_post": iv.AddBias(vector, positions=-1)}
    with iv.capture(model, "layers.1.resid_post", positions=-1, plan=plan) as padded:
        logits = model(batch, attention_mask=mask).logits
    for row, alone in enumerate((long_row, short_row)):
        with iv.capture(model, "layers.1.resid_post", positions=-1, plan=plan) as single:
            expected = model(alone).logits[0, -1]
        torch.testing.assert_close(
            padded["layers.1.resid_post"][row], single["layers.1.resid_post"][0]
        )
        torch.testing.assert_close(logits[row, alone.shape[1] - 1], expected, atol=1e-5, rtol=0)


def test_plans_and_captures_refuse_what_is_not_a_site_or_a_factory(model, ids):
    with pytest.raises(TypeError, match="plan key 5 is a int"):
        iv.intervene(model, {5: iv.AddBias(torch.ones(32))}).__enter__()
    with pytest.raises(ValueError, match="got no sites"):
        iv.capture(model, []).__enter__()
    with pytest.raises(TypeError, match=r"the class, not iv.Mean\(\)"):
        iv.capture(model, "layers.0.resid_post", reduce=iv.Mean()).__enter__()
    with pytest.raises(TypeError, match="factory"):
        iv.capture(model, "layers.0.resid_post", reduce=3).__enter__()
    assert hooks_on(model) == 0


def test_a_capture_at_positions_no_forward_reached_says_so(model, ids):
    with iv.capture(model, "layers.0.resid_post", positions=50) as cache:
        model(ids)
    with pytest.raises(ValueError, match="positions=50.*covered positions 0..8"):
        cache["layers.0.resid_post"]


# --- stopping early -------------------------------------------------------------------------


def completed_modules(model) -> tuple[list[str], list]:
    """Names of the modules whose forward completes, in order (filled by hooks it returns)."""
    done, handles = [], []
    for name, module in model.named_modules():
        if name:
            record = lambda *_, name=name: done.append(name)  # noqa: E731
            handles.append(module.register_forward_hook(record))
    return done, handles


def block_of(name: str, model) -> int | None:
    prefix = iv.adapter(model).layers + "."
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix) :].split(".")[0])


STOPS = [  # captured sites -> the last block whose forward completes (-1: none)
    (["embed"], -1),
    (["layers.1.resid_pre"], 0),
    (["layers.0.mlp.act"], 0),
    (["layers.0.attn.heads", "layers.1.resid_post", "embed"], 1),
    (["layers.2.mlp.out", "layers.0.resid_pre"], 2),
]


@pytest.mark.parametrize(("sites", "last_block"), STOPS)
def test_a_stopped_forward_runs_nothing_after_the_last_captured_site(model, ids, sites, last_block):
    with iv.capture(model, sites) as full:
        model(ids)
    done, counting = completed_modules(model)
    reached_the_end = False
    with iv.capture(model, sites, stop=True) as cache:
        model(ids)
        reached_the_end = True
    assert not reached_the_end  # the block ends with the stopped call
    blocks = {block_of(name, model) for name in done} - {None}
    assert max(blocks, default=-1) == last_block
    unembed = model.get_output_embeddings()
    assert not any(model.get_submodule(name) is unembed for name in done)
    assert iv.adapter(model).final_norm not in done
    for site in full:
        assert torch.equal(cache[site], full[site]), site
    for handle in counting:
        handle.remove()
    assert hooks_on(model) == 0


def test_a_stop_at_final_norm_never_unembeds(model, ids):
    a = iv.adapter(model)
    with iv.capture(model, "final_norm") as full:
        logits = model(ids).logits
    unembed, unembedded = model.get_output_embeddings(), []
    unembed.forward = lambda x: unembedded.append(x) or type(unembed).forward(unembed, x)
    done, completing = completed_modules(model)
    with iv.capture(model, ["final_norm", "layers.1.mlp.act"], stop=True) as cache:
        model(ids)
    assert unembedded == []  # its forward never ran
    assert a.final_norm in done
    assert torch.equal(cache["final_norm"], full["final_norm"])
    torch.testing.assert_close(unembed(cache["final_norm"]), logits)
    assert len(unembedded) == 1  # the counting forward works
    del unembed.forward
    for handle in completing:
        handle.remove()
    assert hooks_on(model) == 0


def test_a_stop_at_logits_ends_after_the_whole_model(model, ids):
    logits = model(ids).logits
    out = None
    with iv.capture(model, ["logits", "layers.0.resid_post"], stop=True) as cache:
        out = model(ids)
    assert out is None  # the call did not return: the stop came after the model's own end
    assert torch.equal(cache["logits"], logits)


def test_hooks_are_removed_after_a_stop_and_after_errors_in_a_stopping_block(model, ids):
    with iv.capture(model, "layers.0.resid_post", stop=True):
        model(ids)
    assert hooks_on(model) == 0
    with (
        pytest.raises(RuntimeError, match="boom"),
        iv.capture(model, "layers.1.resid_post", stop=True),
    ):
        raise RuntimeError("boom")  # before any forward
    assert hooks_on(model) == 0
    plan = {"layers.0.mlp.out": Boom()}
    with (
        pytest.raises(RuntimeError, match="inside the forward"),
        iv.capture(model, "layers.1.resid_post", stop=True, plan=plan),
    ):
        model(ids)  # an error in a hook before the stop point
    assert hooks_on(model) == 0
    with pytest.raises(KeyboardInterrupt), iv.intervene(model, {}, stop_after="layers.1.mlp.act"):
        raise KeyboardInterrupt
    assert hooks_on(model) == 0


def test_intervene_stop_after_ends_after_that_sites_edit(model, ids):
    v = torch.randn(32)
    plan = {"layers.1.resid_post": iv.Compose(iv.AddBias(v), iv.Capture())}
    with iv.capture(model, "layers.2.resid_pre", plan={"layers.1.resid_post": iv.AddBias(v)}) as c:
        model(ids)
    done, counting = completed_modules(model)
    with iv.intervene(model, plan, stop_after="layers.1.resid_post"):
        model(ids)
    assert max({block_of(name, model) for name in done} - {None}) == 1
    assert torch.equal(plan["layers.1.resid_post"].parts[1].value, c["layers.2.resid_pre"])
    for handle in counting:
        handle.remove()
    # a stop without a plan: the forward still ends there
    done, counting = completed_modules(model)
    with iv.intervene(model, {}, stop_after="layers.0.mlp.act"):
        model(ids)
    assert max({block_of(name, model) for name in done} - {None}) == 0
    for handle in counting:
        handle.remove()
    assert hooks_on(model) == 0


def test_stop_after_refuses_what_is_not_one_site(model):
    with pytest.raises(ValueError, match="expected exactly one site"):
        iv.intervene(model, {}, stop_after="layers.*.resid_post").__enter__()
    with pytest.raises(ValueError, match="has 3 layers"):
        iv.intervene(model, {}, stop_after="layers.3.resid_post").__enter__()
    with pytest.raises(TypeError, match="a site is a str"):
        iv.intervene(model, {}, stop_after=3).__enter__()
    with pytest.raises(TypeError, match=r"capture\(stop=\.\.\.\) takes True or False, got 1"):
        iv.capture(model, "layers.0.resid_post", stop=1).__enter__()
    assert hooks_on(model) == 0


def test_a_stop_ends_only_its_own_block(model, ids):
    after_inner = False
    with iv.capture(model, "layers.2.resid_post") as outer:
        with iv.capture(model, "layers.0.resid_post", stop=True) as inner:
            model(ids)
        after_inner = True
        model(ids)  # the outer capture is still attached, the inner stop is not
    assert after_inner
    assert len(inner.records("layers.0.resid_post")) == 1
    assert len(outer.records("layers.2.resid_post")) == 1
    with (
        iv.capture(model, "layers.0.resid_post", stop=True) as stopping,
        iv.capture(model, "layers.2.resid_post") as later,
    ):
        model(ids)  # the outer stop fires; the inner block lets it through
    assert len(stopping.records("layers.0.resid_post")) == 1
    assert len(later.records("layers.2.resid_post")) == 0
    assert hooks_on(model) == 0


def test_a_stopped_capture_under_generate_keeps_the_prompt(model, ids):
    with iv.capture(model, "layers.1.resid_post") as full:
        model(ids)
    with iv.capture(model, "layers.1.resid_post", stop=True) as cache:
        model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(cache["layers.1.resid_post"], full["layers.1.resid_post"])
    assert hooks_on(model) == 0


def test_pattern_selectors_pick_queries_and_heads_in_the_sites_own_layout(model, ids):
    with iv.capture(model, "layers.1.attn.pattern") as full:
        model(ids)
    pattern = full["layers.1.attn.pattern"]  # [b, h, q, k]
    rows = torch.zeros(2, 9, dtype=torch.bool)
    rows[0, 3], rows[1, 5:7] = True, True
    selected = {
        "last": (dict(positions=-1, heads=[1, 3]), pattern[:, [1, 3], -1]),
        "slice": (dict(positions=slice(2, 5)), pattern[:, :, 2:5]),
        "mask": (dict(positions=rows, heads=[2]), pattern.movedim(2, 1)[rows][:, [2]]),
    }
    for name, (selectors, expected) in selected.items():
        with iv.capture(model, "layers.1.attn.pattern", **selectors) as cache:
            model(ids)
        assert torch.equal(cache["layers.1.attn.pattern"], expected), name
    with iv.capture(model, "layers.1.attn.pattern", reduce=iv.Mean) as mean:
        model(ids)
    by_query = pattern.movedim(2, 1).reshape(-1, *pattern.shape[1::2])  # [b q, h, k]
    torch.testing.assert_close(mean["layers.1.attn.pattern"], by_query.mean(0))


class SeesShape(iv.Intervention):
    reads_only = True

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x


def test_an_intervention_at_the_pattern_sees_the_sites_layout(llama, ids):
    seen = SeesShape()
    with iv.intervene(llama, {"layers.0.attn.pattern": seen}):
        llama(ids)
    assert seen.shapes == [(2, 4, 9, 9)]  # [batch, heads, queries, keys]


def test_stack_takes_the_captured_layers_a_wildcard_matches(llama, ids):
    with iv.capture(llama, ["layers.1:3.resid_post", "layers.0.mlp.out"]) as cache:
        llama(ids)
    stacked = cache.stack("layers.*.resid_post", dim=1)
    assert torch.equal(stacked[:, 0], cache["layers.1.resid_post"])
    assert torch.equal(stacked[:, 1], cache["layers.2.resid_post"])
    assert stacked.shape == (2, 2, 9, 32)
    assert cache.stack(["layers.2.resid_post", "layers.0.mlp.out"]).shape == (2, 2, 9, 32)
    with pytest.raises(KeyError, match="'layers.0.resid_post' was not captured"):
        cache.stack("layers.0:2.resid_post")  # a range names each layer
    with pytest.raises(KeyError, match="matches no captured site"):
        cache.stack("layers.*.attn.out")


# --- Cache.save / Cache.load ---------------------------------------------------------------------


def test_a_saved_cache_loads_back_bit_for_bit(llama, ids, tmp_path):
    sites = ["layers.0:2.resid_post", "layers.1.attn.heads"]
    with iv.capture(llama, sites) as cache:
        llama(ids)
        llama(ids[:1, :5].to(torch.int32))  # a second record, of another shape
    llama.to(torch.bfloat16)
    with iv.capture(llama, "layers.2.mlp.out", positions=-1) as half:
        llama(ids)
    for original in (cache, half):
        path = original.save(tmp_path / "cache.safetensors")
        loaded = iv.Cache.load(path)
        assert list(loaded) == list(original)
        assert loaded.n_layers == original.n_layers
        for site in original:
            assert len(loaded.records(site)) == len(original.records(site))
            for a, b in zip(loaded.records(site), original.records(site), strict=True):
                assert a.dtype == b.dtype and torch.equal(a, b)
            assert torch.equal(loaded[site], original[site])
    assert iv.Cache.load(tmp_path / "cache.safetensors")["layers.2.mlp.out"].dtype == (
        torch.bfloat16
    )
    loaded = iv.Cache.load(cache.save(tmp_path / "c"))
    assert torch.equal(loaded.stack("layers.*.resid_post"), cache.stack("layers.*.resid_post"))


def test_cache_save_refuses_statistics_and_load_refuses_other_files(llama, ids, tmp_path):
    with iv.capture(llama, "layers.0.resid_post", reduce=iv.Mean) as mean:
        llama(ids)
    with pytest.raises(ValueError, match="reduced statistics"):
        mean.save(tmp_path / "mean.safetensors")
    assert not (tmp_path / "mean.safetensors").exists()
    delta = iv.bake(llama, {"layers.0.attn.out": iv.AddBias(torch.ones(32))})
    delta.revert(llama)
    delta.save(tmp_path / "delta.safetensors")
    with pytest.raises(ValueError, match="not a 'interventions.Cache/1' file"):
        iv.Cache.load(tmp_path / "delta.safetensors")
    with pytest.raises(FileNotFoundError):
        iv.Cache.load(tmp_path / "absent.safetensors")


def test_a_cache_file_missing_a_record_is_refused(llama, ids, tmp_path):
    from interventions.files import load_tensors, save_tensors

    with iv.capture(llama, "layers.0.resid_post") as cache:
        llama(ids)
        llama(ids)
    path = cache.save(tmp_path / "cache.safetensors")
    tensors, metadata = load_tensors(path, format="interventions.Cache/1")
    del tensors["layers.0.resid_post/1"]
    save_tensors(path, tensors, format="interventions.Cache/1", metadata=metadata)
    with pytest.raises(ValueError, match="damaged"):
        iv.Cache.load(path)
