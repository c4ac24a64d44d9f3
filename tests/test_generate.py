"""Positions mean the same thing with and without the KV cache (acceptance 4)."""

import inspect

import pytest
import torch
from generation import NEW, generate

import interventions as iv
from interventions.ops import Step, resolve


def plan_at(positions, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.resid_post": iv.AddBias(torch.randn(32, generator=g), positions=positions),
        "layers.1.attn.heads": iv.AddBias(
            2 * torch.randn(8, generator=g), heads=[1], positions=positions
        ),  # noqa: E501
        "layers.2.mlp.out": iv.Rescale(1.5, positions=positions),
    }


@pytest.mark.parametrize("positions", [None, -1, "generated", "prompt", 4, slice(7, 12)])
def test_cached_generate_equals_full_recompute(model, ids, positions):
    bare_tokens, bare_logits = generate(model, ids, {}, use_cache=True)
    tokens, logits = generate(model, ids, plan_at(positions), use_cache=True)
    re_tokens, re_logits = generate(model, ids, plan_at(positions), use_cache=False)
    assert not torch.allclose(logits, bare_logits, atol=1e-4), "the plan must change something"
    assert torch.equal(tokens, re_tokens)
    torch.testing.assert_close(logits, re_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", [None, 4, slice(7, 12)])
def test_cached_generate_equals_one_forward_over_the_sequence(model, ids, positions):
    tokens, logits = generate(model, ids, plan_at(positions), use_cache=True)
    with iv.intervene(model, plan_at(positions)):
        full = model(tokens[:, :-1]).logits[:, ids.shape[1] - 1 :]
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)


def test_last_token_capture_during_generate(model, ids):
    with iv.capture(model, "layers.1.resid_post", positions=-1) as cache:
        tokens, _ = generate(model, ids, {}, use_cache=True)
    with iv.capture(model, "layers.1.resid_post") as full:
        model(tokens[:, :-1])
    per_step = cache["layers.1.resid_post"]  # [b, forwards, d]
    assert per_step.shape == (2, NEW, 32)
    expected = full["layers.1.resid_post"][:, ids.shape[1] - 1 :]
    torch.testing.assert_close(per_step, expected, atol=1e-5, rtol=1e-5)


def test_generated_capture_collects_only_new_tokens(model, ids):
    with iv.capture(model, "layers.0.attn.out", positions="generated") as cache:
        generate(model, ids, {}, use_cache=True)
    assert cache["layers.0.attn.out"].shape == (2, NEW - 1, 32)


def test_resolve_by_hand():
    prompt = Step.single(5)
    assert resolve(-1, prompt, 5) == [4]
    assert resolve(2, prompt, 5) == [2]
    assert resolve(slice(-2, None), prompt, 5) == [3, 4]
    assert list(resolve("prompt", prompt, 5)) == [0, 1, 2, 3, 4]
    assert list(resolve("generated", prompt, 5)) == []
    cached = Step(offset=6, length=1, prompt_length=5, spans=[(0, 5), (5, 6), (6, 7)])
    assert resolve(-1, cached, 1) == [0]
    assert resolve(2, cached, 1) == []
    assert resolve(6, cached, 1) == [0]
    assert list(resolve("generated", cached, 1)) == [0]
    assert list(resolve("prompt", cached, 1)) == []
    recomputed = Step(offset=0, length=7, prompt_length=5, spans=[(0, 5), (5, 6), (6, 7)])
    assert resolve(-1, recomputed, 7) == [4, 5, 6]
    assert resolve(-2, recomputed, 7) == [3]
    assert resolve((0, -1), recomputed, 7) == [0, 4, 5, 6]
    assert resolve(-1, recomputed, 1) == [0]  # logits_to_keep=1: only the last column
    mask = torch.tensor([[True, False, True, True, False, True, False]])
    assert resolve(mask, cached, 1).tolist() == [[False]]
    assert resolve(mask, recomputed, 7).tolist() == mask.tolist()


def _filled_cache(model, ids):
    from transformers import DynamicCache

    cache = DynamicCache()
    model(ids, use_cache=True, **iv.text.with_cache(model, cache))
    return cache


def test_cached_length_finds_the_cache_by_type_whatever_its_keyword(llama, ids):
    from interventions.attach import cached_length

    cache = _filled_cache(llama, ids)
    assert cache.get_seq_length() == ids.shape[1]
    assert cached_length((), {"past_key_values": cache}) == ids.shape[1]
    assert cached_length((), {"cache": cache}) == ids.shape[1]  # transformers >= 5.24
    assert cached_length((), {"some_future_name": cache, "use_cache": True}) == ids.shape[1]
    assert cached_length((ids, cache), {}) == ids.shape[1]  # given positionally
    legacy = tuple((torch.zeros(2, 2, 7, 8), torch.zeros(2, 2, 7, 8)) for _ in range(3))
    assert cached_length((), {"past_key_values": legacy}) == 7
    assert cached_length((), {"cache_position": torch.arange(4, 6), "cache": cache}) == 4
    assert cached_length((), {"input_ids": ids, "attention_mask": torch.ones(2, 9)}) == 0
    assert cached_length((), {"cache": None, "use_cache": False}) == 0


def test_a_continued_forward_is_one_sequence_under_either_cache_keyword(llama, ids):
    from transformers import DynamicCache

    plan = {"layers.1.resid_post": iv.AddBias(torch.ones(32), positions=slice(0, 5))}
    with iv.intervene(llama, plan):
        whole = llama(ids).logits[:, 5:]  # one forward: positions 0..4 steered, 5..8 not
    # releases before 5.24 have no cache= (their forward would take it into **kwargs, unused)
    accepted = inspect.signature(type(llama.model).forward).parameters
    keywords = [k for k in ("past_key_values", "cache") if k in accepted]
    assert keywords
    for keyword in keywords:
        cache = DynamicCache()
        with iv.intervene(llama, plan):
            llama(ids[:, :5], **{keyword: cache}, use_cache=True)
            continued = llama(ids[:, 5:], use_cache=True, **{keyword: cache}).logits
        torch.testing.assert_close(continued, whole, atol=1e-5, rtol=1e-5, msg=keyword)
