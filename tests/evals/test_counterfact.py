"""CounterFact evaluation: requests and their bundled data, the metrics, filter_known, and
sequential editing with any editor."""

import json
import math

import pytest
import torch
from fakes import REQUEST, WordTokenizer

import interventions as iv
from interventions import lm
from interventions.evals import counterfact as cf
from interventions.models import tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make():
    return tiny("llama", n_kv_heads=2, n_layers=3), WordTokenizer()


# --- requests ------------------------------------------------------------------------------------


def test_bundled_requests_are_well_formed():
    requests = cf.load_requests()
    assert len(requests) >= 1000  # 1,963 kept by scripts/filter_counterfact.py
    assert len({r.subject for r in requests}) == len(requests)  # no subject edited twice
    assert [r.case_id for r in requests] == list(range(len(requests)))
    for r in requests:
        assert len(r.paraphrase_prompts) == 2 and len(r.neighborhood_prompts) == 3
        assert len(r.generation_prompts) == 1
        assert r.target_true and r.target_new != r.target_true


def test_a_counterfact_record_and_a_flat_dict_give_the_same_request():
    record = {
        "case_id": 7,
        "requested_rewrite": {
            "prompt": REQUEST["prompt"],
            "subject": REQUEST["subject"],
            "target_new": {"str": "valley", "id": "Q1"},
            "target_true": {"str": "market", "id": "Q2"},
        },
        "paraphrase_prompts": REQUEST["paraphrase_prompts"],
        "neighborhood_prompts": REQUEST["neighborhood_prompts"],
    }
    request = cf.as_request(record)
    assert request == cf.as_request(REQUEST | {"case_id": 7})
    assert request.text == "The old tower of north harbour stands in"
    assert request.subject_start == len("The old tower of ")
    assert cf.as_request(request.to_dict()) == request  # to_dict round-trips
    with pytest.raises(cf.RequestError, match=r"^request: field 'subject' is missing$"):
        cf.as_request({"prompt": "{} is", "target_new": "x"})
    with pytest.raises(cf.RequestError, match=r"field 'paraphrase_prompts' must be a list"):
        cf.as_request(REQUEST | {"paraphrase_prompts": "one prompt"})
    with pytest.raises(TypeError, match="requests is a list of requests"):
        cf.as_requests(REQUEST)
    with pytest.raises(cf.RequestError, match="no requests given"):
        cf.as_requests([])


def test_load_requests_reads_a_json_array_and_refuses_anything_else(tmp_path):
    path = tmp_path / "requests.json"
    path.write_text(json.dumps([REQUEST, REQUEST | {"subject": "west bridge"}]))
    assert [r.subject for r in cf.load_requests(path)] == ["north harbour", "west bridge"]
    path.write_text(json.dumps(REQUEST))
    with pytest.raises(cf.RequestError, match="expected a JSON array of requests"):
        cf.load_requests(path)
    path.write_text(json.dumps([REQUEST, REQUEST | {"prompt": "no slot"}]))
    with pytest.raises(cf.RequestError, match=r"requests.json\[1\]: prompt 'no slot' must"):
        cf.load_requests(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cf.load_requests(tmp_path / "missing.json")


# --- metrics -------------------------------------------------------------------------------------


def test_evaluate_scores_and_fluency():
    model, tok = make()
    scores = cf.evaluate(model, tok, [REQUEST], fluency=False)
    text = cf.as_request(REQUEST).text
    lp_new, lp_true = cf.target_logprobs(model, tok, [(text, "valley"), (text, "market")])
    assert scores.efficacy == float(lp_new > lp_true)
    assert 0 <= scores.paraphrase <= 1 and 0 <= scores.neighborhood <= 1
    assert scores.summary()["n"] == 1 and scores.fluency is None
    assert lm.n_gram_entropy("a a a a a a") == 0.0
    varied = lm.n_gram_entropy("the cat sat on the mat while a dog ran past the door")
    assert varied > lm.n_gram_entropy("the cat the cat the cat the cat the cat the cat") > 0


def test_target_logprobs_score_the_target_after_one_space_and_name_a_bad_pair():
    model, tok = make()
    got = cf.target_logprobs(model, tok, [("The sky is ", " blue "), ("The sea", "a b")])
    pairs = [("The sky is", " blue"), ("The sea", " a b")]  # the text an edit writes
    assert got == lm.continuation_logprobs(model, tok, pairs).tolist()
    with pytest.raises(cf.RequestError, match=r"^requests\[0\] \(x\): the target ' ' of 'The sea'"):
        cf.target_logprobs(model, tok, [("The sea", " ")], names=["requests[0] (x)"])


def test_fluency_is_the_n_gram_entropy_of_seeded_samples():
    model, tok = make()
    request = REQUEST | {"generation_prompts": ["The old tower is", "People say"]}
    scores = cf.evaluate(model, tok, [request, REQUEST], max_new_tokens=6)
    first, second = scores.per_record
    assert len(first["generations"]) == 2  # one per generation prompt
    assert len(second["generations"]) == 1  # none given: the rewrite prompt
    entropies = [lm.n_gram_entropy(t) for t in first["generations"]]
    assert first["fluency"] == pytest.approx(sum(entropies) / 2)
    assert scores.fluency == pytest.approx((first["fluency"] + second["fluency"]) / 2)
    again = cf.evaluate(model, tok, [request, REQUEST], max_new_tokens=6)
    assert again.per_record[0]["generations"] == first["generations"]  # seeded


def test_scores_head_rescores_the_first_records():
    per = [
        {"rewrite": [(-1.0, -2.0)], "paraphrase": [(-3.0, -1.0)], "neighborhood": [(-1.0, -2.0)]},
        {"rewrite": [(-2.0, -1.0)], "paraphrase": [(-1.0, -3.0)], "neighborhood": [(-2.0, -1.0)]},
    ]
    scores = cf.scores_from_records(per, fluency=False)
    assert (scores.efficacy, scores.paraphrase, scores.neighborhood, scores.n) == (0.5, 0.5, 0.5, 2)
    first = scores.head(1)
    assert (first.efficacy, first.paraphrase, first.neighborhood, first.n) == (1.0, 0.0, 0.0, 1)
    assert first.efficacy_diff == pytest.approx(math.exp(-1.0) - math.exp(-2.0))
    with pytest.raises(ValueError, match="n must be"):
        scores.head(3)


def test_filter_known_keeps_the_requests_the_model_answers_with_the_true_target():
    model, tok = make()
    swapped = REQUEST | {"target_new": "market", "target_true": "valley"}
    kept = cf.filter_known(model, tok, [REQUEST, swapped])
    text = cf.as_request(REQUEST).text
    lp_valley, lp_market = cf.target_logprobs(model, tok, [(text, "valley"), (text, "market")])
    assert lp_valley != lp_market
    expected = swapped if lp_valley > lp_market else REQUEST
    assert kept == [cf.as_request(expected)]


# --- sequential editing --------------------------------------------------------------------------


class ScalingEditor:
    """Scales layer 0's down projection per batch; batch ``fail_on`` (1-based) fails after
    writing and restores its own write, as an editor does (alphaedit.Editor)."""

    def __init__(self, model, fail_on: int | None = None):
        table = iv.adapter(model)
        self.model, self.fail_on = model, fail_on
        self.name = f"{table.layers}.0.{table.down_proj}.weight"
        self.batches: list[list[str]] = []

    def edit(self, requests) -> iv.WeightDelta:
        self.batches.append([r.subject for r in requests])
        weight = self.model.get_parameter(self.name)
        original = {self.name: weight.detach().clone()}
        with torch.no_grad():
            weight.mul_(1.5)
            if len(self.batches) == self.fail_on:
                weight.copy_(original[self.name])
                raise RuntimeError("boom")
        return iv.WeightDelta.from_change(self.model, original)


def subjects(n: int) -> list[dict]:
    return [REQUEST | {"subject": f"place{i} harbour"} for i in range(n)]


def test_sequential_edits_in_batches_and_scores_all_edits_so_far():
    model, tok = make()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    editor = ScalingEditor(model)
    run = cf.sequential(model, tok, subjects(3), editor, batch_size=2, progress=False)
    assert editor.batches == [["place0 harbour", "place1 harbour"], ["place2 harbour"]]
    assert run.editor is editor
    assert [row["edits"] for row in run.rows] == [2, 3]
    # the last row scores every edit on the model as edited
    now = cf.evaluate(model, tok, subjects(3), fluency=False).summary()
    assert {k: v for k, v in run.rows[-1].items() if k not in ("edits", "seconds")} == now
    weight = model.get_parameter(editor.name)
    assert torch.allclose(weight, original[editor.name] * 2.25)
    run.delta.revert(model)  # the combined delta undoes both batches, bit-exactly
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())


def test_sequential_reverts_the_batches_written_when_one_fails():
    model, tok = make()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    editor = ScalingEditor(model, fail_on=2)
    with pytest.raises(RuntimeError, match="boom"):
        cf.sequential(model, tok, subjects(3), editor, batch_size=2, progress=False)
    assert len(editor.batches) == 2  # it failed in the second batch
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
