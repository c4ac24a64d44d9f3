"""The escape hatch: ``module:<path>:output`` / ``module:<path>:input`` reach any module of the
causal LM by its path, outside the adapter's guarantees."""

import pytest
import torch
from generation import generate

import interventions as iv

pytestmark = pytest.mark.usefixtures("one_thread")

ACT = "model.layers.1.mlp.act_fn"


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def recorded_by_hand(model, ids, path):
    module = model.get_submodule(path)
    seen = {}
    handles = [
        module.register_forward_pre_hook(lambda m, args: seen.__setitem__("input", args[0])),
        module.register_forward_hook(lambda m, args, out: seen.__setitem__("output", out)),
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_capture_reads_a_modules_input_and_output(llama, ids):
    expected = recorded_by_hand(llama, ids, ACT)
    with torch.no_grad(), iv.capture(llama, [f"module:{ACT}:input", f"module:{ACT}:output"]) as c:
        llama(ids)
    assert torch.equal(c[f"module:{ACT}:input"], expected["input"])
    assert torch.equal(c[f"module:{ACT}:output"], expected["output"])
    assert not torch.equal(expected["input"], expected["output"])


def test_an_edit_at_a_module_output_is_the_edit_by_hand(llama, ids):
    act = llama.get_submodule(ACT)
    handle = act.register_forward_hook(lambda m, args, out: out * 0.5)
    try:
        with torch.no_grad():
            expected = llama(ids).logits
    finally:
        handle.remove()
    with torch.no_grad(), iv.intervene(llama, {f"module:{ACT}:output": iv.Rescale(0.5)}):
        edited = llama(ids).logits
    assert torch.equal(edited, expected)
    with torch.no_grad():
        assert not torch.equal(llama(ids).logits, edited)  # the hook came off


def test_module_output_is_the_site_it_names_where_both_exist(llama, ids):
    """The hatch and the grammar agree where they meet: the last block's output is resid_post,
    the norm's output final_norm and lm_head's input too."""
    names = [
        "layers.2.resid_post",
        "final_norm",
        "module:model.norm:output",
        "module:lm_head:input",
    ]
    with torch.no_grad(), iv.capture(llama, names) as cache:
        llama(ids)
    assert torch.equal(cache["final_norm"], cache["module:model.norm:output"])
    assert torch.equal(cache["final_norm"], cache["module:lm_head:input"])
    with torch.no_grad(), iv.capture(llama, "module:model.layers.2:output") as blocks:
        llama(ids)
    assert torch.equal(blocks["module:model.layers.2:output"], cache["layers.2.resid_post"])


def test_an_edit_at_a_modules_input_and_at_a_tuple_output(llama, ids):
    """Input: the first argument (hidden_states by keyword too); output: the first element of
    a tuple (attention returns (output, weights))."""
    plan = {"module:model.layers.0.self_attn:output": iv.Rescale(2.0)}
    same = {"layers.0.attn.out": iv.Rescale(2.0)}
    with torch.no_grad(), iv.intervene(llama, plan):
        by_module = llama(ids).logits
    with torch.no_grad(), iv.intervene(llama, same):
        by_site = llama(ids).logits
    assert torch.equal(by_module, by_site)
    plan = {"module:model.layers.1:input": iv.Rescale(0.0, positions=-1)}
    same = {"layers.1.resid_pre": iv.Rescale(0.0, positions=-1)}
    with torch.no_grad(), iv.intervene(llama, plan):
        by_module = llama(ids).logits
    with torch.no_grad(), iv.intervene(llama, same):
        by_site = llama(ids).logits
    assert torch.equal(by_module, by_site)


def test_an_unknown_path_is_refused_with_close_names_and_leaves_no_hook(llama):
    before = hooks(llama)
    with pytest.raises(ValueError, match=r"no module 'model.layers.1.mlp.act'.*Did you mean: "):
        iv.attach(
            llama,
            {
                "layers.0.resid_pre": iv.Capture(),
                "module:model.layers.1.mlp.act:output": iv.Capture(),
            },
        )
    with (
        pytest.raises(ValueError, match="model.layers.1.mlp.act_fn"),
        iv.capture(llama, "module:model.layers.1.mlp.act:output"),
    ):
        pass
    assert hooks(llama) == before


def test_a_module_that_returns_no_tensor_is_refused_when_it_runs(llama, ids):
    with (
        pytest.raises(TypeError, match="returned .*Output.*not a tensor"),
        torch.no_grad(),
        iv.capture(llama, "module:model:output"),
    ):
        llama(ids)
    assert hooks(llama) == 0


def test_heads_are_refused_at_a_module_site(llama):
    with pytest.raises(ValueError, match="heads can only be selected at head sites"):
        iv.attach(llama, {f"module:{ACT}:output": iv.Capture(heads=[0])})


def test_stop_after_one_module_site_and_not_after_several(llama, ids):
    calls = []
    handle = llama.model.norm.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad(), iv.capture(llama, f"module:{ACT}:output", stop=True) as cache:
            llama(ids)
    finally:
        handle.remove()
    assert calls == [] and cache[f"module:{ACT}:output"].shape[:2] == ids.shape
    with (
        pytest.raises(ValueError, match="cannot stop after several sites that include module"),
        iv.capture(llama, [f"module:{ACT}:output", "layers.0.resid_pre"], stop=True),
    ):
        pass
    assert hooks(llama) == 0


def test_module_sites_work_under_generate(llama, ids):
    plan = {f"module:{ACT}:output": iv.Rescale(0.0, positions=-1)}
    cached, _ = generate(llama, ids, plan, use_cache=True, new=3)
    recomputed, _ = generate(llama, ids, plan, use_cache=False, new=3)
    assert torch.equal(cached, recomputed)
