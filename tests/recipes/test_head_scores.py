"""Head scoring recipe: raw scores against hand computations, streaming, padding, fusion,
comparison, data errors and the command line (tiny random models; real model marked ``real``)."""

import copy
import json
import math
import string

import numpy as np
import pytest
import torch
import yaml
from einops import rearrange
from fakes import WordTokenizer

import interventions as iv
from interventions import cli, report
from interventions.evals import tasks
from interventions.models import tiny
from interventions.recipes import head_scores as hs

# --- tokenizers: the suite's fake (one token per character) and, for the command line's saved
# models, a HuggingFace character-level tokenizer (fast, with offsets; vocab < 99) ------------

CHARS = string.ascii_letters + string.digits + " .,?!'-:;()\n\""


def char_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2}
    for c in CHARS:
        vocab[c] = len(vocab)
    assert len(vocab) < 99
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")


def mc(question, *texts, answer="A"):
    labels = list("ABCDE"[: len(texts)])
    return {
        "question": question,
        "choices": {"text": list(texts), "label": labels},
        "answerKey": answer,
    }


RECORDS = [
    mc("Where do fish live?", "sea", "sky"),
    mc("What melts in the sun?", "ice", "rock", "iron"),
    mc("Cut paper with?", "scissors", "soup", answer="A"),
    mc("What do bees make?", "silk", "honey", answer="B"),
    mc("Which season is coldest?", "summer", "winter", "spring", answer="B"),
    mc("Dry yourself with?", "towel", "hammer"),
    mc("Why turn on a lamp at night, when it is dark?", "to see", "to cool down"),
]

# gemma2: sandwich norms; qwen2_moe: fused-expert MoE
ARCHS = [
    ("llama", None),
    ("llama", 2),
    ("qwen2", 2),
    ("gpt2", None),
    ("gemma2", 2),
    ("qwen2_moe", 2),
]


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer(chars=True)  # token index = character index


def _prompts():
    return [hs.parse_record(r, f"r{i}") for i, r in enumerate(RECORDS)]


def _query_positions(length, mode, exclude_first):
    positions = [length - 1] if mode == "last_token" else list(range(length))
    return [q for q in positions if not (exclude_first and q == 0)]


def _log(p):
    """log p where p > 0, else 0: 0·log 0 = 0 (keys outside a sliding window get no mass)."""
    return np.log(np.where(p > 0, p, 1.0))


def _hand_scores(model, tok, prompts, mode, exclude_first):
    """Every raw score from full captures of one prompt at a time (no padding, no masks)."""
    geometry = iv.geometry(model)
    table = iv.adapter(model)
    sums = {
        k: np.zeros((geometry.n_layers, geometry.n_heads))
        for k in ("out", "out_resid", "ent", "ent_all", "sink", "task")
    }
    n_out = n_task = n_ent = 0  # entropy without the sink needs >= 2 keys after it
    for prompt in prompts:
        ids = torch.tensor([tok(prompt.text)["input_ids"]])
        with iv.capture(model, ["layers.*.attn.heads", "layers.*.attn.pattern"]) as cache:
            model(input_ids=ids)
        start = len("Question: ")
        span = (start, prompt.text.index("\n"))  # char tokenizer: token index = char index
        queries = _query_positions(ids.shape[1], mode, exclude_first)
        n_out += len(queries)
        n_task += sum(q >= span[1] for q in queries)
        n_ent += sum(q >= 2 for q in queries)
        for layer in range(geometry.n_layers):
            y = cache[f"layers.{layer}.attn.heads"][0]  # [t, h, d]
            pattern = cache[f"layers.{layer}.attn.pattern"][0].double()  # [h, q, k]
            w = table.weight(table.block_module(model, layer, table.o_proj)).detach()
            w = rearrange(w, "m (h d) -> h m d", h=geometry.n_heads)
            for q in queries:
                for h in range(geometry.n_heads):
                    sums["out"][layer, h] += y[q, h].norm().item()
                    sums["out_resid"][layer, h] += (w[h] @ y[q, h]).norm().item()
                    p = pattern[h, q, : q + 1].numpy()
                    full = -(p * _log(p)).sum() / math.log(q + 1)
                    rest = p[1:] / p[1:].sum()
                    if q >= 2:
                        sums["ent"][layer, h] += -(rest * _log(rest)).sum() / math.log(q)
                    sums["ent_all"][layer, h] += full
                    sums["sink"][layer, h] += p[0]
                    if q >= span[1]:
                        sums["task"][layer, h] += p[span[0] : span[1]].sum() / p[1:].sum()
    means = {k: v / n_out for k, v in sums.items() if k not in ("task", "ent")}
    means["task"], means["ent"] = sums["task"] / n_task, sums["ent"] / n_ent
    return means


# --- raw scores equal direct computations from captured tensors ------------------------------


@pytest.mark.parametrize("arch,kv", ARCHS)
@pytest.mark.parametrize("mode", ["last_token", "all_tokens"])
def test_raw_scores_match_hand_computation(tok, arch, kv, mode):
    model = tiny(arch, n_kv_heads=kv)
    prompts = _prompts()
    table = hs.score(model, tok, prompts, batch_size=3, query_mode=mode, progress=False)
    expected = _hand_scores(model, tok, prompts, mode, exclude_first=True)
    for metric in ("out", "out_resid", "ent", "ent_all", "sink", "task"):
        np.testing.assert_allclose(
            table.raw[metric], expected[metric], rtol=2e-4, atol=1e-6, err_msg=metric
        )
    assert table.stats["task_found"] == len(prompts) and table.stats["task_missing"] == 0
    assert table.shape == (2, 4)


@pytest.mark.parametrize("arch,kv", [("llama", 2), ("gpt2", None)])
def test_scores_of_a_lora_model_equal_those_of_its_merged_weights(tok, arch, kv, lora):
    # fine-tuned with LoRA on the attention input projection: scoring the PEFT model as it is
    model = tiny(arch, n_kv_heads=kv)
    wrapped = lora(model, ["attn.c_attn" if arch == "gpt2" else "self_attn.q_proj"])
    table = hs.score(wrapped, tok, _prompts(), batch_size=3, progress=False)
    merged = copy.deepcopy(wrapped).merge_and_unload()
    expected = hs.score(merged, tok, _prompts(), batch_size=3, progress=False)
    untuned = hs.score(model, tok, _prompts(), batch_size=3, progress=False)
    for metric in ("out", "out_resid", "ent", "task"):
        np.testing.assert_allclose(table.raw[metric], expected.raw[metric], rtol=1e-4, atol=1e-6)
    assert not np.allclose(table.raw["ent"], untuned.raw["ent"], rtol=1e-4)
    # LoRA on o_proj: out_resid needs W_O, which the adapter's branch changes: refused
    with pytest.raises(ValueError, match="merge the adapter first"):
        hs.score(lora(model), tok, _prompts(), batch_size=3, progress=False)


def test_attention_sums_on_hand_built_patterns():
    k = 5
    keys = torch.tensor([[True] * k, [True] * k, [True] * 3 + [False] * 2])
    uniform = torch.full((k,), 1 / k)
    one_hot = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    sink_half = torch.tensor([0.5, 0.25, 0.25, 0.0, 0.0])
    pattern = torch.stack([uniform, one_hot, sink_half])[:, None, :]  # [n=3, h=1, k]
    task_keys = torch.zeros(3, k, dtype=torch.bool)
    task_keys[:, 1:3] = True
    task_keys &= keys
    task_rows = torch.tensor([True, True, False])
    raw, counts = hs.attention_sums(pattern, keys, task_keys, task_rows, normalize=False)
    # ent_all: log 5 + 0 + H(.5,.25,.25)
    h3 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert raw[0, 0].item() == pytest.approx(math.log(5) + 0 + h3)
    # ent_nosink: uniform over 4 keys; one-hot stays 0; (.25,.25) renormalised -> log 2
    assert raw[1, 0].item() == pytest.approx(math.log(4) + 0 + math.log(2))
    assert raw[2, 0].item() == pytest.approx(0.2 + 0 + 0.5)  # sink
    assert raw[3, 0].item() == pytest.approx(0.4 + 1.0)  # task mass, rows 0 and 1 only
    assert raw[4, 0].item() == pytest.approx(0.5 + 1.0)  # renormalised without the sink
    assert counts.tolist() == [3, 3, 3, 2, 2]
    normed, _ = hs.attention_sums(pattern, keys, task_keys, task_rows, normalize=True)
    assert normed[0, 0].item() == pytest.approx(1 + 0 + h3 / math.log(3))
    assert normed[1, 0].item() == pytest.approx(1 + 0 + 1)


def test_the_reducers_merge_as_one_pass():
    # halves of the query rows, merged, give the statistics of all rows (data-parallel shards)
    torch.manual_seed(0)
    n, h, k, d = 6, 2, 5, 3
    pattern = torch.softmax(torch.randn(n, h, k), -1)
    keys = torch.ones(n, k, dtype=torch.bool).tril(1)  # rows see 2..5 keys
    task_keys = keys.clone()
    task_keys[:, :2] = False
    task_rows = torch.tensor([True, False, True, True, False, True])
    y, w = torch.randn(n, h, d), torch.randn(h, 4, d)
    gram = torch.einsum("hmd,hme->hde", w, w)

    def fed(rows):
        attention, outputs = hs.AttentionStats(normalize=True), hs.OutputNorms(gram)
        attention.rows = hs.QueryRows(keys[rows], task_keys[rows], task_rows[rows])
        attention.update(pattern[rows])
        outputs.update(y[rows])
        return attention, outputs

    (attention, outputs), first, second = fed(slice(None)), fed(slice(0, 2)), fed(slice(2, None))
    merged = [a.merge(b) for a, b in zip(first, second, strict=True)]
    torch.testing.assert_close(merged[0].value, attention.value)
    torch.testing.assert_close(merged[1].value, outputs.value)
    assert merged[0].count == merged[1].count == n
    assert attention.value.isnan().sum() == 0 and attention.value.shape == (5, h)
    stored = hs.AttentionStats(normalize=True).load_state_dict(attention.state_dict())
    torch.testing.assert_close(stored.value.double(), attention.value, rtol=1e-6, atol=1e-7)


# --- streaming: one forward per batch, batch-size invariance, per-batch sums --------------------


def test_one_forward_per_batch_and_records_are_streamed(tok):
    model = tiny("llama")
    pulled, forwards = [], []

    def records():
        for i, record in enumerate(RECORDS):
            pulled.append(i)
            yield record

    handle = model.register_forward_pre_hook(lambda *a: forwards.append(len(pulled)))
    try:
        hs.score(model, tok, records(), batch_size=3, progress=False)
    finally:
        handle.remove()
    assert len(forwards) == math.ceil(len(RECORDS) / 3)  # 3 forwards for 7 records
    # at the k-th forward, at most k batches of records were read: nothing is buffered
    assert forwards == [3, 6, 7]


@pytest.mark.parametrize("arch,kv", [("llama", 2), ("gpt2", None)])
@pytest.mark.parametrize("mode", ["last_token", "all_tokens"])
def test_padding_and_batch_size_do_not_change_scores(tok, arch, kv, mode):
    model = tiny(arch, n_kv_heads=kv)
    alone = hs.score(model, tok, RECORDS, batch_size=1, query_mode=mode, progress=False)
    padded = hs.score(model, tok, RECORDS, batch_size=4, query_mode=mode, progress=False)
    for metric in hs.RAW_METRICS:
        np.testing.assert_allclose(
            padded.raw[metric], alone.raw[metric], rtol=1e-5, atol=1e-7, err_msg=metric
        )
    assert padded.stats["data_sha1"] == alone.stats["data_sha1"]


def test_one_pass_equals_per_batch_results_combined(tok):
    model = tiny("qwen2", n_kv_heads=2)
    whole = hs.score(model, tok, RECORDS, batch_size=4, progress=False)
    first = hs.score(model, tok, RECORDS[:4], batch_size=4, progress=False)
    second = hs.score(model, tok, RECORDS[4:], batch_size=4, progress=False)
    for metric in hs.RAW_METRICS:  # last_token: one query per prompt, so sample-weighted means
        combined = (4 * first.raw[metric] + 3 * second.raw[metric]) / 7
        np.testing.assert_allclose(whole.raw[metric], combined, rtol=1e-5, err_msg=metric)


# --- options -------------------------------------------------------------------------------------


def test_sink_options_and_first_token(tok):
    model = tiny("llama")
    prompts = _prompts()
    keep = hs.score(
        model,
        tok,
        prompts,
        query_mode="all_tokens",
        exclude_first_token=False,
        exclude_sink=False,
        normalize_entropy=False,
        progress=False,
    )
    drop = hs.score(model, tok, prompts, query_mode="all_tokens", progress=False)
    assert keep.stats["query_tokens"] == drop.stats["query_tokens"] + len(prompts)
    np.testing.assert_array_equal(keep.raw["ent"], keep.raw["ent_all"])
    np.testing.assert_array_equal(drop.raw["ent"], drop.raw["ent_nosink"])
    assert (keep.raw["ent"] > 1.0).all()  # un-normalised nats over ~40 keys
    assert ((drop.raw["ent"] > 0) & (drop.raw["ent"] <= 1.0 + 1e-9)).all()
    # the first token alone as query: its output enters S_out only when it is kept
    assert not np.allclose(keep.raw["out"], drop.raw["out"])


@pytest.mark.parametrize("arch,kv", ARCHS)
def test_an_interrupted_score_leaves_the_model_as_it_was(tok, arch, kv, untouched, interrupt):
    model = tiny(arch, n_kv_heads=kv, n_layers=3)
    check = untouched(model)  # also the attention implementation, switched to eager meanwhile
    calls = interrupt(model, 2, lambda call: call == 2)  # Ctrl-C in the second batch
    with pytest.raises(KeyboardInterrupt):
        hs.score(model, tok, RECORDS, batch_size=3, progress=False)
    assert calls == [False, True]
    check()


def test_layers_and_heads_subset(tok):
    model = tiny("llama", n_layers=3)
    full = hs.score(model, tok, RECORDS, progress=False)
    part = hs.score(model, tok, RECORDS, layers=[2, 0], heads=[1, 3], progress=False)
    assert part.layers == [0, 2] and part.heads == [1, 3]
    for metric in hs.RAW_METRICS:
        np.testing.assert_allclose(
            part.raw[metric], full.raw[metric][np.ix_([0, 2], [1, 3])], rtol=1e-6, err_msg=metric
        )
    with pytest.raises(ValueError, match=r"head index \[4\] out of range.*4 heads"):
        hs.score(model, tok, RECORDS, heads=[4], progress=False)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("records", "options", "error", "message"),
    [
        ([], {}, ValueError, r"no records to score: .* pass at least one"),
        (iter([]), {}, ValueError, r"no records to score: .* pass at least one"),
        (RECORDS, {"batch_size": 0}, ValueError, r"batch_size must be an integer >= 1, got 0"),
        (RECORDS, {"batch_size": -2}, ValueError, r"batch_size must be an integer >= 1, got -2"),
        (RECORDS, {"batch_size": True}, TypeError, r"batch_size must be an integer >= 1, got True"),
        (RECORDS, {"batch_size": 2.0}, TypeError, r"batch_size must be an integer >= 1, got 2.0"),
        (RECORDS, {"lambda_ent": NAN}, ValueError, r"lambda_ent must be a finite number >= 0"),
        (RECORDS, {"lambda_task": INF}, ValueError, r"lambda_task must be a finite number >= 0"),
        (RECORDS, {"lambda_task": -1.0}, ValueError, r"lambda_task must be a finite number >= 0"),
        (RECORDS, {"max_length": 0}, ValueError, r"max_length \(or None\) must be an integer >= 1"),
        (RECORDS, {"max_length": True}, TypeError, r"max_length \(or None\) must be an integer"),
        (RECORDS, {"layers": [True]}, TypeError, r"layers\[0\] must be an integer, got True"),
        (RECORDS, {"layers": [1.5]}, TypeError, r"layers\[0\] must be an integer, got 1.5"),
        (RECORDS, {"heads": []}, ValueError, r"heads is empty: pass None for every head"),
        (RECORDS, {"heads": [1, 1]}, ValueError, r"heads repeats head \[1\]"),
        (RECORDS, {"rank_scope": "model"}, ValueError, r"rank_scope must be one of"),
    ],
)  # fmt: skip
def test_score_refuses_empty_records_and_nonsense_options_before_any_forward(
    tok, untouched, records, options, error, message
):
    model = tiny("llama")
    check = untouched(model)
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    with pytest.raises(error, match=message):
        hs.score(model, tok, records, progress=False, **options)
    assert forwards == []
    model._forward_pre_hooks.clear()
    check()


def test_build_table_refuses_non_finite_weights():
    raw = {m: np.ones((2, 3)) for m in hs.RAW_METRICS}
    with pytest.raises(ValueError, match="lambda_ent must be a finite number >= 0, got nan"):
        hs.build_table(raw, [0, 1], [0, 1, 2], lambda_ent=NAN)


def test_text_records_have_no_task_span(tok):
    model = tiny("llama")
    records = [{"text": "The cat sat on the mat."}, {"input": "Rain falls."}, "Plain string."]
    table = hs.score(model, tok, records, progress=False)
    assert table.stats["task_missing"] == 3 and table.stats["task_found"] == 0
    assert np.isnan(table.raw["task"]).all() and np.isnan(table.rank["task"]).all()
    assert any("S_task is undefined" in note for note in table.stats["notes"])
    assert np.isfinite(table.combined).all()  # fused from S_out and S_ent only


def test_span_located_with_and_without_offsets(tok):
    prompt = hs.parse_record(RECORDS[0], "r0")
    with_offsets = hs.prompt_tokens(tok, prompt)
    without = hs.prompt_tokens(WordTokenizer(chars=True, bos=True, offsets=False), prompt)
    question = "Where do fish live?"
    start = len("Question: ")
    assert with_offsets.span == (start, start + len(question))
    assert without.span == (start + 1, start + 1 + len(question))  # after the BOS token
    cut = hs.prompt_tokens(tok, prompt, max_length=start + 3)
    assert cut.truncated and cut.span == (start, start + 3)
    assert hs.prompt_tokens(tok, prompt, max_length=start).span is None


class OffsetsTokenizer:
    """Returns the same ids and offsets for any text (the offsets of a real tokenizer)."""

    def __init__(self, offsets):
        self.offsets = offsets

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        out = {"input_ids": list(range(3, 3 + len(self.offsets)))}
        return out | ({"offset_mapping": self.offsets} if return_offsets_mapping else {})


def test_span_with_real_style_bpe_offsets():
    # byte-level BPE offsets include the leading space: " Where" starts before the question
    offsets = [(0, 8), (8, 9), (9, 15), (15, 18), (18, 23), (23, 28), (28, 29), (29, 30)]
    bpe = OffsetsTokenizer(offsets)
    assert hs.prompt_tokens(bpe, hs.Prompt("x" * 30, (10, 29))).span == (2, 7)
    assert hs.prompt_tokens(bpe, hs.Prompt("x" * 30, (40, 50))).span is None


# --- normalisation, fusion, top-k -------------------------------------------------------------


def _raw(out, ent, task):
    out, ent, task = (np.asarray(x, dtype=float) for x in (out, ent, task))
    return {
        "out": out,
        "out_resid": out,
        "ent": ent,
        "ent_all": ent,
        "ent_nosink": ent,
        "sink": np.zeros_like(out),
        "task": task,
    }


def test_fusion_ranks_and_sign_conventions():
    raw = _raw(
        out=[[1, 2, 3], [30, 10, 20]],
        ent=[[0.9, 0.5, 0.1], [0.2, 0.3, 0.1]],
        task=[[0.1, 0.2, 0.3], [0.5, 0.4, 0.6]],
    )
    table = hs.build_table(raw, [0, 1], [0, 1, 2], lambda_ent=2.0, lambda_task=0.5)
    # lowest entropy = most focused = highest rank
    np.testing.assert_array_equal(table.rank["ent"], [[1, 2, 3], [2, 1, 3]])
    np.testing.assert_array_equal(table.rank["out"], [[1, 2, 3], [3, 1, 2]])
    np.testing.assert_array_equal(table.rank["task"], [[1, 2, 3], [2, 1, 3]])
    expected = table.rank["out"] + 2.0 * table.rank["ent"] + 0.5 * table.rank["task"]
    np.testing.assert_array_equal(table.combined, expected)
    np.testing.assert_allclose(table.norm["out"].mean(1), 0, atol=1e-12)
    np.testing.assert_allclose(table.norm["out"].std(1), 1)
    assert (table.top_k(1)[0]["layer"], table.top_k(1)[0]["head"]) in {(0, 2), (1, 2)}
    per_layer = table.top_k_per_layer(2)
    assert [(r["layer"], r["head"]) for r in per_layer[0]] == [(0, 2), (0, 1)]
    assert [(r["layer"], r["head"]) for r in per_layer[1]] == [(1, 2), (1, 0)]

    pct = hs.build_table(raw, [0, 1], [0, 1, 2], norm="percentile")
    np.testing.assert_array_equal(pct.norm["out"], [[0, 50, 100], [100, 0, 50]])
    np.testing.assert_array_equal(pct.norm["ent"], [[0, 50, 100], [50, 0, 100]])

    glob = hs.build_table(
        raw, [0, 1], [0, 1, 2], rank_scope="global", lambda_ent=0.0, lambda_task=0.0
    )
    # global ranks of layer-normalised scores: z-scores tie across layers
    assert sorted(glob.combined.ravel()) == [1.5, 1.5, 3.5, 3.5, 5.5, 5.5]
    assert np.isnan(glob.rank["ent"]).all()  # weight 0: left out of the fusion
    with pytest.raises(ValueError, match="norm must be one of"):
        hs.build_table(raw, [0, 1], [0, 1, 2], norm="minmax")


def test_table_json_roundtrip_and_csv(tmp_path, tok):
    table = hs.score(tiny("llama"), tok, RECORDS, progress=False)
    again = hs.HeadScores.from_dict(report.load_json(report.save_json(table, tmp_path / "t.json")))
    for metric in hs.RAW_METRICS:
        np.testing.assert_array_equal(again.raw[metric], table.raw[metric])
    np.testing.assert_array_equal(again.combined, table.combined)
    report.write_csv(table, tmp_path / "raw.csv", "raw")
    lines = (tmp_path / "raw.csv").read_text().splitlines()
    assert lines[0].startswith("layer,head,out_raw,ent_raw,task_raw")
    assert len(lines) == 1 + 2 * 4
    layer, head, out = lines[1].split(",")[:3]
    assert (int(layer), int(head), float(out)) == (0, 0, table.raw["out"][0, 0])


# --- comparison ------------------------------------------------------------------------------


def _scale_head(model, layer, head, factor):
    table, geometry = iv.adapter(model), iv.geometry(model)
    weight = table.weight(table.block_module(model, layer, table.o_proj))  # [out, in] view
    with torch.no_grad():
        weight[:, head * geometry.d_head : (head + 1) * geometry.d_head] *= factor
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_compare_self_is_zero_and_scaled_head_moves_most(tok, arch):
    model = tiny(arch)
    before = hs.score(model, tok, RECORDS, progress=False)
    same = hs.compare(before, hs.score(model, tok, RECORDS, progress=False))
    for metric in hs.COMPARED:
        assert np.abs(same.diff[metric]).max() == 0
        np.testing.assert_array_equal(same.ratio[metric], 1.0)
    scaled = _scale_head(copy.deepcopy(model), layer=0, head=2, factor=3.0)
    diff = hs.compare(before, hs.score(scaled, tok, RECORDS, progress=False))
    top = diff.movers["out_resid"][0]
    assert (top["layer"], top["head"]) == (0, 2) and top["ratio"] == pytest.approx(3.0)
    assert diff.ratio["out"][0, 2] == pytest.approx(1.0)  # o_proj's input is unchanged
    assert set(diff.spearman) == {
        "before_vs_after",
        "pre_vs_change",
        "pre_vs_abs_change",
        "combined_vs_abs_change",
    }
    json.dumps(diff.to_dict(), allow_nan=False)


def test_compare_refuses_other_samples_or_heads(tok):
    model = tiny("llama")
    a = hs.score(model, tok, RECORDS, progress=False)
    b = hs.score(model, tok, RECORDS[:3], progress=False)
    with pytest.raises(ValueError, match="different token ids"):
        hs.compare(a, b)
    hs.compare(a, b, check_data=False)
    c = hs.score(model, tok, RECORDS, heads=[0, 1], progress=False)
    with pytest.raises(ValueError, match="different heads"):
        hs.compare(a, c)
    with pytest.raises(TypeError, match="top must be an integer >= 0, got 2.5"):
        hs.compare(a, a, top=2.5)


# --- data files (tests/evals/test_tasks.py): re-exported for hs.load_records(hs.BUNDLED_DATA) ----


def test_the_task_data_names_are_re_exported():
    for name in (
        "BUNDLED_DATA",
        "DataError",
        "Prompt",
        "load_records",
        "mc_prompt",
        "parse_record",
    ):
        assert getattr(hs, name) is getattr(tasks, name)
    assert hs.load_records(hs.BUNDLED_DATA) == tasks.load_records(tasks.BUNDLED_DATA)


# --- command line on a tiny model ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A tiny Llama saved with the char tokenizer, a copy with layer 0 head 1 scaled, data."""
    root = tmp_path_factory.mktemp("cli")
    model = tiny("llama", n_kv_heads=2)
    tok = char_tokenizer()
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    _scale_head(copy.deepcopy(model), 0, 1, 4.0).save_pretrained(root / "tuned")
    tok.save_pretrained(root / "tuned")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return root


SCORE_FILES = [
    "config.yaml",
    "scores_raw.csv",
    "scores_norm.csv",
    "scores_combined.csv",
    "topk_global.json",
    "topk_per_layer.json",
    "run.log",
    "heatmap_out.png",
    "heatmap_ent.png",
    "heatmap_task.png",
    "heatmap_combined.png",
]


def test_cli_score_heads_writes_every_file(tiny_dirs, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({"batch-size": 2, "norm": "percentile", "lambda_ent": 0.5, "top-k": 3})
    )
    out = tmp_path / "run"
    code = cli.main(
        [
            "score-heads",
            "--model",
            str(tiny_dirs / "base"),
            "--data",
            str(tiny_dirs / "data.jsonl"),
            "--config",
            str(config),
            "--batch-size",
            "3",
            "--max-samples",
            "5",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    for name in SCORE_FILES:
        assert (out / name).is_file(), name
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["batch-size"] == 3  # the flag overrides the config file
    assert resolved["norm"] == "percentile" and resolved["lambda-ent"] == 0.5
    assert resolved["max-samples"] == 5 and resolved["query-mode"] == "last_token"
    assert len((out / "scores_raw.csv").read_text().splitlines()) == 1 + 2 * 4
    assert len(json.loads((out / "topk_global.json").read_text())) == 3
    assert set(json.loads((out / "topk_per_layer.json").read_text())) == {"0", "1"}
    assert "scored 5 prompts" in (out / "run.log").read_text()
    assert (out / "heatmap_out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the written config.yaml runs again as --config
    again = tmp_path / "again"
    assert (
        cli.main(
            ["score-heads", "--config", str(out / "config.yaml"), "--out", str(again), "--no-plots"]
        )
        == 0
    )
    assert (again / "scores_raw.csv").read_text() == (out / "scores_raw.csv").read_text()


def test_cli_compare_heads(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = cli.main(
        [
            "compare-heads",
            "--before",
            str(tiny_dirs / "base"),
            "--after",
            str(tiny_dirs / "tuned"),
            "--data",
            str(tiny_dirs / "data.jsonl"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    for name in [
        "before.json",
        "after.json",
        "comparison.json",
        "comparison_heatmap.png",
        "config.yaml",
        "run.log",
    ]:
        assert (out / name).is_file(), name
    comparison = json.loads((out / "comparison.json").read_text())
    top = comparison["top_movers"]["out_resid"][0]
    assert (top["layer"], top["head"]) == (0, 1) and top["ratio"] == pytest.approx(4.0)
    before = hs.HeadScores.from_dict(report.load_json(out / "before.json"))
    assert before.shape == (2, 4)

    same = tmp_path / "same"
    assert (
        cli.main(
            [
                "compare-heads",
                "--before",
                str(tiny_dirs / "base"),
                "--after",
                str(tiny_dirs / "base"),
                "--data",
                str(tiny_dirs / "data.jsonl"),
                "--out",
                str(same),
                "--no-progress",
                "--no-plots",
            ]
        )
        == 0
    )
    diff = json.loads((same / "comparison.json").read_text())["diff"]
    assert all(v == 0 for metric in diff.values() for row in metric for v in row)


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "data.jsonl: no records"),
        ('{"text": "ok"}\n{"text": "ok"\n', "data.jsonl:2: invalid JSON line"),
        (
            '{"question": "q", "choices": {"label": ["A", "B"]}}\n',
            "data.jsonl:1: field 'choices.text' is missing",
        ),
    ],
)
def test_cli_bad_data_exits_with_message(tiny_dirs, tmp_path, capsys, content, message):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    code = cli.main(
        [
            "score-heads",
            "--model",
            str(tiny_dirs / "base"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("interventions score-heads: error: ") and message in err


def test_cli_bad_options(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("batch-size: 4\nbatchsize: 3\n")
    assert cli.main(["score-heads", "--config", str(config)]) == 2
    assert "unknown key 'batchsize'; valid keys: model, data" in capsys.readouterr().err
    config.write_text("norm: minmax\n")
    assert cli.main(["score-heads", "--config", str(config)]) == 2
    assert "key 'norm' is 'minmax'; choose from ['zscore', 'percentile']" in (
        capsys.readouterr().err
    )
    assert cli.main(["compare-heads", "--before", "x"]) == 2
    assert "--after MODEL is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["score-heads", "--layers", "one"])
    assert cli._index_list("0, 3,5-7") == [0, 3, 5, 6, 7] and cli._index_list("all") is None


# --- the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm(request):
    """(model, tokenizer) of SmolLM2-135M: the shared ``real_model`` fixture when conftest has
    one, else loaded here once for this module."""
    try:
        return request.getfixturevalue("real_model")
    except pytest.FixtureLookupError:
        pass
    from interventions.models import bundled_gguf, load

    pytest.importorskip("gguf")
    try:
        bundled_gguf()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return load()


@pytest.mark.real
def test_real_model_scores(smollm, one_thread):
    model, tokenizer = smollm
    records = hs.load_records(hs.BUNDLED_DATA)[:8]
    table = hs.score(model, tokenizer, records, batch_size=8, progress=False)
    assert table.shape == (30, 9)
    assert table.stats["task_found"] == 8 and table.stats["truncated"] == 0
    for metric in hs.RAW_METRICS:
        assert np.isfinite(table.raw[metric]).all(), metric
    assert ((table.raw["ent"] > 0) & (table.raw["ent"] <= 1)).all()
    # the first token is an attention sink in the middle layers, not in the first two
    assert table.raw["sink"][:2].max() < 0.05 and table.raw["sink"][14:16].mean() > 0.5
    scaled = _scale_head(copy.deepcopy(model), layer=12, head=4, factor=3.0)
    diff = hs.compare(table, hs.score(scaled, tokenizer, records, batch_size=8, progress=False))
    top = diff.movers["out_resid"][0]
    assert (top["layer"], top["head"]) == (12, 4) and top["ratio"] == pytest.approx(3.0, 1e-4)
    np.testing.assert_array_equal(diff.diff["out"][:12], 0)  # layers before the edit: unchanged


@pytest.mark.real
def test_real_model_cli(smollm, one_thread, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setattr(cli, "load_model", lambda name, dtype, device: smollm)
    out = tmp_path / "run"
    code = cli.main(["score-heads", "--max-samples", "8", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    for name in SCORE_FILES:
        assert (out / name).is_file(), name
    assert len((out / "scores_raw.csv").read_text().splitlines()) == 1 + 30 * 9
    assert len((out / "scores_combined.csv").read_text().splitlines()) == 1 + 30 * 9
    for png in out.glob("*.png"):
        with Image.open(png) as image:
            image.verify()
    same = tmp_path / "same"
    code = cli.main(
        [
            "compare-heads",
            "--after",
            "smollm2-135m",
            "--max-samples",
            "8",
            "--out",
            str(same),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    diff = json.loads((same / "comparison.json").read_text())["diff"]
    assert all(v == 0 for metric in diff.values() for row in metric for v in row)
    with Image.open(same / "comparison_heatmap.png") as image:
        image.verify()
