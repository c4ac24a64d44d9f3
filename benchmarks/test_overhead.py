"""Overhead of reading and editing ``attn.heads`` at every layer, against the bare model,
hand-written torch hooks and the peer libraries, in one process and one run.

Operations (each on the tiny random Llama and on SmolLM2-135M):

- ``forward``: the bare model, timed first (``bare``) and again after the model's other cases
  (``bare-again``): their mean is the denominator of every forward ratio, their difference
  the drift within the run;
- ``capture``: record ``attn.heads`` (the input of ``o_proj``, split into heads) at every
  layer, detached;
- ``steer``: add one vector to every head of ``attn.heads`` at every layer, return the logits;
- ``generate``: greedy generation of 32 new tokens with ``steer``'s edit at every layer, against
  the bare ``model.generate``.

Libraries: ``torch-hooks`` (a forward pre-hook on each ``o_proj``, registered and removed around
each call: the floor), ``interventions`` (``with iv.capture(...)`` / ``with iv.intervene(...)``
around each call, as the README writes it), ``interventions-attached`` (``iv.attach`` once,
outside the timing: only the hooks are timed), ``nnsight``, ``pyvene`` and ``transformer-lens``.
Peers wrap a private copy of the model (nnsight replaces ``model.forward``; TransformerLens forces
eager attention on the model it wraps) and build whatever they build once, outside the timing.

Each case is then timed again in pairs with the bare model (``pair_timer``; a generate case with
the bare ``generate``): the pairs' ratios go to ``extra_info["paired_ratios"]``, from which
``run.py`` reports a drift-free overhead with a confidence interval. The bare model is paired
with itself: the noise floor.

Before a case is timed it is checked: ``interventions`` against the hand-written hooks, every peer
against ``interventions`` (captured heads and steered logits allclose, generated tokens equal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

import interventions as iv

if TYPE_CHECKING:  # the fixtures' types; conftest is not imported at run time
    from conftest import Spec, Specs

SITES = "layers.*.attn.heads"
PEERS_HINT = "install the peers extra: pip install -e '.[peers]'"


# --- the libraries --------------------------------------------------------------------------------


class Runner:
    """One library doing the benchmarked operations on one model."""

    name = ""
    package = ""  # distribution whose version is recorded
    # its set-up (``prepared``) leaves hooks on the shared model: paired bare calls run outside it
    hooks_stay_on_model = False
    rtol, atol = 1.3e-6, 1e-5  # torch's float32 defaults: the same hooks on the same model

    def __init__(self, spec: Spec):
        self.spec = spec
        self.model = spec.model
        g = spec.geometry
        self.n_layers, self.n_heads, self.d_head = g.n_layers, g.n_heads, g.d_head
        self.flat_vector = spec.vector.repeat(self.n_heads)  # the vector at every head, flat

    @property
    def version(self) -> str:
        try:
            return version(self.package) if self.package else ""
        except PackageNotFoundError:
            return ""

    @contextmanager
    def prepared(self, op: str) -> Iterator[None]:
        """Set-up a library does once before many calls (not timed)."""
        yield

    def split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.n_heads, self.d_head))

    def forward(self) -> Tensor:
        raise NotImplementedError

    def capture(self) -> list[Tensor]:
        """``attn.heads`` of every layer, each ``[batch, seq, n_heads, d_head]``."""
        raise NotImplementedError

    def steer(self) -> Tensor:
        """Logits with ``vector`` added to every head at every layer."""
        raise NotImplementedError

    def generate(self) -> Tensor:
        """Token ids of a greedy generation with the ``steer`` edit at every layer."""
        raise NotImplementedError


class Bare(Runner):
    name = "bare"
    package = "transformers"

    def forward(self) -> Tensor:
        return self.model(self.spec.ids).logits

    def generate(self) -> Tensor:
        return self.model.generate(self.spec.ids, **self.spec.generate_kwargs)


class BareAgain(Bare):
    """The bare forward timed again at the end of the model's cases: drift within the run."""

    name = "bare-again"


class TorchHooks(Runner):
    """Forward pre-hooks on each ``self_attn.o_proj``, written by hand for this one model."""

    name = "torch-hooks"
    package = "torch"

    def __init__(self, spec: Spec):
        super().__init__(spec)
        self.o_projs = [layer.self_attn.o_proj for layer in self.model.model.layers]

    @contextmanager
    def hooked(self, hook: Callable) -> Iterator[None]:
        handles = [o_proj.register_forward_pre_hook(hook) for o_proj in self.o_projs]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def capture(self) -> list[Tensor]:
        heads = []

        def record(module: nn.Module, args: tuple) -> None:
            heads.append(self.split_heads(args[0].detach()))

        with self.hooked(record):
            self.model(self.spec.ids)
        return heads

    def add(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] + self.flat_vector, *args[1:])

    def steer(self) -> Tensor:
        with self.hooked(self.add):
            return self.model(self.spec.ids).logits

    def generate(self) -> Tensor:
        with self.hooked(self.add):
            return self.model.generate(self.spec.ids, **self.spec.generate_kwargs)


class Interventions(Runner):
    """This library as its README writes it: a ``with`` block around each call."""

    name = "interventions"
    package = "interventions"

    def capture(self) -> list[Tensor]:
        with iv.capture(self.model, SITES) as cache:
            self.model(self.spec.ids)
        return list(cache.values())

    def steer(self) -> Tensor:
        with iv.intervene(self.model, {SITES: iv.AddBias(self.spec.vector)}):
            return self.model(self.spec.ids).logits

    def generate(self) -> Tensor:
        with iv.intervene(self.model, {SITES: iv.AddBias(self.spec.vector)}):
            return self.model.generate(self.spec.ids, **self.spec.generate_kwargs)


class InterventionsAttached(Runner):
    """This library attached once with ``iv.attach`` before the timing: only hooks are timed."""

    name = "interventions-attached"
    package = "interventions"
    hooks_stay_on_model = True

    @contextmanager
    def prepared(self, op: str) -> Iterator[None]:
        if op == "capture":
            self.captures = {f"layers.{i}.attn.heads": iv.Capture() for i in range(self.n_layers)}
            plan: dict = self.captures
        else:
            plan = {SITES: iv.AddBias(self.spec.vector)}
        handle = iv.attach(self.model, plan)
        try:
            yield
        finally:
            handle.remove()

    def capture(self) -> list[Tensor]:
        for capture in self.captures.values():
            capture.clear()
        self.model(self.spec.ids)
        return [capture.value for capture in self.captures.values()]

    def steer(self) -> Tensor:
        return self.model(self.spec.ids).logits

    def generate(self) -> Tensor:
        return self.model.generate(self.spec.ids, **self.spec.generate_kwargs)


class NNsight(Runner):
    """nnsight's ``TransformersModel`` around a copy of the model; one trace per call."""

    name = "nnsight"
    package = "nnsight"

    def __init__(self, spec: Spec):
        super().__init__(spec)
        pytest.importorskip("nnsight", reason=f"nnsight is not installed ({PEERS_HINT})")
        from nnsight.modeling.transformers import TransformersModel

        self.lm = TransformersModel(spec.model_copy(), tokenizer=spec.tokenizer)

    # nnsight runs the body of a trace from its source: plain loops, no comprehensions.
    def capture(self) -> list[Tensor]:
        saved = []
        with self.lm.trace(self.spec.ids):
            for i in range(self.n_layers):
                saved.append(self.lm.model.layers[i].self_attn.o_proj.input.save())
        return [self.split_heads(x) for x in saved]

    def steer(self) -> Tensor:
        with self.lm.trace(self.spec.ids):
            for i in range(self.n_layers):
                o_proj = self.lm.model.layers[i].self_attn.o_proj
                o_proj.input = o_proj.input + self.flat_vector
            output = self.lm.output.save()
        return output.logits

    def generate(self) -> Tensor:
        with self.lm.generate(self.spec.ids, **self.spec.generate_kwargs) as tracer:
            for _ in tracer.iter[: self.spec.new_tokens]:
                for i in range(self.n_layers):
                    o_proj = self.lm.model.layers[i].self_attn.o_proj
                    o_proj.input = o_proj.input + self.flat_vector
            tokens = tracer.result.save()
        return tokens


class Pyvene(Runner):
    """pyvene's ``IntervenableModel`` over ``attention_value_output`` (the input of o_proj),
    built once per operation outside the timing, as pyvene is used."""

    name = "pyvene"
    package = "pyvene"

    def __init__(self, spec: Spec):
        super().__init__(spec)
        pytest.importorskip("pyvene", reason=f"pyvene is not installed ({PEERS_HINT})")
        self.copy = spec.model_copy()

    @contextmanager
    def prepared(self, op: str) -> Iterator[None]:
        import pyvene as pv

        def make() -> pv.Intervention:
            if op == "capture":
                return pv.CollectIntervention()
            return pv.AdditionIntervention(source_representation=self.flat_vector)

        config = pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(i, "attention_value_output", intervention=make())
                for i in range(self.n_layers)
            ]
        )
        self.intervenable = pv.IntervenableModel(config, self.copy)
        self.intervenable.disable_model_gradients()
        try:
            yield
        finally:
            del self.intervenable

    def capture(self) -> list[Tensor]:
        (_, heads), _ = self.intervenable({"input_ids": self.spec.ids}, unit_locations=None)
        return [self.split_heads(x) for x in heads]

    def steer(self) -> Tensor:
        _, output = self.intervenable({"input_ids": self.spec.ids}, unit_locations=None)
        return output.logits

    def generate(self) -> Tensor:
        # intervene_on_prompt=True with no unit_locations: every position of every forward
        _, tokens = self.intervenable.generate(
            {"input_ids": self.spec.ids},
            unit_locations=None,
            intervene_on_prompt=True,
            **self.spec.generate_kwargs,
        )
        return tokens


class TransformerLens(Runner):
    """TransformerLens 4's ``TransformerBridge`` around a copy of the model (it forces eager
    attention, so its numbers match to float32 rounding, not bit for bit); ``hook_z`` is
    ``attn.heads``."""

    name = "transformer-lens"
    package = "transformer-lens"
    rtol, atol = 1e-4, 1e-3  # eager attention against the model's sdpa

    def __init__(self, spec: Spec):
        super().__init__(spec)
        pytest.importorskip(
            "transformer_lens", reason=f"transformer_lens is not installed ({PEERS_HINT})"
        )
        from transformer_lens.model_bridge import TransformerBridge

        try:
            self.bridge = TransformerBridge.boot_transformers(
                spec.model_id,
                hf_model=spec.model_copy(),
                tokenizer=spec.tokenizer,
                device=spec.device,
            )
        except Exception as error:  # any failure to wrap the model is a skip, with its reason
            pytest.skip(
                f"transformer-lens cannot load {spec.name}: {type(error).__name__}: {error}"
            )
        self.names = [f"blocks.{i}.attn.hook_z" for i in range(self.n_layers)]
        self.hooks = [(name, self.add) for name in self.names]

    def add(self, z: Tensor, hook: object) -> Tensor:
        return z + self.spec.vector

    def capture(self) -> list[Tensor]:
        _, cache = self.bridge.run_with_cache(self.spec.ids, names_filter=self.names)
        return [cache[name] for name in self.names]

    def steer(self) -> Tensor:
        return self.bridge.run_with_hooks(self.spec.ids, fwd_hooks=self.hooks)

    def generate(self) -> Tensor:
        with self.bridge.hooks(fwd_hooks=self.hooks):
            return self.bridge.generate(
                self.spec.ids,
                max_new_tokens=self.spec.new_tokens,
                do_sample=False,
                stop_at_eos=False,
                verbose=False,
            )


RUNNERS: dict[str, type[Runner]] = {
    cls.name: cls
    for cls in (
        Bare,
        BareAgain,
        TorchHooks,
        Interventions,
        InterventionsAttached,
        NNsight,
        Pyvene,
        TransformerLens,
    )
}
LIBRARIES = [name for name in RUNNERS if not name.startswith("bare")]
OURS = ("interventions", "interventions-attached")


class Runners:
    """One runner per (model, library), built on first use; a skip is remembered."""

    def __init__(self) -> None:
        self._built: dict[tuple[str, str], Runner] = {}
        self._skipped: dict[tuple[str, str], str] = {}
        self._results: dict[tuple[str, str, str], object] = {}

    def get(self, spec: Spec, library: str) -> Runner:
        key = (spec.name, library)
        if key in self._skipped:
            pytest.skip(self._skipped[key])
        if key not in self._built:
            try:
                self._built[key] = RUNNERS[library](spec)
            except pytest.skip.Exception as skip:
                self._skipped[key] = str(skip.msg)
                raise
        return self._built[key]

    def result(self, spec: Spec, library: str, op: str) -> object:
        """What ``library`` computes for ``op`` (cached: the reference of other checks)."""
        key = (spec.name, library, op)
        if key not in self._results:
            runner = self.get(spec, library)
            with runner.prepared(op), torch.no_grad():
                self._results[key] = getattr(runner, op)()
        return self._results[key]


@pytest.fixture(scope="session")
def runners() -> Runners:
    return Runners()


# --- the cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    model: str
    op: str
    library: str

    def __str__(self) -> str:
        return f"{self.model}-{self.op}-{self.library}"


def _cases() -> list[Case]:
    cases = []
    for model in ("tiny", "real"):
        cases.append(Case(model, "forward", "bare"))
        for op in ("capture", "steer"):
            cases += [Case(model, op, library) for library in LIBRARIES]
        cases.append(Case(model, "generate", "bare"))
        cases += [Case(model, "generate", library) for library in LIBRARIES]
        cases.append(Case(model, "forward", "bare-again"))
    return cases


def reference(case: Case, spec: Spec, runners: Runners) -> tuple[str, object] | None:
    """What ``case`` must compute: ours checks against the hand-written hooks, every peer against
    ours. Computed before the case's own set-up, which may leave hooks on the shared model."""
    if case.library in ("bare", "bare-again", "torch-hooks"):
        return None
    name = "torch-hooks" if case.library in OURS else "interventions"
    return name, runners.result(spec, name, case.op)


def check(case: Case, spec: Spec, runner: Runner, runners: Runners, got: object) -> None:
    expected = reference(case, spec, runners)
    if expected is None:
        return
    name, value = expected
    what = f"{case.library} {case.op} on {spec.name} vs {name}"
    if case.op == "generate":
        assert torch.equal(got, value), f"{what}: generated tokens differ"
        if case.library == "interventions":  # the edit must act during generation
            bare = runners.result(spec, "bare", "generate")
            assert not torch.equal(got, bare), f"{what}: steering left the tokens unchanged"
        return
    got_list = got if isinstance(got, list) else [got]
    expected_list = value if isinstance(value, list) else [value]
    assert len(got_list) == len(expected_list), f"{what}: {len(got_list)} tensors"
    for a, b in zip(got_list, expected_list, strict=True):
        torch.testing.assert_close(a, b, rtol=runner.rtol, atol=runner.atol, msg=what)


@pytest.mark.parametrize("case", _cases(), ids=str)
def test_overhead(case: Case, specs: Specs, runners: Runners, timer, pair_timer, benchmark) -> None:
    spec = specs[case.model]
    runner = runners.get(spec, case.library)
    baseline = "generate" if case.op == "generate" else "forward"
    benchmark.group = f"{case.model} {baseline}"
    benchmark.extra_info.update(
        model=case.model,
        op=case.op,
        library=case.library,
        version=runner.version,
        batch=int(spec.ids.shape[0]),
        seq=int(spec.ids.shape[1]),
        new_tokens=spec.new_tokens if case.op == "generate" else 0,
        n_layers=spec.geometry.n_layers,
    )
    fn = getattr(runner, case.op)
    reference(case, spec, runners)  # computed (and cached) on the model as it is now
    if case.library == "interventions" and case.op == "generate":
        runners.result(spec, "bare", "generate")
    bare = getattr(runners.get(spec, "bare"), baseline)
    paired = case.library != "bare-again"  # the bare case is paired with itself: the noise floor
    with runner.prepared(case.op):
        with torch.no_grad():
            check(case, spec, runner, runners, fn())
        timer(spec, fn, case.op)
        if paired and not runner.hooks_stay_on_model:
            benchmark.extra_info["paired_ratios"] = pair_timer(spec, case.op, bare, fn)
    if paired and runner.hooks_stay_on_model:
        benchmark.extra_info["paired_ratios"] = pair_timer(
            spec, case.op, bare, fn, lambda: runner.prepared(case.op)
        )
