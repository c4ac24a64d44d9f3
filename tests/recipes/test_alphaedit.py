"""AlphaEdit / MEMIT: the closed-form solves, the null-space guarantee, editor state, files, key
statistics in one pass, bad requests, and real edits on SmolLM2."""

import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fakes import REQUEST, WordTokenizer

import interventions as iv
from interventions.evals import counterfact
from interventions.models import tiny
from interventions.recipes import alphaedit as ae

METHODS = ("alphaedit", "memit")
TINY = {"llama": ("llama", 2), "qwen2": ("qwen2", 2), "gpt2": ("gpt2", None)}


CORPUS = [
    "a quiet river runs past the mill and the bakers wake early",
    "seven birds sat on the wire while the rain kept falling",
    "the map shows hills roads and a small lake near the village",
    "north winds bring snow to the harbour every winter",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(arch: str, n_layers: int = 3):
    model_type, kv = TINY[arch]
    return tiny(model_type, n_kv_heads=kv, n_layers=n_layers), WordTokenizer()


def tiny_stats(model, tok, layers, tmp_path=None, **options) -> ae.KeyStats:
    # 40 keys < d_mlp (64 / 128): the preserved keys span a proper subspace, so an exact null
    # space exists
    return ae.key_stats(
        model,
        tok,
        CORPUS,
        layers=layers,
        max_tokens=40,
        progress=False,
        cache=tmp_path is not None,
        cache_dir=tmp_path,
        **options,
    )


def preserved_keys(model, tok, layer: int) -> torch.Tensor:
    """Every key the statistics saw at ``layer``: [n, d_mlp]."""
    keys = []
    for text in CORPUS:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad(), iv.capture(model, f"layers.{layer}.mlp.act") as cache:
            model(ids)
        keys.append(cache[f"layers.{layer}.mlp.act"][0])
    return torch.cat(keys)[:40]


def weight_change(model, delta: iv.WeightDelta, layer: int) -> torch.Tensor:
    """ΔW of ``layer``'s down projection in [out, in] orientation (from the delta's tensors)."""
    table = iv.adapter(model)
    name = f"{table.layers}.{layer}.{table.down_proj}.weight"
    new, old = delta.changes[name], delta.originals[name]
    return (table.from_storage(new) - table.from_storage(old)).double()


def current_weight(model, layer: int) -> torch.Tensor:
    table = iv.adapter(model)
    return table.weight(table.block_module(model, layer, table.down_proj)).detach().double()


# --- the closed-form solves ------------------------------------------------------------------


def test_alphaedit_update_keeps_preserved_keys_and_writes_the_edit():
    g = torch.Generator().manual_seed(0)
    d_in, d_out, n0 = 48, 16, 30
    k0 = torch.randn(d_in, n0, generator=g)
    w = torch.randn(d_out, d_in, generator=g)
    k1 = torch.randn(d_in, 3, generator=g)
    r = torch.randn(d_out, 3, generator=g)
    # the statistics: the preserved keys plus a small isotropic floor (a full-rank moment)
    moment = k0 @ k0.T / n0 + 1e-3 * torch.eye(d_in)
    p, null_dim = ae.null_space_projector(moment, 1e-2, "absolute")
    assert null_dim == d_in - n0
    delta = ae.alphaedit_update(k1, r, p, None, l2=1e-2)
    assert (delta @ k0).norm() <= 1e-3 * (w @ k0).norm()
    # the edited keys reach their residuals (up to λ)
    assert torch.allclose(delta @ k1, r, atol=1e-2)
    memit = ae.memit_update(k1, r, moment, mom2_update_weight=1.0)
    assert torch.allclose(memit @ k1, r, atol=0.2)
    assert (memit @ k0).norm() > 100 * (delta @ k0).norm()


def test_p_identity_is_the_ridge_least_squares_solution():
    g = torch.Generator().manual_seed(1)
    d_in, d_out = 20, 7
    k1, r = torch.randn(d_in, 4, generator=g), torch.randn(d_out, 4, generator=g)
    kp = torch.randn(d_in, 6, generator=g)
    l2 = 0.3
    delta = ae.alphaedit_update(k1, r, None, kp @ kp.T, l2=l2)
    # min ‖ΔW K1 − R‖² + ‖ΔW Kp‖² + λ‖ΔW‖²  as one stacked least-squares problem
    a = torch.cat([k1.T, kp.T, math.sqrt(l2) * torch.eye(d_in)]).double()
    b = torch.cat([r.T, torch.zeros(6, d_out), torch.zeros(d_in, d_out)]).double()
    expected = torch.linalg.lstsq(a, b).solution.T
    assert torch.allclose(delta.double(), expected, atol=1e-4)
    # the identity projector gives the same as P = None
    same = ae.alphaedit_update(k1, r, torch.eye(d_in), kp @ kp.T, l2=l2)
    assert torch.allclose(same, delta, atol=1e-5)


def test_memit_update_is_its_closed_form():
    g = torch.Generator().manual_seed(2)
    k, r = torch.randn(12, 3, generator=g), torch.randn(5, 3, generator=g)
    c0 = torch.randn(12, 40, generator=g)
    c0 = c0 @ c0.T / 40
    got = ae.memit_update(k, r, c0, mom2_update_weight=2.0).double()
    k, r, c0 = k.double(), r.double(), c0.double()
    assert torch.allclose(got, r @ k.T @ torch.linalg.inv(2.0 * c0 + k @ k.T), atol=1e-4)


def test_null_space_threshold_modes():
    basis = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(3)))[0]
    values = torch.tensor([10.0, 5.0, 1.0, 0.03, 0.01, 0.001])
    moment = basis @ torch.diag(values) @ basis.T
    assert ae.null_space_projector(moment, 2e-2, "absolute")[1] == 2
    assert ae.null_space_projector(moment, 1e-2, "relative")[1] == 3  # < 0.1
    # cumulative energy fractions 0.001, 0.011, 0.041 over 16.041: two are under 0.002
    assert ae.null_space_projector(moment, 0.002, "energy")[1] == 2
    p, _ = ae.null_space_projector(moment, 2e-2, "absolute")
    assert torch.allclose(p @ p, p, atol=1e-6) and torch.allclose(p, p.T, atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        ae.null_space_projector(moment, 0.1, "fraction")


# --- tokenizing --------------------------------------------------------------------------------


def test_subject_last_token_comes_from_offsets():
    tok = WordTokenizer()
    text = "Yesterday the old tower of north harbour stands in"
    start = text.index("north harbour")
    assert ae.subject_last_token(tok, text, start, start + len("north harbour")) == 6
    row = ae.encode(tok, "The tower of north harbour", subject_span=(13, 26), target="valley")
    assert row.subject == 4 and row.target_start == 5 and len(row.target) == 1


def _filter_script():
    """scripts/filter_counterfact.py as a module (scripts/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "filter_counterfact.py"
    spec = importlib.util.spec_from_file_location("filter_counterfact", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_corpus_is_prose_then_encyclopedia():
    corpus = ae.load_corpus()
    parts = [ae.load_corpus(path) for path in ae.BUNDLED_CORPUS]
    assert corpus == [text for part in parts for text in part]  # prose, then encyclopedia
    assert [len(part) for part in parts] == [50, 633]
    assert all(text.isascii() and "\n" not in text for text in corpus)


def test_the_counterfact_names_are_reexported_from_evals():
    # requests and metrics live in interventions.evals.counterfact; alphaedit.<name> still works
    for name in (
        "BUNDLED_REQUESTS", "Request", "RequestError", "Scores", "SequentialRun", "as_request",
        "as_requests", "evaluate", "filter_known", "load_requests", "scores_from_records",
        "target_logprobs",
    ):  # fmt: skip
        assert getattr(ae, name) is getattr(counterfact, name), name
        assert name in ae.__all__, name


def test_bundled_data_comes_from_the_filter_script_and_never_collides():
    script = _filter_script()
    candidates = script.candidates()
    assert len(candidates) >= 2400
    by_subject: dict[str, list[dict]] = {}  # a subject unknown in one relation may recur
    for c in candidates:
        by_subject.setdefault(c["subject"], []).append(c)
    kept: list[dict] = []
    for r in ae.load_requests():
        record = r.to_dict()
        record.pop("case_id")
        assert record in by_subject[r.subject]  # reproducible from the script's candidates
        # no neighbourhood prompt names another edited subject, in either direction
        assert script.collides(record, kept) is None, r.subject
        kept.append(record)
    assert script.collides(kept[0], kept) is not None  # the check does fire


def test_filter_script_name_matching():
    script = _filter_script()
    assert script._names("The Statue of Liberty", "Near the Statue of Liberty is")
    assert script._names("India", "The Reserve Bank of India issues")
    assert not script._names("India", "prices are paid in Indian")  # whole words only
    assert not script._names("Korea", "no mention here")
    groups = [
        script.Group("{} a", ("{} b", "{} c"), "{} d", "{}", (("x", "1", "2", ("n",) * 3),) * 2),
        script.Group("{} a", ("{} b", "{} c"), "{} d", "{}", (("y", "1", "2", ("n",) * 3),)),
    ]
    assert [fact[0] for _, fact in script.interleave(groups)] == ["x", "y", "x"]


def test_no_neighbourhood_prompt_names_its_own_subject():
    script = _filter_script()

    def record(subject, *prompts):
        return {"subject": subject, "neighborhood_prompts": list(prompts)}

    # the subject itself, a word of 4+ letters, a word start ("Indian"), the word less a final
    # y/a ("Hungarian"), an irregular demonym, case-insensitive
    for subject, prompt in [
        ("Spain", "The Royal Palace of Spain is in"),
        ("The Statue of Liberty", "the statue of liberty stands in"),
        ("Galaxy smartphone", "The Galaxy Tab is made by"),
        ("India", "In Delhi, people pay with the Indian"),
        ("Hungary", "The Hungarian Parliament Building is in"),
        ("Thailand", "The GRAND palace of thailand is in"),
        ("the United Kingdom", "In London, people pay with the British"),
    ]:
        assert script.names_itself(record(subject, "Other is in", prompt)) == prompt, subject
    # other subjects, short words and words inside other words do not count
    assert script.names_itself(record("India", "In Mumbai, prices are paid in")) is None
    assert script.names_itself(record("The Statue of Liberty", "The Empire State Building")) is None
    assert script.names_itself(record("Model S", "The Roadster is made by the S team")) is None
    assert script.names_itself(record("Oman", "The Romanian capital is")) is None
    # the filter drops such a candidate before looking at the model
    bad = REQUEST | {"neighborhood_prompts": ["The old tower of North Harbour stands in"]}
    kept, reasons = script.select(*make("llama"), [bad, REQUEST])
    assert reasons["names itself"] == 1 and bad not in kept
    # neither the bundled facts nor any candidate has one
    for r in ae.load_requests():
        assert script.names_itself(r.to_dict()) is None, r.subject
    for c in script.candidates():
        assert script.names_itself(c) is None, c["subject"]


# --- editing tiny models --------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(TINY))
def test_edit_writes_the_target_value_and_keeps_preserved_keys(arch):
    model, tok = make(arch)
    layer = 1
    stats = tiny_stats(model, tok, [layer])
    hp = ae.HParams(
        nullspace_mode="relative",
        nullspace_threshold=1e-6,
        n_prefixes=0,
        v_num_grad_steps=8,
        v_lr=0.5,
        kl_factor=0.0,
    )
    editor = ae.Editor(model, tok, stats, hparams=hp)
    request = ae.as_request(REQUEST)
    z = editor.compute_z([request]).z[0].double()
    text, start = request.text, request.subject_start
    ids = torch.tensor([tok(text)["input_ids"]])
    subject = ae.subject_last_token(tok, text, start, start + len(request.subject))
    sites = [f"layers.{layer}.mlp.act", f"layers.{layer}.resid_post"]
    with torch.no_grad(), iv.capture(model, sites, positions=subject) as before:
        model(ids)
    k, h = before[sites[0]][0].double(), before[sites[1]][0].double()
    # one layer, one key: Sherman-Morrison gives ΔW k = r · s / (s + λ) with s = kᵀPk; λ is set
    # against s so that the float32 system stays well conditioned
    s = float(k @ editor.projectors[layer].double() @ k)
    editor.hparams = replace(hp, L2=0.01 * s)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}

    delta = editor.edit([request])
    with torch.no_grad(), iv.capture(model, sites[1], positions=subject) as after:
        model(ids)
    expected = h + (z - h) / 1.01
    assert (z - h).norm() > 0.1 * h.norm()  # the target value really moved
    assert torch.allclose(after[sites[1]][0].double(), expected, rtol=1e-3, atol=1e-5)
    # the null-space guarantee on the keys the statistics were built from
    k0 = preserved_keys(model, tok, layer).double().T
    dw = weight_change(model, delta, layer)
    assert (dw @ k0).norm() <= 1e-3 * (current_weight(model, layer) @ k0).norm()
    # weights are changed in the module's own orientation (GPT-2 Conv1D stores [in, out])
    table = iv.adapter(model)
    name = f"{table.layers}.{layer}.{table.down_proj}.weight"
    assert delta.names == [name]
    assert delta.changes[name].shape == original[name].shape
    # revert is bit-exact
    delta.revert(model)
    for n, param in model.named_parameters():
        assert torch.equal(param, original[n]), n

    # MEMIT on the same request changes the preserved keys' outputs much more
    memit = ae.Editor(
        model, tok, stats, method="memit", hparams=replace(hp, mom2_update_weight=0.01)
    )
    memit_delta = memit.edit([request])
    dw_memit = weight_change(model, memit_delta, layer)
    assert (dw_memit @ k0).norm() > 10 * (dw @ k0).norm()
    memit_delta.revert(model)


def test_edit_a_lora_model_through_its_plain_down_proj(lora):
    model, tok = make("llama")
    wrapped = lora(model, ["self_attn.q_proj"])  # an adapter on attention, a plain MLP
    with torch.no_grad():  # an adapter that adds zeros: the wrapper computes what model does
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.zero_()
    hp = ae.HParams(n_prefixes=0, v_num_grad_steps=4, kl_factor=0.0)
    request = ae.as_request(REQUEST)
    expected = ae.Editor(model, tok, tiny_stats(model, tok, [1]), hparams=hp).edit([request])
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    stats = tiny_stats(wrapped, tok, [1])
    delta = ae.Editor(wrapped, tok, stats, hparams=hp).edit([request])
    name = "model.layers.1.mlp.down_proj.weight"  # named from the causal LM
    assert delta.names == expected.names == [name]
    torch.testing.assert_close(delta.changes[name], expected.changes[name], rtol=0, atol=1e-6)
    assert not torch.equal(delta.changes[name], before["base_model.model." + name])
    delta.revert(wrapped)
    assert all(torch.equal(p, before[n]) for n, p in wrapped.named_parameters())


@pytest.mark.parametrize("arch", list(TINY))
def test_target_loss_runs_only_the_suffix_after_the_subject_but_scores_whole_rows(arch):
    # compute_z caches the tokens before the subject and optimises on the rest: its loss at the
    # start must be the NLL of the target after the whole (prefixed) prompts
    model, tok = make(arch)
    prefixes = ["so it goes", "a long and winding road ends here"]
    hp = ae.HParams(layers=(1,), v_num_grad_steps=1, kl_factor=0.0, v_weight_decay=0.0)
    editor = ae.Editor(model, tok, tiny_stats(model, tok, [1]), hparams=hp, prefixes=prefixes)
    requests = [ae.as_request(REQUEST), ae.as_request(dict(REQUEST, subject="west bridge"))]
    result = editor.compute_z(requests)
    for request, loss in zip(requests, result.loss, strict=True):
        texts = [request.text] + [f"{p}. {request.text}" for p in prefixes]
        scores = ae.target_logprobs(model, tok, [(t, request.target_new) for t in texts])
        assert loss == pytest.approx(-sum(scores) / len(scores), rel=1e-4)
    assert torch.equal(result.z, result.init)  # no step taken


def test_sequential_edits_accumulate_keys_and_editors_do_not_share_state(tmp_path):
    model, tok = make("llama")
    stats = tiny_stats(model, tok, [0, 1])
    hp = ae.HParams(
        nullspace_mode="relative", nullspace_threshold=1e-6, n_prefixes=0, v_num_grad_steps=2
    )
    first, second = (
        ae.Editor(model, tok, stats, hparams=hp),
        ae.Editor(model, tok, stats, hparams=hp),
    )
    other = dict(REQUEST, subject="west bridge")
    d1 = first.edit([REQUEST])
    assert first.n_edits == 1 and set(first.past) == {0, 1}
    assert second.past == {} and second.n_edits == 0
    trace = float(first.past[1].trace())
    d2 = first.edit([other])
    assert first.n_edits == 2 and float(first.past[1].trace()) > trace
    # save / load keeps P, the accumulated keys, the prefixes and the count
    path = first.save(tmp_path / "editor.safetensors")
    loaded = ae.Editor.load(path, model, tok)
    assert loaded.n_edits == 2 and loaded.layers == [0, 1] and loaded.prefixes == []
    for layer in (0, 1):
        assert torch.equal(loaded.past[layer], first.past[layer])
        assert torch.equal(loaded.projectors[layer], first.projectors[layer])
    loaded.reset()
    assert loaded.past == {} and first.n_edits == 2
    ae.combine([d1, d2]).revert(model)
    assert all(torch.equal(model.get_parameter(n), o) for n, o in d1.originals.items())


@pytest.mark.parametrize("method", METHODS)
def test_editor_files_restore_what_follows_from_their_tensors_and_refuse_another_model(
    tmp_path, method
):
    # the layers, null-space dimensions and d_mlp are not stored apart from P / C0: they follow
    model, tok = make("llama")
    editor = ae.Editor(model, tok, tiny_stats(model, tok, [0, 2]), method=method)
    path = editor.save(tmp_path / "editor.safetensors")
    loaded = ae.Editor.load(path, model, tok)
    assert loaded.layers == [0, 2] and loaded.hparams == editor.hparams
    assert loaded.null_dims == editor.null_dims and (method == "memit") == (editor.null_dims == {})
    other, _ = make("gpt2")  # d_mlp 128, not 64
    with pytest.raises(ValueError, match="128"):
        ae.Editor.load(path, other, tok)


def test_edit_delta_saves_and_applies(tmp_path):
    model, tok = make("qwen2")
    stats = tiny_stats(model, tok, [1])
    hp = ae.HParams(n_prefixes=0, v_num_grad_steps=2)
    delta = ae.edit(model, tok, [REQUEST], stats=stats, method="memit", hparams=hp)
    edited = {n: model.get_parameter(n).detach().clone() for n in delta.names}
    delta.save(tmp_path / "edit.safetensors")
    delta.revert(model)
    loaded = iv.WeightDelta.load(tmp_path / "edit.safetensors").apply(model)
    assert all(torch.equal(model.get_parameter(n), edited[n]) for n in delta.names)
    loaded.revert(model)


def test_a_failed_edit_leaves_the_model_and_editor_unchanged(monkeypatch):
    model, tok = make("gpt2")
    stats = tiny_stats(model, tok, [0, 1])
    editor = ae.Editor(model, tok, stats, hparams=ae.HParams(n_prefixes=0, v_num_grad_steps=2))
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = []
    real_update = ae.alphaedit_update

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # layer 0 is already written when layer 1 fails
            raise RuntimeError("boom")
        return real_update(*args, **kwargs)

    monkeypatch.setattr(ae, "alphaedit_update", failing)
    with pytest.raises(RuntimeError, match="boom"):
        editor.edit([REQUEST])
    assert len(calls) == 2
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    assert editor.past == {} and editor.n_edits == 0


@pytest.mark.parametrize("method", METHODS)
def test_an_interrupted_edit_leaves_the_model_and_editor_unchanged(method, untouched, interrupt):
    model, tok = make("llama")
    stats = tiny_stats(model, tok, [0, 1])
    hp = ae.HParams(n_prefixes=0, v_num_grad_steps=2)
    editor = ae.Editor(model, tok, stats, method=method, hparams=hp)
    check = untouched(model)
    layer_0 = current_weight(model, 0).clone()

    def layer_0_written(_: int) -> bool:  # Ctrl-C in the next forward, with its hooks on
        return not torch.equal(current_weight(model, 0), layer_0)

    calls = interrupt(model, 0, layer_0_written)
    with pytest.raises(KeyboardInterrupt):
        ae.edit(model, tok, [REQUEST], editor=editor)
    assert calls[-1]  # it fired
    check()
    assert editor.past == {} and editor.n_edits == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": "The old tower stands in"}, "exactly one"),
        ({"prompt": "{} and {} stand in"}, "exactly one"),
        ({"target_new": "  "}, "target_new is empty"),
        ({"subject": ""}, "subject is empty"),
        ({"target_new": "market"}, "both"),
        ({"prompt": "{} stands in", "subject": "harbour"}, "first token"),
    ],
)
def test_bad_requests_raise_before_any_weight_changes(change, message):
    model, tok = make("llama")
    stats = tiny_stats(model, tok, [1])
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ae.RequestError, match=message):
        ae.edit(model, tok, [dict(REQUEST, **change)], stats=stats, prefixes=[])
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_new": ""}, r"requests\[1\]: target_new is empty \(''\): give the word\(s\)"),
        ({"target_new": " "}, r"requests\[1\]: target_new is empty \(' '\): give .* 'Rome'"),
        ({"target_true": "\t "}, r"requests\[1\]: target_true is empty \('\\t '\): give"),
        ({"prompt": "The old tower of north harbour stands in"},
         r"requests\[1\]: .*exactly one '\{\}' .*write '\{\}' in place of 'north harbour'"),
        ({"subject": 7}, r"requests\[1\]: field 'subject' must be a string, got 7"),
    ],
)  # fmt: skip
def test_a_bad_request_is_refused_with_its_index_and_the_fix(untouched, change, message):
    model, tok = make("llama")
    stats = tiny_stats(model, tok, [1])
    check = untouched(model)
    requests = [REQUEST, dict(REQUEST, **change)]
    with pytest.raises(ae.RequestError, match=message):
        ae.edit(model, tok, requests, stats=stats, prefixes=[])
    as_values = [ae.as_request(REQUEST), ae.Request(**dict(REQUEST, **change))]  # not dicts
    with pytest.raises(ae.RequestError, match=message):
        ae.edit(model, tok, as_values, stats=stats, prefixes=[])
    check()


def test_scoring_names_the_pair_or_request_whose_target_gives_no_token(untouched):
    model, tok = make("gpt2")
    check = untouched(model)
    with pytest.raises(ae.RequestError, match=r"pairs\[1\]: the target ' ' of .* no contiguous"):
        ae.target_logprobs(model, tok, [("The sky is", "blue"), ("The sea is", " ")])
    with pytest.raises(ae.RequestError, match=r"requests\[0\]: target_true is empty"):
        ae.evaluate(model, tok, [dict(REQUEST, target_true=" ")], fluency=False)
    check()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"v_lr": float("nan")}, ValueError, r"v_lr must be a finite number > 0, got nan"),
        ({"v_lr": 0.0}, ValueError, r"v_lr must be a finite number > 0, got 0.0"),
        ({"v_lr": float("inf")}, ValueError, r"v_lr must be a finite number > 0, got inf"),
        ({"v_num_grad_steps": True}, TypeError, r"v_num_grad_steps must be an integer >= 0"),
        ({"v_num_grad_steps": 2.5}, TypeError, r"v_num_grad_steps must be an integer >= 0"),
        ({"n_prefixes": -1}, ValueError, r"n_prefixes must be an integer >= 0, got -1"),
        ({"seed": 0.5}, TypeError, r"seed must be an integer, got 0.5"),
        ({"L2": float("nan")}, ValueError, r"L2 must be a finite number >= 0, got nan"),
        ({"mom2_update_weight": float("inf")}, ValueError, r"mom2_update_weight must be a finite"),
        ({"kl_factor": -1.0}, ValueError, r"kl_factor must be a finite number >= 0, got -1.0"),
        ({"clamp_norm_factor": 0.0}, ValueError, r"clamp_norm_factor must be a finite number > 0"),
        (
            {"nullspace_threshold": float("nan")},
            ValueError,
            r"nullspace_threshold must be a finite",
        ),
        ({"early_stop_loss": float("nan")}, ValueError, r"early_stop_loss must be a finite"),
        ({"layers": (True,)}, TypeError, r"layers\[0\] must be an integer >= 0, got True"),
        ({"layers": (1, 1)}, ValueError, r"layers must be non-empty without repeats"),
    ],
)
def test_hparams_refuse_nonsense_numbers(options, error, message):
    with pytest.raises(error, match=message):
        ae.HParams(**options)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"layers": []}, ValueError,
         r"^layers is empty: pass the layers to edit, e.g. default_layers\(n_layers\)$"),
        ({"layers": [1, 1]}, ValueError, r"layers repeats layer \[1\]: give each layer once"),
        ({"layers": [3]}, ValueError, r"layers: layer index \[3\] out of range: the model has 3"),
        ({"layers": [-1]}, ValueError, r"layers: layer index \[-1\] out of range"),
        ({"layers": [True]}, TypeError, r"layers\[0\] must be an integer, got True"),
        ({"corpus": []}, ValueError, r"the corpus gave no text .*: pass a list of texts"),
        ({"corpus": ["", "  ", "one"]}, ValueError, r"no text of two or more tokens"),
        ({"max_length": 1}, ValueError, r"max_length must be an integer >= 2, got 1"),
        ({"max_tokens": True}, TypeError, r"max_tokens must be an integer >= 1, got True"),
        ({"batch_size": 0}, ValueError, r"batch_size must be an integer >= 1, got 0"),
    ],
)  # fmt: skip
def test_key_stats_refuse_empty_repeated_or_foreign_layers_and_empty_corpora(
    tmp_path, untouched, options, error, message
):
    model, tok = make("llama")
    check = untouched(model)
    arguments = {"corpus": CORPUS, "layers": [1], **options}
    with pytest.raises(error, match=message):
        ae.key_stats(model, tok, arguments.pop("corpus"), arguments.pop("layers"),
                     cache_dir=tmp_path, progress=False, **arguments)  # fmt: skip
    check()
    assert list(tmp_path.iterdir()) == []  # nothing cached


def test_editor_checks_its_inputs(offload, lora):
    model, tok = make("llama")
    stats = tiny_stats(model, tok, [1])
    with pytest.raises(RuntimeError, match="offloaded"):
        ae.Editor(offload(model), tok, stats)
    with pytest.raises(ValueError, match="merge the adapter first"):
        ae.Editor(lora(model, ["mlp.down_proj"]), tok, stats)
    with pytest.raises(ValueError, match="method"):
        ae.Editor(model, tok, stats, method="rome")
    with pytest.raises(ValueError, match="no layers"):
        ae.Editor(model, tok, stats, hparams=ae.HParams(layers=(0, 1)))
    with pytest.raises(ValueError, match="nullspace_mode"):
        ae.HParams(nullspace_mode="fraction")


# --- key statistics ------------------------------------------------------------------------------


def test_key_stats_one_pass_for_all_layers_cached_and_exact(tmp_path, monkeypatch):
    model, tok = make("llama", n_layers=3)
    forwards = []
    model.register_forward_pre_hook(lambda *a: forwards.append(1))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    cache = tmp_path / "cache"
    stats = ae.key_stats(
        model, tok, CORPUS, layers=[0, 1, 2], batch_size=2, cache_dir=cache, progress=False
    )
    assert len(forwards) == math.ceil(len(CORPUS) / 2)  # one pass, not one per layer
    n_words = sum(len(t.split()) for t in CORPUS)
    assert stats.count == n_words
    # the moment is E[k kᵀ] over every real token (padding excluded)
    keys = torch.cat([preserved_keys_all(model, tok, 2, text) for text in CORPUS]).double()
    assert torch.allclose(stats.moments[2].double(), keys.T @ keys / len(keys), atol=1e-6)
    assert len(list(cache.iterdir())) == 3
    forwards.clear()
    again = ae.key_stats(
        model, tok, CORPUS, layers=[0, 1, 2], batch_size=2, cache_dir=cache, progress=False
    )
    assert forwards == []  # served from the cache, identical
    assert all(torch.equal(again.moments[i], stats.moments[i]) for i in range(3))
    # a changed model is not served stale statistics
    with torch.no_grad():
        iv.adapter(model).block_module(model, 0, "mlp.up_proj").weight.mul_(2)
    ae.key_stats(model, tok, CORPUS, layers=[1], batch_size=2, cache_dir=cache, progress=False)
    assert len(forwards) == 2
    # nothing lands in the working directory, and cache=False writes nothing at all
    ae.key_stats(model, tok, CORPUS, layers=[0], cache=False, progress=False)
    assert list(workdir.iterdir()) == [] and len(list(cache.iterdir())) == 4


def test_edit_without_statistics_computes_them_on_the_bundled_corpus_once(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the default cache, here
    folder = tmp_path / "interventions" / "alphaedit"
    model, tok = make("llama", n_layers=3)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    hp = ae.HParams(n_prefixes=0, v_num_grad_steps=3)
    caplog.set_level("INFO", logger="interventions")
    delta = ae.edit(model, tok, [REQUEST])  # no other argument
    assert (
        "loaded from" not in caplog.text
        and str(folder) in caplog.text
        and "no key statistics given" in caplog.text
    )
    assert sorted(delta.names) == sorted(
        f"model.layers.{i}.mlp.down_proj.weight" for i in ae.default_layers(3)
    )
    assert all(not torch.equal(delta.changes[n], delta.originals[n]) for n in delta.names)
    delta.revert(model)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    files = sorted(folder.iterdir())
    assert len(files) == 3  # one per default layer
    # the same statistics as asked for by hand: bundled corpus, default layers
    by_hand = ae.key_stats(model, tok, cache=False, progress=False)
    editor = ae.Editor(model, tok, hparams=hp)
    assert editor.layers == by_hand.layers == ae.default_layers(3)
    for layer in editor.layers:
        expected, _ = by_hand.projector(layer)
        assert torch.equal(editor.projectors[layer], expected)
    memit = ae.Editor(model, tok, method="memit", hparams=hp)
    assert all(torch.equal(memit.moments[i], by_hand.moments[i]) for i in memit.layers)
    # the second and third editors were served from the cache: no new files, loads logged
    assert sorted(folder.iterdir()) == files
    assert caplog.text.count("loaded from") >= 6
    # hparams.layers choose the layers the statistics are computed for
    assert ae.Editor(model, tok, hparams=replace(hp, layers=(1,))).layers == [1]


def test_edit_without_statistics_refuses_bad_input_clearly(tmp_path, monkeypatch, untouched):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model, tok = make("llama", n_layers=3)
    check = untouched(model)
    with pytest.raises(TypeError, match=r"stats must be KeyStats .* got dict"):
        ae.edit(model, tok, [REQUEST], stats={1: torch.eye(64)})
    with pytest.raises(ValueError, match=r"layers: layer index \[5\] out of range"):
        ae.edit(model, tok, [REQUEST], hparams=ae.HParams(layers=(5,)))
    with pytest.raises(ae.RequestError, match="exactly one"):
        ae.edit(model, tok, [dict(REQUEST, prompt="The old tower stands in")])
    check()


def preserved_keys_all(model, tok, layer: int, text: str) -> torch.Tensor:
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad(), iv.capture(model, f"layers.{layer}.mlp.act") as cache:
        model(ids)
    return cache[f"layers.{layer}.mlp.act"][0]


def test_key_stats_skip_first_token_and_save(tmp_path):
    model, tok = make("gpt2")
    stats = ae.key_stats(
        model, tok, CORPUS, layers=[1], cache=False, skip_first_token=True, progress=False
    )
    assert stats.count == sum(len(t.split()) - 1 for t in CORPUS)
    stats.save(tmp_path / "stats.safetensors")
    loaded = ae.KeyStats.load(tmp_path / "stats.safetensors")
    assert loaded.count == stats.count and torch.equal(loaded.moments[1], stats.moments[1])


def test_prefixes_are_seeded_samples_of_the_model_after_fixed_starts():
    model, tok = make("llama")
    state = torch.random.get_rng_state()
    prefixes = ae.generate_prefixes(model, tok, n=6, length=4, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is untouched
    starts = ["The", "Therefore", "Because", "I", "You", "The"]
    for prefix, start in zip(prefixes, starts, strict=True):  # each start and what the model wrote
        assert prefix.startswith(start) and len(prefix) > len(start)
        assert "{" not in prefix and "}" not in prefix and prefix == " ".join(prefix.split())
    assert ae.generate_prefixes(model, tok, n=6, length=4, seed=0) == prefixes
    assert ae.generate_prefixes(model, tok, n=6, length=4, seed=1) != prefixes
    assert ae.generate_prefixes(model, tok, n=0) == []
    hp = ae.HParams(layers=(1,), n_prefixes=2, prefix_length=4)
    editor = ae.Editor(model, tok, hparams=hp, projectors={1: torch.eye(iv.geometry(model).d_mlp)})
    two = ae.generate_prefixes(model, tok, n=2, length=4, seed=0)  # its own draw: n is the batch
    assert editor.contexts() == ["{}"] + [f"{p}. {{}}" for p in two]


# --- sequential editing --------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_sequential_edits_batches_with_one_editor_and_reverts_them_all(method):
    model, tok = make("llama")
    stats = tiny_stats(model, tok, [0, 1])
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    requests = [REQUEST, dict(REQUEST, subject="west bridge"), dict(REQUEST, subject="east gate")]
    hp = ae.HParams(n_prefixes=0, v_num_grad_steps=2)
    run = ae.sequential(
        model, tok, requests, stats=stats, method=method, batch_size=2, hparams=hp, progress=False
    )
    assert isinstance(run.editor, ae.Editor) and run.editor.method == method
    assert run.editor.n_edits == 3 and [row["edits"] for row in run.rows] == [2, 3]
    assert run.rows[-1]["efficacy"] == ae.evaluate(model, tok, requests, fluency=False).efficacy
    assert (set(run.editor.past) == {0, 1}) == (method == "alphaedit")  # MEMIT keeps no keys
    run.delta.revert(model)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())


# --- the real model ------------------------------------------------------------------------------


@pytest.mark.real
def test_real_edits_flip_facts_and_keep_neighbours(real_model, tmp_path):
    model, tok = real_model
    requests = ae.load_requests()[:5]
    stats = ae.key_stats(
        model, tok, layers=[4, 5, 6, 7, 8], max_tokens=3000, cache_dir=tmp_path, progress=False
    )
    before = ae.evaluate(model, tok, requests, fluency=False)
    assert before.efficacy == 0.0  # the bundled facts are known to the model
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    delta = ae.edit(model, tok, requests, stats=stats, hparams=ae.HParams(n_prefixes=2))
    try:
        after = ae.evaluate(model, tok, requests, fluency=False)
        print("before", before.summary(), "\nafter", after.summary())
        assert after.efficacy >= 0.8
        assert after.neighborhood >= before.neighborhood - 0.2
    finally:
        delta.revert(model)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())


@pytest.mark.real
def test_real_edit_with_no_other_argument(real_model, caplog):
    # the default cache (~/.cache/interventions/alphaedit): only the first run computes them
    model, tok = real_model
    requests = ae.load_requests()[:3]
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    with caplog.at_level("INFO", logger="interventions"):
        delta = ae.edit(model, tok, requests)
    try:
        assert "no key statistics given" in caplog.text
        assert str(iv.stats.default_cache_dir("alphaedit")) in caplog.text
        assert ae.evaluate(model, tok, requests, fluency=False).efficacy >= 2 / 3
    finally:
        delta.revert(model)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize(
    "model_type, reason",
    [
        ("gemma2", "output of 'post_feedforward_layernorm', not of the down projection"),
        ("qwen2_moe", "experts are fused 3-D parameters"),
    ],
)
def test_edit_and_key_stats_refuse_mlps_that_are_not_one_down_projection(
    model_type, reason, untouched
):
    model, tok = tiny(model_type, n_kv_heads=2), WordTokenizer()
    check = untouched(model)
    with pytest.raises(NotImplementedError, match=reason):
        ae.key_stats(model, tok, ["a b c d e f"], layers=[1], cache=False)
    with pytest.raises(NotImplementedError, match=reason):
        ae.Editor(model, tok, None)
    check()


# --- the long sequential run (examples/05_alphaedit_long.py) -----------------------------------


def _long_run_script():
    path = Path(__file__).resolve().parents[2] / "examples" / "05_alphaedit_long.py"
    spec = importlib.util.spec_from_file_location("alphaedit_long", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_long_run_resumes_after_an_interrupt_to_the_same_edits(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    script = _long_run_script()
    tok = WordTokenizer()
    monkeypatch.setattr(script, "load", lambda name: (tiny("llama", n_kv_heads=2), tok))

    def run(state: str, results: str) -> None:
        folder = tmp_path / state
        argv = ["run", "--method", "alphaedit", "--edits", "4", "--batch", "2"]
        argv += ["--state", str(folder), "--results", str(tmp_path / results)]
        script.run(script.arguments().parse_args(argv))

    run("straight", "straight-results")
    real_edit = ae.Editor.edit

    def interrupted(editor, requests):
        if editor.n_edits == 2:  # Ctrl-C in the second batch
            raise KeyboardInterrupt
        return real_edit(editor, requests)

    monkeypatch.setattr(ae.Editor, "edit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run("resumed", "resumed-results")
    state = tmp_path / "resumed"
    after_one = {p.name: p.read_bytes() for p in [*state.iterdir(), tmp_path / "resumed-results"
                                                  / "alphaedit.json"]}  # fmt: skip
    assert json.loads((state / "progress.json").read_text())["edits"] == 2
    monkeypatch.setattr(ae.Editor, "edit", interrupted)
    with pytest.raises(KeyboardInterrupt):  # a second interrupt changes no file
        run("resumed", "resumed-results")
    assert {p.name: p.read_bytes() for p in [*state.iterdir(), tmp_path / "resumed-results"
                                             / "alphaedit.json"]} == after_one  # fmt: skip
    monkeypatch.setattr(ae.Editor, "edit", real_edit)
    run("resumed", "resumed-results")
    straight = iv.WeightDelta.load(tmp_path / "straight" / "delta-4.safetensors")
    resumed = iv.WeightDelta.load(state / "delta-4.safetensors")
    assert straight.names == resumed.names
    assert all(torch.equal(straight.changes[n], resumed.changes[n]) for n in straight.names)
    rows = json.loads((tmp_path / "resumed-results" / "alphaedit.json").read_text())["rows"]
    assert [r["edits"] for r in rows] == [2, 4]
    same = json.loads((tmp_path / "straight-results" / "alphaedit.json").read_text())["rows"]
    keys = ("efficacy", "paraphrase", "neighborhood", "perplexity", "mc_accuracy")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in same]
    # the unedited scores are cached under the unedited weights' fingerprint, resumed or not
    assert len(list(tmp_path.glob("unedited-*.json"))) == 1
    # a restart on other facts than those edited refuses to go on
    monkeypatch.setattr(script.counterfact, "load_requests", lambda: ae.load_requests()[::-1])
    with pytest.raises(SystemExit, match="facts changed"):
        run("resumed", "resumed-results")


def test_the_long_run_scores_the_newest_batch_and_a_flat_sample_of_earlier_edits():
    scored = _long_run_script().scored_facts
    assert scored(100, 100, 200, last=False) == list(range(100))
    after_1000 = scored(1000, 100, 200, last=False)
    assert len(after_1000) == 300 and after_1000[200:] == list(range(900, 1000))
    earlier = after_1000[:200]
    assert earlier == sorted(set(earlier)) and earlier[0] == 0 and earlier[-1] < 900
    assert max(b - a for a, b in zip(earlier, earlier[1:], strict=False)) <= 5  # evenly spread
    assert scored(1000, 100, 200, last=True) == list(range(1000))  # the last batch: every edit
    assert scored(1000, 100, 0, last=False) == list(range(1000))


def test_the_long_runs_output_change_is_the_norm_ratio_over_the_keys_themselves():
    output_change = _long_run_script().output_change
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    delta_w = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    moment = keys.T @ keys / len(keys)
    direct = ((keys @ delta_w.T).pow(2).sum() / (keys @ weight.T).pow(2).sum()).sqrt()
    assert output_change(delta_w, weight, moment) == pytest.approx(float(direct), rel=1e-12)
    assert output_change(torch.zeros_like(weight), weight, moment) == 0
    assert output_change(-weight, weight, moment) == pytest.approx(1, rel=1e-12)


def test_the_long_runs_drift_reads_both_states_and_leaves_the_model_unedited(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    script = _long_run_script()
    tok = WordTokenizer()
    loaded = []
    monkeypatch.setattr(script, "load", lambda name: loaded.append(tiny("llama", n_kv_heads=2))
                        or (loaded[-1], tok))  # fmt: skip
    for method in ae.METHODS:  # each run loads its own model, as each process does
        argv = ["run", "--method", method, "--edits", "2", "--batch", "2"]
        argv += ["--state", str(tmp_path / "state" / method), "--results", str(tmp_path)]
        script.run(script.arguments().parse_args(argv))
    out = tmp_path / "drift.json"
    empty = ["drift", "--state", str(tmp_path / "no-runs"), "--out", str(out)]
    with pytest.raises(SystemExit, match="no run state"):
        script.drift(script.arguments().parse_args(empty))
    assert not out.exists()
    argv = ["drift", "--state", str(tmp_path / "state"), "--out", str(out)]
    script.drift(script.arguments().parse_args(argv))
    model, fresh = loaded[-1], tiny("llama", n_kv_heads=2)
    assert iv.stats.fingerprint(model, "logits") == iv.stats.fingerprint(fresh, "logits")
    found = json.loads(out.read_text())
    assert {(r["run"], r["edits"]) for r in found["rows"]} == {("alphaedit", 2), ("memit", 2)}
    layers = ae.Editor.load(tmp_path / "state" / "alphaedit" / "editor-2.safetensors", model,
                            tok).layers  # fmt: skip
    for run in ae.METHODS:
        rows = [r for r in found["rows"] if r["run"] == run]
        assert [(r["layer"], r["text"]) for r in rows] == [
            (layer, text) for layer in layers for text in found["texts"]
        ]
        assert all(r["output_change"] > 0 for r in rows)
        shares = [r["null_share"] for r in rows]
        if run == "memit":  # no null space
            assert shares == [None] * len(rows)
        else:
            assert all(-1e-9 <= share <= 1 + 1e-9 for share in shares)  # a share of the energy
    table = script.drift_table(found).splitlines()
    body = [line for line in table if line.startswith(("| alphaedit (2)", "| memit (2)"))]
    assert len(body) == 2 * len(found["texts"])
    assert all(line.split(" | ")[2] == "–" for line in body if line.startswith("| memit"))


def test_a_long_run_with_another_null_space_is_named_and_kept_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    script = _long_run_script()
    monkeypatch.setattr(script, "load", lambda name: (tiny("llama", n_kv_heads=2), WordTokenizer()))
    argv = ["run", "--method", "alphaedit", "--edits", "2", "--batch", "2"]
    argv += ["--results", str(tmp_path), "--nullspace-mode", "energy"]
    argv += ["--nullspace-threshold", "0.5"]
    args = script.arguments().parse_args([*argv, "--state", str(tmp_path / "variant")])
    assert script.hparams_of(args)[0] == "alphaedit-energy-0.5"
    script.run(args)
    found = json.loads((tmp_path / "alphaedit-energy-0.5.json").read_text())
    assert found["hparams"]["nullspace_mode"] == "energy"
    assert found["hparams"]["nullspace_threshold"] == 0.5
    assert found["null_dims"] != ae.Editor(*script.load(None)).null_dims  # not the default's
    plain = script.arguments().parse_args(argv[:9])
    assert script.hparams_of(plain) == ("alphaedit", ae.HParams())
    memit = script.arguments().parse_args([*argv[:2], "memit", *argv[3:]])  # same null space
    with pytest.raises(SystemExit, match="not memit"):
        script.hparams_of(memit)
    both = script.arguments().parse_args([*argv, "--l2", "10"])
    name, hparams = script.hparams_of(both)
    assert name == "alphaedit-energy-0.5-L2-10" and hparams.L2 == 10
    assert hparams.nullspace_mode == "energy"
    assert script.hparams_of(script.arguments().parse_args([*argv[:9], "--l2", "10"]))[0] == (
        "alphaedit-L2-10"
    )


def test_target_values_in_chunks_equal_one_optimisation(monkeypatch):
    model, tok = make("llama")
    stats = tiny_stats(model, tok, [0, 1])
    hp = ae.HParams(n_prefixes=1, prefix_length=3, v_num_grad_steps=4)
    requests = ae.as_requests(
        [dict(REQUEST, subject=s) for s in ("north harbour", "west bridge", "east gate")]
    )
    editor = ae.Editor(model, tok, stats, hparams=hp)
    rewrites = editor._rows(requests, editor.contexts())[1]
    whole = editor.compute_z(requests, rewrites)
    monkeypatch.setattr(ae, "Z_CHUNK", 2)
    chunked = editor._targets(requests, rewrites)
    assert torch.allclose(chunked.z, whole.z, atol=1e-5) and chunked.steps == whole.steps
