"""Loading: ``load`` on a local folder (a tiny Llama with a word-level tokenizer), and the real
model (SmolLM2-135M-Instruct from the bundled GGUF) with its Qwen2 twin."""

import pytest
import torch

import interventions as iv
from interventions.models import load, tiny, to_qwen2

PROMPTS = ["The capital of France is", "My favourite colour is blue because"]
WORDS = ["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "a", "mat"]


@pytest.fixture
def tiny_folder(tmp_path):
    """A folder as ``save_pretrained`` leaves it: a tiny random Llama and a word-level fast
    tokenizer with the tokenizers' defaults (padding on the right, no pad token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is None
    tokenizer.save_pretrained(tmp_path)
    tiny("llama", n_kv_heads=2).save_pretrained(tmp_path)
    return tmp_path


def test_load_returns_a_tokenizer_that_pads_on_the_left(tiny_folder):
    model, tokenizer = load(str(tiny_folder))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "</s>"
    batch = tokenizer(["the cat sat on a mat", "the cat"], return_tensors="pt", padding=True)
    pad, cat, mat = (tokenizer.convert_tokens_to_ids(w) for w in ("</s>", "cat", "mat"))
    # position -1 is every row's last real token, so a capture at -1 reads what it should
    assert batch.input_ids[:, -1].tolist() == [mat, cat]
    assert batch.input_ids[1, :4].tolist() == [pad] * 4
    assert batch.attention_mask[1].tolist() == [0, 0, 0, 0, 1, 1]
    assert not model.training


def test_load_gives_the_dtype_asked_for(tiny_folder):
    # transformers < 4.56 names the argument torch_dtype
    model, _ = load(str(tiny_folder), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.fixture(scope="module")
def inputs(real_model):
    _, tokenizer = real_model
    return tokenizer(PROMPTS, return_tensors="pt", padding=True)


@pytest.mark.real
def test_real_tokenizer_pads_on_the_left(real_model, inputs):
    _, tokenizer = real_model
    assert tokenizer.padding_side == "left"
    assert inputs["attention_mask"][:, -1].tolist() == [1, 1]
    assert inputs["attention_mask"][:, 0].tolist() == [0, 1]  # the shorter prompt is padded


@pytest.mark.real
def test_real_geometry_and_head_shape(real_model, inputs):
    model, _ = real_model
    g = iv.geometry(model)
    assert (g.n_layers, g.n_heads, g.n_kv_heads, g.d_head, g.d_model) == (30, 9, 3, 64, 576)
    with torch.no_grad(), iv.capture(model, ["layers.*.attn.heads", "layers.5.attn.out"]) as cache:
        bare = model(**inputs).logits
    b, t = inputs["input_ids"].shape
    assert cache["layers.12.attn.heads"].shape == (b, t, 9, 64)
    a = iv.adapter(model)
    w = a.weight(a.block_module(model, 5, a.o_proj))
    torch.testing.assert_close(
        cache["layers.5.attn.heads"].flatten(2) @ w.T,
        cache["layers.5.attn.out"],
        atol=1e-4,
        rtol=1e-4,
    )
    with torch.no_grad(), iv.intervene(model, {}):
        assert torch.equal(model(**inputs).logits, bare)


@pytest.mark.real
def test_qwen2_conversion_gives_the_same_logits(real_model, inputs):
    model, _ = real_model
    qwen = to_qwen2(model)
    assert qwen.config.model_type == "qwen2" and iv.adapter(qwen).name == "qwen2"
    with torch.no_grad():
        torch.testing.assert_close(qwen(**inputs).logits, model(**inputs).logits, atol=1e-4, rtol=0)


@pytest.mark.real
def test_steering_really_shifts_generation(real_model):
    model, tokenizer = real_model
    positive = ["I love this, it is wonderful and makes me happy.", "What a great and joyful day!"]
    negative = ["I hate this, it is awful and makes me sad.", "What a terrible and miserable day!"]
    site = "layers.10.resid_post"
    means = []
    for texts in (positive, negative):
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad(), iv.capture(model, site, positions=-1) as cache:
            model(**batch)
        means.append(cache[site].mean(0))
    direction = means[0] - means[1]
    prompt = tokenizer("Today I feel", return_tensors="pt")
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    def happy_minus_sad(plan):
        with torch.no_grad(), iv.intervene(model, plan):
            out = model.generate(
                **prompt, **settings, output_logits=True, return_dict_in_generate=True
            )
        first = out.logits[0][0].log_softmax(-1)
        happy, sad = (
            tokenizer(w, add_special_tokens=False).input_ids[0] for w in (" happy", " sad")
        )
        return (first[happy] - first[sad]).item(), tokenizer.decode(out.sequences[0])

    bare_margin, bare_text = happy_minus_sad({})
    up_margin, up_text = happy_minus_sad({site: iv.AddBias(direction, alpha=4.0)})
    down_margin, _ = happy_minus_sad({site: iv.AddBias(direction, alpha=-4.0)})
    margins = (bare_margin, up_margin, down_margin)
    assert up_margin > bare_margin + 1.0 and down_margin < bare_margin - 0.5, margins
    assert up_text != bare_text
