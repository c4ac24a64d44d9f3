"""Load time of the bundled SmolLM2-135M-Instruct, each in a fresh process as a user meets it.

- ``load-first``: ``interventions.models.load()`` into an empty cache folder: the GGUF is
  dequantised and the cache written.
- ``load-cached``: the same call again, reading the cache folder.

``extra_info`` holds the seconds of the ``load()`` call alone (``load_s``: it includes importing
transformers' model code, which any load pays, but not the interpreter start and ``import
interventions``) and of the whole process (``process_s``). The work runs in a child process,
which the default CPU clock of this one does not see: run with the wall clock, ``python -m pytest
benchmarks/test_load.py --models real --clock wall``; ~2 minutes on 2 cores.
"""

import os
import subprocess
import sys
import time

import pytest

from interventions.models import CACHE_ENV

SCRIPT = """
import time, torch
torch.set_num_threads(1)
from interventions.models import load
start = time.perf_counter()
load()
print(time.perf_counter() - start)
"""


@pytest.fixture(scope="module")
def cache_root(request, tmp_path_factory):
    if "real" not in request.config.getoption("--models"):
        pytest.skip("the load benchmark runs on the real model (--models real)")
    from interventions.models import bundled_gguf

    try:
        bundled_gguf()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return tmp_path_factory.mktemp("model-cache")


def timed_load(cache_root) -> dict[str, float]:
    env = {**os.environ, CACHE_ENV: str(cache_root)}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    process_s = time.perf_counter() - start
    return {"load_s": float(out.stdout.strip().splitlines()[-1]), "process_s": process_s}


@pytest.mark.parametrize("case", ["load-first", "load-cached"])
def test_load(benchmark, cache_root, case):
    benchmark.group = "load"
    entries = [p for p in cache_root.iterdir() if not p.name.startswith(".")]
    assert (entries == []) == (case == "load-first"), "the cases run in order: first, cached"
    seconds = benchmark.pedantic(timed_load, args=(cache_root,), rounds=1, iterations=1)
    benchmark.extra_info.update(seconds)
