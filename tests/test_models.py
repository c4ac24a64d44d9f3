"""The real model (SmolLM2-135M-Instruct from the bundled GGUF) and its Qwen2 twin."""

import pytest
import torch

import interventions as iv
from interventions.models import to_qwen2

pytestmark = pytest.mark.real
PROMPTS = ["The capital of France is", "My favourite colour is blue because"]


@pytest.fixture(scope="module")
def inputs(real_model):
    _, tokenizer = real_model
    tokenizer.padding_side = "left"
    return tokenizer(PROMPTS, return_tensors="pt", padding=True)


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


def test_qwen2_conversion_gives_the_same_logits(real_model, inputs):
    model, _ = real_model
    qwen = to_qwen2(model)
    assert qwen.config.model_type == "qwen2" and iv.adapter(qwen).name == "qwen2"
    with torch.no_grad():
        torch.testing.assert_close(qwen(**inputs).logits, model(**inputs).logits, atol=1e-4, rtol=0)


def test_steering_really_shifts_generation(real_model):
    model, tokenizer = real_model
    positive = ["I love this, it is wonderful and makes me happy.", "What a great and joyful day!"]
    negative = ["I hate this, it is awful and makes me sad.", "What a terrible and miserable day!"]
    tokenizer.padding_side = "left"
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
