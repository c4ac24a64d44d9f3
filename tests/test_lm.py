"""interventions.lm against direct computations on plain forwards (and, until phase B removes
them, against the recipe functions each one replaces: the same numbers)."""

import math

import pytest
import torch
from fakes import WordTokenizer

import interventions as iv
from interventions import lm, text
from interventions.adapters import _REGISTRY
from interventions.models import available_tiny_types

COVERED = [t for t in available_tiny_types() if t in _REGISTRY]
PAIRS = [
    ("The old tower of north harbour stands in", " the valley"),
    ("Rain falls on", " the quiet river"),
    ("A", " b"),
]
PROMPTS = ["Is the sky green? Answer:", "Water is wet. True or false? Answer:", "x"]
CHOICES = (" True", " False")
PROSE = " ".join(f"w{i % 7} and w{i % 5}" for i in range(12))  # 36 tokens


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def tok() -> WordTokenizer:
    return WordTokenizer(bos=True, vocab=CHOICES)


def no_hooks(model) -> bool:
    return not any(
        m._forward_hooks or m._forward_pre_hooks for m in iv.adapters.causal_lm(model).modules()
    )


def forward_logits(model, ids: list[int], plan=None) -> torch.Tensor:
    """Logits of one unpadded row, from a plain full forward: [t, vocab]."""
    with torch.no_grad(), iv.intervene(model, plan or {}):
        return model(torch.tensor([ids])).logits[0].float()


def bias_plan(model, seed: int = 0, scale: float = 3.0) -> dict:
    d = iv.geometry(model).d_model
    vector = scale * torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return {"layers.0.resid_post": iv.AddBias(vector)}


# --- final_hidden and unembed -----------------------------------------------------------------


@pytest.mark.parametrize("model_type", COVERED)
def test_unembed_of_final_hidden_is_the_models_logits(model_type, tiny_models, ids):
    model = tiny_models(model_type)
    batch = text.pad([ids[0].tolist(), ids[1, :5].tolist()], 0, "left")
    with torch.no_grad():
        expected = model(**batch.inputs(model)).logits
        got = lm.unembed(model, lm.final_hidden(model, batch))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["gemma2", "cohere", "granite"])
def test_unembed_applies_the_soft_cap_or_scale_after_the_head(model_type, tiny_models, ids):
    """Without the step after lm_head the logits differ: the test above can fail."""
    model = tiny_models(model_type)
    batch = text.pad(ids.tolist(), 0, "right")
    with torch.no_grad():
        hidden = lm.final_hidden(model, batch)
        head_only = model.get_output_embeddings()(hidden)
        expected = model(**batch.inputs(model)).logits
    assert not torch.allclose(head_only, expected, atol=1e-6)
    torch.testing.assert_close(lm.unembed(model, hidden), expected, atol=1e-6, rtol=1e-6)


def test_final_hidden_is_the_final_norm_and_never_runs_the_unembedding(model, monkeypatch, ids):
    batch = text.pad(ids.tolist(), 0, "right")
    plan = bias_plan(model)
    with torch.no_grad(), iv.capture(model, "final_norm", plan=plan) as cache:
        model(**batch.inputs(model))
    head = model.get_output_embeddings()

    def never(*args, **kwargs):
        raise AssertionError("the unembedding ran")

    monkeypatch.setattr(head, "forward", never)
    with torch.no_grad():
        got = lm.final_hidden(model, batch, plan)
    assert torch.equal(got, cache["final_norm"])
    assert no_hooks(model)


def test_final_hidden_keeps_the_graph_to_train_an_intervention(llama, ids):
    shift = iv.AddBias(torch.zeros(iv.geometry(llama).d_model), trainable=True)
    hidden = lm.final_hidden(
        llama, text.pad(ids.tolist(), 0, "right"), {"layers.1.resid_post": shift}
    )
    hidden.square().sum().backward()
    grads = [p.grad for p in shift.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_final_hidden_refuses_a_plan_at_the_logits(llama, ids):
    with pytest.raises(ValueError, match="the plan edits 'logits'"):
        lm.final_hidden(llama, text.pad(ids.tolist(), 0, "right"), {"logits": iv.Rescale(2.0)})
    assert no_hooks(llama)


# --- continuation_logprobs -----------------------------------------------------------------------


def direct_logprobs(model, tok, pairs, plan=None) -> list[torch.Tensor]:
    """Per pair: log p of each continuation token, from log_softmax of one full forward."""
    out = []
    for prompt, continuation in pairs:
        ids = tok.encode(prompt + continuation)
        n = len(tok.encode(continuation, add_special_tokens=False))
        logp = forward_logits(model, ids, plan).log_softmax(-1)[:-1]
        out.append(logp.gather(-1, torch.tensor(ids[1:])[:, None])[-n:, 0])
    return out


def test_continuation_logprobs_are_a_full_forwards_log_softmax_at_the_tokens(model, tok):
    direct = direct_logprobs(model, tok, PAIRS)
    mean = lm.continuation_logprobs(model, tok, PAIRS, batch_size=2)
    total = lm.continuation_logprobs(model, tok, PAIRS, reduce="sum")
    assert mean.dtype == torch.float32 and mean.shape == (3,)
    torch.testing.assert_close(mean, torch.stack([d.mean() for d in direct]), atol=1e-5, rtol=0)
    torch.testing.assert_close(total, torch.stack([d.sum() for d in direct]), atol=1e-5, rtol=0)
    assert [len(d) for d in direct] == [2, 3, 1]


def test_continuation_logprobs_under_a_plan(llama, tok):
    plan = bias_plan(llama)
    got = lm.continuation_logprobs(llama, tok, PAIRS, plan=plan)
    direct = torch.stack([d.mean() for d in direct_logprobs(llama, tok, PAIRS, plan)])
    torch.testing.assert_close(got, direct, atol=1e-5, rtol=0)
    assert not torch.allclose(got, lm.continuation_logprobs(llama, tok, PAIRS), atol=1e-3)


def test_continuation_logprobs_without_special_tokens(llama):
    tok = WordTokenizer(bos=True)
    got = lm.continuation_logprobs(llama, tok, PAIRS[:2], special=False)
    ids = tok.encode("Rain falls on the quiet river", add_special_tokens=False)
    logp = forward_logits(llama, ids).log_softmax(-1)[:-1]
    expected = logp.gather(-1, torch.tensor(ids[1:])[:, None])[-3:, 0].mean()
    assert got[1].item() == pytest.approx(expected.item(), abs=1e-5)


def test_continuation_logprobs_name_the_pair_that_cannot_be_scored(llama, tok):
    bad = [PAIRS[0], ("The sea is", " ")]
    with pytest.raises(ValueError, match=r"pairs\[1\]: the continuation ' ' of 'The sea is'"):
        lm.continuation_logprobs(llama, tok, bad)
    with pytest.raises(ValueError, match=r"^requests\[4\] \(rewrite\): the continuation"):
        lm.continuation_logprobs(llama, tok, bad, names=["a", "requests[4] (rewrite)"])
    with pytest.raises(ValueError, match="names must name each of the 2 pairs, got 1"):
        lm.continuation_logprobs(llama, tok, bad, names=["a"])
    with pytest.raises(ValueError, match="reduce must be one of"):
        lm.continuation_logprobs(llama, tok, PAIRS, reduce="max")
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(prompt, continuation\) pair"):
        lm.continuation_logprobs(llama, tok, [("only a prompt",)])
    with pytest.raises(TypeError, match="pairs must be a list"):
        lm.continuation_logprobs(llama, tok, "a text")
    with pytest.raises(TypeError, match="batch_size must be an integer >= 1, got True"):
        lm.continuation_logprobs(llama, tok, PAIRS, batch_size=True)
    assert lm.continuation_logprobs(llama, tok, []).shape == (0,)
    assert no_hooks(llama)


# --- choice_margin --------------------------------------------------------------------------------


def test_choice_margin_is_the_logit_difference_of_a_full_forward(model, tok):
    got = lm.choice_margin(model, tok, PROMPTS, CHOICES, batch_size=2)
    a, b = tok.encode(" True False", add_special_tokens=False)
    for i, prompt in enumerate(PROMPTS):
        last = forward_logits(model, tok.encode(prompt))[-1]
        assert got[i].item() == pytest.approx((last[a] - last[b]).item(), abs=1e-5)
        logp = last.log_softmax(-1)
        assert got[i].item() == pytest.approx((logp[a] - logp[b]).item(), abs=1e-5)


def test_choice_margin_under_a_plan(llama, tok):
    plan = bias_plan(llama)
    got = lm.choice_margin(llama, tok, PROMPTS, CHOICES, plan=plan)
    a, b = tok.encode(" True False", add_special_tokens=False)
    expected = [forward_logits(llama, tok.encode(p), plan)[-1] for p in PROMPTS]
    torch.testing.assert_close(got, torch.stack([e[a] - e[b] for e in expected]), atol=1e-5, rtol=0)
    assert not torch.allclose(got, lm.choice_margin(llama, tok, PROMPTS, CHOICES), atol=1e-3)


def test_choice_margin_refuses_bad_choices_and_prompts(llama, tok):
    with pytest.raises(ValueError, match="start with the same token"):
        lm.choice_margin(llama, tok, PROMPTS, (" True", " True"))
    with pytest.raises(TypeError, match="choices must be a pair"):
        lm.choice_margin(llama, tok, PROMPTS, " True")
    with pytest.raises(ValueError, match=r"choices\[1\] ' ' encodes to no token"):
        lm.choice_margin(llama, tok, PROMPTS, (" True", " "))
    with pytest.raises(ValueError, match="the prompt '' encodes to no token"):
        lm.choice_margin(llama, WordTokenizer(), ["a", ""], CHOICES)
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a str"):
        lm.choice_margin(llama, tok, ["a", 3], CHOICES)


def test_first_token_is_the_first_id_without_special_tokens(tok):
    false = tok.encode(" False", add_special_tokens=False)
    assert lm.first_token(tok, " False and more") == false[0] != tok.encode(" False")[0]  # BOS
    with pytest.raises(ValueError, match=r"answer ' ' encodes to no token"):
        lm.first_token(tok, " ", "answer")
    with pytest.raises(TypeError, match=r"string must be a str, got int: 3"):
        lm.first_token(tok, 3)


# --- perplexity, token loss, logits ---------------------------------------------------------------


def test_perplexity_of_one_window_is_exp_of_the_mean_token_nll(model, tok):
    ids = tok.encode(PROSE)
    logp = forward_logits(model, ids).log_softmax(-1)[:-1]
    nll = -logp.gather(-1, torch.tensor(ids[1:])[:, None]).mean()
    got = lm.perplexity(model, tok, PROSE, window=64, stride=64)
    assert got == pytest.approx(math.exp(float(nll)), rel=1e-5)
    assert len(ids) == 37
    first = lm.perplexity(model, tok, PROSE, window=64, stride=64, max_tokens=10)
    nll10 = -logp[:9].gather(-1, torch.tensor(ids[1:10])[:, None]).mean()
    assert first == pytest.approx(math.exp(float(nll10)), rel=1e-5)


def test_perplexity_windows_score_each_token_once(llama, tok):
    ids = tok.encode(PROSE)
    nll = 0.0
    for begin in (0, 16, 32):  # stride = window: windows without overlap
        chunk = ids[begin : begin + 16]
        logp = forward_logits(llama, chunk).log_softmax(-1)[:-1]
        nll -= float(logp.gather(-1, torch.tensor(chunk[1:])[:, None]).sum())
    assert lm.perplexity(llama, tok, PROSE, window=16, stride=16) == pytest.approx(
        math.exp(nll / (len(ids) - 3)), rel=1e-5
    )


def test_perplexity_refuses_bad_windows(llama, tok):
    for options, error, message in [
        (dict(window=8.0, stride=4), TypeError, "window must be an integer >= 2, got 8.0"),
        (dict(window=8, stride=0), ValueError, "stride must be an integer >= 1, got 0"),
        (dict(window=4, stride=8), ValueError, "need stride <= window"),
        (dict(max_tokens=1), ValueError, "max_tokens must be an integer >= 2"),
    ]:
        with pytest.raises(error, match=message):
            lm.perplexity(llama, tok, PROSE, **options)
    with pytest.raises(ValueError, match="at least two tokens"):
        lm.perplexity(llama, WordTokenizer(), "one")


def test_token_cross_entropy_is_the_mean_nll_of_the_labelled_tokens():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, 4, 7, generator=g), torch.randint(0, 7, (2, 4), generator=g)
    labels[1, 1:] = -100
    logp = logits.log_softmax(-1)
    kept = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    expected = -sum(logp[i, j, labels[i, j]] for i, j in kept) / len(kept)
    assert lm.token_cross_entropy(logits, labels).item() == pytest.approx(expected.item(), 1e-6)


def test_logits_of_the_last_columns(model, tok):
    batch = text.pad([tok.encode(p) for p in PROMPTS], 0, "left")
    with torch.no_grad():
        full = lm.logits(model, batch)
        last = lm.logits(model, batch, keep=2)
    assert last.shape[1] == 2
    torch.testing.assert_close(last, full[:, -2:], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="keep must be an integer >= 1, got 0"):
        lm.logits(model, batch, keep=0)


# --- generation -----------------------------------------------------------------------------------


def test_greedy_generation_in_batches_equals_each_prompt_alone(model, tok):
    got = lm.generate_texts(model, tok, PROMPTS, max_new_tokens=6, batch_size=2)
    for prompt, new in zip(PROMPTS, got, strict=True):
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert new == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert all(new for new in got)


def test_sampling_is_seeded_and_leaves_the_global_random_state(llama, tok):
    state = torch.random.get_rng_state()
    first = lm.generate_texts(llama, tok, PROMPTS, max_new_tokens=8, sample=True, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = lm.generate_texts(llama, tok, PROMPTS, max_new_tokens=8, sample=True, seed=1)
    other = lm.generate_texts(llama, tok, PROMPTS, max_new_tokens=8, sample=True, seed=2)
    greedy = lm.generate_texts(llama, tok, PROMPTS, max_new_tokens=8)
    assert first == again and first != other and first != greedy
    # any integer torch takes is a seed (HParams(seed=-1) reaches here from AlphaEdit)
    negative = lm.generate_texts(llama, tok, PROMPTS, max_new_tokens=8, sample=True, seed=-1)
    assert negative == lm.generate_texts(
        llama, tok, PROMPTS, max_new_tokens=8, sample=True, seed=-1
    )


def test_generation_under_a_plan(llama, tok):
    plan = bias_plan(llama, scale=30.0)
    got = lm.generate_texts(llama, tok, PROMPTS[:2], max_new_tokens=5, plan=plan)
    assert got != lm.generate_texts(llama, tok, PROMPTS[:2], max_new_tokens=5)
    batch = text.pad([tok.encode(p) for p in PROMPTS[:2]], 0, "left")
    with torch.no_grad(), iv.intervene(llama, plan):
        out = llama.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=5,
            do_sample=False,
            pad_token_id=0,
        )
    assert got == tok.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    assert no_hooks(llama)


def test_generation_refuses_bad_arguments(llama, tok):
    with pytest.raises(TypeError, match="prompts must be a list of str, got str"):
        lm.generate_texts(llama, tok, "a prompt")
    with pytest.raises(ValueError, match="the prompt '' encodes to no token"):
        lm.generate_texts(llama, WordTokenizer(), ["a", ""])
    with pytest.raises(TypeError, match="sample must be True or False"):
        lm.generate_texts(llama, tok, PROMPTS, sample=1)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        lm.generate_texts(llama, tok, PROMPTS, max_new_tokens=0)
    with pytest.raises(TypeError, match="top_k must be an integer >= 1, got 2.5"):
        lm.generate_texts(llama, tok, PROMPTS, sample=True, top_k=2.5)


# --- n-gram entropy -------------------------------------------------------------------------------


def test_n_gram_entropy_by_hand():
    assert lm.n_gram_entropy("a a a a a a") == 0.0
    # bigrams (a b), (b c): 1 bit; one trigram: 0 bits; (2/3 * 1 + 4/3 * 0) / 2
    assert lm.n_gram_entropy("a b c") == pytest.approx(1 / 3)
    # lower-cased, punctuation a word: a b , c -> 3 distinct bigrams, 2 distinct trigrams
    assert lm.n_gram_entropy("A b, c") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3) / 2)
    assert lm.n_gram_entropy("a b c", ns=(1,), weights=(1.0,)) == pytest.approx(math.log2(3))
    with pytest.raises(ValueError, match="one weight per n-gram size"):
        lm.n_gram_entropy("a b", ns=(2, 3), weights=(1.0,))
    with pytest.raises(ValueError, match=r"weights\[0\] must be a finite number"):
        lm.n_gram_entropy("a b", ns=(2,), weights=(float("nan"),))
    with pytest.raises(TypeError, match="n_gram_entropy takes a str"):
        lm.n_gram_entropy(["a"])
