"""DRESS on a real model at its defaults, with error bars, on the 124 held-out questions.

    python examples/03_dress.py                      # bundled SmolLM2; writes docs/dress.md's table
    python examples/03_dress.py --quick --docs ''    # 16 test questions, no docs update

1. ``dress.fit`` at its defaults on the 217 training triples: probes, 16 heads, vectors,
   subspaces, and ``alpha="auto"``: the largest alpha of the grid whose adaptive edit keeps the
   fluency of short answers to the probes' 43 validation questions within 0.05 of alpha 0 and
   raises the style margin;
2. a style judge (logistic regression on MiniLM embeddings of the training answers);
3. greedy answers (24 new tokens) to the test questions: no steering, prompting, DRESS adaptive
   (the default ``fit.adaptive``), the random-heads control (matched norms) at DRESS's alpha and
   at its own alpha chosen by the same rule and budget; ``--full`` adds DRESS static (baked), ITI
   heads and the paper's separate-forward variant;
4. every metric per question, with a 95% bootstrap interval of its mean, and paired tests of
   DRESS against prompting and against the random-heads controls (paired bootstrap of the
   difference and exact sign test over questions);
5. results.json and answers.json in --out; the table between the markers in --docs.
"""

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

from interventions import text
from interventions.evals import bootstrap, style
from interventions.models import load
from interventions.recipes import dress

METRICS = {"style": "Style Intensity", "semantic": "Semantic Preservation"}
METRICS |= {"inverse_log_perplexity": "Fluency"}
START, END = "<!-- dress-table:start -->", "<!-- dress-table:end -->"
DRESS_ROW, BASE_ROW = "DRESS adaptive (alpha auto, the default)", "no steering"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF id or path (default: bundled SmolLM2)")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=31)
    parser.add_argument("--activations", type=Path, default=None, help="cache of the fit's")
    parser.add_argument("--quick", action="store_true", help="16 test questions")
    parser.add_argument("--full", action="store_true", help="also static, ITI, separate forward")
    parser.add_argument("--out", type=Path, default=Path("dress_results"))
    parser.add_argument("--docs", default="docs/dress.md", help="page whose table to rewrite")
    parser.add_argument("--render", type=Path, default=None, help="only render a results.json")
    args = parser.parse_args()
    if args.render is not None:
        render(args.render, args.docs)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    started, commit = time.time(), _commit()  # the code that runs, not the HEAD at the end

    model, tokenizer = load(args.model)
    train, test = style.load_triples("train"), style.load_triples("test")
    test = test[:16] if args.quick else test
    fit = _fit(model, tokenizer, train, args.activations)
    print(fit.summary())
    control = dress.random_heads(fit, seed=0)
    control_auto = dress.choose_alpha(control, model, tokenizer, train)
    print("random heads:", control_auto.summary().splitlines()[-9:])
    judge = style.StyleJudge.fit(
        style.Embedder(), [t.styled for t in train], [t.plain for t in train]
    )
    special = dress.special_tokens(tokenizer)
    prompts = [dress.format_prompt(tokenizer, t.question) for t in test]
    references = [t.plain for t in test]

    def scored(name: str, answers: list[str], seconds: float = 0.0) -> dict:
        each = style.answer_scores(
            model, tokenizer, judge, prompts, answers, references, special=special
        )
        per = {"style": each.styled, "semantic": each.semantic}
        per["inverse_log_perplexity"] = each.inverse_log_perplexity
        print(f"{name:<58} {each.means().row()}  ({seconds:.0f}s)  e.g. {answers[0][:60]!r}")
        return {"name": name, "per_question": {k: v.tolist() for k, v in per.items()},
                "answers": answers}  # fmt: skip

    def run(name: str, steer=None, instruction: str | None = None) -> dict:
        t0 = time.time()
        asked = [dress.format_prompt(tokenizer, t.question, instruction=instruction) for t in test]
        with steer() if steer else _Nothing():
            answers = style.generate_answers(
                model, tokenizer, asked, max_new_tokens=args.new_tokens,
                batch_size=args.batch_size, special=special,
            )  # fmt: skip
        return scored(name, answers, time.time() - t0)

    rows = [
        scored("reference plain answers", references),
        scored("reference styled answers", [t.styled for t in test]),
        run(BASE_ROW),
        run(
            "prompting (" + style.STYLE_INSTRUCTION[:28] + " ...)",
            instruction=style.STYLE_INSTRUCTION,
        ),
        run(DRESS_ROW, lambda: fit.adaptive(model)),
        run(
            "random heads adaptive (matched norms, DRESS's alpha)", lambda: control.adaptive(model)
        ),
        run(
            f"random heads adaptive (matched norms, own alpha auto = {control_auto.alpha:g})",
            lambda: control_auto.adaptive(model),
        ),
    ]
    if args.full:
        rows += _full_rows(fit, model, tokenizer, test, run, scored, args)
    answers = {r["name"]: r["answers"] for r in rows}
    (args.out / "answers.json").write_text(json.dumps(answers, indent=1, ensure_ascii=False))
    results = {
        "alpha": fit.alpha,
        "alpha_choice": fit.config["alpha_choice"],
        "control_alpha_choice": control_auto.config["alpha_choice"],
        "heads": fit.heads,
        "control_heads": control.heads,
        "ties": str(fit.ties),
        "per_question": {r["name"]: r["per_question"] for r in rows},
        "new_tokens": args.new_tokens,
        "minutes": (time.time() - started) / 60,
        "command": " ".join(["python examples/03_dress.py", *_given(args)]),
        "commit": commit,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=_jsonable))
    render(args.out / "results.json", args.docs)
    print(f"wrote {args.out}/ in {results['minutes']:.1f} min")


def render(results_file: Path, docs: str) -> str:
    """The tables from a results.json (``--render``: again, without the model)."""
    results = json.loads(results_file.read_text())
    rows = [{"name": k, "per_question": v} for k, v in results["per_question"].items()]
    budget = results["alpha_choice"]["fluency_budget"]
    results["rows"] = _summaries(rows, budget)
    results_file.write_text(json.dumps(results, indent=1))
    table = _markdown(results, len(rows[0]["per_question"]["style"]))
    print("\n" + table)
    if docs:
        _write_table(Path(docs), table)
    return table


def _fit(model, tokenizer, train, cache: Path | None) -> dress.DressFit:
    """``dress.fit`` at its defaults; with --activations, its captured activations are cached
    (the fit then is ``fit_activations`` + ``choose_alpha``, the same steps)."""
    if cache is not None and cache.exists():
        styled, plain = torch.load(cache)
        print(f"activations from {cache}")
        fit = dress.fit_activations(styled, plain, alpha=1.0)
        return dress.choose_alpha(fit, model, tokenizer, train)
    fit = dress.fit(model, tokenizer, train)
    if cache is not None:
        torch.save(fit.activations, cache)
    return fit


def _full_rows(fit, model, tokenizer, test, run, scored, args) -> list[dict]:
    iti = dress.fit_activations(*fit.activations, 16, 1.0, options=dress.Options(vectors="iti"))
    # ITI at the same total norm as the DRESS vectors (ITI's own alpha would be 15)
    iti = iti.with_alpha(float(fit.vectors.norm(dim=-1).sum() / iti.direction.norm(dim=-1).sum()))
    rows = [
        run("DRESS static (baked, all positions)", lambda: _Baked(fit, model)),
        run(f"ITI-style heads (same heads, alpha {iti.alpha:.2f})", lambda: _Baked(iti, model)),
    ]
    t0, answers = time.time(), _separate(fit, model, tokenizer, test, args)
    rows.append(scored("DRESS adaptive, separate forward (paper)", answers, time.time() - t0))
    return rows


def _summaries(rows: list[dict], budget: float) -> list[dict]:
    """Per row: each metric's mean with its 95% bootstrap interval, the fluency drop against no
    steering (paired interval), and DRESS's paired style test against the row."""
    base = next(r for r in rows if r["name"] == BASE_ROW)["per_question"]
    ours = next(r for r in rows if r["name"] == DRESS_ROW)["per_question"]
    out = []
    for row in rows:
        per = row["per_question"]
        entry = {"name": row["name"]}
        entry |= {k: vars(bootstrap.interval(per[k])) for k in METRICS}
        if row["name"] != BASE_ROW and not row["name"].startswith("reference"):
            drop = bootstrap.paired(base["inverse_log_perplexity"], per["inverse_log_perplexity"])
            entry["fluency_drop"] = vars(drop.difference)
            entry["within_budget"] = drop.difference.mean <= budget
            if row["name"] != DRESS_ROW:
                test = bootstrap.paired(ours["style"], per["style"])
                entry["dress_vs_this"] = {
                    "difference": vars(test.difference), "p_bootstrap": test.p_bootstrap,
                    "wins": test.wins, "losses": test.losses, "ties": test.ties,
                    "p_sign": test.p_sign,
                }  # fmt: skip
        out.append(entry)
    return out


def _cell(interval: dict) -> str:
    return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def _markdown(results: dict, n: int) -> str:
    summary, choice = results["rows"], results["alpha_choice"]
    budget = choice["fluency_budget"]
    lines = [
        f"{n} held-out test questions, greedy, {results['new_tokens']} new tokens; DRESS at its "
        f"defaults chose **alpha {choice['alpha']:g}** (grid and validation scores below); every "
        "cell is the mean with its 95% bootstrap interval (10,000 resamples of the questions). "
        f"Made by `{results['command']}` at commit {results['commit']} in "
        f"{results['minutes']:.0f} min.",
        "",
        "| method | Style Intensity | Semantic Preservation | Fluency | fluency drop vs none |",
        "|---|---|---|---|---|",
    ]
    for r in summary:
        drop = ""
        if "fluency_drop" in r:
            mark = "" if r["within_budget"] else f" (over the {budget:g} budget)"
            drop = _cell(r["fluency_drop"]) + mark
        name = f"**{r['name']}**" if r["name"] == DRESS_ROW else r["name"]
        cells = " | ".join(_cell(r[k]) for k in METRICS)
        lines.append(f"| {name} | {cells} | {drop} |")
    lines += [
        "",
        "Paired tests over the same questions, DRESS adaptive against each row, on the judge's "
        "per-answer style (1 styled, 0 not): the difference of Style Intensity with its paired "
        "95% bootstrap interval and p-value, and the exact sign test over the questions where "
        "the two differ.",
        "",
        "| DRESS adaptive vs | Style Intensity difference | p (bootstrap) | DRESS / other / tie "
        "| p (sign test) |",
        "|---|---|---|---|---|",
    ]
    for r in summary:
        t = r.get("dress_vs_this")
        if t and not r["name"].startswith("reference"):
            lines.append(
                f"| {r['name']} | {_cell(t['difference'])} | {t['p_bootstrap']:.3g} | "
                f"{t['wins']} / {t['losses']} / {t['ties']} | {t['p_sign']:.3g} |"
            )
    lines += ["", _verdict(summary, budget), ""]
    lines += _grid_lines("DRESS", choice) + [""]
    lines += _grid_lines("random heads", results["control_alpha_choice"])
    return "\n".join(lines) + "\n"


def _verdict(summary: list[dict], budget: float) -> str:
    by_name = {r["name"]: r for r in summary}
    ours = by_name[DRESS_ROW]
    others = [r for r in summary if r["name"].startswith(("prompting", "random heads"))]
    said = []
    for r in others:
        separate = ours["style"]["low"] > r["style"]["high"]
        test = r["dress_vs_this"]
        beats = "beats it with" if separate else "does NOT beat it with"
        said.append(
            f"{r['name']}: DRESS {beats} non-overlapping Style Intensity intervals "
            f"({_cell(ours['style'])} vs {_cell(r['style'])}; paired "
            f"difference {_cell(test['difference'])}, sign test p {test['p_sign']:.3g})"
        )
    within = "within" if ours["within_budget"] else "NOT within"
    return (
        f"**Verdict.** DRESS adaptive's fluency drop is {_cell(ours['fluency_drop'])}, {within} "
        f"the {budget:g} budget on the test questions. Against " + "; against ".join(said) + "."
    )


def _grid_lines(name: str, c: dict) -> list[str]:
    lines = [
        f"{name}: alpha chosen on {c['validation_pairs']} validation questions "
        f"({c['new_tokens']}-token answers), chose {c['alpha']:g}:",
        "",
        "| alpha | validation fluency | drop vs 0 | style margin (nats/token) |",
        "|---|---|---|---|",
    ]
    base = c["grid"][0]["fluency"]
    for r in c["grid"]:
        lines.append(
            f"| {r['alpha']:g} | {r['fluency']:.3f} | {base - r['fluency']:+.3f} | "
            f"{r['style']:+.3f} |"
        )
    return lines


def _write_table(path: Path, table: str) -> None:
    page = path.read_text()
    if START not in page or END not in page:
        raise SystemExit(f"{path} has no {START} ... {END} markers to write the table between")
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{table}{END}{tail}")
    print(f"table written into {path}")


def _given(args) -> list[str]:
    flags = []
    for flag in ("quick", "full"):
        if getattr(args, flag):
            flags.append(f"--{flag}")
    return flags


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _jsonable(value: object) -> object:
    return value.tolist() if isinstance(value, torch.Tensor) else str(value)


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


def _separate(fit, model, tokenizer, test, args) -> list[str]:
    """The paper's variant: a_cur from a separate unsteered forward over the question alone."""
    answers: list[str] = []
    pad_id = text.pad_id(tokenizer)
    for chunk in text.batches(test, args.batch_size):
        prompts = [dress.format_prompt(tokenizer, t.question) for t in chunk]
        # the chat template writes the prompt's special tokens; the bare question gets them
        batch = text.pad(
            [text.token_ids(tokenizer, p, special=False) for p in prompts], pad_id, "left"
        )
        source = text.pad([text.token_ids(tokenizer, t.question) for t in chunk], pad_id, "left")
        out = dress.generate_separate(
            fit, model, batch.input_ids, batch.attention_mask, source_ids=source.input_ids,
            source_mask=source.attention_mask, max_new_tokens=args.new_tokens,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id,
        )  # fmt: skip
        new = out[:, batch.input_ids.shape[1] :]
        answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


if __name__ == "__main__":
    main()
