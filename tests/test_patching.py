"""Patching sweeps, attribution patching and the logit lens on the tiny models."""

import pytest
import torch

import interventions as iv
from interventions.adapters import _REGISTRY
from interventions.models import available_tiny_types, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

CLEAN = [5, 17, 42, 8, 23, 61]
CORRUPTED = [5, 17, 77, 8, 23, 61]
ANSWERS = (11, 29)


def _refuses(model_type, kind):
    try:
        _REGISTRY[model_type].refuse(kind)
    except NotImplementedError:
        return True
    return False


LENS_TYPES = [
    t
    for t in available_tiny_types()
    if t in _REGISTRY and not _refuses(t, "resid_post") and not _refuses(t, "final_norm")
]


class _SetOne(iv.Intervention):
    """The reference: one patch per forward, the clean value written at one position / head."""

    def __init__(self, value, position, head=None):
        super().__init__()
        self.value, self.position, self.head = value, position, head

    def forward(self, x):
        y = x.clone()
        if self.head is None:
            y[:, self.position] = self.value
        else:
            y[:, :, self.head] = self.value
        return y


def _loop(model, site_kind, by, metric):
    """A one-patch-per-forward map of ``site_kind`` over every layer."""
    n_layers = iv.geometry(model).n_layers
    clean, corrupted = torch.tensor([CLEAN]), torch.tensor([CORRUPTED])
    sites = [f"layers.{i}.{site_kind}" for i in range(n_layers)]
    with torch.no_grad(), iv.capture(model, sites) as cache:
        model(input_ids=clean)
    width = len(CLEAN) if by == "position" else iv.geometry(model).n_heads
    out = torch.empty(n_layers, width)
    for i, site in enumerate(sites):
        act = cache[site][0]
        for j in range(width):
            one = _SetOne(act[j], j) if by == "position" else _SetOne(act[:, j], None, j)
            with torch.no_grad(), iv.intervene(model, {site: one}):
                out[i, j] = metric(model(input_ids=corrupted).logits)[0]
    return out


SWEEP_TYPES = [("llama", 2), ("gpt2", None), ("qwen2", 2)]


@pytest.mark.parametrize("model_type,kv", SWEEP_TYPES)
@pytest.mark.parametrize(
    "kind,by", [("resid_pre", "position"), ("attn.out", "position"), ("attn.heads", "head")]
)
def test_batched_sweep_equals_one_patch_per_forward(model_type, kv, kind, by):
    model = tiny(model_type, n_kv_heads=kv, n_layers=3)
    metric = iv.logit_diff(*ANSWERS)
    expected = _loop(model, kind, by, metric)
    # batch_size 5 splits a layer's cells over two forwards and puts two layers in one
    got = iv.patching(
        model, CLEAN, CORRUPTED, f"layers.*.{kind}", answers=ANSWERS, batch_size=5, progress=False
    )
    assert got.by == by and got.layers == [0, 1, 2]
    torch.testing.assert_close(got.values, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got.values, torch.full_like(got.values, got.corrupted_metric))


def test_patching_clean_into_clean_gives_the_clean_metric_everywhere(llama):
    for site in ("layers.*.resid_pre", "layers.*.mlp.out", "layers.*.attn.heads"):
        result = iv.patching(llama, CLEAN, CLEAN, site, answers=ANSWERS, progress=False)
        assert result.clean_metric == result.corrupted_metric
        torch.testing.assert_close(
            result.values, torch.full_like(result.values, result.clean_metric), atol=1e-5, rtol=0
        )


def test_the_last_position_at_the_first_layer_restores_the_clean_run(llama):
    """Patching resid_pre at layer 0 at the only differing position is the clean run itself."""
    result = iv.patching(llama, CLEAN, CORRUPTED, answers=ANSWERS, progress=False)
    assert result.values[0, 2].item() == pytest.approx(result.clean_metric, abs=1e-5)
    assert result.values[0, 0].item() == pytest.approx(result.corrupted_metric, abs=1e-5)
    assert result.normalized()[0, 2].item() == pytest.approx(1.0, abs=1e-4)


def test_table_labels_every_cell(llama):
    result = iv.patching(llama, CLEAN, CORRUPTED, answers=ANSWERS, progress=False)
    rows = result.table()
    assert len(rows) == 3 * len(CLEAN)
    assert rows[7]["site"] == "layers.1.resid_pre" and rows[7]["position"] == 1
    assert rows[7]["metric"] == pytest.approx(float(result.values[1, 1]))
    assert result.peak()["metric"] == pytest.approx(float(result.values.max()))
    listed = iv.patching(
        llama, CLEAN, CORRUPTED, ["layers.0.mlp.out", "layers.2.mlp.out"], answers=ANSWERS,
        progress=False,
    )  # fmt: skip
    assert listed.layers == [0, 2] and listed.table()[-1]["site"] == "layers.2.mlp.out"


def test_a_custom_metric_of_logits_is_used(llama):
    def mean_logit(logits):
        return logits[:, -1].mean(-1)

    result = iv.patching(llama, CLEAN, CORRUPTED, metric=mean_logit, progress=False)
    expected = _loop(llama, "resid_pre", "position", mean_logit)
    torch.testing.assert_close(result.values, expected, atol=1e-5, rtol=0)


def test_attribution_patching_matches_a_finite_difference():
    """d metric along (clean - corrupted) at each cell, by a central difference in float64 (on
    GPT-2: Llama's RMSNorm computes in float32 even in a float64 model, too coarse for it)."""
    model = tiny("gpt2", n_layers=2).double()
    metric = iv.logit_diff(*ANSWERS)
    got = iv.attribution_patching(model, CLEAN, CORRUPTED, answers=ANSWERS)
    clean, corrupted = torch.tensor([CLEAN]), torch.tensor([CORRUPTED])
    sites = ["layers.0.resid_pre", "layers.1.resid_pre"]
    with torch.no_grad(), iv.capture(model, sites) as clean_cache:
        model(input_ids=clean)
    with torch.no_grad(), iv.capture(model, sites) as corrupted_cache:
        model(input_ids=corrupted)
    eps = 1e-5
    for i, site in enumerate(sites):
        for j in range(len(CLEAN)):
            a, b = corrupted_cache[site][0, j], clean_cache[site][0, j]
            ends = []
            for sign in (1, -1):
                with (
                    torch.no_grad(),
                    iv.intervene(model, {site: _SetOne(a + sign * eps * (b - a), j)}),
                ):
                    ends.append(metric(model(input_ids=corrupted).logits)[0])
            slope = (ends[0] - ends[1]) / (2 * eps)
            assert got.values[i, j] - got.corrupted_metric == pytest.approx(float(slope), abs=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_attribution_patching_of_clean_into_clean_is_the_clean_metric_per_head(llama):
    same = iv.attribution_patching(llama, CLEAN, CLEAN, "layers.*.attn.heads", answers=ANSWERS)
    assert same.values.shape == (3, iv.geometry(llama).n_heads) and same.by == "head"
    torch.testing.assert_close(
        same.values, torch.full_like(same.values, same.clean_metric), atol=1e-6, rtol=0
    )


def test_bad_arguments_are_refused(llama):
    with pytest.raises(ValueError, match="same number of tokens"):
        iv.patching(llama, CLEAN, CLEAN[:-1], answers=ANSWERS, progress=False)
    with pytest.raises(ValueError, match="needs a metric"):
        iv.patching(llama, CLEAN, CORRUPTED, progress=False)
    with pytest.raises(ValueError, match="one layer site kind"):
        iv.patching(llama, CLEAN, CORRUPTED, "final_norm", answers=ANSWERS, progress=False)
    with pytest.raises(ValueError, match="one value per row"):
        iv.patching(llama, CLEAN, CORRUPTED, metric=lambda x: x.sum(), progress=False)
    with pytest.raises(TypeError, match="bool"):
        iv.patching(llama, CLEAN, CORRUPTED, answers=ANSWERS, batch_size=True, progress=False)
    with pytest.raises(TypeError, match="integer token ids"):
        iv.patching(llama, torch.zeros(6), CORRUPTED, answers=ANSWERS, progress=False)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in llama.modules())


# --- logit lens -----------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", LENS_TYPES)
def test_lens_of_the_last_resid_post_is_the_models_logits(model_type, tiny_models, ids):
    model = tiny_models(model_type)
    last = iv.geometry(model).n_layers - 1
    vocab = iv.geometry(model).d_vocab
    lens = iv.logit_lens(model, ids, f"layers.{last}.resid_post", k=3, tokens=list(range(vocab)))
    with torch.no_grad():
        expected = model(input_ids=ids).logits.float().log_softmax(-1)
    torch.testing.assert_close(lens.token_logprobs[0], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(lens.top_ids[0], expected.topk(3, dim=-1).indices)


def test_lens_of_a_cache_equals_the_lens_of_ids(llama, ids):
    with torch.no_grad(), iv.capture(llama, ["embed", "layers.*.resid_mid"]) as cache:
        llama(input_ids=ids)
    sites = ["embed", "layers.0.resid_mid", "layers.2.resid_mid"]
    from_cache = iv.logit_lens(llama, cache, sites, tokens=[3, 4])
    from_ids = iv.logit_lens(llama, ids, sites, tokens=[3, 4])
    assert from_cache.sites == sites and from_cache.top_ids.shape == (3, 2, 9, 5)
    torch.testing.assert_close(from_cache.token_logprobs, from_ids.token_logprobs)
    assert not torch.equal(from_cache.token_logprobs[0], from_cache.token_logprobs[2])


def test_lens_decodes_tokens_with_a_tokenizer(llama, ids):
    class Decoder:
        def decode(self, tokens):
            return f"<{tokens[0]}>"

    lens = iv.logit_lens(llama, ids, "layers.*.resid_post", k=2, tokenizer=Decoder())
    assert len(lens.top_tokens) == 3 and len(lens.top_tokens[0][1]) == 9
    assert lens.top_tokens[2][1][4] == [f"<{t}>" for t in lens.top_ids[2, 1, 4].tolist()]


def test_lens_refuses_contributions_and_missing_sites(llama, ids):
    with pytest.raises(ValueError, match="not a residual state"):
        iv.logit_lens(llama, ids, "layers.1.attn.out")
    with torch.no_grad(), iv.capture(llama, "layers.0.resid_post") as cache:
        llama(input_ids=ids)
    with pytest.raises(KeyError, match="holds no"):
        iv.logit_lens(llama, cache, "layers.1.resid_post")
    with pytest.raises(ValueError, match="tokens must be ids"):
        iv.logit_lens(llama, ids, tokens=[10_000])
    with pytest.raises(TypeError, match="token ids"):
        iv.logit_lens(llama, ids.float())


# --- the real model ---------------------------------------------------------------------------


@pytest.mark.real
def test_eiffel_tower_patching_and_lens_on_the_real_model(real_model):
    model, tokenizer = real_model
    clean = tokenizer("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    corrupted = tokenizer("The Colosseum is in the city of", return_tensors="pt").input_ids
    paris, rome = (iv.lm.first_token(tokenizer, a) for a in (" Paris", " Rome"))
    result = iv.patching(
        model, clean, corrupted, "layers.0:3.resid_pre", answers=(paris, rome), progress=False
    )
    assert result.clean_metric > 0 > result.corrupted_metric
    normalized = result.normalized()
    assert normalized[:, 2].min() > 0.5  # the subject's token carries it in the early layers
    assert normalized[:, 0].abs().max() < 1e-4  # "The": the same token in both prompts
    lens = iv.logit_lens(model, clean, "layers.29.resid_post", tokens=[paris])
    with torch.no_grad():
        expected = model(input_ids=clean).logits[0, -1].log_softmax(-1)
    assert int(lens.top_ids[0, 0, -1, 0]) == paris == int(expected.argmax())
    assert lens.token_logprobs[0, 0, -1, 0].item() == pytest.approx(
        expected[paris].item(), abs=1e-4
    )


@pytest.mark.real
def test_head_sweep_attribution_ablation_lists_and_plots_on_the_real_model(real_model, tmp_path):
    pytest.importorskip("matplotlib")
    model, tokenizer = real_model
    clean = tokenizer("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    corrupted = tokenizer("The Colosseum is in the city of", return_tensors="pt").input_ids
    answers = tuple(iv.lm.first_token(tokenizer, a) for a in (" Paris", " Rome"))
    sites = "layers.0,14,29.resid_pre"  # a site list: three layers
    exact = iv.patching(model, clean, corrupted, sites, answers=answers, progress=False)
    assert exact.layers == [0, 14, 29]
    estimate = iv.attribution_patching(model, clean, corrupted, sites, answers=answers)
    # at layer 0, "The" and "is in the city of" are the same tokens in both runs: no change
    same_token = (clean == corrupted)[0]
    unchanged = torch.full((int(same_token.sum()),), exact.corrupted_metric)
    torch.testing.assert_close(exact.values[0, same_token], unchanged)
    torch.testing.assert_close(estimate.values[0, same_token], unchanged)
    assert (exact.values[:, ~same_token] - exact.corrupted_metric).abs().max() > 5
    heads = iv.patching(
        model, clean, corrupted, "layers.20,27.attn.heads", answers=answers, progress=False
    )
    assert heads.values.shape == (2, 9) and heads.by == "head"
    # one head's contribution is a small change: there the first-order estimate is close (on the
    # residual stream, where a patch moves the metric by up to 10, it is not, even in sign)
    head_estimate = iv.attribution_patching(
        model, clean, corrupted, "layers.20,27.attn.heads", answers=answers
    )
    torch.testing.assert_close(head_estimate.values, heads.values, atol=0.05, rtol=0)
    assert (heads.values - heads.corrupted_metric).abs().max() > 0.3
    with torch.no_grad():  # one cell by hand: head 4 of layer 27 from the clean run
        with iv.capture(model, "layers.27.attn.heads") as cache:
            model(input_ids=clean)
        with iv.intervene(model, {"layers.27.attn.heads": iv.Patch.from_cache(cache, heads=[4])}):
            logits = model(input_ids=corrupted).logits
    assert heads.values[1, 4].item() == pytest.approx(
        (logits[0, -1, answers[0]] - logits[0, -1, answers[1]]).item(), abs=1e-4
    )
    site = "layers.20.attn.heads"
    with torch.no_grad(), iv.capture(model, site) as other:
        model(input_ids=corrupted)
    mean = iv.Mean()
    iv.tally(model, [iv.text.pad([clean[0].tolist()], 0, "left")], {site: mean}, progress=False)
    same = {  # each ablation against the patch that writes what it should write
        "mean": (iv.Ablate("mean", stats=mean), iv.Patch(mean.value)),
        "resample": (iv.Ablate("resample", values=other[site]), iv.Patch.from_cache(other)),
    }
    with torch.no_grad():
        for ablation, patch in same.values():
            with iv.intervene(model, {site: ablation}):
                ablated = model(input_ids=clean).logits
            with iv.intervene(model, {site: patch}):
                torch.testing.assert_close(ablated, model(input_ids=clean).logits)
        with iv.intervene(model, {site: iv.Ablate("zero")}):
            assert not torch.allclose(model(input_ids=clean).logits, ablated)
    assert heads.plot(tmp_path / "heads.png").stat().st_size > 0
    lens = iv.logit_lens(model, clean, "layers.*.resid_post", tokenizer=tokenizer)
    assert lens.top_tokens[-1][0][-1][0] == " Paris"
    assert lens.plot(tmp_path / "lens.png").stat().st_size > 0
