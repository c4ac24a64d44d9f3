"""Run the overhead benchmarks and publish them.

    python benchmarks/run.py                      # cpu, tiny + real model, the whole suite
    python benchmarks/run.py --device cuda        # on a GPU machine
    python benchmarks/run.py --models tiny -- -k capture   # arguments after -- go to pytest
    python benchmarks/run.py --tests benchmarks/test_overhead.py   # one file of the suite
    python benchmarks/run.py --doc-only           # rewrite the page from the results files

Runs ``pytest benchmarks/ --benchmark-only`` in a subprocess, writes
``benchmarks/results/<machine>.json`` (every case's timings, ratios, skip reasons, versions,
machine and date), then rewrites ``docs/performance.md`` from every results file present, so
results of several machines sit side by side. The overhead file alone takes about 14 minutes on
a 2-core machine (half of it the paired rounds on the real model). Ratios are within one run:
each case ÷ the bare forward (``generate`` ÷ the bare ``generate``), as medians of the timed
rounds and as medians of paired rounds (each call next to a bare call), and ours ÷ each peer.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from math import comb
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"

OURS = ("interventions", "interventions-attached")
AGAIN = "bare-again"  # the bare forward timed again at the end of a model's cases
PEERS = ("torch-hooks", "nnsight", "pyvene", "transformer-lens")
LIBRARIES = ("bare", "torch-hooks", *OURS, "nnsight", "pyvene", "transformer-lens")
OPS = ("forward", "capture", "steer", "generate")
MODELS = ("tiny", "real")
PACKAGES = (
    "interventions",
    "torch",
    "transformers",
    "nnsight",
    "pyvene",
    "transformer-lens",
    "pytest-benchmark",
)


# --- running --------------------------------------------------------------------------------------


def run_suite(args: argparse.Namespace, json_path: Path, junit_path: Path) -> int:
    command = [
        sys.executable,
        "-m",
        "pytest",
        *args.tests,
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        f"--junitxml={junit_path}",
        "-p",
        "no:cacheprovider",
        f"--device={args.device}",
        f"--models={args.models}",
        *([f"--threads={args.threads}"] if args.threads else []),
        *args.pytest_args,
    ]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command, cwd=ROOT)


def skipped_cases(junit_path: Path) -> dict[str, str]:
    """``case id -> reason`` of every skipped case, from pytest's JUnit XML."""
    skipped = {}
    for case in ET.parse(junit_path).iter("testcase"):
        skip = case.find("skipped")
        match = re.search(r"\[(.+)\]$", case.get("name", ""))
        if skip is not None and match:
            skipped[match[1]] = skip.get("message", "").removeprefix("Skipped: ")
    return skipped


# --- describing the run ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str) -> dict:
    import torch

    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    return machine


def default_machine_name(machine: dict) -> str:
    if machine["device"] == "cuda":
        name = f"cuda-{machine.get('gpu', 'gpu')}"
    else:
        name = f"cpu-{machine['cpu']}-{machine['cores']}c"
    name = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b(?!-)", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    edited = git("status", "--porcelain", "--untracked-files=no", "interventions")
    return commit + ("+dirty" if commit and edited else "")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- ratios ---------------------------------------------------------------------------------------


def summarise(raw: dict, skipped: dict[str, str]) -> dict:
    """Overhead cases with their statistics, ratios to the bare model, ours ÷ peers and the
    goals; the suite's other benchmarks (recipe throughput, ...) with their statistics."""
    cases, others = [], []
    for bench in raw["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        timing = {
            "median_s": stats["median"],
            "min_s": stats["min"],
            "mean_s": stats["mean"],
            "stddev_s": stats["stddev"],
            "iqr_s": stats["iqr"],
            "rounds": stats["rounds"],
        }
        if not {"model", "op", "library"} <= info.keys():  # not an overhead case
            others.append({"name": bench["name"], "group": bench["group"], **timing, **info})
            continue
        cases.append(
            {
                **{k: info[k] for k in ("model", "op", "library", "version")},
                "inputs": {k: info[k] for k in ("batch", "seq", "new_tokens", "n_layers")},
                **timing,
                **(
                    {"paired": paired_summary(info["paired_ratios"])}
                    if "paired_ratios" in info
                    else {}
                ),
            }
        )
    time = {(c["model"], c["op"], c["library"]): c["median_s"] for c in cases}
    drift = {}
    for model in MODELS:  # the bare forward timed first and last: baseline = their mean
        first = time.get((model, "forward", "bare"))
        again = time.pop((model, "forward", AGAIN), None)
        if first and again:
            time[(model, "forward", "bare")] = (first + again) / 2
            drift[model] = {"first_s": first, "again_s": again, "baseline_s": (first + again) / 2}
    for case in cases:
        base_op = "generate" if case["op"] == "generate" else "forward"
        base = time.get((case["model"], base_op, "bare"))
        case["x_bare"] = case["median_s"] / base if base else None
        if case["op"] == "generate" and base:
            case["tokens_per_s_vs_bare"] = base / case["median_s"]
    paired = {(c["model"], c["op"], c["library"]): c["paired"] for c in cases if "paired" in c}
    ours_vs_peers = []
    for model, op, library in time:
        if library not in OURS:
            continue
        for peer in PEERS:
            comparison = compare(time, paired, (model, op, library), (model, op, peer))
            if comparison is not None:
                ours_vs_peers.append(
                    {"model": model, "op": op, "ours": library, "peer": peer, **comparison}
                )
    return {
        "cases": cases,
        "ours_vs_peers": ours_vs_peers,
        "drift": drift,
        "skipped": skipped,
        "goals": goals(time, paired) if cases else [],
        "others": others,
    }


def paired_summary(ratios: list[float], confidence: float = 0.95) -> dict:
    """Median of the paired ratios (case ÷ bare model, each pair back to back) with a
    distribution-free confidence interval for it: the order statistics ``k`` and ``n + 1 - k``
    of ``n`` ratios, ``k`` the largest with ``P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2``."""
    values = sorted(ratios)
    n = len(values)
    tail, k, below = (1 - confidence) / 2, 0, 0.0
    while k < n // 2 and below + comb(n, k) / 2**n <= tail:
        below += comb(n, k) / 2**n
        k += 1
    middle = n // 2
    median = values[middle] if n % 2 else (values[middle - 1] + values[middle]) / 2
    lo, hi = (values[k - 1], values[n - k]) if k else (values[0], values[-1])
    return {"median": median, "lo": lo, "hi": hi, "n": n, "confidence": confidence}


def compare(time: dict, paired: dict, ours: tuple, peer: tuple) -> dict | None:
    """Ours ÷ peer: of the paired overheads where both have them, else of the medians;
    ``overlap`` says whether the two paired intervals overlap (a difference within the run's
    noise)."""
    if ours in paired and peer in paired:
        a, b = paired[ours], paired[peer]
        return {
            "ratio": a["median"] / b["median"],
            "source": "paired",
            "overlap": a["lo"] <= b["hi"] and b["lo"] <= a["hi"],
        }
    if ours in time and peer in time:
        return {"ratio": time[ours] / time[peer], "source": "median", "overlap": None}
    return None


def goals(time: dict, paired: dict) -> list[dict]:
    """The goals of issue 7, each judged on this run for both ways of using the library, on the
    paired ratios where a case has them (else on medians). A goal missed by less than the run's
    noise (within the confidence interval) says so."""
    found = []

    def goal(text: str, ours: str, value: float | None, met: bool | None, noise=None) -> None:
        found.append(
            {"goal": text, "ours": ours, "value": value, "met": met, "within_noise": noise}
        )

    def vs_bare(key: tuple) -> tuple[float | None, float | None]:
        """Case ÷ its bare baseline (forward or generate), and the low end of its interval."""
        if key in paired:
            return paired[key]["median"], paired[key]["lo"]
        model, op, _ = key
        base = time.get((model, "generate" if op == "generate" else "forward", "bare"))
        value = time[key] / base if key in time and base else None
        return value, value

    for ours in OURS:
        value, low = vs_bare(("real", "capture", ours))
        goal(
            "capture, real model: ≤ 1.05× bare forward",
            ours,
            value,
            _le(value, 1.05),
            None if value is None or value <= 1.05 else low <= 1.05,
        )
        against = compare(
            time, paired, ("tiny", "capture", ours), ("tiny", "capture", "torch-hooks")
        )
        value = None if against is None else against["ratio"]
        goal("capture, tiny model: ≤ 1.1× hand-written hooks", ours, value, _le(value, 1.1))
        for peer in ("nnsight", "pyvene"):
            comparisons = [
                compare(time, paired, (m, op, ours), (m, op, peer))
                for m in MODELS
                for op in ("capture", "steer", "generate")
            ]
            comparisons = [c for c in comparisons if c is not None]
            worst = max(comparisons, key=lambda c: c["ratio"]) if comparisons else None
            value = None if worst is None else worst["ratio"]
            noise = None if worst is None or worst["ratio"] < 1 else worst["overlap"]
            goal(
                f"faster than {peer} on every case (worst ours ÷ {peer})",
                ours,
                value,
                _lt(value),
                noise,
            )
        for model in MODELS:
            value, low = vs_bare((model, "generate", ours))
            bare_over_ours = None if value is None else 1 / value
            met = None if value is None else bare_over_ours >= 0.9
            goal(
                f"generate, {model} model: ≥ 0.9× bare tokens/s",
                ours,
                bare_over_ours,
                met,
                None if met is not False else 1 / low >= 0.9,
            )
    return found


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _lt(value: float | None) -> bool | None:
    return None if value is None else value < 1.0


# --- the markdown page ----------------------------------------------------------------------------

INTRO = """# Performance: overhead against the bare model and the peer libraries

Generated by `python benchmarks/run.py` from `benchmarks/results/*.json`; do not edit by hand.

What is timed (`benchmarks/test_overhead.py`), on a tiny random Llama (8 layers, d_model 32,
4 heads: per-call overhead dominates) and on SmolLM2-135M (30 layers, 9 heads; float32):

- **forward**: the bare model, `model(ids)`.
- **capture**: `attn.heads` (the input of `o_proj`, split into heads) at every layer, detached.
- **steer**: add one vector to every head's `attn.heads` at every layer; the logits.
- **generate**: greedy generation of exactly 32 new tokens with the steer edit at every layer.

Libraries, each checked to compute the same tensors before it is timed (ours against the
hand-written hooks, every peer against ours: captured heads and steered logits allclose,
generated tokens equal):

- **torch-hooks**: a forward pre-hook on each `self_attn.o_proj`, written by hand for this one
  model, registered and removed around each call: the floor for any hook library.
- **interventions**: `with iv.capture(model, "layers.*.attn.heads")` /
  `with iv.intervene(model, {"layers.*.attn.heads": iv.AddBias(v)})` around each call, as the
  README writes it (set-up and removal of the hooks are timed).
- **interventions-attached**: the same plan attached once with `iv.attach`; only the hooks are
  timed. This is how the peers below are used: built once, then called.
- **nnsight**: `TransformersModel` around a copy of the model, one `trace` (or `generate`) per call.
- **pyvene**: `IntervenableModel` over `attention_value_output`, built once per operation.
- **transformer-lens**: TransformerLens 4's `TransformerBridge` (it forces eager attention),
  `run_with_cache` / `run_with_hooks` on `hook_z`, its own `generate`.

Each cell is the median of the recorded rounds (warm-up rounds excluded) and its ratio to the
bare model in the same run: capture and steer ÷ bare forward (the mean of the bare forward timed
first and again last, to cancel drift), generate ÷ bare generate (so a library's tokens/s is
bare tokens/s ÷ the ratio). On CPU a round is the process's CPU time with one torch
thread (`--clock cpu`), which other processes on a shared machine do not inflate; on CUDA it is
synchronised wall time.

Timed in blocks, one case after another, the medians carry the machine's drift (a few percent
over a run on a shared VM; compare the hand-written hooks, which cannot be faster than the bare
model). So every case is timed again in pairs: one call of the case and one call of the bare
model (forward, or generate) back to back, the order alternating, and the pairs' time ratios
give a median overhead with a distribution-free 95% confidence interval; the bare model paired
with itself shows the noise floor. The goals and the ours ÷ peer quotients use these paired
numbers.

The researcher's toolkit (results under a machine name ending in `-toolkit`):
`benchmarks/test_patching.py` times one `resid_pre` patching map of SmolLM2 by `iv.patching`,
by a patch per forward, by TransformerLens and by nnsight; `benchmarks/test_store.py` the
activation store against an in-memory capture, and its peak memory over the dataset size;
`benchmarks/test_load.py` the first and the cached load of the bundled model.

`benchmarks/test_compile.py` (results under a machine name ending in `-compile`, in the table of
other benchmarks; every `x_` value a median of paired ratios): `torch.compile` (inductor) on the
tiny model, `x_eager_bare` compiled bare ÷ eager bare, `x_compiled_bare` compiled steering ÷
compiled bare, `x_eager_steer` compiled steering ÷ eager steering, `graphs` the graphs compiled
(none during the timed calls); and the price of a capture's own copy of its records
(`x_views`: capture of `resid_post` at every layer ÷ the same capture keeping views).
"""


def ms(seconds: float) -> str:
    milliseconds = seconds * 1e3
    return f"{milliseconds:.0f} ms" if milliseconds >= 100 else f"{milliseconds:.2f} ms"


def markdown(results: list[dict]) -> str:
    lines = [INTRO]
    for result in results:
        lines += machine_section(result)
    return "\n".join(lines).rstrip() + "\n"


def machine_section(result: dict) -> list[str]:
    machine, settings = result["machine"], result["settings"]
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['cores']} cores"
    lines = [
        f"## {result['name']}",
        "",
        f"- machine: {where} ({machine['platform']}, Python {machine['python']})",
        f"- date: {result['date']}, commit {result['commit'] or 'unknown'}",
        f"- run: device {settings['device']}, clock {settings['timer']}, "
        f"torch threads {settings['threads']}, load average before/after "
        f"{settings['load_before']} / {settings['load_after']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
    ]
    summary = result["summary"]
    drift = summary.get("drift", {})
    by_key = {(c["model"], c["op"], c["library"]): c for c in summary["cases"]}
    for model in MODELS:
        present = [c for c in summary["cases"] if c["model"] == model]
        if not present:
            continue
        inputs = present[0]["inputs"]
        libraries = [lib for lib in LIBRARIES if any(c["library"] == lib for c in present)]
        lines += [
            f"### {model} model: batch {inputs['batch']} × {inputs['seq']} tokens, "
            f"{inputs['n_layers']} layers",
            "",
            "| operation | " + " | ".join(libraries) + " |",
            "|---|" + "---:|" * len(libraries),
        ]
        for op in OPS:
            cells = []
            for library in libraries:
                case = by_key.get((model, op, library))
                if (op, library) == ("forward", "bare") and model in drift:
                    cells.append(f"{ms(drift[model]['baseline_s'])} (1.00×)")
                    continue
                cells.append(
                    "" if case is None else f"{ms(case['median_s'])} ({case['x_bare']:.2f}×)"
                )
            if any(cells):
                label = "generate (32 tokens)" if op == "generate" else op
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        if model in drift:
            first, again = drift[model]["first_s"], drift[model]["again_s"]
            lines += [
                f"The bare forward took {ms(first)} timed first and {ms(again)} timed again after "
                f"the other cases ({again / first - 1:+.1%} drift); the baseline is their mean.",
                "",
            ]
        lines += paired_table(model, libraries, by_key)
    lines += ours_vs_peers_table(summary["ours_vs_peers"])
    lines += goals_table(summary["goals"])
    toolkit, others = toolkit_tables(summary.get("others", []))
    lines += toolkit + others_table(others)
    if summary["skipped"]:
        lines += ["Skipped cases:", ""]
        lines += [f"- `{case}`: {reason}" for case, reason in sorted(summary["skipped"].items())]
        lines.append("")
    return lines


def paired_table(model: str, libraries: list[str], by_key: dict) -> list[str]:
    rows = []
    for op in OPS:
        cells = []
        for library in libraries:
            paired = by_key.get((model, op, library), {}).get("paired")
            cells.append("" if paired is None else _overhead(paired))
        if any(cells):
            label = "generate ÷ bare generate" if op == "generate" else f"{op} ÷ bare forward"
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    counts = {
        op: next(
            (c["paired"]["n"] for k, c in by_key.items() if k[:2] == (model, op) and "paired" in c),
            None,
        )
        for op in ("capture", "generate")
    }
    return [
        f"Paired overhead ({counts['capture']} pairs per forward case, {counts['generate']} per "
        "generate case; each pair a call of the case and a call of the bare model back to back, "
        "the order alternating): median of the pairs' time ratios − 1, with its 95% confidence "
        "interval. Drift of the machine cancels within a pair, so these are the sharper numbers. "
        "The bare column pairs the bare model with itself: the noise floor.",
        "",
        "| operation | " + " | ".join(libraries) + " |",
        "|---|" + "---:|" * len(libraries),
        *rows,
        "",
    ]


def _overhead(paired: dict) -> str:
    median, lo, hi = (paired[k] - 1 for k in ("median", "lo", "hi"))
    return f"{median:+.2%} [{lo:+.2%}, {hi:+.2%}]"


def ours_vs_peers_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    peers = [p for p in PEERS if any(r["peer"] == p for r in rows)]
    lines = [
        "Ours ÷ peer (below 1 means ours is faster): the quotient of the two paired ratios "
        "(each library's time ÷ the bare model's). `≈` marks a quotient at or above 1 whose two "
        "paired intervals overlap: slower by less than this run's noise.",
        "",
        "| model | operation | ours | " + " | ".join(peers) + " |",
        "|---|---|---|" + "---:|" * len(peers),
    ]
    table = {(r["model"], r["op"], r["ours"], r["peer"]): r for r in rows}
    for model in MODELS:
        for op in ("capture", "steer", "generate"):
            for ours in OURS:
                cells = [table.get((model, op, ours, peer)) for peer in peers]
                if any(c is not None for c in cells):
                    text = ["" if c is None else _quotient(c) for c in cells]
                    lines.append(f"| {model} | {op} | {ours} | " + " | ".join(text) + " |")
    return [*lines, ""]


def _quotient(row: dict) -> str:
    noisy = row["ratio"] >= 1 and row.get("overlap")
    return f"{'≈ ' if noisy else ''}{row['ratio']:.3f}"


def goals_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["Goals (issue 7), judged on this run:", "", "| goal | ours | value | met |"]
    lines.append("|---|---|---:|---|")
    for row in rows:
        value = "" if row["value"] is None else f"{row['value']:.3f}"
        met = {True: "yes", False: "**no**", None: "not run"}[row["met"]]
        if row["met"] is False and row.get("within_noise"):
            met = "**no**, by less than the run's noise"
        lines.append(f"| {row['goal']} | {row['ours']} | {value} | {met} |")
    return [*lines, ""]


def toolkit_tables(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """The researcher's-toolkit benchmarks (patching sweep, activation store, model load) as
    tables with their goals, and the rows that are none of them."""
    by_name = {row["name"]: row for row in rows}
    lines: list[str] = []
    sweep = by_name.pop("test_patching_sweep_against_transformer_lens", None)
    if sweep is not None:
        peers = [("a patch per forward (`iv.intervene` loop)", "loop_s", "ours_over_loop")]
        peers.append(("TransformerLens `get_act_patch_resid_pre`", "transformer_lens_s", None))
        if "nnsight_s" in sweep:
            peers.append(("nnsight, a `trace` per cell", "nnsight_s", "ours_over_nnsight"))
        lines += [
            f"Patching sweep (`benchmarks/test_patching.py`): `resid_pre` at every (layer, "
            f"position) of SmolLM2, {sweep['cells']} cells, Eiffel Tower / Colosseum, CPU "
            "seconds of one map (eager attention for all; ours with SDPA: "
            f"{sweep['ours_sdpa_s']:.1f} s). The maps agree within "
            f"{sweep['max_abs_difference_vs_transformer_lens']:.1e} before any time is taken.",
            "",
            "| way | seconds | ours ÷ it |",
            "|---|---:|---:|",
            f"| `iv.patching` (batched cells) | {sweep['ours_s']:.1f} | 1 |",
        ]
        for label, seconds, _ in peers:
            lines.append(
                f"| {label} | {sweep[seconds]:.1f} | {sweep['ours_s'] / sweep[seconds]:.3f} |"
            )
        ratio = sweep["ours_over_transformer_lens"]
        lines += [
            "",
            f"Goal ours ÷ TransformerLens ≤ 0.33: {ratio:.3f}, {_met(ratio <= 0.33)}.",
            "",
        ]
    stores = [by_name.pop(n) for n in list(by_name) if n.startswith("test_store_throughput[")]
    if stores:
        lines += [
            "Activation store (`benchmarks/test_store.py`): `store.write` of the middle layer's "
            "`resid_post` ÷ an in-memory capture of the same batches (median of paired rounds; "
            "goal ≥ 0.9). Each write also hashes the weights feeding the site for its manifest, "
            "a fixed cost:",
            "",
            "| model | tokens | throughput ÷ in-memory | goal met | fixed hashing cost |",
            "|---|---:|---:|---|---:|",
        ]
        for row in stores:
            model = row["name"].split("[")[1].rstrip("]")
            hashing = f"{row['fingerprint_s']:.2f} s" if "fingerprint_s" in row else ""
            lines.append(
                f"| {model} | {row['tokens']} | {row['ratio']:.3f} | {_met(row['ratio'] >= 0.9)} "
                f"| {hashing} |"
            )
        lines.append("")
    rss = by_name.pop("test_store_peak_rss", None)
    if rss is not None:
        peaks = rss["peak_rss"]
        sizes = [k.split()[-1] for k in peaks if k.startswith("store ")]
        lines += [
            "Peak RSS (MiB) of a process that writes 1×, 4×, 16× a dataset (1× = 32,768 rows of "
            "the tiny Llama's `layers.3.mlp.act`, 8 MiB) to a store, or keeps it in memory:",
            "",
            "| way | " + " | ".join(sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for way in ("store", "in-memory"):
            cells = [f"{peaks[f'{way} {size}']['peak_rss_mib']:.0f}" for size in sizes]
            lines.append(f"| {way} | " + " | ".join(cells) + " |")
        first, last = (peaks[f"store {size}"]["peak_rss_mib"] for size in (sizes[0], sizes[-1]))
        grows = peaks[f"in-memory {sizes[-1]}"]["peak_rss_mib"] > 1.1 * last
        lines += [
            "",
            "Goal: the store's stays flat (within 10 %) where the in-memory one grows (else the "
            f"measure sees no data): {_met(last <= 1.1 * first and grows)}.",
            "",
        ]
    loads = {n: by_name.pop(n) for n in list(by_name) if n.startswith("test_load[")}
    if loads:
        lines += [
            "Loading the bundled SmolLM2 (`benchmarks/test_load.py`, a fresh process each, "
            "wall seconds of `models.load()` / of the whole process):",
            "",
            "| load | `load()` s | process s |",
            "|---|---:|---:|",
        ]
        for name, row in loads.items():
            label = name.split("[")[1].rstrip("]")
            lines.append(f"| {label} | {row['load_s']:.1f} | {row['process_s']:.1f} |")
        lines.append("")
    return lines, list(by_name.values())


def _met(met: bool) -> str:
    return "met" if met else "**not met**"


def others_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "Other benchmarks in the suite (median; details in the results file):",
        "",
        "| group | case | median | rounds | extra |",
        "|---|---|---:|---:|---|",
    ]
    skip = {"name", "group", "median_s", "min_s", "mean_s", "stddev_s", "iqr_s", "rounds"}
    for row in rows:
        extra = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in row.items()
            if k not in skip
        )
        lines.append(
            f"| {row['group']} | `{row['name']}` | {ms(row['median_s'])} | {row['rounds']} "
            f"| {extra} |"
        )
    return [*lines, ""]


def write_doc() -> None:
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(markdown(results))
    print(f"wrote {DOC.relative_to(ROOT)} from {len(results)} results file(s)")


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default="tiny,real")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--machine", default=None, help="results file name (default: derived)")
    parser.add_argument(
        "--tests",
        nargs="+",
        default=["benchmarks/"],
        help="test paths to run (default: the whole suite, benchmarks/)",
    )
    parser.add_argument(
        "--doc-only", action="store_true", help="only rewrite docs/performance.md from results"
    )
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = parser.parse_args(argv)
    if args.doc_only:
        write_doc()
        return 0

    machine = describe_machine(args.device)
    name = args.machine or default_machine_name(machine)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        json_path, junit_path = Path(tmp) / "benchmark.json", Path(tmp) / "junit.xml"
        code = run_suite(args, json_path, junit_path)
        if not json_path.exists():
            print(f"pytest exited {code} without results", file=sys.stderr)
            return code or 1
        raw = json.loads(json_path.read_text())
        skipped = skipped_cases(junit_path) if junit_path.exists() else {}
    result = {
        "name": name,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": machine,
        "versions": versions(),
        "settings": {
            "device": args.device,
            "models": args.models,
            "tests": args.tests,
            "timer": raw["benchmarks"][0]["options"]["timer"] if raw["benchmarks"] else None,
            "threads": args.threads or (1 if args.device == "cpu" else "torch default"),
            "load_before": load_before,
            "load_after": load_average(),
            "pytest_exit_code": code,
        },
        "summary": summarise(raw, skipped),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    write_doc()
    return code


if __name__ == "__main__":
    sys.exit(main())
