"""reptune.tune at its defaults on SmolLM2-135M: does it work as its signature stands?

    python scripts/reptune_defaults.py      # writes docs/results/reptune_defaults.json, prints

The setting of tests/recipes/test_reptune.py's real test: a direction from 24 training claims'
pairs at layers 20-22, tuning at layers 21-22 on every training claim, measured on 8 held-out
claims in both contexts (mean cosine to d, the " True" - " False" margin, the context gap,
steerability at layer 20) and the perplexity of 256 prose tokens (window 128, stride 64).
``rt.tune(model, tokenizer, data, direction=d, layers=[21, 22], mode=...)``, nothing else given:
since issue 19 that is ``lr="auto"`` (``reptune.choose_lr``). Every tuned model is reverted
bit-exactly before the next.
"""

import json
import logging
import subprocess
import time
from pathlib import Path

import torch

from interventions import lm
from interventions.models import load
from interventions.recipes import reptune as rt

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "reptune_defaults.json"


def main() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("interventions").setLevel(logging.INFO)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    model, tokenizer = load()
    train, test = rt.split_claims(rt.load_claims(), held_out=0.3)
    layers = [21, 22]
    d = rt.extract_direction(model, tokenizer, rt.honesty_pairs(train[:24]), [20, 21, 22])
    held_out = rt.claim_prompts(test[:8])
    prose = rt.load_prose()
    data = rt.tuning_examples(train)

    def measure() -> dict:
        margins = lm.choice_margin(model, tokenizer, held_out, rt.CHOICES)
        cos = rt.cosine_to_direction(model, tokenizer, held_out, d, layers=layers)
        steer = rt.steerability(model, tokenizer, held_out, d, 20, alphas=(0.0, 2.0))
        return {
            "cos": sum(v["cos"] for v in cos.values()) / len(cos),
            "abs_cos": sum(v["abs_cos"] for v in cos.values()) / len(cos),
            "margin": float(margins.mean()),
            "gap": float(margins[:8].mean() - margins[8:].mean()),
            "slope": steer["slope"],
            "ppl": rt.perplexity(model, tokenizer, prose, window=128, stride=64, max_tokens=256),
        }

    results = {"commit": commit, "command": "python scripts/reptune_defaults.py"}
    results["before"] = measure()
    print("before", results["before"])
    for mode in ("in", "out"):
        history: list[dict] = []
        started = time.perf_counter()
        delta = rt.tune(model, tokenizer, data, direction=d, layers=layers, mode=mode,
                        history=history)  # fmt: skip
        seconds = time.perf_counter() - started
        choice = history[0]["lr_choice"]
        steps = sum(1 for h in history if "projection" in h)
        results[mode] = measure() | {
            "seconds": seconds,
            "steps": steps,
            "lr": choice.lr,
            "lr_grid": list(choice.grid),
            "untuned_val_loss": choice.untuned_val_loss,
            "final_perplexity_rise": history[-1]["perplexity_rise"],
        }
        print(mode, results[mode])
        delta.revert(model)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
