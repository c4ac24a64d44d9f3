"""Data-parallel key statistics: ``alphaedit.key_stats`` on the real model, 1 and 2 processes.

    pytest benchmarks/test_scale.py -s --clock wall
    INTERVENTIONS_BENCH_MODEL=/path/to/SmolLM2 pytest benchmarks/test_scale.py -s --clock wall

Each case launches ``torchrun --standalone --nproc_per_node=N`` on this file (N = 1, then 2),
one torch thread per process. Every rank loads the model, warms up, waits for the others, then
runs ``key_stats`` (layers 4-8, ``TOKENS`` tokens of the bundled corpus, nothing cached): the
wall time of that call is the pass, its shard's forwards plus the merge. The merge alone is timed
after it: the ``all_reduce`` of the five ``d_mlp x d_mlp`` float32 sums (SmolLM2: 1536², 9.4 MB
each) through gloo, median of ``MERGES``. ``extra_info`` (and stdout) holds the seconds, the
speed-up ``seconds(1) / seconds(2)``, the merge's share of the 2-process pass and the largest
difference between the two runs' statistics (relative to the largest entry of each layer's
moment). Nothing is asserted on times: on a machine with 2 cores, shared, the speed-up is bounded
by 2 and by whatever else runs there. pytest-benchmark's own round is the 2-process launch,
model loads included, timed by this process's clock: with the default ``--clock cpu`` it is this
process's CPU time (milliseconds, the ranks run elsewhere), so read the printed figures.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

LAYERS = [4, 5, 6, 7, 8]
TOKENS = 12_000
MERGES = 5
pytestmark = pytest.mark.real


def _worker(out: Path) -> None:
    """One rank of the benchmark (run by torchrun)."""
    torch.set_num_threads(1)
    import interventions as iv
    from interventions.models import load
    from interventions.recipes import alphaedit

    world = iv.distributed.world()  # initialised here from torchrun's environment
    model, tokenizer = load(os.environ.get("INTERVENTIONS_BENCH_MODEL"))
    options = dict(layers=LAYERS, cache=False, progress=False)
    alphaedit.key_stats(model, tokenizer, max_tokens=256, **options)  # warm-up, every rank
    if world.size > 1:
        torch.distributed.barrier()
    started = time.perf_counter()
    stats = alphaedit.key_stats(model, tokenizer, max_tokens=TOKENS, **options)
    seconds = time.perf_counter() - started
    merges = []
    for _ in range(MERGES):
        reducers = [iv.SecondMoment() for _ in LAYERS]
        for reducer, layer in zip(reducers, LAYERS, strict=True):
            reducer.count, reducer.total = stats.count, stats.moments[layer] * stats.count
        if world.size > 1:
            torch.distributed.barrier()
        started = time.perf_counter()
        iv.stats.all_reduce(reducers, world)
        merges.append(time.perf_counter() - started)
    if world.rank == 0:
        torch.save(stats.moments, out.with_suffix(".pt"))
        figures = dict(processes=world.size, seconds=seconds, tokens=stats.count)
        out.write_text(json.dumps(figures | dict(merge_seconds=statistics.median(merges))))


def _run(processes: int, folder: Path) -> dict:
    out = folder / f"scale-{processes}.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={processes}", __file__, str(out),
    ]  # fmt: skip
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(command, check=True, env=environment)
    figures = json.loads(out.read_text())
    figures["moments"] = torch.load(out.with_suffix(".pt"))
    return figures


def test_key_stats_on_one_and_two_processes(benchmark, tmp_path):
    one = _run(1, tmp_path)
    two = benchmark.pedantic(_run, args=(2, tmp_path), rounds=1, iterations=1)
    assert one["tokens"] == two["tokens"]
    difference = max(
        float((two["moments"][layer] - one["moments"][layer]).abs().max())
        / float(one["moments"][layer].abs().max())
        for layer in LAYERS
    )
    info = {
        "tokens": one["tokens"],
        "seconds_1": one["seconds"],
        "seconds_2": two["seconds"],
        "tokens_per_s_1": one["tokens"] / one["seconds"],
        "tokens_per_s_2": two["tokens"] / two["seconds"],
        "speedup": one["seconds"] / two["seconds"],
        "merge_seconds_2": two["merge_seconds"],
        "merge_share_2": two["merge_seconds"] / two["seconds"],
        "max_relative_difference": difference,
    }
    benchmark.extra_info.update(info)
    print(f"\nkey_stats, layers {LAYERS}, {one['tokens']} tokens, 1 vs 2 processes: {info}")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
