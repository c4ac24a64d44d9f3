"""Honesty evaluation: the bundled claims and prompts, forced choice, cosine to given vectors and
steerability, against plain forwards."""

import pytest
import torch
from fakes import WordTokenizer

import interventions as iv
from interventions import lm
from interventions.evals import honesty
from interventions.models import tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def tok() -> WordTokenizer:
    return WordTokenizer(bos=True, vocab=honesty.CHOICES)  # the two answers get distinct ids first


# --- data and prompts -----------------------------------------------------------------------------


def test_bundled_claims_are_balanced_pairs(claims):
    assert 140 <= len(claims) <= 160
    assert sum(c.label for c in claims) == len(claims) // 2
    by_pair: dict[int, list[bool]] = {}
    for c in claims:
        by_pair.setdefault(c.pair, []).append(c.label)
    assert all(sorted(v) == [False, True] for v in by_pair.values())
    assert len({c.text for c in claims}) == len(claims)
    shots = {text for text, _ in honesty.SHOTS}
    assert not shots & {c.text for c in claims}
    assert len(honesty.load_prose().split()) > 1000


def test_load_claims_names_the_line_of_an_incomplete_record(tmp_path):
    path = tmp_path / "claims.jsonl"
    path.write_text('{"id": "a", "claim": "Snow is cold.", "label": true, "pair": 0}\n\n'
                    '{"id": "b", "claim": "Snow is hot.", "pair": 0}\n')  # fmt: skip
    with pytest.raises(ValueError, match=r"claims.jsonl:3: claim record lacks \['label'\]"):
        honesty.load_claims(path)
    path.write_text('{"id": "a", "claim": "Snow is cold.", "label": 1, "pair": 4, "topic": "t"}\n')
    assert honesty.load_claims(path) == [honesty.Claim("a", "Snow is cold.", True, 4, "t")]


def test_split_keeps_pairs_together(claims):
    train, test = honesty.split_claims(claims, held_out=0.3, seed=1)
    assert {c.pair for c in train}.isdisjoint({c.pair for c in test})
    assert len(train) + len(test) == len(claims)
    assert abs(len(test) / len(claims) - 0.3) < 0.02
    with pytest.raises(ValueError, match="fraction"):
        honesty.split_claims(claims, held_out=1.5)


def test_prompts_invert_the_context():
    honest = honesty.claim_prompt("Grass is green.", honest=True)
    liar = honesty.claim_prompt("Grass is green.", honest=False)
    assert honest.startswith("Snow is white. True\nFish can walk on land. False")
    assert liar.startswith("Snow is white. False\nFish can walk on land. True")
    assert honest.endswith("\nGrass is green.") and liar.endswith("\nGrass is green.")
    pair = honesty.honesty_pairs([honesty.Claim("x", "Grass is purple.", False, 0)])[0]
    assert (pair.positive_answer, pair.negative_answer) == (" False", " True")


# --- metrics --------------------------------------------------------------------------------------


def bias_plan(vector: torch.Tensor, layer: int = 1):
    return lambda alpha: {f"layers.{layer}.resid_post": iv.AddBias(vector, alpha)}


def test_forced_choice_and_steerability(tok, claims):
    model = tiny("llama", n_layers=3)
    prompts = honesty.claim_prompts(claims[:6], honest=True)
    result = honesty.forced_choice(model, tok, prompts, [c.label for c in claims[:6]])
    assert result.margins.shape == (6,)
    assert 0 <= result.rate_first <= 1 and result.accuracy is not None
    steer_vector = torch.randn(32, generator=torch.Generator().manual_seed(0))
    steer = honesty.steerability(model, tok, prompts, bias_plan(steer_vector), alphas=(0.0, 50.0))
    assert steer["margins"][0] == pytest.approx(result.mean_margin, abs=1e-5)
    assert steer["slope"] == pytest.approx((steer["margins"][1] - steer["margins"][0]) / 50)
    assert steer["margins"][1] != pytest.approx(steer["margins"][0])
    with pytest.raises(ValueError, match="same token"):
        honesty.forced_choice(model, tok, prompts, choices=(" True", " True"))


def test_forced_choice_counts_margins_against_labels():
    result = honesty.ForcedChoice(torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1, 1, 0, 0]))
    assert (result.rate_first, result.mean_margin, result.accuracy) == (0.5, -0.375, 0.5)
    assert honesty.ForcedChoice(torch.tensor([1.0])).accuracy is None


def test_answered_as_expected_keeps_the_pairs_answered_both_ways(tok, claims):
    model = tiny("llama", n_layers=2)
    pairs = honesty.honesty_pairs(claims[:12])
    prompts = [p.positive for p in pairs] + [p.negative for p in pairs]
    margins = lm.choice_margin(model, tok, prompts, honesty.CHOICES)
    said = [" True" if m > 0 else " False" for m in margins.tolist()]
    other = {" True": " False", " False": " True"}
    # pairs 0-5 expect what the model says, 6-8 the other positive answer, 9-11 the other negative
    pairs = [honesty.Pair(p.positive, p.negative, other[said[i]] if 6 <= i < 9 else said[i],
                          other[said[12 + i]] if i >= 9 else said[12 + i])
             for i, p in enumerate(pairs)]  # fmt: skip
    assert honesty.answered_as_expected(model, tok, pairs, batch_size=5) == pairs[:6]
    with pytest.raises(
        ValueError, match="every pair needs a positive_answer and a negative_answer"
    ):
        honesty.answered_as_expected(model, tok, [honesty.Pair("a b", "c d")])
    with pytest.raises(ValueError, match=r"answer ' Maybe' is not one of choices"):
        honesty.answered_as_expected(model, tok, [honesty.Pair("a b", "c d", " True", " Maybe")])


def test_steerability_slope_is_the_least_squares_fit(tok, claims):
    model = tiny("llama", n_layers=3)
    prompts = honesty.claim_prompts(claims[:4])
    steer = bias_plan(torch.randn(32, generator=torch.Generator().manual_seed(1)))
    result = honesty.steerability(model, tok, prompts, steer, alphas=(-2.0, 0.0, 3.0))
    margins = [float(lm.choice_margin(model, tok, prompts, honesty.CHOICES, plan=steer(a)).mean())
               for a in (-2.0, 0.0, 3.0)]  # fmt: skip
    assert result["alphas"] == [-2.0, 0.0, 3.0] and result["margins"] == margins
    a, m = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64), torch.tensor(margins).double()
    expected = torch.linalg.lstsq(torch.stack([a, torch.ones(3).double()], 1), m[:, None])
    assert result["slope"] == pytest.approx(float(expected.solution[0, 0]), rel=1e-9)


def test_steerability_refuses_nonsense_alphas(tok):
    model = tiny("llama", n_layers=2)
    steer = bias_plan(torch.ones(32))
    with pytest.raises(ValueError, match=r"alphas\[1\] must be a finite number, got inf"):
        honesty.steerability(model, tok, ["a b c"], steer, alphas=(0.0, float("inf")))
    with pytest.raises(TypeError, match=r"alphas\[0\] must be a finite number, got True"):
        honesty.steerability(model, tok, ["a b c"], steer, alphas=(True, 1.0))
    with pytest.raises(ValueError, match="at least two different alphas"):
        honesty.steerability(model, tok, ["a b c"], steer, alphas=(1.0, 1.0))


def test_cosine_to_direction_equals_a_plain_capture_of_each_prompt(tok):
    model = tiny("llama", n_layers=3)
    prompts = ["a b c d e", "a much longer prompt with many words f g", "x y z"]
    vectors = torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(0))
    vectors[1, 0] = 0.0  # a zero vector counts as orthogonal
    got = honesty.cosine_to_direction(model, tok, prompts, vectors, [2, 0], batch_size=2)
    cos = []
    for prompt in prompts:  # alone: no padding
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with (
            torch.no_grad(),
            iv.capture(model, ["layers.2.resid_post", "layers.0.resid_post"]) as c,
        ):
            model(input_ids=ids)
        acts = torch.stack([c["layers.2.resid_post"][0, -2:], c["layers.0.resid_post"][0, -2:]])
        cos.append(torch.nn.functional.cosine_similarity(acts, vectors, dim=-1))
    cos = torch.stack(cos)  # [prompts, layers, positions]
    assert list(got) == [2, 0]
    for i, layer in enumerate([2, 0]):
        assert got[layer]["cos"] == pytest.approx(float(cos[:, i].mean()), abs=1e-5)
        assert got[layer]["abs_cos"] == pytest.approx(float(cos[:, i].abs().mean()), abs=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_left_padding_does_not_change_a_prompt(arch, tok):
    model = tiny(arch, n_layers=2)
    prompts = ["a b c d e", "a much longer prompt with many more words in it f g"]
    alone = honesty.residuals(model, tok, prompts[:1], [0, 1], n_positions=3)
    batched = honesty.residuals(model, tok, prompts, [0, 1], n_positions=3)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)
    margins_alone = lm.choice_margin(model, tok, prompts[:1], honesty.CHOICES)
    margins = lm.choice_margin(model, tok, prompts, honesty.CHOICES)
    torch.testing.assert_close(margins[:1], margins_alone, atol=1e-5, rtol=1e-5)


def test_residuals_equal_a_plain_capture(tok):
    model = tiny("llama", n_layers=3)
    acts = honesty.residuals(model, tok, ["one two three four five"], [0, 2], n_positions=2)
    ids = torch.tensor([tok("one two three four five")["input_ids"]])
    with torch.no_grad(), iv.capture(model, ["layers.0.resid_post", "layers.2.resid_post"]) as c:
        model(input_ids=ids)
    torch.testing.assert_close(acts[0, 0], c["layers.0.resid_post"][0, -2:])
    torch.testing.assert_close(acts[0, 1], c["layers.2.resid_post"][0, -2:])


def test_residuals_and_cosine_refuse_positions_that_reach_the_first_token(tok):
    model = tiny("llama", n_layers=2)
    with pytest.raises(
        ValueError, match=r"a prompt has only 3 tokens: the last 3 .*attention sink"
    ):
        honesty.cosine_to_direction(model, tok, ["a b c d", "a b"], torch.ones(1, 3, 32), [1])
    with pytest.raises(ValueError, match=r"only 3 tokens: the last 4 would include its first"):
        honesty.residuals(model, tok, ["a b", "a b c d e"], [0], n_positions=4)
    with pytest.raises(ValueError, match="n_positions must be an integer >= 1, got 0"):
        honesty.residuals(model, tok, ["a b c"], [0], n_positions=0)
