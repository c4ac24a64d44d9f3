"""Command line: ``interventions COMMAND [options]`` (console script ``interventions``).

Commands:
  score-heads    per-head scores of one model on a data set, written to a run folder
  compare-heads  the same scores for two models (``--before``, ``--after``) on identical samples,
                 and their per-head differences

Every option can also come from ``--config run.yaml``, whose keys are the flag names
(``batch-size: 16``; ``batch_size`` works too). Flags given on the command line override the
file; the run folder's ``config.yaml`` holds the full resolved config and can be passed back.

A recipe adds its commands by appending a ``register(subparsers)`` function to ``COMMANDS``.
"""

import argparse
import gc
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from interventions import plot, report
from interventions.recipes import head_scores

log = logging.getLogger("interventions.cli")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CliError(ValueError):
    """A bad option or config value; printed as ``interventions COMMAND: error: ...``."""


# --- options: one table, used by argparse and by the config file -------------------------------


def _index_list(value: Any) -> list[int] | None:
    """``all`` -> None; ``"0,3,5-8"`` or a YAML list -> sorted unique ints."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("all", "*", "")):
        return None
    parts = value if isinstance(value, list) else str(value).split(",")
    indices: set[int] = set()
    for part in parts:
        text = str(part).strip()
        try:
            if "-" in text[1:]:
                lo, hi = text.split("-", 1)
                span = range(int(lo), int(hi) + 1)
            else:
                span = range(int(text), int(text) + 1)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected 'all' or indices like '0,3,5-8', got {value!r}"
            ) from None
        if not span or span.start < 0:
            raise argparse.ArgumentTypeError(
                f"expected 'all' or indices >= 0 like '0,3,5-8' (ranges low-high, both "
                f"included), got {value!r}"
            )
        indices.update(span)
    if not indices:
        raise argparse.ArgumentTypeError(f"expected 'all' or at least one index, got {value!r}")
    return sorted(indices)


def _int(value: Any) -> int:
    """An int from a flag's text or a YAML int. A YAML bool or float is refused (``int(True)``
    is 1 and ``int(1.5)`` is 1: a typo would silently become another value)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise argparse.ArgumentTypeError(
            f"expected an integer, got {value!r} ({type(value).__name__})"
        )
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def _positive_int(value: Any) -> int:
    number = _int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _optional_positive_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "all")):
        return None
    return _positive_int(value)


def _float(value: Any) -> float:
    """A finite number from a flag's text or a YAML number (a YAML bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise argparse.ArgumentTypeError(
            f"expected a number, got {value!r} ({type(value).__name__})"
        )
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def _text(value: Any) -> str:
    """A flag's text, or a YAML string (a YAML number, list or null is refused: quote it)."""
    if not isinstance(value, str):
        raise argparse.ArgumentTypeError(
            f"expected a string, got {value!r} ({type(value).__name__}); quote it in YAML"
        )
    return value


@dataclass(frozen=True)
class Option:
    flag: str  # without the leading "--"; the config key
    convert: Callable[[Any], Any]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    boolean: bool = False
    metavar: str | None = None  # None: the choices, or N for the integer options

    @property
    def key(self) -> str:
        return self.flag.replace("-", "_")


DATA_OPTIONS = [
    Option(
        "data",
        _text,
        str(head_scores.BUNDLED_DATA),
        "JSON or JSONL records: multiple choice (question, choices {text, label}, "
        "answerKey) or one of input/text/question (default: the bundled commonsense set)",
        metavar="PATH",
    ),
    Option(
        "max-samples",
        _optional_positive_int,
        None,
        "score a random subset of this many records (chosen with --seed; default: all)",
    ),
    Option("seed", _int, 0, "seed of the subset choice and of torch"),
    Option("batch-size", _positive_int, 8, "prompts per forward"),
    Option("max-length", _positive_int, 512, "truncate prompts to this many tokens"),
    Option(
        "device",
        _text,
        "auto",
        "cpu, cuda, cuda:1, ... (auto: cuda when available)",
        metavar="DEVICE",
    ),
    Option("dtype", _text, "float32", "model dtype", choices=tuple(DTYPES)),
    Option(
        "threads",
        _positive_int,
        1,
        "torch CPU threads while loading and scoring (on a shared 2-core machine, two torch "
        "threads made a forward 19x slower than one)",
    ),
]
SCORE_OPTIONS = [
    Option(
        "layers", _index_list, None, "layers to score: 'all' or e.g. '0,3,10-15'", metavar="LIST"
    ),
    Option("heads", _index_list, None, "heads to score: 'all' or e.g. '0-3'", metavar="LIST"),
    Option("query-mode", _text, "last_token", "query tokens", choices=head_scores.QUERY_MODES),
    Option("norm", _text, "zscore", "layer-wise normalisation", choices=head_scores.NORMS),
    Option(
        "rank-scope",
        _text,
        "layer",
        "ranks within each layer or over all heads",
        choices=head_scores.RANK_SCOPES,
    ),
    Option("lambda-ent", _float, 1.0, "weight of rank(S_ent) in S_combined", metavar="X"),
    Option("lambda-task", _float, 1.0, "weight of rank(S_task) in S_combined", metavar="X"),
    Option(
        "exclude-first-token", bool, True, "leave position 0 out of the query tokens", boolean=True
    ),
    Option(
        "exclude-sink",
        bool,
        True,
        "entropy and task mass over the keys after the first (sink) token",
        boolean=True,
    ),
    Option("normalize-entropy", bool, True, "divide entropy by log(#keys)", boolean=True),
    Option("plots", bool, True, "write heatmaps (needs matplotlib)", boolean=True),
    Option("progress", bool, True, "progress bar over batches", boolean=True),
]
SCORE_HEADS_OPTIONS = [
    Option(
        "model",
        _text,
        "smollm2-135m",
        "HF id, local folder or .gguf file (default: the bundled SmolLM2-135M-Instruct)",
        metavar="MODEL",
    ),
    *DATA_OPTIONS,
    *SCORE_OPTIONS,
    Option("top-k", _positive_int, 10, "heads in topk_global.json"),
    Option("top-k-per-layer", _positive_int, 3, "heads per layer in topk_per_layer.json"),
    Option("out", _text, None, "run folder (default: runs/score-heads-<time>)", metavar="DIR"),
]
COMPARE_HEADS_OPTIONS = [
    Option(
        "before",
        _text,
        "smollm2-135m",
        "model before fine-tuning (HF id, folder, .gguf)",
        metavar="MODEL",
    ),
    Option(
        "after",
        _text,
        None,
        "model after fine-tuning (HF id, folder, .gguf); required",
        metavar="MODEL",
    ),
    *DATA_OPTIONS,
    *SCORE_OPTIONS,
    Option("top-movers", _positive_int, 10, "heads listed per metric in comparison.json"),
    Option("out", _text, None, "run folder (default: runs/compare-heads-<time>)", metavar="DIR"),
]


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Flags default to 'not given' so that a config file can fill them in."""
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="YAML",
        help="YAML file whose keys are these flags (flags override it)",
    )
    for option in options:
        given = option.default is None or "(default" in option.help
        default = "" if given else f" (default: {option.default})"
        if option.boolean:
            parser.add_argument(
                f"--{option.flag}",
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=option.help + default,
            )
        else:
            parser.add_argument(
                f"--{option.flag}",
                type=option.convert,
                choices=option.choices,
                default=argparse.SUPPRESS,
                help=option.help + default,
                metavar=None if option.choices else (option.metavar or "N"),
            )


def resolve(args: argparse.Namespace, options: Sequence[Option]) -> dict[str, Any]:
    """Defaults, then the ``--config`` file, then the flags given. Keys: the flag names."""
    by_key = {o.key: o for o in options}
    given = {k: v for k, v in vars(args).items() if k in by_key}
    config: dict[str, Any] = {}
    if "config" in args:
        config = _read_config(args.config, by_key)
    values = {o.flag: o.default for o in options}
    for key, value in {**config, **given}.items():
        values[by_key[key].flag] = value
    return values


def _read_config(path: Path, by_key: dict[str, Option]) -> dict[str, Any]:
    if not path.is_file():
        raise CliError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CliError(f"{path}: invalid YAML ({error})") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected a mapping of flag names to values")
    config = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in by_key:
            valid = ", ".join(o.flag for o in by_key.values())
            raise CliError(f"{path}: unknown key {raw_key!r}; valid keys: {valid}")
        option = by_key[key]
        if option.boolean:
            if not isinstance(value, bool):
                raise CliError(f"{path}: key {raw_key!r} must be true or false, got {value!r}")
        elif value is not None or option.default is not None:
            try:
                value = option.convert(value)
            except argparse.ArgumentTypeError as error:
                raise CliError(f"{path}: key {raw_key!r}: {error}") from None
            if option.choices and value not in option.choices:
                raise CliError(
                    f"{path}: key {raw_key!r} is {value!r}; choose from {list(option.choices)}"
                )
        config[key] = value
    return config


# --- shared steps --------------------------------------------------------------------------------


def load_model(name: str, dtype: str, device: str) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` via ``interventions.models.load`` (tests replace this)."""
    from interventions.models import load

    return load(name, dtype=DTYPES[dtype], device=device)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _records(cfg: dict[str, Any]) -> list[head_scores.Prompt]:
    """The records to score; read before the run folder is made, so a bad file leaves none."""
    path = cfg["data"]
    try:
        records = head_scores.load_records(path)
    except UnicodeDecodeError as error:
        raise CliError(
            f"--data {path}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except FileNotFoundError:
        raise  # its message names the file already
    except OSError as error:
        raise CliError(f"--data {path}: cannot read it ({error.strerror})") from None
    n = cfg["max-samples"]
    if n is not None and n < len(records):
        chosen = sorted(random.Random(cfg["seed"]).sample(range(len(records)), n))
        records = [records[i] for i in chosen]
    return records


def _check_out(out: Path) -> None:
    """Refuse a run folder that cannot be made, before anything is written."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is an existing file, not a folder; choose another --out")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise CliError(f"--out {out}: {existing} is a file, so the folder cannot be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"--out {out}: {existing} is not writable; choose another --out")


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """``n`` torch threads for the block, then the previous number again."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _score(model: torch.nn.Module, tokenizer: Any, records: list, cfg: dict[str, Any]):
    torch.manual_seed(cfg["seed"])
    return head_scores.score(
        model,
        tokenizer,
        records,
        batch_size=cfg["batch-size"],
        query_mode=cfg["query-mode"],
        exclude_first_token=cfg["exclude-first-token"],
        exclude_sink=cfg["exclude-sink"],
        normalize_entropy=cfg["normalize-entropy"],
        norm=cfg["norm"],
        lambda_ent=cfg["lambda-ent"],
        lambda_task=cfg["lambda-task"],
        rank_scope=cfg["rank-scope"],
        layers=cfg["layers"],
        heads=cfg["heads"],
        max_length=cfg["max-length"],
        progress=cfg["progress"],
    )


def _start_run(command: str, cfg: dict[str, Any]) -> tuple[Path, Callable[[], None]]:
    """Check what can fail early, create the run folder, write config.yaml, open run.log.
    Returns the folder and the function that closes run.log."""
    if cfg["plots"]:
        plot.require_matplotlib()  # fail now, not after scoring, when matplotlib is missing
    if cfg["device"].startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {cfg['device']}: CUDA is not available on this machine")
    out = Path(cfg["out"] or f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg["out"] = str(out)
    handler = logging.FileHandler(out / "run.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("interventions")
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    def end() -> None:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()

    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    log.info("interventions %s, config: %s", command, cfg)
    versions = {p: _version(p) for p in ("torch", "transformers", "interventions")}
    log.info("device %s, versions %s", _device(cfg["device"]), versions)
    return out, end


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _log_top(table: head_scores.HeadScores, label: str) -> None:
    stats = {k: v for k, v in table.stats.items() if k != "notes"}
    log.info("%s stats: %s", label, stats)
    for row in table.top_k(5):
        log.info(
            "%s top head: layer %d head %d combined %.1f",
            label,
            row["layer"],
            row["head"],
            row["combined"],
        )


# --- commands -------------------------------------------------------------------------------------


def run_score_heads(cfg: dict[str, Any]) -> Path:
    records = _records(cfg)
    out, end_run = _start_run("score-heads", cfg)
    try:
        log.info("data: %d records from %s", len(records), cfg["data"])
        with _torch_threads(cfg["threads"]):
            model, tokenizer = load_model(cfg["model"], cfg["dtype"], _device(cfg["device"]))
            table = _score(model, tokenizer, records, cfg)
        table.config["model"] = cfg["model"]
        report.save_table(
            table,
            out,
            top_k=cfg["top-k"],
            top_k_per_layer=cfg["top-k-per-layer"],
            plots=cfg["plots"],
        )
        _log_top(table, "score-heads")
        log.info("wrote %s", out)
    except Exception:
        log.exception("failed")  # the traceback goes to run.log; main prints the message
        raise
    finally:
        end_run()
    return out


def run_compare_heads(cfg: dict[str, Any]) -> Path:
    if cfg["after"] is None:
        raise CliError("--after MODEL is required (the fine-tuned model to compare)")
    records = _records(cfg)
    out, end_run = _start_run("compare-heads", cfg)
    try:
        log.info("data: %d records from %s", len(records), cfg["data"])
        tables = {}
        for side in ("before", "after"):
            log.info("scoring %s model %s", side, cfg[side])
            with _torch_threads(cfg["threads"]):
                model, tokenizer = load_model(cfg[side], cfg["dtype"], _device(cfg["device"]))
                tables[side] = _score(model, tokenizer, records, cfg)
            tables[side].config["model"] = cfg[side]
            report.save_json(tables[side], out / f"{side}.json")
            _log_top(tables[side], side)
            del model, tokenizer
            gc.collect()
        comparison = head_scores.compare(tables["before"], tables["after"], top=cfg["top-movers"])
        report.save_comparison(comparison, out, plots=cfg["plots"])
        for row in comparison.movers["out_resid"][:5]:
            log.info(
                "top mover (out_resid): layer %d head %d ratio %.3f",
                row["layer"],
                row["head"],
                row["ratio"],
            )
        log.info(
            "spearman(pre combined, |change|): %s", comparison.spearman["combined_vs_abs_change"]
        )
        log.info("wrote %s", out)
    except Exception:
        log.exception("failed")  # the traceback goes to run.log; main prints the message
        raise
    finally:
        end_run()
    return out


def _register_head_commands(subparsers: argparse._SubParsersAction) -> None:
    score = subparsers.add_parser(
        "score-heads",
        help="score every attention head on a data set",
        description="Per-head scores (S_out, S_ent, S_task, fused ranks) from one pass over a "
        "data set; writes config.yaml, scores_*.csv, topk_*.json, heatmaps and run.log.",
    )
    add_options(score, SCORE_HEADS_OPTIONS)
    score.set_defaults(options=SCORE_HEADS_OPTIONS, run=run_score_heads)
    compare = subparsers.add_parser(
        "compare-heads",
        help="compare head scores of two models on identical samples",
        description="Scores --before and --after on the same samples; writes before.json, "
        "after.json, comparison.json, comparison_heatmap.png, config.yaml and run.log.",
    )
    add_options(compare, COMPARE_HEADS_OPTIONS)
    compare.set_defaults(options=COMPARE_HEADS_OPTIONS, run=run_compare_heads)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_register_head_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interventions",
        description="Read and edit what happens inside HuggingFace transformer language models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for bad data, options or config)."""
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve(args, args.options)
        out = args.run(cfg)
    except (CliError, head_scores.DataError, FileNotFoundError, ValueError) as error:
        print(f"interventions {args.command}: error: {error}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
