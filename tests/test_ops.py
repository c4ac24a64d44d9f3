import contextlib
import copy
import io

import pytest
import torch
from generation import NEW, generate

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


# --- Patch ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def substituted(model, site, activation):
    """The activation at ``site`` replaced by ``activation`` with a plain torch hook (no iv)."""
    table, layer = iv.adapter(model), int(site.split(".")[1])
    kind = site.split(".", 2)[2]
    if kind == "resid_pre":
        module = table.blocks(model)[layer]
    elif kind == "attn.heads":
        module, activation = table.block_module(model, layer, table.o_proj), activation.flatten(-2)
    if kind == "mlp.out":
        handle = table.block_module(model, layer, table.mlp_out_path).register_forward_hook(
            lambda module, args, output: activation
        )
    else:

        def replace_input(module, args, kwargs):
            if args:
                return (activation, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": activation}

        handle = module.register_forward_pre_hook(replace_input, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def by_hand(corrupted, clean, heads, positions):
    """``corrupted`` with ``clean``'s one row written at the selection, element by element."""
    expected = corrupted.clone()
    rows, seq = corrupted.shape[:2]
    if isinstance(positions, torch.Tensor):
        mask = positions.expand(rows, seq)
        cells = [(b, t) for b in range(rows) for t in range(seq) if mask[b, t]]
    else:
        columns = [positions] if isinstance(positions, int) else positions
        cells = [(b, t) for b in range(rows) for t in columns]
    for b, t in cells:
        for h in heads or [slice(None)]:
            expected[b, t, h] = clean[0, t, h]
    return expected


SELECTIONS = [
    ("layers.1.resid_pre", None, 3),
    ("layers.1.attn.heads", [1, 3], [2, 5]),
    ("layers.2.mlp.out", None, torch.tensor([[1, 0, 0, 1, 0, 0, 0, 0, 1], [0] * 8 + [1]]).bool()),
    ("layers.0.attn.heads", [2], torch.tensor([0, 1, 1, 0, 0, 0, 1, 0, 0]).bool()),
]


@pytest.mark.parametrize("site, heads, positions", SELECTIONS, ids=lambda v: str(v)[:20])
def test_patch_equals_substituting_the_clean_activation_by_hand(model, ids, site, heads, positions):
    clean_ids = torch.randint(3, 99, (1, 9), generator=torch.Generator().manual_seed(7))
    with iv.capture(model, site) as clean:
        model(clean_ids)
    with iv.capture(model, site) as corrupted:
        bare = model(ids).logits
    expected_activation = by_hand(corrupted[site], clean[site], heads, positions)
    assert not torch.equal(expected_activation, corrupted[site])
    with substituted(model, site, expected_activation):
        expected = model(ids).logits
    assert not torch.allclose(expected, bare)
    from_cache = iv.Patch.from_cache(clean, heads=heads, positions=positions)
    with iv.intervene(model, {site: from_cache}):
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)
    # the same values given as a tensor shaped as the selected part
    source = clean[site].expand(ids.shape[0], *clean[site].shape[1:])
    if heads is not None:
        source = source[:, :, heads]
    if isinstance(positions, torch.Tensor):
        values = source[positions.expand(ids.shape)]  # [n, ...]: the selected tokens
    elif isinstance(positions, int):
        values = clean[site][:, positions]  # a capture's shape at one position: [1, ...]
    else:
        values = source[:, positions]
    with iv.intervene(model, {site: iv.Patch(values, heads=heads, positions=positions)}):
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)


def test_patching_a_site_with_its_own_values_is_bit_identical(model, ids):
    bare = model(ids).logits
    sites = ["embed", "final_norm", "logits"] + [
        f"layers.1.{kind}"
        for kind in ("resid_pre", "attn.in", "attn.heads", "attn.out", "resid_mid", "mlp.in")
    ]
    sites += ["layers.1.mlp.act", "layers.1.mlp.out", "layers.1.resid_post"]
    with iv.capture(model, sites) as own:
        model(ids)
    mask = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    for site in sites:  # one at a time: a later exact patch would hide an earlier change
        for positions in (None, mask):
            with iv.intervene(model, {site: iv.Patch.from_cache(own, positions=positions)}):
                assert torch.equal(model(ids).logits, bare), (site, positions)
    with iv.intervene(model, {"layers.1.resid_post": iv.Patch(own["layers.1.resid_post"])}):
        assert torch.equal(model(ids).logits, bare)


def test_one_forward_with_a_diagonal_mask_equals_one_patch_per_position(model, ids):
    """The batched sweep: row i of a corrupted batch patches position i alone."""
    clean_ids, corrupted = ids[:1], ids[1:]
    with iv.capture(model, "layers.1.resid_pre") as clean:
        model(clean_ids)
    seq = ids.shape[1]
    rows = torch.eye(seq, dtype=torch.bool)
    with iv.intervene(model, {"layers.1.resid_pre": iv.Patch.from_cache(clean, positions=rows)}):
        swept = model(corrupted.expand(seq, -1)).logits
    for position in range(seq):
        patch = iv.Patch.from_cache(clean, positions=position)
        with iv.intervene(model, {"layers.1.resid_pre": patch}):
            torch.testing.assert_close(swept[position], model(corrupted).logits[0])


@pytest.mark.parametrize("positions", [-1, slice(7, 12), "generated"])
def test_patches_mean_the_same_with_and_without_the_kv_cache(model, ids, positions):
    clean_ids = torch.randint(3, 99, (1, 9 + NEW), generator=torch.Generator().manual_seed(3))
    sites = ["layers.0.resid_post", "layers.1.attn.heads"]
    with iv.capture(model, sites) as clean:
        model(clean_ids)

    def plan():
        return {
            "layers.0.resid_post": iv.Patch.from_cache(clean, positions=positions),
            "layers.1.attn.heads": iv.Patch.from_cache(clean, heads=[0], positions=positions),
            "layers.2.mlp.out": iv.Patch(torch.linspace(-1, 1, 32), positions=positions),
        }

    _, bare_logits = generate(model, ids, {}, use_cache=True)
    tokens, logits = generate(model, ids, plan(), use_cache=True)
    re_tokens, re_logits = generate(model, ids, plan(), use_cache=False)
    assert not torch.allclose(logits, bare_logits, atol=1e-4)
    assert torch.equal(tokens, re_tokens)
    torch.testing.assert_close(logits, re_logits, atol=1e-5, rtol=1e-5)
    if not isinstance(positions, slice):  # -1 and "generated" are read per forward
        return
    with iv.intervene(model, plan()):  # one forward over the sequence patches the same positions
        full = model(tokens[:, :-1]).logits[:, ids.shape[1] - 1 :]
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)


def test_gradients_reach_trainable_values_and_not_the_replaced_activation(model, ids):
    values = iv.Patch(torch.zeros(8), trainable=True, heads=[1], positions=-1)
    under = iv.AddBias(torch.zeros(2, 8), trainable=True, heads=[1, 2], positions=-1)
    with iv.intervene(model, {"layers.1.attn.heads": iv.Compose(under, values)}):
        model(ids).logits[:, -1].logsumexp(-1).sum().backward()
    assert values.values.grad.abs().sum() > 0
    # the bias on head 1 is overwritten by the patch: no gradient; on head 2 it acts
    assert torch.all(under.vector.grad[0] == 0) and under.vector.grad[1].abs().sum() > 0
    with iv.capture(model, "layers.0.resid_post") as clean:
        model(ids[:1])
    below = iv.AddBias(torch.zeros(32), trainable=True)
    patch = iv.Patch.from_cache(clean, positions=[0, 4])
    with iv.intervene(model, {"layers.0.resid_post": iv.Compose(below, patch)}):
        model(ids).logits.sum().backward()
    assert below.vector.grad.abs().sum() > 0  # through the positions not patched
    selected = iv.AddBias(torch.zeros(32), trainable=True, positions=[0, 4])
    with iv.intervene(model, {"layers.0.resid_post": iv.Compose(selected, patch)}):
        model(ids).logits.sum().backward()
    assert torch.all(selected.vector.grad == 0)


def test_patch_refuses_what_cannot_be_patched(model, ids):
    with iv.capture(model, ["layers.0.resid_post", "layers.1.mlp.act"]) as clean:
        model(ids[:1])
    with iv.capture(model, "layers.0.resid_post", positions=-1) as selected:
        model(ids[:1])
    with iv.capture(model, "layers.0.resid_post", reduce=iv.Mean) as mean:
        model(ids[:1])
    short = {"layers.0.resid_post": clean["layers.0.resid_post"][:, :4]}
    three = {"layers.0.resid_post": clean["layers.0.resid_post"].expand(3, -1, -1)}
    nan = {"layers.0.resid_post": torch.full((1, 9, 32), float("nan"))}
    refused_at_attach = [
        (iv.Patch(torch.ones(5)), ValueError, r"values of shape \(5,\) cannot broadcast"),
        (iv.Patch(torch.ones(3, 32), heads=[0]), ValueError, "heads can only be selected"),
        (iv.Patch.from_cache(selected), ValueError, "captured with heads= or positions="),
        (iv.Patch.from_cache(mean), ValueError, "reduced statistic"),
        (iv.Patch.from_cache({"layers.1.mlp.act": torch.ones(1, 9, 64)}), ValueError, "holds no"),
        (iv.Patch.from_cache(nan), ValueError, "non-finite"),
        (iv.Patch.from_cache({"layers.0.resid_post": torch.ones(9, 32)}), ValueError, "expected"),
    ]
    for patch, error, words in refused_at_attach:
        with pytest.raises(error, match=words), iv.intervene(model, {"layers.0.resid_post": patch}):
            pass
    patched = "layers.0.resid_post"
    refused_in_the_forward = [
        (iv.Patch(torch.ones(3, 32), positions=[1, 2]), "do not broadcast to the selected part"),
        (iv.Patch.from_cache(short, positions=[1, 6]), "covers 4 positions.*position 6"),
        (iv.Patch.from_cache(three), "has 3 rows, this forward 2"),
    ]
    for patch, words in refused_in_the_forward:
        with pytest.raises(ValueError, match=words), iv.intervene(model, {patched: patch}):
            model(ids)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    twice = iv.Patch.from_cache(clean)
    with (
        pytest.raises(ValueError, match="already patches layers.0.resid_post: build one per"),
        iv.intervene(model, {"layers.0.resid_post": twice, "layers.1.resid_post": twice}),
    ):
        pass
    with pytest.raises(RuntimeError, match="placed in a plan"):
        iv.Patch.from_cache(clean).apply(torch.zeros(1, 9, 32), Step.single(9))
    with pytest.raises(ValueError, match="non-finite"):
        iv.Patch(torch.tensor([0.0, float("inf")]))
    with pytest.raises(TypeError, match="trainable must be True or False"):
        iv.Patch(torch.ones(3), trainable=1)
    with pytest.raises(TypeError, match="iv.Cache"):
        iv.Patch.from_cache(torch.ones(3))


# --- Ablate --------------------------------------------------------------------------------------


def test_zero_and_mean_ablation_replace_only_the_selection():
    x = torch.randn(2, 4, 3, 5)
    step = Step.single(4)
    y = iv.Ablate("zero", heads=[1], positions=-1).apply(x, step)
    expected = x.clone()
    expected[:, 3, 1] = 0
    assert torch.equal(y, expected)
    mean = torch.randn(3, 5)  # every head's mean
    y = iv.Ablate("mean", mean=mean, heads=[2, 0], positions=[0, 2]).apply(x, step)
    expected = x.clone()
    for t in (0, 2):
        expected[:, t, 2], expected[:, t, 0] = mean[2], mean[0]
    assert torch.equal(y, expected)


def test_mean_ablation_equals_rescale_zero_then_add_the_mean(model, ids):
    site = "layers.1.attn.heads"
    batches = [
        torch.randint(3, 99, (3, 7), generator=torch.Generator().manual_seed(s)) for s in (1, 2)
    ]
    with iv.capture(model, site) as full:
        for batch in batches:
            model(batch)
    by_hand = torch.cat([r.flatten(0, 1) for r in full.records(site)]).mean(0)  # [heads, d_head]
    tallied = iv.tally(
        model,
        [iv.text.Batch(b, torch.ones_like(b), torch.arange(7).expand_as(b)) for b in batches],
        {site: iv.Mean()},
        progress=False,
    )[site]
    torch.testing.assert_close(tallied.value, by_hand)
    heads, positions = [0, 2], torch.tensor([0, 1, 0, 0, 1, 1, 0, 0, 1]).bool()
    composed = iv.Compose(
        iv.Rescale(0.0, heads=heads, positions=positions),
        iv.AddBias(by_hand[heads], heads=heads, positions=positions),
    )
    with iv.intervene(model, {site: composed}):
        expected = model(ids).logits
    for ablation in (
        iv.Ablate("mean", mean=by_hand, heads=heads, positions=positions),
        iv.Ablate("mean", stats=tallied, heads=heads, positions=positions),
    ):
        with iv.intervene(model, {site: ablation}):
            torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-6)
    with iv.capture(model, "layers.0.mlp.out", reduce=iv.Mean) as means:
        model(ids)
    captured = means.captures[iv.parse("layers.0.mlp.out", 3)].reduce
    with iv.intervene(model, {"layers.0.mlp.out": iv.Ablate("mean", stats=captured)}):
        ablated = model(ids).logits
    with iv.intervene(model, {"layers.0.mlp.out": iv.Patch(means["layers.0.mlp.out"])}):
        torch.testing.assert_close(ablated, model(ids).logits, rtol=0, atol=0)


def test_resample_ablation_takes_the_seeded_rows_of_other_inputs(model, ids):
    site, positions = "layers.1.resid_pre", [1, 4, 8]
    others = torch.randint(3, 99, (5, 9), generator=torch.Generator().manual_seed(4))
    with iv.capture(model, site) as pool:
        model(others)
    with iv.capture(model, site) as corrupted:
        model(ids)
    generator = torch.Generator().manual_seed(11)
    draws = [torch.randint(5, (2,), generator=generator) for _ in range(2)]
    ablation = iv.Ablate("resample", values=pool[site], seed=11, positions=positions)
    for rows in draws:  # each new sequence draws again, from the same seeded generator
        expected_activation = corrupted[site].clone()
        for b in range(2):
            expected_activation[b, positions] = pool[site][rows[b], positions]
        with substituted(model, site, expected_activation):
            expected = model(ids).logits
        with iv.intervene(model, {site: ablation}):
            torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "build, error, words",
    [
        (lambda: iv.Ablate("mode"), ValueError, "kind must be one of"),
        (lambda: iv.Ablate("mean"), ValueError, "exactly one of them"),
        (lambda: iv.Ablate("mean", mean=torch.ones(3), stats=iv.Mean()), ValueError, "exactly"),
        (lambda: iv.Ablate("mean", stats=iv.MeanNorm()), TypeError, "takes an iv.Mean"),
        (lambda: iv.Ablate("mean", stats=iv.Mean()), ValueError, "counted no samples"),
        (lambda: iv.Ablate("mean", mean=torch.tensor([float("nan")])), ValueError, "non-finite"),
        (lambda: iv.Ablate("zero", mean=torch.ones(3)), ValueError, "takes no mean="),
        (lambda: iv.Ablate("resample"), ValueError, "takes values="),
        (lambda: iv.Ablate("resample", values=torch.ones(4, 3)), ValueError, r"\[n, seq, \.\.\.\]"),
        (lambda: iv.Ablate("resample", values=torch.ones(1, 2, 3), seed=True), TypeError, "seed"),
        (lambda: iv.Ablate("resample", values=torch.ones(1, 2, 3), seed=-1), ValueError, "seed"),
    ],
)
def test_ablate_refuses_what_it_cannot_use(build, error, words):
    with pytest.raises(error, match=words):
        build()


def test_ablate_checks_its_values_against_the_site(model, ids):
    for site, ablation, words in [
        ("layers.0.resid_post", iv.Ablate("mean", mean=torch.ones(8)), r"expected \[32\]"),
        ("layers.0.attn.heads", iv.Ablate("mean", mean=torch.ones(2, 8)), r"\[4, 8\] \(every"),
        (
            "layers.0.mlp.act",
            iv.Ablate("resample", values=torch.ones(3, 9, 32)),
            r"expected \[batch, seq, ",
        ),
    ]:
        with pytest.raises(ValueError, match=words), iv.intervene(model, {site: ablation}):
            pass
    short = iv.Ablate("resample", values=torch.ones(3, 5, 32), positions=[2, 7])
    with (
        pytest.raises(ValueError, match="covers 5 positions"),
        iv.intervene(model, {"layers.0.resid_post": short}),
    ):
        model(ids)


# --- gradients of captures -----------------------------------------------------------------------


@contextlib.contextmanager
def grabbed(model, sites):
    """The activation tensors the forward goes on with at ``sites``, grabbed with plain torch
    hooks (no iv): ``{site: tensor}`` (``attn.heads`` as ``o_proj`` takes it, heads flat)."""
    table, seen, handles = iv.adapter(model), {}, []
    for site in sites:
        layer, kind = int(site.split(".")[1]), site.split(".", 2)[2]
        assert kind in ("attn.heads", "mlp.out", "resid_post"), kind
        if kind == "attn.heads":

            def keep_input(module, args, site=site):
                seen[site] = args[0]

            module = table.block_module(model, layer, table.o_proj)
            handles.append(module.register_forward_pre_hook(keep_input))
            continue

        def keep_output(module, args, output, site=site):
            seen[site] = output[0] if isinstance(output, tuple) else output

        if kind == "mlp.out":
            module = table.block_module(model, layer, table.mlp_out_path)
        else:
            module = table.blocks(model)[layer]
        handles.append(module.register_forward_hook(keep_output))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


MASK = torch.tensor([[1, 0, 0, 1, 0, 0, 0, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0, 1]]).bool()


@pytest.mark.real
def test_patch_ablate_and_kept_gradients_on_the_real_model(real_model, one_thread):
    model, tokenizer = real_model
    texts = ["The Eiffel Tower is in the city of", "The Colosseum is in the city of"]
    clean_ids, corrupted_ids = (tokenizer(t, return_tensors="pt").input_ids for t in texts)
    paris, rome = (tokenizer(w).input_ids[0] for w in (" Paris", " Rome"))

    def logit_difference(logits):
        return logits[:, -1, paris] - logits[:, -1, rome]

    sites = ["layers.10.resid_pre", "layers.10.attn.heads", "layers.29.resid_post"]
    with torch.no_grad(), iv.capture(model, sites) as clean:
        clean_logits = model(clean_ids).logits
    with torch.no_grad():
        corrupted_logits = model(corrupted_ids).logits
        plan = {site: iv.Patch.from_cache(clean) for site in sites}
        with iv.intervene(model, plan):  # a run patched with its own values is the run
            assert torch.equal(model(clean_ids).logits, clean_logits)
        last = iv.Patch.from_cache(clean, positions=-1)
        assert clean_ids.shape == corrupted_ids.shape  # nine tokens each
        with iv.intervene(model, {"layers.29.resid_post": last}):  # the last block's output
            patched = model(corrupted_ids).logits
        torch.testing.assert_close(patched[:, -1], clean_logits[:, -1])
        assert logit_difference(clean_logits) > 0 > logit_difference(corrupted_logits)
        zero = iv.Ablate("zero", heads=[0, 1, 2], positions=-1)
        with iv.intervene(model, {"layers.10.attn.heads": zero}):
            assert not torch.equal(model(clean_ids).logits, clean_logits)
    with grabbed(model, ["layers.10.resid_post"]) as seen:
        loss = logit_difference(model(corrupted_ids).logits).sum()
    expected = torch.autograd.grad(loss, seen["layers.10.resid_post"])[0]
    with iv.capture(model, "layers.10.resid_post", keep_grad=True) as kept:
        logit_difference(model(corrupted_ids).logits).sum().backward()
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(kept["layers.10.resid_post"].grad, expected)


@pytest.mark.parametrize(
    "sites, heads, positions",
    [
        (["layers.0.resid_post", "layers.1.attn.heads", "layers.2.mlp.out"], None, None),
        (["layers.0.resid_post", "layers.1.attn.heads", "layers.2.mlp.out"], None, -1),
        (["layers.1.resid_post", "layers.2.mlp.out"], None, MASK),
        (["layers.0.attn.heads", "layers.2.attn.heads"], [1, 3], [2, 5]),
    ],
    ids=["whole", "last", "mask", "heads"],
)
def test_kept_captures_hand_out_the_gradient_of_the_activation(model, ids, sites, heads, positions):
    def select(activation):
        x = activation
        if heads is not None:
            x = x[:, :, heads]
        if isinstance(positions, torch.Tensor):
            return x[positions]
        return x if positions is None else x[:, positions]

    def loss_of(logits, records):  # through the model's output and through the records
        return logits[:, -1].log_softmax(-1)[:, 5].sum() + sum(r.pow(2).mean() for r in records)

    def split(site, tensor):  # the site's layout: heads on their own dim
        n_heads = iv.geometry(model).n_heads
        return tensor.unflatten(-1, (n_heads, -1)) if site.endswith("attn.heads") else tensor

    with grabbed(model, sites) as seen:
        logits = model(ids).logits
    records = [select(split(s, seen[s])) for s in sites]
    grads = torch.autograd.grad(loss_of(logits, records), [seen[s] for s in sites])
    expected = {s: select(split(s, g)) for s, g in zip(sites, grads, strict=True)}
    model.zero_grad()
    with iv.capture(model, sites, keep_grad=True, heads=heads, positions=positions) as cache:
        kept_logits = model(ids).logits
    assert torch.equal(kept_logits, logits)  # bit-exact: the forward goes on from equal values
    loss_of(kept_logits, [cache[s] for s in sites]).backward()
    for site in sites:
        torch.testing.assert_close(cache[site].grad, expected[site], rtol=1e-5, atol=1e-7)


def test_kept_gradients_accumulate_over_backward_calls_and_need_a_graph(model, ids):
    with iv.capture(model, "layers.1.resid_post", keep_grad=True) as cache:
        logits = model(ids).logits
    logits.sum().backward(retain_graph=True)
    first = cache["layers.1.resid_post"].grad.clone()
    logits.sum().backward()
    torch.testing.assert_close(cache["layers.1.resid_post"].grad, 2 * first)
    with torch.no_grad(), iv.capture(model, "layers.1.resid_post", keep_grad=True) as cache:
        model(ids)
    assert not cache["layers.1.resid_post"].requires_grad
    assert cache["layers.1.resid_post"].grad is None


# --- vectors on another device or dtype than the activation: moved once ----------------------


def test_a_vector_on_another_device_is_moved_once_per_device_and_dtype():
    # the meta device stands in for a second GPU of a device_map: the only other device here
    add = iv.AddBias(torch.randn(6))
    elsewhere = torch.empty(2, 6, device="meta")
    first, again = iv.ops.moved(add, "vector", elsewhere), iv.ops.moved(add, "vector", elsewhere)
    assert first.device.type == "meta" and first is again  # one copy, kept
    half = iv.ops.moved(add, "vector", torch.zeros(2, 6, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and half is not first  # one copy per (device, dtype)
    assert iv.ops.moved(add, "vector", torch.zeros(2, 6)) is add.vector  # same place: itself


@pytest.mark.parametrize(
    "op,name",
    [
        (iv.AddBias(torch.randn(6, dtype=torch.float64), alpha=0.5), "vector"),
        (iv.Rescale(2.0, direction=torch.randn(6, dtype=torch.float64)), "direction"),
        (iv.Project(torch.randn(2, 6, dtype=torch.float64)), "basis"),
    ],
    ids=["AddBias", "Rescale", "Project"],
)
def test_moved_copies_give_what_a_conversion_per_call_gives(op, name):
    x = torch.randn(2, 3, 6).to(torch.bfloat16)
    converted = copy.deepcopy(op)  # its tensor already in the activation's dtype: no copy
    setattr(converted, name, getattr(op, name).to(torch.bfloat16))
    expected = converted(x)
    assert torch.equal(op(x), expected)
    assert torch.equal(op(x), expected)  # from the kept copy
    assert op._moved[(name, x.device, x.dtype)][1] is iv.ops.moved(op, name, x)


def test_a_trained_vector_is_moved_again_after_each_change_and_gets_its_gradient():
    add = iv.AddBias(torch.zeros(4, dtype=torch.float64), trainable=True)
    x = torch.ones(3, 4)  # float32: the float64 vector is converted
    with torch.no_grad():
        assert torch.equal(add(x), x)  # a copy is kept
    optimizer = torch.optim.SGD(add.parameters(), lr=1.0)
    add(x).sum().backward()  # gradients on: moved in the graph, so the parameter gets them
    assert torch.equal(add.vector.grad, torch.full((4,), 3.0, dtype=torch.float64))
    optimizer.step()  # in place: the kept copy is stale
    with torch.no_grad():
        assert torch.equal(add(x), x - 3.0)
    add.vector.data = torch.ones(4, dtype=torch.float64)  # another tensor
    with torch.no_grad():
        assert torch.equal(add(x), x + 1.0)
