"""The long sequential run: AlphaEdit and MEMIT over every bundled fact, in batches of 100.

    python examples/05_alphaedit_long.py run --method alphaedit     # resumable, one method
    python examples/05_alphaedit_long.py run --method memit
    python examples/05_alphaedit_long.py report                     # table + plot into docs/
    python examples/05_alphaedit_long.py drift                      # where the edits land
    python examples/05_alphaedit_long.py run --method alphaedit --nullspace-mode energy \
        --nullspace-threshold 0.03                                  # another null space
    python examples/05_alphaedit_long.py run --method alphaedit --l2 10       # another L2

`run` edits the bundled facts (`counterfact.load_requests()`) in order, in batches of `--batch`,
with one `alphaedit.Editor` at its defaults (key statistics from `default_key_stats`, cached).
After every batch it scores the edits so far (efficacy, paraphrase, neighbourhood:
`counterfact.evaluate`): the batch just written plus an evenly spaced sample of `--sample` earlier
edits (all of them after the last batch), so the scoring stays flat while the edits grow; and a
general-ability probe on the edited model (perplexity of the
bundled prose, `lm.perplexity`; accuracy on the bundled commonsense multiple-choice set,
`lm.continuation_logprobs` of each label), and records the seconds of the edit and of the scoring
and the peak resident memory during the edit. It is resumable: after each batch the combined
`WeightDelta`, the editor (P, past keys) and the rows are written (atomically) to `--state`
(default runs/alphaedit_long/<method>, not committed); a restart applies the delta to the freshly
loaded model, loads the editor and continues after the last finished batch, and refuses to
continue if the facts already edited changed. The rows also go to
docs/results/alphaedit_long/<method>.json (committed) with the command and commit that made them.

`report` reads those JSON files only and writes the table and docs/img/alphaedit_long.png into
docs/alphaedit.md between the `long-run` markers.

`drift` loads every run's latest state and writes docs/results/alphaedit_long/drift.json: per run,
edited layer and text (the preserved corpus, the prose of the perplexity probe, the commonsense
questions, the neighbourhood prompts, the edited subjects' last tokens), the share of the keys'
energy in the run's null space (AlphaEdit) and how far its combined edit moves the layer's output
on them.
"""

import argparse
import hashlib
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

import interventions as iv
from interventions import lm
from interventions.evals import counterfact, honesty, tasks
from interventions.models import load
from interventions.recipes import alphaedit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "alphaedit_long"
DOC = ROOT / "docs" / "alphaedit.md"
PLOT = ROOT / "docs" / "img" / "alphaedit_long.png"
MARKERS = ("<!-- long-run:start -->", "<!-- long-run:end -->")
DRIFT_MARKERS = ("<!-- drift:start -->", "<!-- drift:end -->")
RUN_ORDER = ("alphaedit", "memit")  # then the variants, by name
STYLES = ("o-", "s--", "^-.", "d:", "v-")
log = logging.getLogger("alphaedit_long")


# --- small pieces --------------------------------------------------------------------------------


def write_json(path: Path, value: object) -> None:
    """Atomic: a reader (or a restart after a kill) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(partial, path)


def facts_digest(requests: list[counterfact.Request]) -> str:
    text = json.dumps([[r.case_id, r.prompt, r.subject, r.target_new] for r in requests])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("-dirty" if dirty else "")


class PeakMemory:
    """Peak resident memory (MiB) of this process while the block runs, sampled every 5 ms from
    /proc/self/statm (getrusage's peak is the model load's, higher than anything after it)."""

    def __init__(self) -> None:
        self.peak = self.start = rss_mib()
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __enter__(self) -> "PeakMemory":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def mc_accuracy(model, tokenizer, records: list[tasks.Prompt]) -> float:
    """Share of multiple-choice questions whose answer label has the highest log-probability."""
    pairs = [(r.text, " " + label) for r in records for label in r.labels]
    scores = lm.continuation_logprobs(model, tokenizer, pairs).tolist()
    right, at = 0, 0
    for r in records:
        options = scores[at : at + len(r.labels)]
        at += len(r.labels)
        right += r.labels[max(range(len(options)), key=options.__getitem__)] == r.answer
    return right / len(records)


def general_probe(model, tokenizer) -> dict[str, float]:
    mc = [r for r in tasks.load_records(tasks.BUNDLED_DATA) if r.answer is not None]
    return {
        "perplexity": lm.perplexity(model, tokenizer, honesty.load_prose()),
        "mc_accuracy": mc_accuracy(model, tokenizer, mc),
    }


# --- the run ---------------------------------------------------------------------------------


class Unedited:
    """The unedited model's scores on the facts (per record) and on the general probe, cached in
    ``folder`` under the model's fingerprint and shared by the methods' runs. Facts are scored
    when a batch first needs them, with the edits so far reverted (bit-exact) and re-applied."""

    def __init__(self, model, tokenizer, folder: Path) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.path = folder / f"unedited-{iv.stats.fingerprint(model, 'logits')[:16]}.json"
        self.per: list[dict] = []
        self.probe: dict | None = None

    def _read(self, requests) -> None:
        if self.path.exists():
            cached = json.loads(self.path.read_text())
            per, facts = cached["per_record"], cached["facts"]
            if facts == facts_digest(requests[: len(per)]):
                self.per, self.probe = per, cached["probe"]

    def scores(
        self, requests, n: int, edits: iv.WeightDelta | None, scored: list[int] | None = None
    ) -> counterfact.Scores:
        """Scores on ``requests[:n]`` (at the indices ``scored``, default all); ``edits``: what is
        applied to the model now."""
        self._read(requests)  # the other method's run may have scored them already
        if len(self.per) < n or self.probe is None:
            if edits is not None:
                edits.revert(self.model)
            try:
                if self.probe is None:
                    self.probe = general_probe(self.model, self.tokenizer)
                if len(self.per) < n:
                    log.warning("scoring the unedited model on facts %d..%d", len(self.per), n)
                    fresh = requests[len(self.per) : n]
                    found = counterfact.evaluate(self.model, self.tokenizer, fresh, fluency=False)
                    self.per = self.per + found.per_record
            finally:
                if edits is not None:
                    edits.apply(self.model)
            facts = facts_digest(requests[: len(self.per)])
            write_json(self.path, {"per_record": self.per, "facts": facts, "probe": self.probe})
        scored = range(n) if scored is None else scored
        return counterfact.scores_from_records([self.per[i] for i in scored], fluency=False)


def scored_facts(done: int, batch: int, sample: int, last: bool) -> list[int]:
    """The facts scored after ``done`` edits: the newest ``batch``, and ``sample`` evenly spaced
    earlier ones (every earlier one when ``sample`` is 0 or after the ``last`` batch)."""
    earlier = range(done - batch)
    if not last and 0 < sample < len(earlier):
        earlier = [earlier[i * len(earlier) // sample] for i in range(sample)]
    return [*earlier, *range(done - batch, done)]


def hparams_of(args: argparse.Namespace) -> tuple[str, alphaedit.HParams]:
    """The run's name and the editor's settings: the defaults, or AlphaEdit with another null
    space or L2, which the name then says (its state and results are kept apart)."""
    defaults = alphaedit.HParams()
    nullspace = args.nullspace_threshold is not None or args.nullspace_mode is not None
    if not nullspace and args.l2 is None:
        return args.method, defaults
    if args.method != "alphaedit":
        sys.exit("--nullspace-mode / --nullspace-threshold / --l2 set AlphaEdit's: not memit's")
    name, hparams = args.method, defaults
    if nullspace:
        mode = args.nullspace_mode or defaults.nullspace_mode
        threshold = args.nullspace_threshold
        threshold = defaults.nullspace_threshold if threshold is None else threshold
        hparams = replace(hparams, nullspace_mode=mode, nullspace_threshold=threshold)
        name += f"-{mode}-{threshold:g}"
    if args.l2 is not None:
        hparams = replace(hparams, L2=args.l2)
        name += f"-L2-{args.l2:g}"
    return name, hparams


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    name, hparams = hparams_of(args)
    state = Path(args.state or ROOT / "runs" / "alphaedit_long" / name)
    state.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results) / f"{name}.json"
    model, tokenizer = load(args.model)
    requests = counterfact.load_requests()
    if args.edits is not None:
        requests = requests[: args.edits]
    requests = requests[: len(requests) // args.batch * args.batch]  # whole batches only

    progress_path = state / "progress.json"
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else None
    results = json.loads(results_path.read_text()) if results_path.exists() and progress else {}
    # named by the unedited weights' fingerprint: made before a resumed run applies its edits
    baseline = Unedited(model, tokenizer, state.parent)
    if progress is None:
        editor = alphaedit.Editor(model, tokenizer, method=args.method, hparams=hparams)
        combined, done, rows = None, 0, []
    else:
        done = progress["edits"]
        if progress["facts"] != facts_digest(requests[:done]):
            sys.exit(f"{state}: the first {done} facts changed since they were edited; start anew")
        combined = iv.WeightDelta.load(state / progress["delta"]).apply(model)
        editor = alphaedit.Editor.load(state / progress["editor"], model, tokenizer)
        rows = [r for r in results.get("rows", []) if r["edits"] <= done]
        log.warning("resuming %s after %d edits (%s)", name, done, state)
    baseline.scores(requests, 0, combined)  # the probe
    runs = results.get("runs", []) + [
        {"command": " ".join(["python", *sys.argv]), "commit": commit(), "from_edits": done}
    ]
    meta = {
        "method": args.method,
        "batch": args.batch,
        "sample": args.sample,
        "hparams": asdict(editor.hparams),
        "layers": editor.layers,
        "null_dims": editor.null_dims,
        "unedited_probe": baseline.probe,
        "threads": args.threads,
        "runs": runs,
    }
    for start in range(done, len(requests), args.batch):
        batch = requests[start : start + args.batch]
        n = start + len(batch)
        scored = scored_facts(n, len(batch), args.sample, last=n == len(requests))
        before = baseline.scores(requests, n, combined, scored)
        started, cpu_started = time.perf_counter(), time.process_time()
        with PeakMemory() as memory:
            delta = editor.edit(batch)
        edit_seconds = time.perf_counter() - started
        edit_cpu_seconds = time.process_time() - cpu_started  # the work, whatever the load
        combined = delta if combined is None else iv.WeightDelta.combine([combined, delta])
        started = time.perf_counter()
        facts = [requests[i] for i in scored]
        scores = counterfact.evaluate(model, tokenizer, facts, fluency=False)
        probe = general_probe(model, tokenizer)
        rows.append(
            {"edits": n, "scored": len(scored)}
            | {k: v for k, v in scores.summary().items() if k not in ("fluency", "n")}
            | {f"unedited_{k}": getattr(before, k) for k in ("paraphrase", "neighborhood")}
            | probe
            | {
                "edit_seconds": round(edit_seconds, 1),
                "edit_cpu_seconds": round(edit_cpu_seconds, 1),
                "score_seconds": round(time.perf_counter() - started, 1),
                "rss_start_mib": round(memory.start, 1),
                "rss_peak_mib": round(memory.peak, 1),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        # the state first, then the pointer to it: a kill anywhere leaves a consistent state
        names = {"delta": f"delta-{n}.safetensors", "editor": f"editor-{n}.safetensors"}
        combined.save(state / names["delta"])
        editor.save(state / names["editor"])
        write_json(results_path, meta | {"rows": rows})
        write_json(progress_path, {"edits": n, "facts": facts_digest(requests[:n])} | names)
        for old in state.glob("*-*.safetensors"):
            if old.name not in names.values():
                old.unlink()
        log.warning("%s after %d edits: %s", name, n, rows[-1])
    log.warning("%s: all %d edits done", name, len(requests))


# --- where the edits land: the keys of ordinary text ---------------------------------------------


def output_change(delta_w, weight, moment) -> float:
    """sqrt(E||ΔW k||² / E||W k||²) over keys with second moment ``moment = E[k kᵀ]``: how much the
    edit moves this layer's output on that text, relative to the output itself."""
    moved = torch.einsum("oi,ij,oj->", delta_w, moment, delta_w)
    kept = torch.einsum("oi,ij,oj->", weight, moment, weight)
    return float((moved / kept).sqrt())


def subject_key_moments(
    model, tokenizer, requests, layers, counts: set[int]
) -> dict[int, dict[int, torch.Tensor]]:
    """E[k kᵀ] of the keys the edits write at (each prompt's subject's last token, without the
    editor's random prefixes; one forward a prompt, so no padding) over the first ``n`` requests,
    for each ``n`` in ``counts``: ``{n: {layer: moment}}``."""
    sums = {layer: 0 for layer in layers}
    sites = [f"layers.{layer}.mlp.act" for layer in layers]
    found = {}
    with torch.no_grad():
        for n, r in enumerate(requests, start=1):
            ids = iv.text.token_ids(tokenizer, r.prompt[: r.subject_start] + r.subject)
            with iv.capture(model, sites) as cache:
                model(input_ids=torch.tensor([ids]))
            for layer, site in zip(layers, sites, strict=True):
                key = cache[site][0, -1].double()
                sums[layer] = sums[layer] + torch.outer(key, key)
            if n in counts:
                found[n] = {layer: total / n for layer, total in sums.items()}
    return found


def drift(args: argparse.Namespace) -> None:
    """For every run in the state folder: how much of each text's key energy lies in the run's
    null space (tr(P M) / tr M; AlphaEdit only), and how far its combined edit moves the edited
    layers' outputs on that text. Everything is quadratic in the keys, so the second moment of
    each text's keys is all it needs."""
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    runs = Path(args.state or ROOT / "runs" / "alphaedit_long")
    found = sorted(runs.glob("*/progress.json"))
    states = {path.parent.name: json.loads(path.read_text()) for path in found}
    if not states:
        sys.exit(f"no run state in {runs}: run `run --method alphaedit` first")
    editors = {name: alphaedit.Editor.load(runs / name / progress["editor"], model, tokenizer)
               for name, progress in states.items()}  # fmt: skip
    layers = sorted({layer for editor in editors.values() for layer in editor.layers})
    edited = counterfact.load_requests()[: max(p["edits"] for p in states.values())]
    questions = [r.text for r in tasks.load_records(tasks.BUNDLED_DATA)]
    texts = {
        "corpus (the preserved keys)": None,
        "prose (the perplexity probe)": [honesty.load_prose()],
        "commonsense questions (held out)": questions,
        "neighbourhood prompts (held out)": [p for r in edited for p in r.neighborhood_prompts],
    }
    moments = {
        name: alphaedit.key_stats(model, tokenizer, corpus, layers, cache=corpus is None).moments
        for name, corpus in texts.items()
    }
    counts = {progress["edits"] for progress in states.values()}
    subjects = subject_key_moments(model, tokenizer, edited, layers, counts)
    subject_text = "edited subjects (last token)"
    table = iv.adapter(model)
    modules = {layer: table.block_module(model, layer, table.down_proj) for layer in layers}
    original = {layer: table.weight(m).detach().double().clone() for layer, m in modules.items()}
    rows = []
    for name, progress in states.items():
        delta = iv.WeightDelta.load(runs / name / progress["delta"]).apply(model)
        try:
            changes = {layer: table.weight(modules[layer]).detach().double() - original[layer]
                       for layer in editors[name].layers}  # fmt: skip
        finally:
            delta.revert(model)
        projectors = editors[name].projectors
        by_text = moments | {subject_text: subjects[progress["edits"]]}
        for layer, change in changes.items():
            for text, moment in by_text.items():
                m = moment[layer].double()
                share = projectors[layer].double().mul(m).sum() / m.trace() if projectors else None
                rows.append({
                    "run": name, "edits": progress["edits"], "layer": layer, "text": text,
                    "null_dim": editors[name].null_dims.get(layer),
                    "null_share": None if share is None else float(share),
                    "output_change": output_change(change, original[layer], m),
                })  # fmt: skip
                print(json.dumps(rows[-1]))
    write_json(Path(args.out), {"command": " ".join(["python", *sys.argv]), "commit": commit(),
                                "texts": [*moments, subject_text], "rows": rows})  # fmt: skip


# --- the report ------------------------------------------------------------------------------


def report(args: argparse.Namespace) -> None:
    paths = sorted(RESULTS.glob("*.json"), key=lambda p: (p.stem not in RUN_ORDER, p.stem))
    found = {p.stem: json.loads(p.read_text()) for p in paths if not p.stem.startswith("drift")}
    if not found:
        sys.exit(f"no results in {RESULTS}: run `run --method alphaedit` first")
    lines = [MARKERS[0], table(found), "", f"![AlphaEdit and MEMIT, long run]({plot(found)})"]
    lines.append(MARKERS[1])
    text = DOC.read_text()
    start, end = text.index(MARKERS[0]), text.index(MARKERS[1]) + len(MARKERS[1])
    text = text[:start] + "\n".join(lines) + text[end:]
    drift_path = RESULTS / "drift.json"
    if drift_path.exists() and DRIFT_MARKERS[0] in text:
        start = text.index(DRIFT_MARKERS[0])
        end = text.index(DRIFT_MARKERS[1]) + len(DRIFT_MARKERS[1])
        found_drift = json.loads(drift_path.read_text())
        block = [DRIFT_MARKERS[0], drift_table(found_drift), DRIFT_MARKERS[1]]
        text = text[:start] + "\n".join(block) + text[end:]
    DOC.write_text(text)
    print(f"wrote {DOC} and {PLOT}")


def drift_table(found: dict) -> str:
    """Per run and text: the null-space share and the output change, layer by layer."""
    runs = list(dict.fromkeys((r["run"], r["edits"]) for r in found["rows"]))
    layers = sorted({r["layer"] for r in found["rows"]})
    shown = "/".join(str(layer) for layer in layers)
    out = [f"| run (edits) | keys of | energy share in the null space, layers {shown} "
           f"| output change, layers {shown} |", "|---|---|---|---|"]  # fmt: skip
    for run, edits in runs:
        for text in found["texts"]:
            rows = sorted((r for r in found["rows"] if r["run"] == run and r["text"] == text),
                          key=lambda r: r["layer"])  # fmt: skip
            shares = [r["null_share"] for r in rows]
            share = "–" if None in shares else " / ".join(f"{x:.2f}" for x in shares)
            change = " / ".join(f"{r['output_change']:.2f}" for r in rows)
            out.append(f"| {run} ({edits}) | {text} | {share} | {change} |")
    return "\n".join(out) + f"\n\nMade by `{found['command']}` at {found['commit']}."


def table(found: dict) -> str:
    head = (
        "| method | edits | facts scored | efficacy | paraphrase | neighbourhood (Δ unedited) "
        "| efficacy diff | perplexity | MC accuracy | s / 100 edits: edit wall (CPU) + score "
        "| peak RSS MiB |"
    )
    out = [head, "|---|" + "---:|" * 10]
    for method, result in found.items():
        probe = result["unedited_probe"]
        out.append(
            f"| {method} | 0 | – | – | – | – | – | {probe['perplexity']:.2f} | "
            f"{100 * probe['mc_accuracy']:.1f} | – | – |"
        )
        for r in result["rows"]:
            gap = 100 * (r["neighborhood"] - r["unedited_neighborhood"])
            per_100 = 100 / result["batch"]
            cpu = f"{per_100 * r['edit_cpu_seconds']:.0f}" if "edit_cpu_seconds" in r else "–"
            out.append(
                f"| {method} | {r['edits']} | {r.get('scored', r['edits'])} | "
                f"{100 * r['efficacy']:.1f} | "
                f"{100 * r['paraphrase']:.1f} | {100 * r['neighborhood']:.1f} ({gap:+.1f}) | "
                f"{r['efficacy_diff']:.3f} | {r['perplexity']:.2f} | "
                f"{100 * r['mc_accuracy']:.1f} | {per_100 * r['edit_seconds']:.0f} ({cpu}) + "
                f"{per_100 * r['score_seconds']:.0f} | {r['rss_peak_mib']:.0f} |"
            )
    runs = [f"`{r['command']}` at {r['commit']} (from {r['from_edits']} edits)"
            for result in found.values() for r in result["runs"]]  # fmt: skip
    return "\n".join(out) + "\n\nMade by " + "; ".join(runs) + "."


TITLES = {"edit_cpu_seconds": "CPU seconds per batch (edit)", "rss_peak_mib": "peak RSS (MiB)",
          "mc_accuracy": "commonsense MC accuracy"}  # fmt: skip


def plot(found: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ("efficacy", "paraphrase", "neighborhood", "perplexity", "mc_accuracy",
              "edit_cpu_seconds", "rss_peak_mib")  # fmt: skip
    fig, axes = plt.subplots(2, 4, figsize=(15, 6.4), sharex=True)
    axes.flat[-1].axis("off")
    for ax, metric in zip(axes.flat, panels, strict=False):
        for method, style in zip(found, itertools.cycle(STYLES)):  # every run, however many
            rows = [r for r in found[method]["rows"] if metric in r]  # older rows lack some
            x = [0] + [r["edits"] for r in rows]
            start = found[method]["unedited_probe"].get(metric)
            y = [start] + [r[metric] for r in rows]
            if start is None:
                x, y = x[1:], y[1:]
            ax.plot(x, y, style, label=method)
        if metric == "neighborhood" and found:
            rows = next(iter(found.values()))["rows"]
            xs = [r["edits"] for r in rows]
            ax.plot(xs, [r["unedited_neighborhood"] for r in rows], "x:", color="grey",
                    label="unedited, same facts")  # fmt: skip
        ax.set_title(TITLES.get(metric, metric.replace("_", " ")))
        ax.set_xlabel("sequential edits")
    axes.flat[0].legend(fontsize=7)
    axes.flat[2].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    return str(PLOT.relative_to(DOC.parent))


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run", help="edit (or resume) one method's long run")
    go.add_argument("--method", choices=alphaedit.METHODS, required=True)
    go.add_argument("--batch", type=int, default=100)
    go.add_argument("--edits", type=int, default=None, help="default: every bundled fact")
    go.add_argument("--model", default=None, help="HF id or path (default: bundled SmolLM2)")
    go.add_argument("--state", default=None, help="default runs/alphaedit_long/<method>")
    go.add_argument("--results", default=str(RESULTS), help="folder of the committed rows")
    go.add_argument("--sample", type=int, default=200, help="earlier edits scored (0: all)")
    go.add_argument("--threads", type=int, default=1)
    go.add_argument("--nullspace-mode", choices=alphaedit.THRESHOLD_MODES, default=None,
                    help="AlphaEdit's null space (default: HParams'); names the run")  # fmt: skip
    go.add_argument("--nullspace-threshold", type=float, default=None)
    go.add_argument("--l2", type=float, default=None, help="AlphaEdit's L2 (default: HParams')")
    commands.add_parser("report", help="table and plot into docs/alphaedit.md")
    where = commands.add_parser("drift", help="null-space share and output change per text")
    where.add_argument("--model", default=None, help="HF id or path (default: bundled SmolLM2)")
    where.add_argument("--state", default=None, help="default runs/alphaedit_long")
    where.add_argument("--out", default=str(RESULTS / "drift.json"))
    where.add_argument("--threads", type=int, default=1)
    return parser


def main() -> None:
    args = arguments().parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("interventions").setLevel(logging.INFO)
    {"run": run, "report": report, "drift": drift}[args.command](args)


if __name__ == "__main__":
    main()
