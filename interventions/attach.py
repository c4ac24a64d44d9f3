"""Attaching plans to a model: the only module that registers torch hooks.

A plan is a plain ``dict[site, Intervention]``. ``attach`` turns it into hooks on the modules
the adapter names and returns a handle; ``intervene`` and ``capture`` are context managers that
remove every hook on exit, also after an exception.

Stopping early (``capture(..., stop=True)``, ``intervene(..., stop_after=site)``): a hook that
runs after every needed site raises a private control exception, which ends the forward there
(later blocks and the unembedding never run) and which the ``with`` block swallows on exit.
"""

import difflib
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from interventions.adapters import Adapter, Geometry, adapter, causal_lm
from interventions.files import load_tensors, save_tensors
from interventions.ops import Capture, Intervention, Positions, Step, is_reducer
from interventions.sites import (
    HEAD_KINDS,
    LAYER_KINDS,
    MODEL_KINDS,
    PROJECTION_KINDS,
    Site,
    SiteLike,
    expand,
    parse,
)

if TYPE_CHECKING:  # stats builds on attach (tally captures)
    from interventions.stats import Reducer

Plan = Mapping[SiteLike, Intervention]


def normalize_plan(
    model: nn.Module, plan: Plan, geometry: Geometry | None = None
) -> dict[Site, Intervention]:
    """Expand patterns, validate every site and intervention against the model."""
    if not isinstance(plan, Mapping):
        raise TypeError(f"a plan is a dict {{site: Intervention}}, got {type(plan).__name__}")
    geometry = geometry or adapter(model).geometry(model.config)
    sites: dict[Site, Intervention] = {}
    for key, intervention in plan.items():
        if not isinstance(key, (str, Site)):
            raise TypeError(
                f"plan key {key!r} is a {type(key).__name__}; a plan's keys are site names "
                "such as 'layers.3.attn.heads' (or iv.Site values)"
            )
        if not isinstance(intervention, Intervention):
            raise TypeError(
                f"plan[{key!r}] is a {type(intervention).__name__}; expected an Intervention "
                "(iv.AddBias, iv.Capture, ... or your own subclass)"
            )
        expanded = expand(key, geometry.n_layers)
        if isinstance(intervention, Capture) and len(expanded) > 1:
            raise ValueError(
                f"one Capture placed at {len(expanded)} sites ({key!r}) would mix their "
                "records; use iv.capture(model, sites) or one Capture per site"
            )
        for site in expanded:
            if site in sites:
                raise ValueError(
                    f"site {site} appears twice in the plan; combine with iv.Compose(a, b)"
                )
            intervention.check(site, geometry)
            sites[site] = intervention
    return sites


def cached_length(args: tuple, kwargs: Mapping[str, Any]) -> int:
    """How many tokens a forward's KV cache already holds (0 for a new sequence).

    The cache is found by what it is, not by its keyword: transformers 5.24 passes it as
    ``cache=``, earlier releases as ``past_key_values=``, and a keyword found by name alone
    turns every decoding step into a new sequence. ``cache_position`` (the absolute position of
    the first new token), where the caller gives one, is the most direct answer.
    """
    position = kwargs.get("cache_position")
    if isinstance(position, Tensor) and position.numel() > 0:
        return int(position.reshape(-1)[0])
    for value in (*kwargs.values(), *args[1:]):
        length = _cache_length(value)
        if length is not None:
            return length
    return 0


def _cache_length(value: Any) -> int | None:
    """Tokens held by ``value`` if it is a KV cache (a transformers ``Cache`` or a legacy tuple of
    per-layer ``(key, value)`` tensors), else None."""
    if value is None or isinstance(value, (Tensor, bool, int, float, str)):
        return None
    get_seq_length = getattr(type(value), "get_seq_length", None)  # every transformers Cache
    if get_seq_length is not None:
        return int(get_seq_length(value))
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], (tuple, list)):
        first = value[0]
        if first and isinstance(first[0], Tensor) and first[0].ndim == 4:
            return int(first[0].shape[-2])  # [batch, kv_heads, seq, d_head]
    return None


def guard_hooks_under_compile(*, discard_compiled: bool = True) -> None:
    """Make ``torch.compile`` see hooks come: a compiled model then runs the plan.

    By default dynamo does not guard on a module's hooks while it has none
    (``skip_nnmodule_hook_guards``), so code compiled before a plan was attached keeps running
    without it, silently. With the guards on, a forward whose hooks differ from those it was
    compiled with is compiled again (once per plan: the same plan attached again reuses its
    graph). Code compiled before the guards were switched on has none, so it is discarded, once
    per process (``torch._dynamo.reset()``). Nothing happens before torch.compile is imported:
    a process that never compiles pays nothing.
    """
    dynamo = sys.modules.get("torch._dynamo")
    config = getattr(dynamo, "config", None)
    if config is not None and getattr(config, "skip_nnmodule_hook_guards", False):
        config.skip_nnmodule_hook_guards = False
        if discard_compiled:
            dynamo.reset()


class Attachment:
    """Hooks of one plan on one model. ``remove()`` takes every hook off (idempotent)."""

    def __init__(self, model: nn.Module, plan: Plan):
        table = adapter(model)
        geometry = table.geometry(model.config)
        self._attach(model, table, geometry, normalize_plan(model, plan, geometry))

    @classmethod
    def _of_checked(
        cls,
        model: nn.Module,
        table: Adapter,
        geometry: Geometry,
        sites: dict[Site, Intervention],
        stop_after: Site | None = None,
    ) -> "Attachment":
        """An attachment of sites already expanded and checked (``capture`` builds its own);
        with ``stop_after``, every forward ends once that site's hooks have run."""
        self = cls.__new__(cls)
        self._attach(model, table, geometry, sites, stop_after)
        return self

    def _attach(
        self,
        model: nn.Module,
        table: Adapter,
        geometry: Geometry,
        sites: dict[Site, Intervention],
        stop_after: Site | None = None,
    ) -> None:
        self.model = causal_lm(model)
        self.adapter = table
        self.geometry = geometry
        self.plan = sites
        self.step: Step | None = None
        self._handles: list[RemovableHandle] = []
        self._last_ids: Tensor | None = None
        self._resid_pre: dict[int, Tensor] = {}
        self._saved_attn: str | None = None
        self._blocks = list(table.blocks(model))  # a list: ModuleList indexing costs ~3 µs
        self._counts_from_end = any(i.counts_from_end for i in self.plan.values())
        if any(site.kind in HEAD_KINDS for site in self.plan):
            table.check_geometry(model, geometry)
        guard_hooks_under_compile()
        try:
            self._handles.append(
                self.model.register_forward_pre_hook(self._begin_forward, with_kwargs=True)
            )
            if any(site.kind == "resid_mid" for site in self.plan):
                self._handles.append(self.model.register_forward_hook(self._end_forward))
            if any(site.kind == "attn.pattern" for site in self.plan):
                self._use_eager_attention()
            # embed first: it shares the first block's input with layers.0.resid_pre
            for site, intervention in sorted(self.plan.items(), key=lambda s: s[0].kind != "embed"):
                self._register(site, intervention)
            if stop_after is not None:  # last: hooks of one module run in registration order
                self._register_stop(stop_after)
        except BaseException:
            self.remove()
            raise

    # --- lifecycle ------------------------------------------------------------------------------
    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        if self._handles:  # compiled inside the block: from now on, compile with hook guards
            guard_hooks_under_compile(discard_compiled=False)
        self._handles.clear()
        self._resid_pre.clear()
        if self._saved_attn is not None:
            self.model.config._attn_implementation = self._saved_attn
            self._saved_attn = None

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _use_eager_attention(self) -> None:
        # Probabilities exist only in eager attention; switch for this attachment alone.
        current = getattr(self.model.config, "_attn_implementation", None)
        if current not in (None, "eager"):
            self._saved_attn = current
            self.model.config._attn_implementation = "eager"

    # --- where are we in the sequence ----------------------------------------------------------
    def _begin_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = kwargs.get("input_ids")
        if tokens is None:
            tokens = args[0] if args else kwargs.get("inputs_embeds")
        if tokens is None:
            return
        length = tokens.shape[1]
        past = cached_length(args, kwargs)
        last, previous = self._last_ids, self.step
        self._last_ids = tokens if tokens.ndim == 2 else None
        if past > 0 and previous is not None:  # cached continuation
            self.step = Step(
                past, length, previous.prompt_length, [*previous.spans, (past, past + length)]
            )
        elif past > 0:
            self.step = Step(past, length, past, [(past, past + length)])
        elif previous is not None and self._recomputes(last, tokens, kwargs):
            # generate(use_cache=False): the whole sequence again, plus new tokens
            start = previous.offset + previous.length
            self.step = Step(0, length, previous.prompt_length, [*previous.spans, (start, length)])
        else:
            self.step = Step.single(length)
            if self._counts_from_end:
                self.step.prompt_ends = _right_padded_ends(kwargs.get("attention_mask"), length)
            for intervention in self.plan.values():
                intervention.start_sequence()

    @staticmethod
    def _recomputes(last: Tensor | None, tokens: Tensor, kwargs: dict) -> bool:
        return (
            kwargs.get("use_cache") is False
            and last is not None
            and tokens.ndim == 2
            and last.shape[0] == tokens.shape[0]
            and last.shape[1] < tokens.shape[1]
            and torch.equal(tokens[:, : last.shape[1]], last)
        )

    def _end_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._resid_pre.clear()

    def _step_for(self, x: Tensor) -> Step:
        return self.step if self.step is not None else Step.single(x.shape[1])

    # --- hooks -----------------------------------------------------------------------------------
    def _register(self, site: Site, intervention: Intervention) -> None:
        a, kind = self.adapter, site.kind
        a.refuse(kind, self.model.config)
        if kind == "attn.heads":  # first: the site most plans use, at every layer
            self._on_input(self._in_block(site, a.o_proj), self._head_editor(intervention))
            return
        if kind in PROJECTION_KINDS:
            self._register_projection(site, intervention)
            return
        if site.module_path is not None:
            self._register_module_site(site, intervention)
            return
        if kind == "attn.pattern":
            module = self._in_block(site, a.attn)
            if _takes_keyword(module, "output_attentions"):
                # before transformers 4.52 attention returns probabilities only when asked
                self._handles.append(
                    module.register_forward_pre_hook(_ask_for_weights, with_kwargs=True)
                )
            self._on_output(module, self._pattern_editor(intervention), _attention_weights)
            return

        def edit(x: Tensor) -> Tensor:
            return intervention.apply(x, self._step_for(x))

        if kind == "embed":  # what the blocks receive: positions and scales included
            self._on_input(self._blocks[0], edit)
        elif kind == "final_norm":
            self._on_output(a.module(self.model, a.final_norm), edit)
        elif kind == "logits" and a.logits_at_output:
            self._handles.append(self.model.register_forward_hook(_output_logits_editor(edit)))
        elif kind == "logits":
            self._on_output(self._unembedding(), edit)
        elif kind == "resid_pre":
            self._on_input(self._blocks[site.layer], edit)
        elif kind == "attn.in":
            self._on_what_reads(site, a.attn_norm, a.attn, edit)
        elif kind == "attn.out":
            self._on_output(self._in_block(site, a.attn_out_path), edit)
        elif kind == "resid_mid":
            self._register_resid_mid(site.layer, edit)
        elif kind == "mlp.in":
            self._on_what_reads(site, a.mlp_norm, a.mlp, edit)
        elif kind == "mlp.act":
            self._on_input(self._in_block(site, a.down_proj), edit)
        elif kind == "mlp.out":
            self._on_output(self._in_block(site, a.mlp_out_path), edit)
        elif kind == "resid_post":
            self._on_output(self._blocks[site.layer], edit)
        else:  # pragma: no cover - Site validates kinds
            raise ValueError(f"no hook for site kind {kind!r}")

    def _on_what_reads(
        self, site: Site, norm: str | None, reader: str, edit: Callable[[Tensor], Tensor]
    ) -> None:
        """``attn.in`` / ``mlp.in``: the output of the pre-norm, or where ``reader`` takes its
        input in a block without one (post-norm only)."""
        if norm is None:
            self._on_input(self._in_block(site, reader), edit)
        else:
            self._on_output(self._in_block(site, norm), edit)

    def _in_block(self, site: Site, path: str) -> nn.Module:
        return self.adapter.submodule(self._blocks[site.layer], path)

    def _head_editor(self, intervention: Intervention) -> Callable[[Tensor], Tensor]:
        n_heads, d_head = self.geometry.n_heads, self.geometry.d_head

        def edit_heads(x: Tensor) -> Tensor:
            # unflatten/flatten: the same reshape as "b t (h d) -> b t h d", at a third of
            # einops' per-call cost on this hot path
            heads = x.unflatten(-1, (n_heads, d_head))
            y = intervention.apply(heads, self._step_for(x))
            return x if y is heads else y.flatten(-2)

        return edit_heads

    def _register_projection(self, site: Site, intervention: Intervention) -> None:
        """``attn.q`` / ``attn.k`` / ``attn.v``: the projection's output split into heads, or
        its slice of a fused projection whose output is [queries | keys | values]."""
        a, g = self.adapter, self.geometry
        which = site.kind[-1]
        heads = g.n_heads if which == "q" else g.n_kv_heads
        width = heads * g.d_head
        own = {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj}[which]
        if own is not None:
            path, start, total = own, 0, width
        else:  # refuse() lets only a concatenated fused projection through
            path, total = a.qkv_proj, (g.n_heads + 2 * g.n_kv_heads) * g.d_head
            start = {"q": 0, "k": g.n_heads, "v": g.n_heads + g.n_kv_heads}[which] * g.d_head
        module = self._in_block(site, path)
        produced = self._out_features(module)
        if produced is not None and produced != total:
            layout = (
                f"{heads} {'query' if which == 'q' else 'KV'} heads"
                if own is not None
                else f"{g.n_heads} query heads + 2 x {g.n_kv_heads} KV heads"
            )
            raise ValueError(
                f"{site} on {a.name}: {path} produces {produced} features, but the config gives "
                f"{layout} of d_head {g.d_head} = {total}; fix the adapter's config_keys"
            )
        stop = start + width

        def edit_heads(x: Tensor) -> Tensor:
            part = x if stop - start == x.shape[-1] else x[..., start:stop]
            split = rearrange(part, "b t (h d) -> b t h d", h=heads)
            y = intervention.apply(split, self._step_for(x))
            if y is split:
                return x
            merged = rearrange(y, "b t h d -> b t (h d)")
            if part is x:
                return merged
            return torch.cat([x[..., :start], merged, x[..., stop:]], dim=-1)

        self._on_output(module, edit_heads)

    def _out_features(self, module: nn.Module) -> int | None:
        features = getattr(module, "out_features", None)
        stored = module._parameters.get("weight")
        if not isinstance(features, int) and stored is not None:  # Conv1D; the meta device too
            features = stored.shape[1 if self.adapter.conv1d else 0]
        return features if isinstance(features, int) else None

    def _register_module_site(self, site: Site, intervention: Intervention) -> None:
        """The escape hatch: a module's first input or its output, by path."""
        module = module_at(self.model, site.module_path)

        def edit(x: Tensor) -> Tensor:
            return intervention.apply(x, self._step_for(x))

        if site.module_end == "output":
            self._handles.append(module.register_forward_hook(_module_output_hook(site, edit)))
        else:
            hook = _module_input_hook(site, edit)
            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _pattern_editor(self, intervention: Intervention) -> Callable[[Tensor], Tensor]:
        def edit_pattern(x: Tensor) -> Tensor:  # [b, h, q, k]: tokens (queries) on dim 2
            return intervention.apply(x, self._step_for(x), token_dim=2, head_dim=1)

        return edit_pattern

    def _on_output(
        self,
        module: nn.Module,
        edit: Callable[[Tensor], Tensor],
        element: Callable[[Any], int] | int = 0,
    ) -> None:
        def hook(mod: nn.Module, args: tuple, output: Any) -> Any:
            if isinstance(output, Tensor):
                y = edit(output)
                return None if y is output else y
            index = element(output) if callable(element) else element
            x = output[index]
            if x is None:
                raise RuntimeError(
                    "attention probabilities were not returned by this model's attention; "
                    "load it with attn_implementation='eager'"
                )
            y = edit(x)
            if y is x:
                return None
            return type(output)((*output[:index], y, *output[index + 1 :]))

        self._handles.append(module.register_forward_hook(hook))

    def _on_input(self, module: nn.Module, edit: Callable[[Tensor], Tensor]) -> None:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                y = edit(args[0])
                return None if y is args[0] else ((y, *args[1:]), kwargs)
            x = kwargs["hidden_states"]
            y = edit(x)
            return None if y is x else (args, {**kwargs, "hidden_states": y})

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _register_resid_mid(self, layer: int, edit: Callable[[Tensor], Tensor]) -> None:
        # resid_mid = resid_pre + attn.out exists only as a local of the block: compute it from
        # the block's input and the attention output, and fold an edit back into attn.out.
        # resid_pre is read where the attention norm takes it (pre-norm blocks), not from the
        # block's own pre-hook: activation checkpointing replays the block's forward in backward
        # without the block's hooks, but with those of its submodules.
        block = self._blocks[layer]

        def stash(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            self._resid_pre[layer] = args[0] if args else kwargs["hidden_states"]

        def edit_attn_out(attn_out: Tensor) -> Tensor:
            resid_pre = self._resid_pre.pop(layer)
            resid_mid = resid_pre + attn_out
            y = edit(resid_mid)
            return attn_out if y is resid_mid else y - resid_pre

        a = self.adapter
        reads_resid_pre = a.submodule(block, a.attn if a.attn_norm is None else a.attn_norm)
        self._handles.append(reads_resid_pre.register_forward_pre_hook(stash, with_kwargs=True))
        # what attention adds to the residual: the attention module's output, or a post-norm's
        contribution = a.submodule(block, a.attn if a.attn_out is None else a.attn_out)
        self._on_output(contribution, edit_attn_out)

    def _unembedding(self) -> nn.Module:
        if self.adapter.unembed is None:  # renamed between releases: the model knows its own
            return self.model.get_output_embeddings()
        return self.adapter.module(self.model, self.adapter.unembed)

    def _register_stop(self, site: Site) -> None:
        """End every forward right after ``site``'s hooks ran, at the first point of the forward
        that comes after it: before the block of ``resid_pre`` / ``embed`` runs (its pre-hooks
        have), after the block of any other layer site (every hook of a layer's sites runs
        inside its block's call), before the unembedding for ``final_norm`` (logits are never
        computed), after the whole model for ``logits``."""
        self.adapter.refuse(site.kind, self.model.config)

        def stop(*_: object) -> None:
            raise _Stopped(self)

        if site.module_path is not None:  # the stop runs after the site's own hooks
            module = module_at(self.model, site.module_path)
            if site.module_end == "input":
                self._handles.append(module.register_forward_pre_hook(stop))
            else:
                self._handles.append(module.register_forward_hook(stop))
        elif site.kind == "final_norm":
            self._handles.append(self._unembedding().register_forward_pre_hook(stop))
            # a model that unembeds without calling that module still stops, at its end
            self._handles.append(self.model.register_forward_hook(stop))
        elif site.kind == "logits":
            self._handles.append(self.model.register_forward_hook(stop))
        elif site.kind in ("embed", "resid_pre"):
            block = self._blocks[0 if site.layer is None else site.layer]
            self._handles.append(block.register_forward_pre_hook(stop))
        else:
            self._handles.append(self._blocks[site.layer].register_forward_hook(stop))


class _Stopped(BaseException):
    """Raised from a hook to end a forward early; swallowed by the ``with`` block of the
    attachment that raised it. A BaseException, as KeyboardInterrupt: code between the hook and
    the ``with`` block (the model's, a library's) that catches ``Exception`` lets it through."""

    def __init__(self, attachment: "Attachment"):
        super().__init__("the forward was stopped early by iv.capture(stop=True) / stop_after")
        self.attachment = attachment


def last_in_forward(sites: Iterable[Site]) -> Site:
    """The site computed last in a forward (the order of ``sites.all_sites``).

    A ``module:`` site has no known place in that order: it may be the only site of a stop."""
    sites = list(sites)
    modules = [str(site) for site in sites if site.module_path is not None]
    if modules and len(sites) > 1:
        raise ValueError(
            f"cannot stop after several sites that include module sites ({', '.join(modules)}): "
            "where a module runs in the forward is not known to the adapter; stop after one "
            "site alone (stop_after='module:...:output'), or leave stop off"
        )
    if modules:
        return sites[0]

    def order(site: Site) -> tuple[int, int, int]:
        if site.kind == "embed":
            return (0, 0, 0)
        if site.layer is None:
            return (2, MODEL_KINDS.index(site.kind), 0)
        return (1, site.layer, LAYER_KINDS.index(site.kind))

    return max(sites, key=order)


def module_at(model: nn.Module, path: str) -> nn.Module:
    """The module at ``path`` in the causal LM (as ``model.named_modules()`` names it); an unknown
    path is refused with the closest names."""
    try:
        return Adapter.submodule(causal_lm(model), path)
    except AttributeError:
        pass
    names = [name for name, _ in causal_lm(model).named_modules() if name]
    close = difflib.get_close_matches(path, names, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"module site: {type(causal_lm(model)).__name__} has no module {path!r}.{hint} Paths are "
        f"those of model.named_modules() on the causal LM, e.g. {names[0]!r}"
    )


def _module_output_hook(site: Site, edit: Callable[[Tensor], Tensor]) -> Callable[..., Any]:
    """A forward hook editing a module's output: a tensor, or the first element of a tuple."""

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, Tensor):
            y = edit(output)
            return None if y is output else y
        if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
            y = edit(output[0])
            return None if y is output[0] else type(output)((y, *output[1:]))
        raise TypeError(
            f"{site}: the module returned {type(output).__name__}, not a tensor or a tuple "
            "whose first element is one; hook a module inside it that returns a tensor"
        )

    return hook


def _module_input_hook(site: Site, edit: Callable[[Tensor], Tensor]) -> Callable[..., Any]:
    """A forward pre-hook editing a module's first input: its first positional argument, or
    ``hidden_states`` when it is given by keyword."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args and isinstance(args[0], Tensor):
            y = edit(args[0])
            return None if y is args[0] else ((y, *args[1:]), kwargs)
        if isinstance(kwargs.get("hidden_states"), Tensor):
            x = kwargs["hidden_states"]
            y = edit(x)
            return None if y is x else (args, {**kwargs, "hidden_states": y})
        given = [type(a).__name__ for a in args] + [f"{k}=" for k in kwargs]
        raise TypeError(
            f"{site}: the module's first input is not a tensor (it got {given}); use "
            f"'{site.kind.rsplit(':', 1)[0]}:output' or a module whose input is a tensor"
        )

    return hook


def _takes_keyword(module: nn.Module, name: str) -> bool:
    parameters = inspect.signature(module.forward).parameters
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _ask_for_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return args, {**kwargs, "output_attentions": True}


def _output_logits_editor(edit: Callable[[Tensor], Tensor]) -> Callable[..., Any]:
    """A forward hook on the causal LM editing the logits it returns (a ModelOutput or a tuple
    whose first element they are)."""

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        logits = getattr(output, "logits", None)
        if isinstance(logits, Tensor):
            edited = edit(logits)
            if edited is not logits:
                output.logits = edited  # a ModelOutput keeps attribute and key in step
            return None
        edited = edit(output[0])
        return None if edited is output[0] else (edited, *output[1:])

    return hook


def _right_padded_ends(mask: Any, length: int) -> tuple[int, ...] | None:
    """Where each row's real tokens end, if padding is on the right of some row (else None):
    there ``-1`` is each row's own last token, not the pad in the last column."""
    if not isinstance(mask, Tensor) or mask.ndim != 2 or mask.shape[1] != length:
        return None
    if bool(mask[:, -1].all()):  # left padding or none: every row ends in the last column
        return None
    columns = torch.arange(length, device=mask.device)
    return tuple((torch.where(mask.bool(), columns, -1).amax(dim=1) + 1).tolist())


def _attention_weights(output: tuple) -> int:
    for index in range(1, len(output)):
        if isinstance(output[index], Tensor) and output[index].ndim == 4:
            return index
    return 1


def attach(model: nn.Module, plan: Plan) -> Attachment:
    """Attach a plan persistently; call ``handle.remove()`` to take it off."""
    return Attachment(model, plan)


@contextmanager
def intervene(
    model: nn.Module, plan: Plan, stop_after: SiteLike | None = None
) -> Iterator[Attachment]:
    """Run the block with the plan attached; every hook is removed on exit, also on error.

    ``stop_after``: a site; every forward in the block then ends right after that site's hooks
    ran (see ``capture(stop=True)``: the ``model(...)`` call does not return, the ``with`` block
    ends there without an error).
    """
    table = adapter(model)
    geometry = table.geometry(model.config)
    stop = None if stop_after is None else parse(stop_after, geometry.n_layers)
    handle = Attachment._of_checked(
        model, table, geometry, normalize_plan(model, plan, geometry), stop
    )
    with _ending_at_stop(handle):
        yield handle


@contextmanager
def _ending_at_stop(handle: Attachment) -> Iterator[None]:
    """Remove the handle's hooks on exit, swallowing the stop it raised (and no other)."""
    try:
        yield
    except _Stopped as stopped:
        if stopped.attachment is not handle:  # an enclosing block's stop: let it end there
            raise
    finally:
        handle.remove()


_CACHE_FORMAT = "interventions.Cache/1"


class Cache(Mapping[str, Tensor]):
    """Captured activations keyed by site name (``cache["layers.3.attn.heads"]``)."""

    def __init__(self, captures: dict[Site, Capture], n_layers: int | None = None):
        self.captures = captures
        self.n_layers = n_layers  # the model's: what ``layers.*`` expands to
        self._names: dict[str, Capture] | None = None  # built on first use: not every call reads

    @property
    def _by_name(self) -> dict[str, Capture]:
        if self._names is None:
            self._names = {str(site): capture for site, capture in self.captures.items()}
        return self._names

    def _capture(self, key: SiteLike) -> Capture:
        name = str(key)
        if name not in self._by_name:
            raise KeyError(f"{name!r} was not captured; captured sites: {list(self._by_name)}")
        return self._by_name[name]

    def __getitem__(self, key: SiteLike) -> Tensor:  # type: ignore[override]
        return self._capture(key).value

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def records(self, key: SiteLike) -> list[Tensor]:
        """Every sequence captured at ``key`` (one tensor per sequence / generate call)."""
        return self._capture(key).values

    def save(self, path: str | os.PathLike) -> Path:
        """Write every site's records of ``cache`` to one safetensors file (atomic: an interrupted
        save leaves any file at ``path`` as it was); ``Cache.load(path)`` reads it back bit for bit.
        A cache of reduced statistics (``reduce=``) is refused: save ``reducer.state_dict()`` or use
        ``stats.tally(cache=...)``."""
        reduced = [str(site) for site, c in self.captures.items() if c.reduce is not None]
        if reduced:
            raise ValueError(
                f"Cache.save: the sites {reduced} hold reduced statistics (capture(reduce=...)), "
                "not records; save their reducers' state_dict() with files.save_tensors, or use "
                "stats.tally(..., cache=folder)"
            )
        tensors, counts = {}, {}
        for site, capture_ in self.captures.items():
            values = capture_.values
            counts[str(site)] = len(values)
            tensors.update({f"{site}/{i}": value for i, value in enumerate(values)})
        # one metadata entry: safetensors writes several in a random order, and the same cache
        # should give the same bytes
        layout = json.dumps({"records": counts, "n_layers": self.n_layers})
        return save_tensors(path, tensors, format=_CACHE_FORMAT, metadata={"cache": layout})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Cache":
        """The cache ``Cache.save`` wrote at ``path``: the same sites, records (dtype and shape of
        each), ``cache[site]`` and ``stack``. Raises ValueError for a file of another kind or a
        damaged one, FileNotFoundError for a missing one."""
        tensors, metadata = load_tensors(path, format=_CACHE_FORMAT)
        try:
            layout = json.loads(metadata["cache"])
            counts, n_layers = layout["records"], layout["n_layers"]
            expected = {f"{name}/{i}" for name, n in counts.items() for i in range(n)}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(
                f"{path}: the Cache metadata is missing or damaged ({error!r}); save the cache "
                "again with Cache.save"
            ) from None
        if expected != set(tensors):
            raise ValueError(
                f"{path}: the file's tensors {sorted(set(tensors) ^ expected)[:3]} do not match "
                "its list of records: the file is damaged; save the cache again"
            )
        captures = {}
        for name, n in counts.items():
            capture_ = Capture()
            capture_.records = [[tensors[f"{name}/{i}"]] for i in range(n)]
            captures[parse(name, n_layers)] = capture_
        return cls(captures, n_layers)

    def stack(self, pattern: SiteLike | Iterable[SiteLike], dim: int = 0) -> Tensor:
        """Stack the values of several sites, in the given order (e.g. all layers).

        ``layers.*.x`` is every captured layer of ``x``; names and ranges (``layers.2:5.x``)
        must have been captured each."""
        items = [pattern] if isinstance(pattern, (str, Site)) else list(pattern)
        sites: list[Site] = []
        for item in items:
            named = expand(item, self._layer_count())
            if isinstance(item, str) and "*" in item:
                named = [site for site in named if site in self.captures]
                if not named:
                    raise KeyError(f"{item!r} matches no captured site; captured: {list(self)}")
            sites += named
        return torch.stack([self[site] for site in sites], dim=dim)

    def _layer_count(self) -> int:
        if self.n_layers is not None:
            return self.n_layers
        # a Cache built without the model: ``*`` keeps only captured sites, so the captured
        # layers are all it can match
        return max((site.layer or 0) for site in self.captures) + 1


@contextmanager
def capture(
    model: nn.Module,
    sites: SiteLike | Iterable[SiteLike],
    *,
    positions: Positions = None,
    heads: list[int] | None = None,
    keep_grad: bool = False,
    device: str | torch.device | None = None,
    reduce: "Callable[[], Reducer] | None" = None,
    plan: Plan | None = None,
    stop: bool = False,
) -> Iterator[Cache]:
    """Capture activations at ``sites``; yields a ``Cache`` filled by the forwards in the block.

    ``reduce`` is a reducer factory (``iv.Mean``, ``iv.MeanNorm``, ``iv.SecondMoment``): each
    site then keeps a streaming statistic instead of every activation. ``plan`` attaches
    interventions in the same pass (captures see their effect at later sites).

    ``stop=True`` ends the forward right after the last captured site: later blocks (and the
    unembedding, unless ``logits`` is captured) never run. The ``model(...)`` call then does
    not return: the ``with`` block ends there, without an error, so write it last in the block::

        with iv.capture(model, "layers.3.resid_post", stop=True) as cache:
            model(**inputs)  # nothing after this line in the block runs
        cache["layers.3.resid_post"]
    """
    table = adapter(model)
    geometry = table.geometry(model.config)
    names = expand(sites, geometry.n_layers)
    if not names:
        raise ValueError("capture() got no sites: name at least one, e.g. 'layers.*.resid_post'")
    if reduce is not None and (is_reducer(reduce) or not callable(reduce)):
        raise TypeError(
            f"capture(reduce=...) takes a factory called once per site, such as iv.Mean (the "
            f"class, not iv.Mean()), got {reduce!r}: one instance would mix every site's values"
        )
    captures = {
        site: Capture(
            keep_grad=keep_grad,
            device=device,
            reduce=None if reduce is None else reduce(),
            heads=heads,
            positions=positions,
        )
        for site in names
    }
    if not isinstance(stop, bool):
        raise TypeError(f"capture(stop=...) takes True or False, got {stop!r}")
    combined = normalize_plan(model, plan, geometry) if plan else {}
    for site, cap in captures.items():
        cap.check(site, geometry)
        combined[site] = cap if site not in combined else _compose(combined[site], cap)
    last = last_in_forward(captures) if stop else None
    handle = Attachment._of_checked(model, table, geometry, combined, last)
    with _ending_at_stop(handle):
        yield Cache(captures, geometry.n_layers)


def _compose(first: Intervention, then: Intervention) -> Intervention:
    from interventions.ops import Compose

    return Compose(first, then)
