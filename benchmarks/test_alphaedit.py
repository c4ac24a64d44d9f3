"""AlphaEdit speed and memory on the real model.

    pytest benchmarks/test_alphaedit.py -s
    INTERVENTIONS_BENCH_MODEL=/path/to/SmolLM2 pytest benchmarks/test_alphaedit.py -s

1. Key statistics (``alphaedit.key_stats``, layers 4-8, nothing cached) in tokens/s, as a ratio
   to a plain forward of the whole model over the same token rows (pieces of 128 tokens, batches
   of 8, padding counted by neither). The statistics stop after the last edited layer, so the
   ratio can exceed 1. Both are timed ``ROUNDS`` times, interleaved, and compared by medians.
2. Seconds per edit at batch 1 and batch 10 (``Editor.edit`` with default hyperparameters: target
   values, keys, the closed-form solve per layer, the keys recomputed after the batch). The
   editor and its prefixes are built before the clock starts; every edit is reverted after.
3. Peak memory of an edit of 10 requests, two ways: the rise of the process's peak resident set
   size (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after minus before; 0 when the edit stays
   under an earlier peak, e.g. model loading), and the peak of the current resident set size
   above its value at the start, sampled every 2 ms from ``/proc/self/statm`` by a thread (Linux).

Figures go to ``benchmark.extra_info`` (``--benchmark-json``) and are printed.
"""

import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from interventions import text
from interventions.recipes import alphaedit

LAYERS = [4, 5, 6, 7, 8]
STATS_TOKENS = 3000
PIECE, BATCH = 128, 8
ROUNDS = 3
pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def stats(bench_model):
    model, tokenizer = bench_model
    return alphaedit.key_stats(
        model, tokenizer, layers=LAYERS, max_tokens=STATS_TOKENS, cache=False, progress=False
    )


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def _rows(tokenizer, max_tokens: int) -> list[list[int]]:
    """The corpus cut into pieces of ``PIECE`` tokens, as ``key_stats`` cuts it."""
    return text.chunks(tokenizer, alphaedit.load_corpus(), PIECE, max_tokens)


def _plain_forward(model, rows: list[list[int]], pad: int) -> None:
    for start in range(0, len(rows), BATCH):
        part = rows[start : start + BATCH]
        width = max(len(r) for r in part)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in part])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in part])
        model(input_ids=ids, attention_mask=mask)


def test_key_stats_throughput(benchmark, bench_model):
    model, tokenizer = bench_model
    rows = _rows(tokenizer, STATS_TOKENS)
    tokens = sum(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def stats_pass():
        return alphaedit.key_stats(
            model, tokenizer, layers=LAYERS, max_tokens=STATS_TOKENS, cache=False, progress=False
        )

    def plain():
        _plain_forward(model, rows, pad)

    counted = stats_pass().count  # warm-up, and the number of tokens the statistics saw
    plain()
    times: dict[str, list[float]] = {"stats": [], "plain": []}
    for _ in range(ROUNDS):
        times["stats"].append(_timed(stats_pass))
        times["plain"].append(_timed(plain))
    median = {k: statistics.median(v) for k, v in times.items()}
    info = {
        "tokens_stats": counted,
        "tokens_plain": tokens,
        "stats_tokens_per_s": counted / median["stats"],
        "plain_tokens_per_s": tokens / median["plain"],
    }
    info["stats_over_plain"] = info["stats_tokens_per_s"] / info["plain_tokens_per_s"]
    benchmark.extra_info.update(info)
    print(f"\nkey statistics, layers {LAYERS}, median of {ROUNDS}: {info}")
    benchmark.pedantic(stats_pass, rounds=1, iterations=1)


def _edit_seconds(model, tokenizer, stats, requests) -> float:
    editor = alphaedit.Editor(model, tokenizer, stats)
    editor.prefixes  # noqa: B018  (generate the prefixes before the clock starts)
    start = time.perf_counter()
    delta = editor.edit(requests)
    seconds = time.perf_counter() - start
    delta.revert(model)
    return seconds


def test_seconds_per_edit(benchmark, bench_model, stats):
    model, tokenizer = bench_model
    requests = alphaedit.load_requests()
    one = _edit_seconds(model, tokenizer, stats, requests[:1])
    ten = _edit_seconds(model, tokenizer, stats, requests[1:11])
    info = {"seconds_per_edit_batch_1": one, "seconds_per_edit_batch_10": ten / 10}
    benchmark.extra_info.update(info)
    print(f"\nAlphaEdit seconds per edit (default hyperparameters): {info}")
    benchmark.pedantic(
        lambda: _edit_seconds(model, tokenizer, stats, requests[:1]), rounds=1, iterations=1
    )


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """Samples the current resident set size in a thread; ``peak`` is the most seen."""

    def __init__(self, every: float = 0.002):
        self.every = every
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.every)

    def __enter__(self) -> "RssPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_edit_peak_memory(benchmark, bench_model, stats):
    model, tokenizer = bench_model
    requests = alphaedit.load_requests()[:10]
    editor = alphaedit.Editor(model, tokenizer, stats)
    editor.prefixes  # noqa: B018
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rss_before = _rss_bytes()
    with RssPeak() as sampler:
        delta = editor.edit(requests)
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    delta.revert(model)
    info = {
        "ru_maxrss_delta_mib": (maxrss_after - maxrss_before) / 1024,
        "sampled_rss_peak_above_start_mib": (sampler.peak - rss_before) / 2**20,
        "rss_at_start_mib": rss_before / 2**20,
    }
    benchmark.extra_info.update(info)
    print(f"\nAlphaEdit memory, one batch of 10 edits: {info}")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
