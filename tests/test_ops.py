import copy
import io

import pytest
import torch

import interventions as iv
from interventions.ops import Step, resolve


def test_add_bias_rescale_project_math():
    x = torch.randn(2, 5, 6)
    v = torch.randn(6)
    torch.testing.assert_close(iv.AddBias(v, alpha=0.5)(x), x + 0.5 * v)
    torch.testing.assert_close(iv.Rescale(3.0)(x), 3 * x)
    u = torch.randn(6)
    along = iv.Rescale(0.0, direction=u)(x)  # removes the component along u
    torch.testing.assert_close(along @ (u / u.norm()), torch.zeros(2, 5), atol=1e-6, rtol=0)
    basis = torch.randn(2, 6)
    removed = iv.Project(basis)(x)
    kept = iv.Project(basis, keep=True)(x)
    torch.testing.assert_close(removed + kept, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(removed @ basis.T, torch.zeros(2, 5, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(iv.Project(basis, keep=True)(kept), kept, atol=1e-6, rtol=0)


def test_ops_do_not_edit_in_place():
    x = torch.randn(2, 4, 3, 5)
    original = x.clone()
    step = Step.single(4)
    for op in (
        iv.AddBias(torch.ones(5), heads=[1], positions=-1),
        iv.Rescale(2.0, positions=[0, 2]),
        iv.Project(torch.randn(5), positions=torch.tensor([True, False, True, False])),
    ):
        y = op.apply(x, step)
        assert torch.equal(x, original) and not torch.equal(y, x)


def test_selectors_touch_only_what_they_select():
    x = torch.zeros(2, 4, 3, 5)
    y = iv.AddBias(torch.ones(5), heads=[1], positions=-1).apply(x, Step.single(4))
    assert y.sum() == 2 * 5 and torch.all(y[:, 3, 1] == 1)
    per_head = torch.stack([torch.full((5,), 1.0), torch.full((5,), 2.0)])
    y = iv.AddBias(per_head, heads=[0, 2], positions=slice(1, 3)).apply(x, Step.single(4))
    assert torch.all(y[:, 1:3, 0] == 1) and torch.all(y[:, 1:3, 2] == 2) and y.sum() == 2 * 2 * 15
    rows = torch.tensor([[True, False, False, False], [False, False, True, True]])
    y = iv.AddBias(torch.ones(5), positions=rows).apply(x, Step.single(4))
    assert y[0, 0].sum() == 15 and y[1, 2:].sum() == 30 and y.sum() == 45


def test_compose_applies_in_order_with_own_selectors():
    x = torch.ones(1, 3, 4)
    op = iv.Compose(iv.AddBias(torch.ones(4)), iv.Rescale(2.0, positions=0))
    y = op.apply(x, Step.single(3))
    assert torch.equal(y[0, 0], torch.full((4,), 4.0)) and torch.equal(
        y[0, 1:], torch.full((2, 4), 2.0)
    )
    with pytest.raises(TypeError, match="Compose takes"):
        iv.Compose(torch.ones(3))


def test_capture_shapes_by_selector():
    x = torch.randn(2, 4, 3, 5)
    cap = iv.Capture(positions=-1)
    assert cap.apply(x, Step.single(4)) is x
    assert torch.equal(cap.value, x[:, 3])
    cap = iv.Capture(heads=[2], positions=slice(0, 2))
    cap.apply(x, Step.single(4))
    assert torch.equal(cap.value, x[:, :2, [2]])
    with pytest.raises(ValueError, match="nothing was captured"):
        _ = iv.Capture().value


class HalfOfMax(iv.Intervention):
    """A user-written dynamic intervention: clamps each vector to half its max."""

    def forward(self, x):
        return torch.minimum(x, x.amax(-1, keepdim=True) / 2)


def test_user_subclass_runs_in_a_model(llama, ids):
    bare = llama(ids).logits
    with iv.intervene(llama, {"layers.1.mlp.act": HalfOfMax(positions="prompt")}):
        edited = llama(ids).logits
    assert not torch.allclose(bare, edited)


def test_constructor_errors():
    with pytest.raises(TypeError, match="heads must be a list of ints"):
        iv.AddBias(torch.ones(3), heads=2)
    with pytest.raises(ValueError, match="without repeats"):
        iv.AddBias(torch.ones(3), heads=[1, 1])
    with pytest.raises(ValueError, match="linearly dependent"):
        iv.Project(torch.ones(2, 4))
    with pytest.raises(ValueError, match="non-zero"):
        iv.Rescale(2.0, direction=torch.zeros(4))
    with pytest.raises(TypeError, match="boolean mask"):
        iv.Capture(positions=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="no step"):
        iv.Rescale(2.0, positions=slice(0, 4, 2)).apply(torch.ones(1, 4, 2), Step.single(4))


def test_interventions_are_complete_modules_with_their_own_containers():
    """Intervention.__init__ skips nn.Module.__init__ for speed and makes the hook containers on
    first use: every attribute a module has is there, of the same type, and never shared."""
    plain, a, b = torch.nn.Module(), iv.Capture(), iv.AddBias(torch.zeros(4), trainable=True)
    for key, value in vars(plain).items():
        assert type(getattr(a, key)) is type(value), key
        if isinstance(value, (dict, set, list)):
            assert getattr(a, key) is not getattr(iv.Capture(), key), key
    assert [n for n, _ in b.named_parameters()] == ["vector"] and not list(a.parameters())
    a.register_forward_hook(lambda *args: None)
    assert not iv.Capture()._forward_hooks
    with pytest.raises(AttributeError, match="no_such_attribute"):
        _ = iv.Capture().no_such_attribute


def test_interventions_work_as_modules_before_their_containers_exist():
    """Hooks, buffers, state dicts, copies and pickles of a fresh intervention behave as on any
    nn.Module (they reach the containers Intervention.__init__ leaves to first use)."""
    seen = []
    bias = iv.AddBias(torch.ones(4), trainable=True)
    bias.register_forward_hook(lambda module, args, out: seen.append(out))
    assert torch.equal(bias(torch.zeros(2, 4)), torch.ones(2, 4)) and len(seen) == 1
    add = iv.AddBias(torch.arange(4.0))
    add.register_buffer("scratch", torch.zeros(1), persistent=False)
    assert set(add.state_dict()) == {"vector"}
    twin = copy.deepcopy(iv.AddBias(torch.arange(4.0), trainable=True))
    assert torch.equal(twin.vector, torch.arange(4.0)) and not twin._forward_hooks
    buffer = io.BytesIO()
    torch.save(iv.AddBias(torch.arange(4.0)), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(torch.zeros(4)), torch.arange(4.0))


@pytest.mark.parametrize(
    "build, error, words",
    [
        (lambda: iv.AddBias(torch.tensor([1.0, float("nan"), 0.0])), ValueError, "non-finite"),
        (lambda: iv.AddBias(torch.full((3,), float("inf"))), ValueError, "non-finite"),
        (
            lambda: iv.AddBias(torch.ones(3), alpha=float("inf")),
            ValueError,
            "alpha must be a finite number, got inf",
        ),
        (
            lambda: iv.AddBias(torch.ones(3), alpha="2"),
            TypeError,
            "alpha must be a finite number, got '2'",
        ),
        (
            lambda: iv.AddBias(torch.ones(3), alpha=True),
            TypeError,
            "alpha must be a finite number, got True",
        ),
        (lambda: iv.AddBias(torch.ones(3) > 0), TypeError, "real tensor"),
        (lambda: iv.Rescale(float("nan")), ValueError, "factor must be a finite number, got nan"),
        (lambda: iv.Rescale(2.0, torch.tensor([1.0, float("nan")])), ValueError, "non-finite"),
        (lambda: iv.Project(torch.tensor([[1.0, float("inf")]])), ValueError, "non-finite"),
        (lambda: iv.Project(torch.eye(2), keep="yes"), TypeError, "keep must be True or False"),
        (lambda: iv.AddBias(torch.ones(3), heads=[True]), TypeError, "list of ints"),
        (lambda: iv.AddBias(torch.ones(3), heads="0"), TypeError, "list of ints"),
        (lambda: iv.Capture(positions=[True, 3]), TypeError, "positions"),
        (lambda: iv.Capture(positions=[]), TypeError, "positions"),
        (lambda: iv.Capture(reduce=iv.Mean), TypeError, "Reducer instance such as iv.Mean()"),
    ],
)
def test_nonsense_values_are_refused_with_what_was_expected(build, error, words):
    with pytest.raises(error, match=words):
        build()


def test_a_mask_shorter_than_the_forward_is_refused():
    short = torch.tensor([True, False, True])
    with pytest.raises(ValueError, match="covers 3 positions.*reaches position 4"):
        iv.AddBias(torch.ones(2), positions=short).apply(torch.zeros(1, 5, 2), Step.single(5))


def test_right_padded_prompts_count_negative_positions_from_each_rows_own_end():
    step = Step.single(5)
    step.prompt_ends = (5, 3)  # row 1: three tokens, then two pads
    assert resolve(-1, step, 5).tolist() == [
        [False, False, False, False, True],
        [False, False, True, False, False],
    ]
    assert resolve(slice(-2, None), step, 5).tolist() == [
        [False, False, False, True, True],
        [False, True, True, False, False],
    ]
    assert resolve(1, step, 5) == [1]  # absolute positions do not depend on padding


def test_apply_selects_on_the_token_and_head_dims_it_is_told():
    x = torch.randn(2, 3, 4, 4)  # [batch, heads, queries, keys], as attn.pattern is
    step = Step.single(4)
    cap = iv.Capture(heads=[0, 2], positions=-1)
    cap.apply(x, step, token_dim=2, head_dim=1)
    assert torch.equal(cap.records[-1][-1], x[:, [0, 2]][:, :, [3]])
    rows = torch.tensor([[True, False, True, False], [False, True, False, False]])
    y = iv.Rescale(2.0, positions=rows, heads=[1]).apply(x, step, token_dim=2, head_dim=1)
    expected = x.clone()
    expected[0, 1, [0, 2]] *= 2
    expected[1, 1, 1] *= 2
    assert torch.equal(y, expected)
    y = iv.Compose(iv.Rescale(3.0, positions=slice(0, 2))).apply(x, step, token_dim=2, head_dim=1)
    assert torch.equal(y[:, :, :2], 3 * x[:, :, :2]) and torch.equal(y[:, :, 2:], x[:, :, 2:])
