"""bake / WeightDelta (acceptance 5)."""

import warnings
from contextlib import nullcontext

import pytest
import torch

import interventions as iv
from interventions import files


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_parameters(model, before):
    now = dict(model.named_parameters())
    assert set(now) == set(before)
    for name, value in before.items():
        assert torch.equal(now[name], value), name


def foldable_plan(seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(3, 8, generator=g)
    return {
        "layers.0.attn.heads": iv.AddBias(torch.randn(2, 8, generator=g), heads=[1, 3]),
        "layers.1.attn.heads": iv.Compose(
            iv.Project(u[:2], heads=[0]), iv.Rescale(1.7, direction=u[2], heads=[2, 3])
        ),
        "layers.1.attn.out": iv.Rescale(0.8),
        "layers.2.mlp.out": iv.Compose(
            iv.AddBias(torch.randn(32, generator=g), alpha=2.0),
            iv.Project(torch.randn(32, generator=g), keep=False),
        ),
    }


def test_bake_equals_runtime_and_revert_is_bit_exact(model, ids):
    before, config_before = snapshot(model), model.config.to_dict()
    with iv.intervene(model, foldable_plan()):
        runtime = model(ids).logits
    qwen2 = model.config.model_type == "qwen2"
    with pytest.warns(UserWarning, match="save the WeightDelta") if qwen2 else nullcontext():
        delta = iv.bake(model, foldable_plan())
    baked = model(ids).logits
    torch.testing.assert_close(baked, runtime, atol=1e-5, rtol=0)
    delta.revert(model)
    assert_same_parameters(model, before)
    assert model.config.to_dict() == config_before


def test_unfoldable_plans_leave_the_model_alone(llama, ids):
    before = snapshot(llama)
    with pytest.raises(ValueError, match="only positions=None can be baked"):
        iv.bake(llama, {"layers.0.attn.out": iv.AddBias(torch.ones(32), positions=-1)})
    with pytest.raises(ValueError, match="cannot be folded into weights"):
        iv.bake(
            llama, {"layers.0.attn.out": iv.Rescale(2.0), "layers.1.resid_post": iv.Rescale(2.0)}
        )
    with pytest.raises(ValueError, match="Capture at layers.0.mlp.out is not a linear"):
        iv.bake(llama, {"layers.0.mlp.out": iv.Capture()})
    assert_same_parameters(llama, before)


def test_baked_llama_reloads_with_its_bias(llama, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    delta = iv.bake(llama, foldable_plan())
    assert llama.config.attention_bias and llama.config.mlp_bias
    expected = llama(ids).logits
    llama.save_pretrained(tmp_path / "baked")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "baked").eval()
    o_bias = reloaded.model.layers[0].self_attn.o_proj.bias
    assert o_bias is not None and torch.equal(o_bias, llama.model.layers[0].self_attn.o_proj.bias)
    torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-6, rtol=0)
    delta.revert(llama)
    assert not llama.config.attention_bias and llama.model.layers[0].self_attn.o_proj.bias is None


def test_delta_save_load_apply_round_trip(model, ids, tmp_path):
    before = snapshot(model)
    with iv.intervene(model, foldable_plan()):
        runtime = model(ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        delta = iv.bake(model, foldable_plan())
    path = delta.save(tmp_path / "edit.safetensors")
    delta.revert(model)
    loaded = iv.WeightDelta.load(path)
    assert not loaded.applied and set(loaded.names) == set(delta.names)
    loaded.apply(model)
    torch.testing.assert_close(model(ids).logits, runtime, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="already applied"):
        loaded.apply(model)
    loaded.revert(model)
    assert_same_parameters(model, before)


def test_apply_refuses_another_model(ids, tmp_path):
    from interventions.models import tiny

    llama = tiny("llama", n_layers=3)
    delta = iv.bake(llama, foldable_plan())
    delta.revert(llama)
    other_weights = tiny("llama", n_layers=3, seed=5)
    with pytest.raises(ValueError, match="differs from the one this WeightDelta was made from"):
        delta.apply(other_weights)
    other_shape = tiny("llama", n_kv_heads=2, n_layers=3)
    other_shape.model.layers[0].self_attn.o_proj = torch.nn.Linear(16, 32, bias=False)
    with pytest.raises(ValueError, match="has shape .* expects"):
        delta.apply(other_shape)
    gpt2 = tiny("gpt2", n_layers=3)
    before = snapshot(gpt2)
    with pytest.raises(ValueError, match="another architecture"):
        delta.apply(gpt2)
    assert_same_parameters(gpt2, before)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        iv.WeightDelta.load(tmp_path / "junk.safetensors")


def test_from_change_records_training(llama, ids):
    before = snapshot(llama)
    name = "model.layers.1.mlp.down_proj.weight"
    original = {name: llama.get_parameter(name).detach().clone()}
    with torch.no_grad():
        llama.get_parameter(name).add_(0.1)
    changed = llama(ids).logits
    delta = iv.WeightDelta.from_change(llama, original)
    delta.revert(llama)
    assert_same_parameters(llama, before)
    delta.apply(llama)
    assert torch.equal(llama(ids).logits, changed)


def test_weight_edits_refuse_offloaded_weights_and_change_nothing(model, ids, offload):
    offloaded = offload(model)
    plain = offloaded(ids).logits
    with pytest.raises(RuntimeError, match="is offloaded .* load the model without offloading"):
        iv.bake(offloaded, foldable_plan())
    assert torch.equal(offloaded(ids).logits, plain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # qwen2: no config flag for the created bias
        delta = iv.bake(model, foldable_plan())
    delta.revert(model)
    with pytest.raises(RuntimeError, match=r"parameter .*\.weight is offloaded"):
        delta.apply(offloaded)
    assert not delta.applied and torch.equal(offloaded(ids).logits, plain)
    delta.apply(model)
    steered = model(ids).logits
    baked_then_offloaded = offload(model)
    with pytest.raises(RuntimeError, match="is offloaded"):
        delta.revert(baked_then_offloaded)
    assert delta.applied and torch.equal(baked_then_offloaded(ids).logits, steered)


def test_bake_on_peft_models_folds_plain_projections_and_refuses_wrapped_ones(model, ids, lora):
    wrapped = lora(model)
    before = snapshot(wrapped)
    with pytest.raises(ValueError, match="merge the adapter first"):
        iv.bake(wrapped, {"layers.1.attn.heads": iv.AddBias(torch.randn(8), heads=[1])})
    assert_same_parameters(wrapped, before)
    plan = {"layers.1.mlp.out": iv.Rescale(0.5), "layers.2.mlp.out": iv.AddBias(torch.randn(32))}
    with iv.intervene(wrapped, plan):
        runtime = wrapped(ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # qwen2: no config flag for the created bias
        delta = iv.bake(wrapped, plan)
    torch.testing.assert_close(wrapped(ids).logits, runtime, atol=1e-5, rtol=0)
    prefix = iv.adapter(model).layers
    assert all(name.startswith(prefix) for name in delta.names)  # names of the causal LM
    delta.revert(wrapped)
    assert_same_parameters(wrapped, before)


def test_revert_refuses_stacked_deltas_out_of_order(model, ids):
    before = snapshot(model)
    g = torch.Generator().manual_seed(3)
    first_plan = {"layers.1.mlp.out": iv.AddBias(torch.randn(32, generator=g))}
    second_plan = {"layers.1.mlp.out": iv.AddBias(torch.randn(32, generator=g))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # qwen2: no config flag for the created bias
        first = iv.bake(model, first_plan)
        second = iv.bake(model, second_plan)
    both, config_both = snapshot(model), model.config.to_dict()
    with pytest.raises(ValueError, match=r"mlp\.\w+\.bias does not hold .* revert those first"):
        first.revert(model)
    assert first.applied
    assert_same_parameters(model, both)
    assert model.config.to_dict() == config_both
    second.revert(model)
    first.revert(model)
    assert_same_parameters(model, before)


def test_revert_refuses_a_rescale_baked_after_it(llama):
    before = snapshot(llama)
    first = iv.bake(llama, {"layers.1.attn.out": iv.Rescale(0.5)})
    second = iv.bake(llama, {"layers.1.attn.heads": iv.Rescale(2.0, heads=[0])})
    with pytest.raises(ValueError, match=r"o_proj\.weight does not hold"):
        first.revert(llama)
    second.revert(llama)
    first.revert(llama)
    assert_same_parameters(llama, before)


def test_revert_refuses_another_model_and_changes_nothing():
    from interventions.models import tiny

    edited, other = tiny("llama", n_layers=3), tiny("llama", n_layers=3, seed=5)
    before = snapshot(edited)
    delta = iv.bake(edited, foldable_plan())
    other_before = snapshot(other)
    with pytest.raises(ValueError, match="revert on the model the delta was applied to"):
        delta.revert(other)
    assert_same_parameters(other, other_before)
    assert delta.applied
    gpt2 = tiny("gpt2", n_layers=3)
    gpt2_before = snapshot(gpt2)
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel\) has no .*model\.layers\.0"):
        delta.revert(gpt2)
    assert_same_parameters(gpt2, gpt2_before)
    delta.revert(edited)
    assert_same_parameters(edited, before)


def test_revert_of_a_changed_training_delta_is_refused_and_nan_training_reverts(llama):
    before = snapshot(llama)
    name = "model.layers.1.mlp.down_proj.weight"
    weight = llama.get_parameter(name)
    original = {name: weight.detach().clone()}
    with torch.no_grad():
        weight.add_(0.1)
    delta = iv.WeightDelta.from_change(llama, original)
    with torch.no_grad():
        weight[0, 0] += 1.0  # trained further after the delta was taken
    with pytest.raises(ValueError, match="does not hold the values"):
        delta.revert(llama)
    with torch.no_grad():
        weight[0, 0] = float("nan")  # a diverged run is still reverted
    diverged = iv.WeightDelta.from_change(llama, original)
    diverged.revert(llama)
    assert_same_parameters(llama, before)


def test_load_names_the_file_and_what_is_wrong(llama, tmp_path):
    from safetensors.torch import save_file

    delta = iv.bake(llama, foldable_plan())
    data = delta.save(tmp_path / "edit.safetensors").read_bytes()
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        iv.WeightDelta.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="is not a file"):
        iv.WeightDelta.load(tmp_path)
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors is not a readable .* truncated"):
        iv.WeightDelta.load(tmp_path / "cut.safetensors")
    (tmp_path / "text.safetensors").write_text('{"changes": {}}')
    with pytest.raises(ValueError, match="text.safetensors is not a readable safetensors file"):
        iv.WeightDelta.load(tmp_path / "text.safetensors")

    name = "model.layers.1.mlp.down_proj.weight"
    new, old = torch.ones(32, 64), torch.zeros(32, 64)
    good = {"format": "interventions.WeightDelta/1", "created": "[]", "config": "{}"}
    pair = {"new/" + name: new, "old/" + name: old}
    cases = [
        (pair, {**good, "created": None}, "no 'created' entry"),
        (pair, {**good, "config": None}, "no 'config' entry"),
        (pair, {**good, "config": "{"}, "'config' is not valid JSON"),
        (pair, {**good, "created": "{}"}, "'created' is not a list"),
        (pair, {**good, "config": '{"mlp_bias": [false]}'}, "attr -> \\[old, new\\]"),
        ({"new/" + name: new}, good, "missing the original values of"),
        ({"new/" + name: new, "old/" + name: old[:3]}, good, "original shape .* damaged"),
        ({"old/" + name: old}, good, "has no new values of"),
        ({**pair, "x": old.clone()}, good, "unexpected tensors"),
    ]
    for tensors, metadata, message in cases:
        path = tmp_path / "damaged.safetensors"
        save_file(tensors, path, metadata={k: v for k, v in metadata.items() if v is not None})
        with pytest.raises(ValueError, match=f"damaged.safetensors.*{message}"):
            iv.WeightDelta.load(path)


def test_a_delta_of_another_architecture_is_refused_naming_the_parameter():
    from interventions.models import tiny

    gpt2, llama = tiny("gpt2", n_layers=3), tiny("llama", n_layers=3)
    delta = iv.bake(gpt2, {"layers.1.mlp.out": iv.Rescale(0.5)})
    before = snapshot(llama)
    message = r"LlamaForCausalLM\) has no parameter 'transformer\.h\.1\..*another architecture"
    with pytest.raises(ValueError, match=message):
        delta.revert(llama)
    delta.revert(gpt2)
    with pytest.raises(ValueError, match=message):
        delta.apply(llama)
    assert_same_parameters(llama, before)


def test_from_change_checks_names_shapes_and_types(llama):
    name = "model.layers.1.mlp.down_proj.weight"
    weight = llama.get_parameter(name)
    with pytest.raises(
        ValueError, match=f"no parameter 'model.layers.1.mlp.down_proj.weigth'.*{name}"
    ):
        iv.WeightDelta.from_change(llama, {name.replace("weight", "weigth"): weight.clone()})
    with pytest.raises(
        ValueError, match=r"shape \(32, 3\), but the parameter has shape \(32, 64\)"
    ):
        iv.WeightDelta.from_change(llama, {name: weight[:, :3].clone()})
    with pytest.raises(TypeError, match="must be a tensor .* got list"):
        iv.WeightDelta.from_change(llama, {name: weight.tolist()})
    with pytest.raises(ValueError, match="is the parameter itself"):
        iv.WeightDelta.from_change(llama, {name: weight})
    with pytest.raises(TypeError, match="originals must map parameter names"):
        iv.WeightDelta.from_change(llama, [weight.clone()])


def test_an_interrupted_save_leaves_the_previous_file_and_nothing_else(
    llama, tmp_path, monkeypatch
):

    delta = iv.bake(llama, foldable_plan())
    path = delta.save(tmp_path / "edit.safetensors")
    saved = path.read_bytes()

    def interrupted(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        delta.save(path)
    assert path.read_bytes() == saved
    with pytest.raises(KeyboardInterrupt):
        delta.save(tmp_path / "new" / "deeper" / "edit.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit.safetensors"]


def test_apply_refuses_non_finite_new_values(llama):
    before, config_before = snapshot(llama), llama.config.to_dict()
    with pytest.raises(ValueError, match=r"down_proj.weight has 2048 non-finite .* nothing was"):
        iv.bake(llama, {"layers.1.mlp.out": iv.Rescale(1e300)})  # overflows float32
    assert_same_parameters(llama, before)
    assert llama.config.to_dict() == config_before
    name = "model.layers.1.mlp.down_proj.weight"
    changed = llama.get_parameter(name).detach().clone()
    changed[0, 0] = float("nan")
    delta = iv.WeightDelta(changes={name: changed}, originals={name: before[name].clone()})
    with pytest.raises(ValueError, match="has 1 non-finite"):
        delta.apply(llama)
    assert not delta.applied
    assert_same_parameters(llama, before)


# --- WeightDelta.recording / combine ----------------------------------------------------------


def parameter_state(model):
    return {
        name: (p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
        for name, p in model.named_parameters()
    }


def assert_same_state(model, before):
    now = parameter_state(model)
    assert set(now) == set(before)
    for name, (value, requires_grad, grad) in before.items():
        assert torch.equal(now[name][0].view(torch.uint8), value.view(torch.uint8)), name
        assert now[name][1] == requires_grad, name
        assert (now[name][2] is None) == (grad is None), name
        if grad is not None:
            assert torch.equal(now[name][2], grad), name


def train_step(model, ids, names):
    from interventions.adapters import causal_lm

    params = [causal_lm(model).get_parameter(name) for name in names]
    grads = torch.autograd.grad(model(ids).logits.square().mean(), params)
    with torch.no_grad():
        for p, grad in zip(params, grads, strict=True):
            p -= 0.1 * grad
            if p.grad is None:
                p.grad = grad
            else:
                p.grad.mul_(3.0)  # in place: the recorded gradient must be a copy


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_recording_restores_everything_on_any_exception(llama, ids, error):
    names = ["model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.o_proj.weight"]
    llama.get_parameter(names[0]).grad = torch.ones(32, 64)
    llama.model.layers[2].mlp.up_proj.weight.requires_grad_(False)
    llama.eval()
    before = parameter_state(llama)
    with pytest.raises(type(error)), iv.WeightDelta.recording(llama, names) as rec:
        llama.train()
        train_step(llama, ids, names)
        llama.get_parameter(names[1]).requires_grad_(False)
        replaced = torch.nn.Parameter(torch.zeros(32, 64))
        llama.model.layers[1].mlp.down_proj.weight = replaced
        raise error
    assert rec.delta is None
    assert_same_state(llama, before)
    assert not any(m.training for m in llama.modules())


def test_recording_gives_the_delta_of_what_changed(model, ids):
    table = iv.adapter(model)
    prefix = f"{table.layers}.1.{table.down_proj}"
    names = [f"{prefix}.weight", f"{table.layers}.0.{table.o_proj}.weight"]
    before = snapshot(model)
    with iv.WeightDelta.recording(model, names) as rec:
        assert rec.delta is None
        with torch.no_grad():
            model.get_parameter(names[0]).mul_(1.5)
    after = snapshot(model)
    assert rec.delta.applied and rec.delta.names == names[:1]  # o_proj did not change
    assert torch.equal(rec.delta.originals[names[0]], before[names[0]])
    rec.delta.revert(model)
    assert_same_parameters(model, before)
    rec.delta.apply(model)
    assert_same_parameters(model, after)
    with pytest.raises(RuntimeError, match="already used"), rec:
        pass


def test_recording_refuses_bad_names_and_shape_changes(llama):
    name = "model.layers.1.mlp.down_proj.weight"
    with pytest.raises(ValueError, match=f"no parameter 'model.layers.1.mlp.down_proj'.*{name}"):
        iv.WeightDelta.recording(llama, ["model.layers.1.mlp.down_proj"])
    with pytest.raises(ValueError, match="names is empty"):
        iv.WeightDelta.recording(llama, [])
    with pytest.raises(TypeError, match="names must be parameter names .* got 3 \\(int\\)"):
        iv.WeightDelta.recording(llama, [3])
    with pytest.raises(TypeError, match="got int"):
        iv.WeightDelta.recording(llama, 3)
    before = snapshot(llama)
    shape_change = r"changed shape .* \(32, 64\) to \(32, 3\)"
    with pytest.raises(ValueError, match=shape_change), iv.WeightDelta.recording(llama, name):
        llama.model.layers[1].mlp.down_proj.weight = torch.nn.Parameter(torch.zeros(32, 3))
    assert_same_parameters(llama, before)


def test_combine_applies_and_reverts_like_its_parts_in_order(llama, ids):
    before, config_before = snapshot(llama), llama.config.to_dict()
    first = iv.bake(llama, foldable_plan(0))  # creates biases and sets config flags
    second = iv.bake(llama, foldable_plan(1))  # the same weights again, and the new biases
    name = "model.layers.2.mlp.down_proj.weight"
    with iv.WeightDelta.recording(llama, name) as rec, torch.no_grad():
        llama.get_parameter(name).add_(1.0)
    after, config_after = snapshot(llama), llama.config.to_dict()
    combined = iv.WeightDelta.combine([first, second, rec.delta])
    assert combined.applied
    assert set(combined.names) == set(first.names) | set(second.names) | {name}
    combined.revert(llama)
    assert_same_parameters(llama, before)
    assert llama.config.to_dict() == config_before
    combined.apply(llama)
    assert_same_parameters(llama, after)
    assert llama.config.to_dict() == config_after
    assert iv.WeightDelta.combine(iter([first])).names == first.names


def test_combine_refuses_deltas_that_are_not_one_sequence(llama):
    first = iv.bake(llama, foldable_plan(0))
    first.revert(llama)
    # made from the originals, not after ``first``, and writing an o_proj ``first`` wrote
    second = iv.bake(llama, {"layers.1.attn.out": iv.Rescale(0.5)})
    with pytest.raises(ValueError, match="some deltas are applied and some are not"):
        iv.WeightDelta.combine([first, second])
    second.revert(llama)
    with pytest.raises(ValueError, match=r"deltas\[1\] was made from values of .* deltas\[0\]"):
        iv.WeightDelta.combine([first, second])
    name = "model.layers.2.mlp.down_proj.weight"
    bias = "model.layers.1.mlp.down_proj.bias"
    narrow = iv.WeightDelta(changes={name: torch.ones(32, 3)}, originals={name: torch.ones(32, 3)})
    with pytest.raises(ValueError, match=r"shape \(32, 3\) in deltas\[1\] but \(32, 64\)"):
        iv.WeightDelta.combine([first, narrow])
    creates = iv.WeightDelta(changes={bias: torch.zeros(32)}, originals={bias: None})
    with pytest.raises(ValueError, match=r"deltas\[1\] creates .*bias, but deltas\[0\]"):
        iv.WeightDelta.combine([first, creates])
    flag = iv.WeightDelta(changes={}, originals={}, config={"mlp_bias": (False, True)})
    with pytest.raises(ValueError, match="changes config mlp_bias from False"):
        iv.WeightDelta.combine([first, flag])
    with pytest.raises(ValueError, match="no deltas to combine"):
        iv.WeightDelta.combine([])
    with pytest.raises(TypeError, match="iterable of WeightDelta .* got WeightDelta"):
        iv.WeightDelta.combine(first)
    with pytest.raises(TypeError, match=r"deltas\[1\] is a dict"):
        iv.WeightDelta.combine([first, {}])


# --- iv.parameters ------------------------------------------------------------------------------


def reptune_blocks(model, layers, kind):
    """What reptune's ``block_parameters`` returned (its string surgery on the table's paths,
    frozen here), the reference ``iv.parameters`` must equal for reptune to switch to it."""
    table = iv.adapter(model)
    path = {
        "block": "",
        "attn": table.attn,
        "attn.o": table.o_proj,
        "mlp.down": table.down_proj,
        "mlp": table.down_proj.rpartition(".")[0],
        "attn.q": f"{table.attn}.q_proj",
        "attn.k": f"{table.attn}.k_proj",
        "attn.v": f"{table.attn}.v_proj",
    }[kind]
    found = {}
    for layer in layers:
        module = table.block_module(model, layer, path)
        prefix = ".".join(part for part in (table.layers, str(layer), path) if part)
        found.update(module.named_parameters(prefix=prefix))
    return found


REPTUNE_KINDS = {
    "block": "",
    "attn": ".attn",
    "attn.q": ".attn.q_proj",
    "attn.k": ".attn.k_proj",
    "attn.v": ".attn.v_proj",
    "attn.o": ".attn.o_proj",
    "mlp": ".mlp",
    "mlp.down": ".mlp.down_proj",
}


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("kind", list(REPTUNE_KINDS))
def test_parameters_equal_what_reptune_block_parameters_gave(model_type, kind, lora):
    from interventions.models import tiny

    model = tiny(model_type, n_layers=3)
    wrapped = lora(model, [iv.adapter(model).o_proj])
    fused = model_type == "gpt2" and kind in ("attn.q", "attn.k", "attn.v")
    for subject in (model, wrapped):
        for spec, layers in (("*", [0, 1, 2]), ("1:3", [1, 2]), ("1", [1])):
            name = f"layers.{spec}{REPTUNE_KINDS[kind]}"
            if fused:
                with pytest.raises(NotImplementedError, match="'attn.c_attn', computes queries"):
                    iv.parameters(subject, name)
                continue
            got, expected = iv.parameters(subject, name), reptune_blocks(subject, layers, kind)
            assert list(got) == list(expected), name
            assert all(got[n] is expected[n] for n in got), name


def test_parameters_keys_are_the_causal_lm_names_also_under_peft(llama, lora):
    wrapped = lora(llama, ["self_attn.v_proj"])
    got = iv.parameters(wrapped, "layers.2.attn.v_proj")
    assert set(got) == {
        f"model.layers.2.self_attn.v_proj.{p}"
        for p in ("base_layer.weight", "lora_A.default.weight", "lora_B.default.weight")
    }
    causal = dict(wrapped.get_base_model().named_parameters())
    assert all(causal[name] is param for name, param in got.items())


def test_parameters_join_names_and_layers(llama):
    both = iv.parameters(
        llama, ["layers.0:2.mlp.down_proj", "layers.1.mlp", "layers.0.attn.q_proj"]
    )
    assert list(both) == [
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
    ]
    assert iv.parameters(llama, ("layers.2",)) == dict(
        llama.model.layers[2].named_parameters(prefix="model.layers.2")
    )


def test_parameters_of_opt_mlp_are_fc1_and_fc2():
    from interventions.models import tiny

    opt = tiny("opt", n_layers=2)
    assert list(iv.parameters(opt, "layers.1.mlp")) == [
        f"model.decoder.layers.1.{m}.{p}" for m in ("fc1", "fc2") for p in ("weight", "bias")
    ]


@pytest.mark.parametrize(
    ("pattern", "error", "message"),
    [
        ("layers.1.attn.v_prj", ValueError, "unknown weight name .* Did you mean: layers.1.attn"),
        ("layers.1.attn.heads", ValueError, "unknown weight name 'layers.1.attn.heads'"),
        ("mlp", ValueError, r"unknown weight name 'mlp'.* layers.\{i\}.\{kind\}"),
        ("layers.2:5.mlp", ValueError, "weight name 'layers.2:5.mlp': layers '2:5' is out of"),
        ("layers.2:1.mlp", ValueError, "empty layer range"),
        ("layers.-1.mlp", ValueError, "cannot be negative"),
        ([], ValueError, "pattern is empty"),
        (3, TypeError, "pattern must be a weight name .* got int"),
        (["layers.1.mlp", None], TypeError, "weight names are str, .* got None"),
    ],
)
def test_parameters_refuse_bad_names(llama, pattern, error, message):
    with pytest.raises(error, match=message):
        iv.parameters(llama, pattern)


def test_parameters_refuse_projections_the_architecture_fuses():
    from interventions.models import tiny

    cases = [
        ("gpt2", "attn.k_proj", "one fused module, 'attn.c_attn', computes queries, keys"),
        ("gpt2", "mlp.gate_proj", "its MLP is not gated \\(its up projection is 'mlp.c_fc'\\)"),
        ("phi3", "mlp.up_proj", "one fused module, 'mlp.gate_up_proj', computes the gate and up"),
        # transformers 5 fuses the experts into 3-D parameters; 4.x keeps a list of expert modules
        (
            "qwen2_moe",
            "mlp.down_proj",
            "'mlp.experts' has no weight matrix .*(fused 3-D|expert mod)",
        ),
        ("deepseek_v3", "attn.q_proj", "no module is attn.q_proj alone .* q_a_proj, q_b_proj"),
    ]
    for model_type, kind, message in cases:
        model = tiny(model_type, n_layers=2)
        with pytest.raises(NotImplementedError, match=f"{kind} on {model_type}: {message}"):
            iv.parameters(model, f"layers.1.{kind}")


def test_recording_a_peft_model_uses_causal_lm_names_and_restores_the_wrapper(llama, ids, lora):
    wrapped = lora(llama, ["self_attn.v_proj"]).eval()
    names = list(iv.parameters(wrapped, "layers.1.attn.v_proj"))
    assert "model.layers.1.self_attn.v_proj.lora_B.default.weight" in names
    before = parameter_state(wrapped)
    with pytest.raises(KeyboardInterrupt), iv.WeightDelta.recording(wrapped, names):
        wrapped.train()
        train_step(wrapped, ids, [n for n in names if "lora_" in n])  # the base is frozen
        raise KeyboardInterrupt
    assert_same_state(wrapped, before)
    assert not wrapped.training
