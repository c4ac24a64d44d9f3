"""Representation tuning: losses, gradient isolation, revert, evaluation; the real model moves."""

import copy
import math

import pytest
import torch
from fakes import WordTokenizer

import interventions as iv
from interventions import lm
from interventions.evals import honesty
from interventions.models import tiny
from interventions.recipes import reptune as rt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def tok() -> WordTokenizer:
    return WordTokenizer(bos=True, vocab=rt.CHOICES)  # the two answers get distinct ids first


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == state.keys()
    changed = [k for k, v in state.items() if not torch.equal(v, now[k])]
    assert not changed, f"changed: {changed}"


# --- losses (acceptance 1) ------------------------------------------------------------------------


def _four_cases() -> tuple[torch.Tensor, torch.Tensor]:
    # batch 1, layers 1, positions 4: aligned, orthogonal, anti-aligned, zero; direction (2, 0)
    acts = torch.tensor([[[[3.0, 0.0], [0.0, 5.0], [-0.5, 0.0], [0.0, 0.0]]]])
    return acts, torch.tensor([[[2.0, 0.0]]])


@pytest.mark.parametrize(
    ("mode", "flip", "expected"),
    [
        ("in", False, [0.0, 0.5, 1.0, 0.5]),
        ("in", True, [1.0, 0.5, 0.0, 0.5]),
        ("out", False, [1.0, 0.0, 1.0, 0.0]),
        ("out", True, [1.0, 0.0, 1.0, 0.0]),
    ],
)
def test_projection_loss_hand_values(mode, flip, expected):
    acts, direction = _four_cases()
    for i, value in enumerate(expected):
        one = acts[:, :, i : i + 1]
        loss = rt.projection_loss(one, direction, mode=mode, flip=flip)
        assert float(loss) == pytest.approx(value, abs=1e-6), (mode, flip, i)
    total = rt.projection_loss(acts, direction, mode=mode, flip=flip)
    assert float(total) == pytest.approx(sum(expected) / 4, abs=1e-6)


def test_projection_loss_averages_over_batch_layers_positions():
    torch.manual_seed(0)
    acts = torch.randn(3, 2, 5, 8)
    direction = torch.randn(2, 5, 8)
    cos = torch.nn.functional.cosine_similarity(acts, direction[None].expand_as(acts), dim=-1)
    assert float(rt.projection_loss(acts, direction, "in")) == pytest.approx(
        float(((1 - cos) / 2).mean()), abs=1e-6
    )
    assert float(rt.projection_loss(acts, direction, "out")) == pytest.approx(
        float(cos.abs().mean()), abs=1e-6
    )
    d = rt.Direction(direction, (3, 7))
    assert torch.equal(rt.projection_loss(acts, d, "in"), rt.projection_loss(acts, direction))
    # scale invariance: only the angle counts
    assert float(rt.projection_loss(7 * acts, 0.1 * direction)) == pytest.approx(
        float(rt.projection_loss(acts, direction)), abs=1e-6
    )


def test_projection_loss_zero_vectors_have_finite_gradients():
    acts = torch.zeros(2, 1, 3, 4, requires_grad=True)
    with torch.no_grad():
        acts[0, 0, 0] = torch.tensor([1.0, 2.0, 0.0, 0.0])
    for mode in ("in", "out"):
        loss = rt.projection_loss(acts, torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]), mode)
        (grad,) = torch.autograd.grad(loss, acts)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="zero vector"):  # a zero direction tunes nothing
        rt.projection_loss(acts.detach(), torch.zeros(1, 1, 4), "in")


ONE_ZERO = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 1.0, 0, 0]]])


@pytest.mark.parametrize(
    ("vectors", "as_tensor", "as_direction"),
    [
        (torch.zeros(1, 2, 4), r"zero vector at index \[\[0, 0\], \[0, 1\]\]",
         r"zero vector at \(layer, position\) \[\(5, 0\), \(5, 1\)\]"),
        (ONE_ZERO, r"zero vector at index \[\[0, 1\]\]", r"\(layer, position\) \[\(5, 1\)\]"),
        (torch.tensor([[[1.0, float("nan"), 0, 0]]]), "1 NaN or infinite", "1 NaN or infinite"),
        (torch.tensor([[[1.0, float("inf"), 0, 0]]]), "1 NaN or infinite", "1 NaN or infinite"),
    ],
)  # fmt: skip
def test_projection_loss_refuses_zero_and_non_finite_directions(vectors, as_tensor, as_direction):
    acts = torch.randn(2, 1, vectors.shape[1], 4)
    with pytest.raises(ValueError, match=as_tensor):
        rt.projection_loss(acts, vectors)
    with pytest.raises(ValueError, match=as_direction):  # nor can a Direction hold one
        rt.Direction(vectors, (5,))


def test_projection_loss_errors():
    acts = torch.randn(2, 1, 3, 4)
    with pytest.raises(ValueError, match="mode"):
        rt.projection_loss(acts, torch.randn(1, 3, 4), mode="sideways")
    with pytest.raises(ValueError, match="width"):
        rt.projection_loss(acts, torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="does not match"):
        rt.projection_loss(acts, torch.randn(2, 3, 4))


def test_soft_target_cross_entropy_hand_values():
    logits = torch.zeros(1, 4)  # uniform over 4 tokens
    targets = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert float(rt.soft_target_cross_entropy(logits, targets)) == pytest.approx(math.log(4))
    best = torch.tensor([[0.0, 0.0, -1e4, -1e4]])  # p = (.5, .5, 0, 0): the minimum
    assert float(rt.soft_target_cross_entropy(best, targets)) == pytest.approx(math.log(2))
    assert float(rt.target_entropy(targets)) == pytest.approx(math.log(2))
    # one-hot targets are the plain token loss
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 10)
    labels = torch.randint(0, 10, (3, 4))
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    plain = rt.token_cross_entropy(logits, labels)
    assert float(rt.soft_target_cross_entropy(logits, one_hot)) == pytest.approx(float(plain))
    labels[0, :2] = -100
    kept = labels != -100
    expected = torch.nn.functional.cross_entropy(logits[kept], labels[kept])
    assert float(rt.token_cross_entropy(logits, labels)) == pytest.approx(float(expected))


def test_format_loss_keeps_the_format_without_preferring_an_answer():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.5, 3.0, 0.0, 0.0]], requires_grad=True)
    choices = torch.tensor([[True, True, False, False]] * 2)
    loss = rt.format_loss(logits, choices, mean=False)
    mass = logits.softmax(-1)[:, :2].sum(-1)
    torch.testing.assert_close(loss, -mass.log())
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    torch.testing.assert_close(grad[:, 0], grad[:, 1])  # one shared push for both answers
    assert (grad[:, :2] < 0).all() and (grad[:, 2:] > 0).all()


def test_soft_targets_from_strings(tok):
    target = rt.soft_targets(tok, {" True": 1.0, " False": 3.0}, 99)
    assert float(target.sum()) == pytest.approx(1.0)
    assert float(target[tok(" False", add_special_tokens=False)["input_ids"][0]]) == 0.75
    with pytest.raises(ValueError, match="positive"):
        rt.soft_targets(tok, {" True": 0.0}, 99)


@pytest.mark.parametrize(
    ("distribution", "message"),
    [
        ({" True": float("nan")}, r"target\[' True'\] must be a finite number >= 0, got nan"),
        ({" True": 1.0, " False": -0.5}, r"target\[' False'\] must be a finite number >= 0"),
        ({" True": float("inf")}, r"target\[' True'\] must be a finite number >= 0, got inf"),
    ],
)
def test_soft_targets_refuse_non_finite_and_negative_probabilities(tok, distribution, message):
    with pytest.raises(ValueError, match=message):
        rt.soft_targets(tok, distribution, 99)


# --- batching, residuals, direction ---------------------------------------------------------------


def test_last_prompt_tokens_never_include_the_first_token(tok):
    batch = rt.make_batch(tok, ["a b c", "a b c d e f"])  # 4 and 7 tokens with the BOS
    mask = batch.last_prompt_tokens(3)
    assert mask.sum(-1).tolist() == [3, 3]
    assert mask[:, -3:].all()
    with pytest.raises(ValueError, match="attention sink"):
        batch.last_prompt_tokens(4)


def test_extract_direction_mean_pca_and_save(tok, claims, tmp_path):
    model = tiny("llama", n_layers=3)
    pairs = rt.honesty_pairs(claims[:8])
    d = rt.extract_direction(model, tok, pairs, layers=[1, 2], n_positions=3)
    assert d.vectors.shape == (2, 3, 32) and d.n_pairs == 8
    pos = rt.residuals(model, tok, [p.positive for p in pairs], [1, 2], 3)
    neg = rt.residuals(model, tok, [p.negative for p in pairs], [1, 2], 3)
    torch.testing.assert_close(d.vectors, (pos - neg).mean(0), atol=1e-5, rtol=1e-5)
    pc = rt.extract_direction(model, tok, pairs, layers=[1, 2], n_positions=3, method="pca")
    torch.testing.assert_close(pc.vectors.norm(dim=-1), torch.ones(2, 3))
    assert ((pc.vectors * d.vectors).sum(-1) >= 0).all()  # oriented like the mean difference
    loaded = rt.Direction.load(d.save(tmp_path / "d.safetensors"))
    assert torch.equal(loaded.vectors, d.vectors) and loaded.layers == (1, 2)
    assert loaded.method == "mean" and loaded.n_pairs == 8
    torch.testing.assert_close(d.at([2])[0], d.vectors[1])
    with pytest.raises(ValueError, match="no layer"):
        d.at([0])


def test_direction_files_of_the_earlier_format_load_and_others_are_refused(tmp_path):
    from safetensors.torch import save_file

    vectors = torch.randn(2, 3, 8)
    old = tmp_path / "old.safetensors"  # written as Direction.save wrote it before weights.py
    metadata = {"format": "interventions.reptune.Direction/1", "layers": "[4, 6]",
                "method": "pca", "n_pairs": "12", "meta": '{"only_correct": true}'}  # fmt: skip
    save_file({"vectors": vectors}, str(old), metadata)
    d = rt.Direction.load(old)
    assert torch.equal(d.vectors, vectors) and d.layers == (4, 6) and d.method == "pca"
    assert d.n_pairs == 12 and d.meta == {"only_correct": True}
    again = rt.Direction.load(d.save(tmp_path / "again.safetensors"))
    assert (again.layers, again.method, again.n_pairs, again.meta) == (d.layers, "pca", 12, d.meta)
    model = tiny("llama", n_layers=2)
    delta = iv.WeightDelta.from_change(model, {})
    foreign = delta.save(tmp_path / "delta.safetensors")
    with pytest.raises(ValueError, match="interventions.reptune.Direction/1"):
        rt.Direction.load(foreign)
    with pytest.raises(FileNotFoundError):
        rt.Direction.load(tmp_path / "missing.safetensors")


def test_extract_direction_only_correct_filters_pairs(tok, claims):
    model = tiny("llama", n_layers=2)
    pairs = rt.honesty_pairs(claims[:12])
    prompts = [p.positive for p in pairs] + [p.negative for p in pairs]
    margins = lm.choice_margin(model, tok, prompts, rt.CHOICES)
    said = [" True" if m > 0 else " False" for m in margins.tolist()]
    kept = [
        p
        for i, p in enumerate(pairs)
        if said[i] == p.positive_answer and said[12 + i] == p.negative_answer
    ]
    if not kept:
        with pytest.raises(ValueError, match="none of the"):
            rt.extract_direction(model, tok, pairs, layers=[1], only_correct=True)
        return
    d = rt.extract_direction(model, tok, pairs, layers=[1], n_positions=2, only_correct=True)
    expected = rt.extract_direction(model, tok, kept, layers=[1], n_positions=2)
    assert d.n_pairs == len(kept) < 12
    torch.testing.assert_close(d.vectors, expected.vectors)


# --- parameter blocks -----------------------------------------------------------------------------


def test_block_parameters_names():
    model = tiny("llama", n_layers=3)
    names = set(rt.block_parameters(model, "layers.1:3.attn.v+attn.o"))
    assert names == {
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (1, 2) for p in ("v", "o")
    }
    mlp = set(rt.block_parameters(model, ["layers.0.mlp"]))
    assert mlp == {f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    assert len(rt.block_parameters(model, "layers.*.block")) == 3 * 9
    gpt2 = tiny("gpt2", n_layers=2)
    assert rt.default_projection_kind(gpt2) == "attn"
    assert "transformer.h.1.attn.c_proj.weight" in rt.block_parameters(gpt2, "layers.1.attn.o")
    with pytest.raises(ValueError, match="c_attn"):
        rt.block_parameters(gpt2, "layers.1.attn.v")
    with pytest.raises(ValueError, match="unknown module kind"):
        rt.block_parameters(model, "layers.1.ffn")
    with pytest.raises(ValueError, match=r"block 'layers.2:5.mlp': layers '2:5' is out of range"):
        rt.block_parameters(model, "layers.2:5.mlp")
    with pytest.raises(ValueError, match="empty layer range"):
        rt.block_parameters(model, "layers.2:1.mlp")
    with pytest.raises(ValueError, match="expected 'layers"):
        rt.block_parameters(model, "mlp")


def test_block_parameters_refuse_offloaded_weights(offload):
    offloaded = offload(tiny("llama", n_layers=2))
    with pytest.raises(ValueError, match=r"layers.1.mlp.*down_proj.weight is offloaded"):
        rt.block_parameters(offloaded, "layers.1.mlp.down")


# --- tuning (acceptance 2 and 5 on tiny models) ---------------------------------------------------


def _tiny_setup(tok, claims, n_claims: int = 16):
    model = tiny("llama", n_kv_heads=2, n_layers=3)
    d = rt.extract_direction(model, tok, rt.honesty_pairs(claims[:n_claims]), [1, 2], n_positions=3)
    return model, d, rt.tuning_examples(claims[:n_claims])


def test_each_loss_updates_only_its_own_group(tok, claims):
    # The projection loss (layer 2) depends on the token group (layer 1 MLP) and the token loss
    # depends on the projection group (layer 2 attention): both cross-gradients exist.
    base, d, data = _tiny_setup(tok, claims)
    proj_blocks, token_blocks = ["layers.2.attn.v+attn.o"], ["layers.1.mlp"]
    proj_names = set(rt.block_parameters(base, proj_blocks))
    token_names = set(rt.block_parameters(base, token_blocks))
    assert proj_names.isdisjoint(token_names)
    before = snapshot(base)
    tuned = {}
    for name, tolerance in (("no_token_step", math.inf), ("token_step", -1.0)):
        model = copy.deepcopy(base)
        history: list[dict] = []
        rt.tune(
            model, tok, data, direction=d, layers=[2], projection_blocks=proj_blocks,
            token_blocks=token_blocks, lr=1e-2, steps=1, batch_size=4, val_fraction=0.0,
            weight_decay=0.1, token_tolerance=tolerance, progress=False, history=history,
        )  # fmt: skip
        assert history[-1]["token_step"] is (name == "token_step")
        tuned[name] = snapshot(model)
    others = set(before) - proj_names - token_names
    for state in tuned.values():
        assert all(torch.equal(state[k], before[k]) for k in others)
        assert all(not torch.equal(state[k], before[k]) for k in proj_names)
    # the projection loss alone never moves the token group ...
    assert all(torch.equal(tuned["no_token_step"][k], before[k]) for k in token_names)
    # ... the token loss moves it, and leaves the projection group exactly as the projection
    # loss alone left it
    assert all(not torch.equal(tuned["token_step"][k], before[k]) for k in token_names)
    assert all(torch.equal(tuned["token_step"][k], tuned["no_token_step"][k]) for k in proj_names)


def test_tune_in_and_out_on_held_out_prompts_and_revert(tok, claims, tmp_path):
    model, d, data = _tiny_setup(tok, claims)
    held_out = rt.claim_prompts(claims[40:48])
    before = snapshot(model)
    cos0 = rt.cosine_to_direction(model, tok, held_out, d)
    delta = rt.tune(model, tok, data, direction=d, layers=[1, 2], mode="in", lr=3e-3,
                    steps=20, batch_size=8, progress=False)  # fmt: skip
    cos_in = rt.cosine_to_direction(model, tok, held_out, d)
    assert all(cos_in[i]["cos"] > cos0[i]["cos"] + 0.1 for i in (1, 2)), (cos0, cos_in)
    assert isinstance(delta, iv.WeightDelta) and delta.applied
    path = delta.save(tmp_path / "in.safetensors")
    delta.revert(model)
    assert_same(model, before)
    loaded = iv.WeightDelta.load(path).apply(model)
    assert rt.cosine_to_direction(model, tok, held_out, d) == cos_in
    loaded.revert(model)
    assert_same(model, before)

    delta = rt.tune(model, tok, data, direction=d, layers=[1, 2], mode="out", lr=3e-3,
                    steps=20, batch_size=8, progress=False)  # fmt: skip
    cos_out = rt.cosine_to_direction(model, tok, held_out, d)
    assert all(cos_out[i]["abs_cos"] < 0.5 * cos0[i]["abs_cos"] for i in (1, 2)), (cos0, cos_out)
    delta.revert(model)
    assert_same(model, before)


def test_a_parameter_in_both_groups_is_the_token_groups(tok, claims, untouched):
    model, d, data = _tiny_setup(tok, claims)
    shared = set(rt.block_parameters(model, "layers.2.mlp"))
    before = snapshot(model)
    delta = rt.tune(model, tok, data, direction=d, layers=[2], projection_blocks=["layers.2.block"],
                    token_blocks=["layers.2.mlp"], lr=1e-2, steps=2, batch_size=4,
                    val_fraction=0.0, token_tolerance=math.inf, progress=False)  # fmt: skip
    moved = set(delta.names)
    assert moved and moved.isdisjoint(shared)  # no token step: the shared MLP stays as it was
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in shared)
    delta.revert(model)
    check = untouched(model)
    with pytest.raises(ValueError, match="every parameter of projection_blocks is also in"):
        rt.tune(model, tok, data, direction=d, layers=[2], projection_blocks=["layers.2.mlp"],
                token_blocks=["layers.2.mlp"], steps=1, progress=False)  # fmt: skip
    check()


def test_tune_a_lora_model_names_parameters_of_the_causal_lm(tok, claims, lora):
    model, d, data = _tiny_setup(tok, claims)
    wrapped = lora(model, ["self_attn.v_proj"])
    before = snapshot(wrapped)
    names = set(rt.block_parameters(wrapped, "layers.2.attn.v"))
    assert names == {
        f"model.layers.2.self_attn.v_proj.{p}"
        for p in ("base_layer.weight", "lora_A.default.weight", "lora_B.default.weight")
    }
    held_out = rt.claim_prompts(claims[40:48])
    cos0 = rt.cosine_to_direction(wrapped, tok, held_out, d)
    delta = rt.tune(
        wrapped,
        tok,
        data,
        direction=d,
        layers=[2],
        lr=3e-3,
        steps=10,
        projection_blocks=["layers.2.attn.v"],
        token_blocks=[],
        progress=False,
    )
    assert set(delta.names) <= names and delta.names
    assert rt.cosine_to_direction(wrapped, tok, held_out, d)[2]["cos"] > cos0[2]["cos"]
    delta.revert(wrapped)
    assert_same(wrapped, before)


def test_tune_keeps_the_best_validated_weights(tok, claims):
    model, d, _ = _tiny_setup(tok, claims)
    data = [rt.Example(p) for p in rt.claim_prompts(claims[:16])]  # no token loss
    val = [rt.Example(p) for p in rt.claim_prompts(claims[60:66])]
    history: list[dict] = []
    rt.tune(model, tok, data, direction=d, layers=[2], lr=0.3, steps=12, batch_size=4,
            val_data=val, eval_every=2, patience=2, progress=False, history=history)  # fmt: skip
    evals = [h for h in history if "val_projection" in h]
    assert evals[0]["step"] == 0 and len(evals) >= 2
    assert len([h for h in history if "projection" in h]) <= 12
    acts = rt.residuals(model, tok, [e.prompt for e in val], [2], d.n_positions)
    now = float(rt.projection_loss(acts, d.at([2])))
    assert now == pytest.approx(min(h["val_projection"] for h in evals), abs=1e-5)


def test_tune_with_a_completion_target_and_projection_only(tok, claims):
    model, d, _ = _tiny_setup(tok, claims)
    data = [rt.Example(rt.claim_prompt(c.text), " yes indeed") for c in claims[:8]]
    history: list[dict] = []
    delta = rt.tune(model, tok, data, direction=d, layers=[1], steps=3, batch_size=4,
                    token_tolerance=-1.0, val_fraction=0.25, progress=False,
                    history=history)  # fmt: skip
    assert any(h.get("token_step") for h in history)
    assert any("mlp" in n for n in delta.names)
    delta.revert(model)
    only_proj = rt.tune(model, tok, [rt.Example(e.prompt) for e in data], direction=d,
                        layers=[1], steps=2, batch_size=4, progress=False)  # fmt: skip
    assert not any("mlp" in n for n in only_proj.names)
    only_proj.revert(model)
    with pytest.raises(ValueError, match="mode"):
        rt.tune(model, tok, data, direction=d, layers=[1], mode="up", progress=False)
    with pytest.raises(ValueError, match="no layer"):
        rt.tune(model, tok, data, direction=d, layers=[0], progress=False)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"lr": INF}, ValueError, r"lr must be a finite number > 0, got inf"),
        ({"lr": NAN}, ValueError, r"lr must be a finite number > 0, got nan"),
        ({"lr": 0.0}, ValueError, r"lr must be a finite number > 0, got 0.0"),
        ({"lr": -1e-3}, ValueError, r"lr must be a finite number > 0"),
        ({"token_lr": 0.0}, ValueError, r"token_lr must be a finite number > 0"),
        ({"token_lr": INF}, ValueError, r"token_lr must be a finite number > 0"),
        ({"steps": True}, TypeError, r"steps must be an integer >= 1, got True \(bool\)"),
        ({"steps": 2.5}, TypeError, r"steps must be an integer >= 1, got 2.5 \(float\)"),
        ({"steps": 0}, ValueError, r"steps must be an integer >= 1, got 0"),
        ({"batch_size": True}, TypeError, r"batch_size must be an integer >= 1"),
        ({"batch_size": 0}, ValueError, r"batch_size must be an integer >= 1"),
        ({"warmup": -1}, ValueError, r"warmup must be an integer >= 0"),
        ({"eval_every": 0}, ValueError, r"eval_every must be an integer >= 1"),
        ({"patience": False}, TypeError, r"patience must be an integer >= 1"),
        ({"weight_decay": NAN}, ValueError, r"weight_decay must be a finite number >= 0"),
        ({"weight_decay": -0.1}, ValueError, r"weight_decay must be a finite number >= 0"),
        ({"token_tolerance": NAN}, ValueError, r"token_tolerance must be a number, got nan"),
        ({"val_fraction": NAN}, ValueError, r"val_fraction must be a finite number >= 0 and < 1"),
        ({"val_fraction": -0.2}, ValueError, r"val_fraction must be a finite number >= 0 and < 1"),
        ({"layers": []}, ValueError, r"layers is empty: name the layers .* list\(direction"),
        ({"layers": [1, 1]}, ValueError, r"layers repeats layer \[1\]"),
        ({"layers": [7]}, ValueError, r"layers: layer index \[7\] out of range: the model has 3"),
        ({"layers": [True]}, TypeError, r"layers\[0\] must be an integer, got True"),
    ],
)
def test_tune_refuses_nonsense_hyperparameters_and_changes_nothing(
    tok, claims, untouched, options, error, message
):
    model, d, data = _tiny_setup(tok, claims, n_claims=8)
    check = untouched(model)
    with pytest.raises(error, match=message):
        rt.tune(model, tok, data, **{"direction": d, "layers": [1, 2], "steps": 2,
                                     "progress": False, **options})  # fmt: skip
    check()


def test_tune_refuses_a_non_finite_target_before_anything_runs(tok, claims, untouched):
    model, d, data = _tiny_setup(tok, claims, n_claims=8)
    check = untouched(model)
    bad = [*data, rt.Example(data[0].prompt, {" True": float("nan"), " False": 1.0})]
    with pytest.raises(ValueError, match=r"target\[' True'\] must be a finite number >= 0"):
        rt.tune(model, tok, bad, direction=d, layers=[1, 2], steps=2, progress=False)
    check()


def test_tune_refuses_zero_non_finite_and_foreign_directions(tok, claims, untouched):
    model, d, data = _tiny_setup(tok, claims, n_claims=8)
    check = untouched(model)
    nan = copy.deepcopy(d)
    nan.vectors[1, 0, 3] = float("nan")  # changed after it was made
    zero = copy.deepcopy(d)
    zero.vectors[0, 2] = 0.0
    narrow = rt.Direction(d.vectors[..., :16].clone(), d.layers)
    for direction, message in (
        (nan, r"1 NaN or infinite values"),
        (zero, r"zero vector at \(layer, position\) \[\(1, 2\)\]"),
        (narrow, r"the direction has width 16, the model's residual stream 32: .*another model"),
    ):
        with pytest.raises(ValueError, match=message):
            rt.tune(model, tok, data, direction=direction, layers=[1, 2], steps=2, progress=False)
        with pytest.raises(ValueError, match=message):
            rt.cosine_to_direction(model, tok, [e.prompt for e in data], direction)
        check()
    with pytest.raises(TypeError, match="must be a reptune.Direction"):
        rt.tune(model, tok, data, direction=d.vectors, layers=[1, 2], progress=False)
    check()


def test_extract_direction_refuses_pairs_without_a_difference(tok, claims, untouched):
    model = tiny("llama", n_layers=3)
    check = untouched(model)
    same = [rt.Pair(p.positive, p.positive) for p in rt.honesty_pairs(claims[:4])]
    with pytest.raises(ValueError, match=r"all 4 pairs give the same resid_post .*\(1, -3\)"):
        rt.extract_direction(model, tok, same, layers=[1, 2], n_positions=3)
    with pytest.raises(ValueError, match="same resid_post"):  # no arbitrary principal component
        rt.extract_direction(model, tok, same, layers=[1], n_positions=3, method="pca")
    pairs = rt.honesty_pairs(claims[:4])
    with pytest.raises(ValueError, match="layers is empty"):
        rt.extract_direction(model, tok, pairs, layers=[])
    with pytest.raises(TypeError, match="n_positions must be an integer >= 1"):
        rt.extract_direction(model, tok, pairs, layers=[1], n_positions=2.0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        rt.extract_direction(model, tok, pairs, layers=[1], batch_size=0)
    check()


def test_evaluation_refuses_nonsense_numbers(tok, claims, untouched):
    model, d, _ = _tiny_setup(tok, claims, n_claims=4)
    check = untouched(model)
    prompts = rt.claim_prompts(claims[:4])
    with pytest.raises(ValueError, match="alpha must be a finite number, got nan"):
        d.steering_plan(1, float("nan"))
    with pytest.raises(ValueError, match=r"alphas\[1\] must be a finite number, got inf"):
        rt.steerability(model, tok, prompts, d, 1, alphas=(0.0, float("inf")))
    with pytest.raises(ValueError, match="at least two different alphas"):
        rt.steerability(model, tok, prompts, d, 1, alphas=(1.0, 1.0))
    with pytest.raises(TypeError, match="window must be an integer >= 2, got 8.0"):
        rt.perplexity(model, tok, "a b c d e f g h i j", window=8.0, stride=4)
    with pytest.raises(ValueError, match="stride must be an integer >= 1, got 0"):
        rt.perplexity(model, tok, "a b c d e f g h i j", window=8, stride=0)
    with pytest.raises(ValueError, match="need stride <= window"):
        rt.perplexity(model, tok, "a b c d e f g h i j", window=4, stride=8)
    check()


def test_search_blocks_ranks_and_restores(tok, claims):
    model, d, data = _tiny_setup(tok, claims, n_claims=12)
    before = snapshot(model)
    search = rt.search_blocks(
        model, tok, data, direction=d, layers=[2],
        projection_candidates=rt.candidate_blocks([(1, 3), (2, 3)], ["attn.v+attn.o", "mlp"]),
        token_candidates=[(), ("layers.2.mlp",)], steps=2, batch_size=4, progress=False,
    )  # fmt: skip
    assert_same(model, before)
    scores = [r.score for r in search.rows]
    assert scores == sorted(scores)
    # overlapping groups (mlp of layer 2 in both) are skipped: 4 x 2 - 2 combinations
    assert len(search.rows) == 6
    assert "rank" in search.table() and "(untuned)" in search.table()
    assert search.best.score <= search.baseline["val_projection"] + 1e-6 + search.baseline[
        "val_token_excess"]  # fmt: skip


class FailingHistory(list):
    """A history that fails when asked to record ``step`` (an error inside the loop)."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def append(self, record: dict) -> None:
        if record.get("step") == self.step and "projection" in record:
            raise RuntimeError("boom")
        super().append(record)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_tune_leaves_the_model_exactly_as_it_was(
    tok, claims, untouched, interrupt, failure
):
    model, d, data = _tiny_setup(tok, claims)
    model.train()  # the train/eval mode of every module comes back too
    check = untouched(model)
    tuned = list(
        rt.block_parameters(model, ["layers.1:3.attn.v+attn.o", "layers.1:3.mlp"]).values()
    )
    first = [p.detach().clone() for p in tuned]
    history = None
    if failure is KeyboardInterrupt:  # Ctrl-C in the forward of the step after one update

        def updated(_: int) -> bool:
            return any(not torch.equal(p, q) for p, q in zip(tuned, first, strict=True))

        calls = interrupt(model, 1, updated)
    else:  # an error after two updates (recording the second step)
        history = FailingHistory(step=2)
    with pytest.raises(failure):
        rt.tune(model, tok, data, direction=d, layers=[1, 2], lr=1e-2, steps=5, batch_size=4,
                token_tolerance=-1.0, val_fraction=0.0, progress=False,
                history=history)  # fmt: skip
    if failure is KeyboardInterrupt:
        assert calls == [False, True]  # it fired in the second step, after the first tuned
    else:
        assert len(history) == 1
    check()


# --- choosing the learning rate (issue 19: a default that works) -------------------------------

GRID = (1e-2, 1.0, 10.0, 100.0, 1000.0)  # a tiny random model's perplexity barely moves


def _choose(model, tok, d, data, **overrides):
    arguments = dict(direction=d, layers=[1, 2], grid=GRID, trial_steps=3, batch_size=4,
                     val_fraction=0.25, perplexity_budget=0.0, progress=False)  # fmt: skip
    return rt.choose_lr(model, tok, data, **(arguments | overrides))


def test_choose_lr_takes_the_largest_rate_that_helps_within_the_budget(tok, claims):
    model, d, data = _tiny_setup(tok, claims)
    before = snapshot(model)
    choice = _choose(model, tok, d, data)
    assert_same(model, before)  # every trial reverted bit-exactly
    rows = {r["lr"]: r for r in choice.grid}
    assert list(rows) == sorted(rows) and set(rows) <= set(GRID)
    good = [lr for lr, r in rows.items() if r["perplexity_rise"] <= 0.0
            and r["val_loss"] < choice.untuned_val_loss]  # fmt: skip
    assert choice.within_budget and choice.lr == max(good)
    # the search stops at the first rate past the budget: only the last row may be over it
    over = [lr for lr, r in rows.items() if r["perplexity_rise"] > 0.0]
    assert over == [] or over == [max(rows)]
    assert len(choice.table().splitlines()) == len(rows) + 1 and "<- chosen" in choice.table()


def test_tune_at_lr_auto_is_the_run_at_the_chosen_rate(tok, claims, monkeypatch):
    model, d, data = _tiny_setup(tok, claims)
    twin = copy.deepcopy(model)
    choice = _choose(model, tok, d, data)
    # tune's own choice: the same arguments as _choose, through choose_lr's defaults
    real_choose = rt.choose_lr
    monkeypatch.setattr(rt, "choose_lr", lambda *a, **k: real_choose(*a, **k | dict(
        grid=GRID, trial_steps=3, perplexity_budget=0.0)))  # fmt: skip
    history: list[dict] = []
    auto = rt.tune(model, tok, data, direction=d, layers=[1, 2], steps=4, batch_size=4,
                   val_fraction=0.25, progress=False, history=history)  # fmt: skip
    assert history[0]["lr_choice"] == choice
    assert set(history[-1]) == {"perplexity", "perplexity_rise"}
    fixed = rt.tune(twin, tok, data, direction=d, layers=[1, 2], lr=choice.lr, steps=4,
                    batch_size=4, val_fraction=0.25, progress=False)  # fmt: skip
    assert auto.names == fixed.names
    assert all(torch.equal(auto.changes[n], fixed.changes[n]) for n in auto.names)


def test_the_full_run_at_lr_auto_stops_where_its_perplexity_leaves_the_budget(
    tok, claims, monkeypatch
):
    # a trial of 10 steps can keep the budget where 50 steps do not (SmolLM2 "in": +0.4 % after
    # the 3e-4 trial, +82 % after the full run): the full run checks at every evaluation
    model, d, data = _tiny_setup(tok, claims)
    twin = copy.deepcopy(model)
    choice = rt.LrChoice(1e-2, 0.05, True, 10, 256, 1.0, 100.0, ())
    monkeypatch.setattr(rt, "choose_lr", lambda *a, **k: choice)
    measured = iter([100.0, 104.0, 106.0, 104.0])  # steps 2 and 4 within, 6 past; the returned
    monkeypatch.setattr(rt, "_fluency_perplexity", lambda *a: next(measured))
    history: list[dict] = []
    auto = rt.tune(model, tok, data, direction=d, layers=[1, 2], steps=10, batch_size=4,
                   val_fraction=0.0, eval_every=2, progress=False, history=history)  # fmt: skip
    checks = [h for h in history if "perplexity" in h]
    assert [h.get("step") for h in checks] == [2, 4, 6, None]
    assert max(h["step"] for h in history if "projection" in h) == 6  # stopped there
    at_4 = rt.tune(twin, tok, data, direction=d, layers=[1, 2], lr=1e-2, steps=4, batch_size=4,
                   val_fraction=0.0, progress=False)  # fmt: skip
    assert all(torch.equal(auto.changes[n], at_4.changes[n]) for n in at_4.names)


def test_choose_lr_warns_and_takes_the_smallest_when_no_rate_helps(tok, claims):
    model, d, data = _tiny_setup(tok, claims)
    with pytest.warns(UserWarning, match="no learning rate .* took the smallest, 1e-12"):
        choice = _choose(model, tok, d, data, grid=(1e-11, 1e-12))
    assert choice.lr == 1e-12 and not choice.within_budget
    # without a validation split the trials are judged on their own training examples
    in_sample = _choose(model, tok, d, data, val_fraction=0.0)
    assert in_sample.within_budget and in_sample.untuned_val_loss != choice.untuned_val_loss


def test_choose_lr_refuses_bad_settings_and_leaves_the_model_on_interrupt(tok, claims, monkeypatch):
    model, d, data = _tiny_setup(tok, claims)
    for bad, match in (({"grid": ()}, "distinct"), ({"grid": (1e-3, 1e-3)}, "distinct"),
                       ({"grid": (0.0,)}, r"grid\[0\]"), ({"perplexity_budget": -0.1}, "budget"),
                       ({"trial_steps": 0}, "trial_steps")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            _choose(model, tok, d, data, **bad)
    with pytest.raises((TypeError, ValueError), match="lr"):
        rt.tune(model, tok, data, direction=d, layers=[1, 2], lr="fast", progress=False)
    before = snapshot(model)
    calls = []
    real = rt._fluency_perplexity

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:  # in the second trial, its weights applied
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(rt, "_fluency_perplexity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _choose(model, tok, d, data)
    assert_same(model, before)


# --- evaluation -----------------------------------------------------------------------------------


def test_perplexity_matches_hand_computation(tok):
    model = tiny("llama", n_layers=2)
    text = " ".join(f"w{i % 13}" for i in range(40))
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    full = math.exp(float(rt.token_cross_entropy(logits[:, :-1], ids[:, 1:])))
    assert rt.perplexity(model, tok, text, window=64, stride=64) == pytest.approx(full, rel=1e-5)
    # non-overlapping windows of 16: each window scores its tokens after its first
    nll, count = 0.0, 0
    for start in range(0, ids.shape[1], 16):
        chunk = ids[:, start : start + 16]
        with torch.no_grad():
            lg = model(input_ids=chunk).logits
        n = chunk.shape[1] - 1
        if n > 0:
            nll += float(rt.token_cross_entropy(lg[:, :-1], chunk[:, 1:])) * n
            count += n
    got = rt.perplexity(model, tok, text, window=16, stride=16)
    assert got == pytest.approx(math.exp(nll / count), rel=1e-5)
    # overlapping windows give context: between the two
    overlapped = rt.perplexity(model, tok, text, window=16, stride=8)
    assert overlapped != pytest.approx(got)
    with pytest.raises(ValueError, match="stride"):
        rt.perplexity(model, tok, text, window=8, stride=16)


def test_evaluation_at_a_direction_is_the_honesty_metric_at_its_vectors(tok, claims):
    model, d, _ = _tiny_setup(tok, claims, n_claims=6)
    prompts = rt.claim_prompts(claims[:6])
    assert rt.cosine_to_direction(model, tok, prompts, d) == honesty.cosine_to_direction(
        model, tok, prompts, d.vectors, [1, 2]
    )
    got = rt.cosine_to_direction(model, tok, prompts, d, layers=[2], batch_size=4)
    assert got == honesty.cosine_to_direction(model, tok, prompts, d.at([2]), [2], batch_size=4)
    steer = rt.steerability(model, tok, prompts, d, layer=1, alphas=(0.0, 50.0))
    plan = lambda alpha: d.steering_plan(1, alpha)  # noqa: E731
    assert steer == honesty.steerability(model, tok, prompts, plan, alphas=(0.0, 50.0))
    assert steer["margins"][1] != pytest.approx(steer["margins"][0])
    assert rt.load_claims is honesty.load_claims and rt.forced_choice is honesty.forced_choice


def test_any_of_target_only_keeps_the_answer_format(tok, claims):
    model, d, _ = _tiny_setup(tok, claims)
    data = rt.tuning_examples(claims[:6], honest=True)
    assert data[0].target == rt.AnyOf((" True", " False"))
    batch = rt.make_batch(tok, [e.prompt for e in data])
    with torch.no_grad():
        logits = model(**batch.inputs()).logits[:, -1]
    choices = [tok(c, add_special_tokens=False)["input_ids"][0] for c in rt.CHOICES]
    mass = logits.softmax(-1)[:, choices].sum(-1)
    history: list[dict] = []
    delta = rt.tune(model, tok, data, direction=d, layers=[1], lr=1e-4, steps=1, batch_size=6,
                    val_fraction=0.0, progress=False, history=history)  # fmt: skip
    assert history[-1]["token_excess"] == pytest.approx(float(-mass.log().mean()), rel=1e-4)
    delta.revert(model)


def test_steering_plan_adds_each_vector_at_its_position(tok):
    model = tiny("llama", n_layers=3)
    vectors = torch.randn(1, 3, 32)
    d = rt.Direction(vectors, (1,))
    ids = torch.tensor([tok("a b c d e f")["input_ids"]])
    with torch.no_grad(), iv.capture(model, "layers.1.resid_post") as plain:
        model(input_ids=ids)
    plan = d.steering_plan(1, alpha=2.0)
    with torch.no_grad(), iv.capture(model, "layers.1.resid_post", plan=plan) as steered:
        model(input_ids=ids)
    added = steered["layers.1.resid_post"] - plain["layers.1.resid_post"]
    torch.testing.assert_close(added[0, -3:], 2 * vectors[0], atol=1e-5, rtol=1e-5)
    assert added[0, :-3].abs().max() == 0
    everywhere = d.steering_plan(1, alpha=1.0, everywhere=True)["layers.1.resid_post"]
    torch.testing.assert_close(everywhere.vector, vectors[0].mean(0))


# --- the real model (acceptance 3, 4, 5) ----------------------------------------------------------


@pytest.mark.real
def test_real_model_tunes_the_direction_in_and_out(real_model):
    """Short runs on SmolLM2-135M (full-size numbers: examples/04, docs/reptune.md)."""
    model, tokenizer = real_model
    train, test = rt.split_claims(rt.load_claims(), held_out=0.3)
    layers, steer_layer = [21, 22], 20
    d = rt.extract_direction(model, tokenizer, rt.honesty_pairs(train[:24]), [20, 21, 22])
    held_out = rt.claim_prompts(test[:8])  # HELD-OUT claims: honest context, then lying context
    prose = rt.load_prose()
    data = rt.tuning_examples(train)

    def measure(full: bool = True) -> dict:
        margins = lm.choice_margin(model, tokenizer, held_out, rt.CHOICES)
        gap = float(margins[:8].mean() - margins[8:].mean())  # honest minus lying context
        result = {"margin": float(margins.mean()), "gap": gap}
        if full:
            cos = rt.cosine_to_direction(model, tokenizer, held_out, d, layers=layers)
            steer = rt.steerability(model, tokenizer, held_out, d, steer_layer, alphas=(0.0, 2.0))
            result["cos"] = sum(v["cos"] for v in cos.values()) / len(cos)
            result["abs_cos"] = sum(v["abs_cos"] for v in cos.values()) / len(cos)
            result["slope"] = steer["slope"]
            result["ppl"] = rt.perplexity(
                model, tokenizer, prose, window=128, stride=64, max_tokens=256
            )
        return result

    def tuned(mode: str, flip=False, token_blocks: list | None = None, lr=1e-3, steps=8) -> dict:
        delta = rt.tune(model, tokenizer, data, direction=d, layers=layers, mode=mode, flip=flip,
                        token_blocks=token_blocks, lr=lr, steps=steps, batch_size=8, warmup=2,
                        val_fraction=0.0, token_tolerance=0.1, progress=False)  # fmt: skip
        try:
            return measure(full=not flip)
        finally:
            delta.revert(model)
            assert_same(model, original)  # acceptance 5: bit-exact

    original = snapshot(model)
    before = measure()
    assert before["gap"] > 0.5  # the honest context answers " True" more: the direction's sense
    tuned_in = tuned("in")  # dual loss: projection on attn v/o, token loss on the MLPs
    minus_d = tuned("in", flip=True, token_blocks=[])  # control: tune the negated direction in
    # projection only; |cos| is small already (~0.08), and 8 steps take it only to ~0.045
    tuned_out = tuned("out", token_blocks=[], lr=3e-3, steps=16)
    report = {"before": before, "in": tuned_in, "in -d": minus_d, "out": tuned_out}
    print(report)
    # acceptance 3: cosine at the tuned layers on held-out claims, perplexity
    assert tuned_in["cos"] > before["cos"] + 0.1, report
    assert tuned_out["abs_cos"] < 0.6 * before["abs_cos"], report
    assert max(tuned_in["ppl"], tuned_out["ppl"]) < 1.1 * before["ppl"], report
    # acceptance 4: answers move the direction's way (and the negated direction's other way);
    # the tuned-out model no longer separates the contexts and is less steerable
    assert tuned_in["margin"] > before["margin"] + 0.5 > minus_d["margin"] + 1.0, report
    assert tuned_out["gap"] < 0.5 * before["gap"], report
    assert before["slope"] > 0.2 and tuned_out["slope"] < 0.8 * before["slope"], report
