"""Interventions: small values with one ``forward(x) -> x'``, placed at sites by a plan.

Every built-in takes the same selectors: ``heads=[...]`` at head sites (``attn.heads``,
``attn.pattern``) and ``positions=``. ``forward`` only ever sees the selected part of the
activation; ``Intervention.apply`` does the selecting and writes the result back without
editing anything in place.

Positions mean the same thing with and without the KV cache. They are resolved against the
*absolute* token positions of the sequence, which the attachment tracks across the forwards of
one ``generate`` call (cached or not):

- ``None``: every position.
- an int ``i >= 0``: absolute position ``i`` (hit once, whichever forward computes it).
- a negative int ``-k``: the k-th last token of each forward's new tokens, so ``-1`` is the
  last prompt token and then every generated token.
- a ``slice``: absolute bounds; negative bounds count from the end of each forward's new tokens.
- ``"prompt"`` / ``"generated"``: positions before / from the prompt length (the length of the
  first forward of the sequence).
- a list of ints: the union of the ints.
- a boolean tensor ``[seq]`` or ``[batch, seq]`` over absolute positions (e.g. an attention mask
  to skip padding).
"""

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from interventions.adapters import Geometry
from interventions.checks import choice, integer, number
from interventions.sites import CAPTURE_ONLY_KINDS, HEAD_KINDS, KV_KINDS, PROJECTION_KINDS, Site

if TYPE_CHECKING:  # stats builds on ops (tally captures); at run time ops needs only the duck type
    from interventions.stats import Reducer

Positions = int | slice | str | Sequence[int] | Tensor | None
POSITION_WORDS = ("prompt", "generated")


@dataclass
class Step:
    """Where the current forward sits in its sequence (maintained by ``attach``)."""

    offset: int  # absolute position of this forward's first column
    length: int  # number of columns in this forward
    prompt_length: int  # length of the first forward of the sequence
    spans: list[tuple[int, int]] = field(default_factory=list)  # new tokens of each forward
    # where each row's real tokens end in a right-padded prompt (None: no row ends in padding)
    prompt_ends: tuple[int, ...] | None = None

    @classmethod
    def single(cls, length: int) -> "Step":
        """A lone forward over ``length`` tokens from position 0."""
        return cls(offset=0, length=length, prompt_length=length, spans=[(0, length)])


def check_positions(positions: Positions) -> Positions:
    if positions is None or isinstance(positions, slice):
        return positions
    if isinstance(positions, bool):
        raise TypeError("positions=True/False is ambiguous; use None for all positions")
    if isinstance(positions, int):
        return positions
    if isinstance(positions, str):
        if positions == "all":
            return None
        if positions not in POSITION_WORDS:
            raise ValueError(
                f"positions={positions!r} is not understood: expected 'prompt', 'generated', "
                "'all', an int, a slice, a list of ints or a boolean mask"
            )
        return positions
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or positions.ndim not in (1, 2):
            raise TypeError(
                "a tensor of positions must be a boolean mask [seq] or [batch, seq], got "
                f"dtype {positions.dtype} with shape {tuple(positions.shape)}"
            )
        return positions
    if (
        isinstance(positions, Sequence)
        and positions
        and all(isinstance(p, int) and not isinstance(p, bool) for p in positions)
    ):
        return tuple(positions)
    raise TypeError(
        f"positions={positions!r} is not understood: expected None, an int, a slice, "
        "'prompt', 'generated', a list of ints or a boolean mask"
    )


def _columns_of_range(lo: int, hi: int, first: int, width: int) -> range:
    return range(max(lo, first) - first, max(min(hi, first + width) - first, 0))


def resolve(
    positions: Positions, step: Step, width: int
) -> None | range | list[int] | Bool[Tensor, "*batch seq"]:
    """Columns of the current forward (``width`` of them, the last ones) that are selected.

    ``None`` means all columns. A site may hold fewer columns than the forward (``logits``
    under ``logits_to_keep``): they are the last ``width`` positions.
    """
    if positions is None:
        return None
    first = step.offset + step.length - width
    if isinstance(positions, Tensor):
        if positions.shape[-1] < first + width:
            raise ValueError(
                f"the positions mask covers {positions.shape[-1]} positions, but this forward "
                f"reaches position {first + width - 1}: give a mask as long as the sequence "
                "(under generate: prompt plus new tokens), or use positions='prompt'"
            )
        return positions[..., first : first + width]
    if step.prompt_ends is not None and counts_from_end(positions):
        return _per_row(positions, step, width)
    if positions == "prompt":
        return _columns_of_range(0, step.prompt_length, first, width)
    if positions == "generated":
        return _columns_of_range(step.prompt_length, first + width, first, width)
    if isinstance(positions, int):
        return _columns_of_int(positions, step, first, width)
    if isinstance(positions, tuple):
        columns = {c for p in positions for c in _columns_of_int(p, step, first, width)}
        return sorted(columns)
    return _columns_of_slice(positions, step, first, width)


def counts_from_end(positions: Positions) -> bool:
    """Whether ``positions`` are read from the end of the tokens (``-1``, ``slice(-3, None)``):
    those differ per row where padding is on the right."""
    if isinstance(positions, int):
        return positions < 0
    if isinstance(positions, tuple):
        return any(p < 0 for p in positions)
    if isinstance(positions, slice):
        return positions.stop is None or positions.stop < 0 or (positions.start or 0) < 0
    return False


def _per_row(positions: Positions, step: Step, width: int) -> Bool[Tensor, "batch width"]:
    """Columns counted from each row's own end of a right-padded prompt, as a row mask."""
    mask = torch.zeros(len(step.prompt_ends), width, dtype=torch.bool)
    start, _ = step.spans[0]
    for row, end in enumerate(step.prompt_ends):
        own = replace(step, spans=[(start, end), *step.spans[1:]], prompt_ends=None)
        mask[row, list(resolve(positions, own, width))] = True
    return mask


def _columns_of_int(position: int, step: Step, first: int, width: int) -> list[int]:
    if position >= 0:
        hits = [position]
    else:
        hits = [end + position for start, end in step.spans if start <= end + position]
    return [p - first for p in hits if first <= p < first + width]


def _columns_of_slice(positions: slice, step: Step, first: int, width: int) -> list[int]:
    if positions.step not in (None, 1):
        raise ValueError("positions slices take no step; pass a list of ints instead")
    columns: set[int] = set()
    for start, end in step.spans:
        lo = 0 if positions.start is None else positions.start
        hi = end if positions.stop is None else positions.stop
        lo, hi = (end + lo if lo < 0 else lo), (end + hi if hi < 0 else hi)
        columns.update(_columns_of_range(max(lo, start), min(hi, end), first, width))
    return sorted(columns)


class _ModuleState(NamedTuple):
    """What nn.Module.__init__ sets, sorted three ways."""

    values: dict[str, object]  # plain values (flags), shared
    dicts: tuple[str, ...]  # plain dicts made for each module (``__setattr__`` reads them)
    lazy: dict[str, type]  # hook containers, made on first use


def _empty_module_state() -> _ModuleState | None:
    """The state nn.Module.__init__ sets, sorted for Intervention.__init__ (``_ModuleState``).

    ``with iv.capture(model, "layers.*.x")`` builds one Capture per site on every call. Made
    eagerly, the dozen hook containers of a module (objects the garbage collector tracks) were
    the larger part of that set-up (30 sites: 550 µs, 330 µs without them), yet an intervention
    is called through ``forward`` and never reads them. None (use nn.Module.__init__) if this
    torch sets anything else."""
    values: dict[str, object] = {}
    dicts: list[str] = []
    lazy: dict[str, type] = {}
    for key, value in nn.Module().__dict__.items():
        if value is None or type(value) is bool:
            values[key] = value
        elif type(value) is dict and not value:
            dicts.append(key)
        elif type(value) in (set, list, OrderedDict) and not value:
            lazy[key] = type(value)
        else:
            return None
    if not {"_parameters", "_buffers", "_modules"} <= set(dicts):
        return None
    return _ModuleState(values, tuple(dicts), lazy)


_EMPTY_MODULE = _empty_module_state()


class Intervention(nn.Module):
    """Base class: subclass and write ``forward(x) -> x'`` (no in-place edits).

    ``forward`` receives the selected part of the activation: ``[batch, seq, ...]`` (or
    ``[n, ...]`` under a boolean mask), with ``[..., heads, d_head]`` at head sites.
    """

    def __init__(self, *, heads: Sequence[int] | None = None, positions: Positions = None):
        if _EMPTY_MODULE is None:
            super().__init__()
        else:  # what nn.Module.__init__ sets, hook containers left to __getattr__
            state = self.__dict__
            state.update(_EMPTY_MODULE.values)
            for key in _EMPTY_MODULE.dicts:
                state[key] = {}
        if heads is not None:
            if isinstance(heads, (int, str, Tensor)) or not all(_is_int(h) for h in heads):
                raise TypeError(f"heads must be a list of ints (head indices), got {heads!r}")
            if len(set(heads)) != len(heads) or not heads:
                raise ValueError(f"heads must be a non-empty list without repeats, got {heads!r}")
        # Plain attributes go straight into __dict__: nn.Module.__setattr__ costs ~3 µs each,
        # and a capture over every layer builds one intervention per site on each `with`.
        self.__dict__.update(
            heads=None if heads is None else tuple(heads),
            positions=check_positions(positions),
            _head_index=None,
        )

    def __getattr__(self, name: str) -> Any:
        # only reached when ``name`` is not in __dict__: a hook container not made yet
        if _EMPTY_MODULE is not None and name in _EMPTY_MODULE.lazy:
            value = self.__dict__[name] = _EMPTY_MODULE.lazy[name]()
            return value
        return super().__getattr__(name)

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # --- called by attach -------------------------------------------------------------------
    def check(self, site: Site, geometry: Geometry) -> None:
        """Raise a clear error if this intervention cannot act at ``site`` of this model."""
        if self.heads is not None:
            if site.kind not in HEAD_KINDS:
                raise ValueError(
                    f"{type(self).__name__}(heads=...) at {site}: heads can only be selected at "
                    f"head sites ({', '.join(HEAD_KINDS)})"
                )
            n_heads = site_heads(site, geometry)
            bad = [h for h in self.heads if not 0 <= h < n_heads]
            if bad:
                kind = " KV" if site.kind in KV_KINDS else ""
                raise ValueError(
                    f"head index {bad} out of range at {site}: the model has "
                    f"{n_heads}{kind} heads there (valid 0..{n_heads - 1})"
                )
        if site.kind in CAPTURE_ONLY_KINDS and not self.reads_only:
            raise ValueError(f"{site} can only be captured; {type(self).__name__} edits it")
        self.check_width(site, geometry)

    def check_width(self, site: Site, geometry: Geometry) -> None:
        """Subclasses check the sizes of their vectors against ``site_width``."""

    reads_only = False

    @property
    def counts_from_end(self) -> bool:
        """Whether its positions are read from the end of the tokens (per row where padding is
        on the right)."""
        return counts_from_end(self.positions)

    def start_sequence(self) -> None:
        """Called when a new sequence starts (a forward that continues no earlier one)."""

    def selected_heads(self, site: Site, geometry: Geometry) -> int:
        return site_heads(site, geometry) if self.heads is None else len(self.heads)

    def apply(self, x: Tensor, step: Step, *, token_dim: int = 1, head_dim: int = 2) -> Tensor:
        """Select heads and positions, run ``forward``, write back out of place.

        ``x`` is ``[batch, seq, ...]``, with heads on dim 2 at head sites; ``attn.pattern``
        (``[batch, heads, queries, keys]``) says where its tokens (queries) and heads are.
        ``forward`` sees the selected part in the site's own layout (under a boolean mask:
        ``[n, ...]``, the selected tokens first).
        """
        columns = resolve(self.positions, step, x.shape[token_dim])
        if columns is not None and not isinstance(columns, Tensor) and len(columns) == 0:
            return x
        heads = None
        if self.heads is not None:
            if self._head_index is None or self._head_index.device != x.device:
                self._head_index = torch.tensor(self.heads, device=x.device)
            heads = self._head_index
        x_heads = x if heads is None else x.index_select(head_dim, heads)
        if columns is None:
            y = self.forward(x_heads)
            if y is x_heads:
                return x
            y_heads = y
        elif isinstance(columns, Tensor):
            mask = columns.to(x.device)
            if mask.ndim == 1:
                mask = mask.expand(x.shape[0], -1)
            if mask.shape[0] != x.shape[0]:
                raise ValueError(
                    f"positions mask has batch size {mask.shape[0]}, the activation {x.shape[0]}"
                )
            where = mask.nonzero(as_tuple=True)
            by_token = x_heads.movedim(token_dim, 1)  # a view: a mask indexes [batch, seq]
            selected = by_token[where]
            y = self.forward(selected)
            if y is selected:
                return x
            y_heads = by_token.index_put(where, y).movedim(1, token_dim)
        else:
            index = torch.as_tensor(list(columns), device=x.device)
            selected = x_heads.index_select(token_dim, index)
            y = self.forward(selected)
            if y is selected:
                return x
            y_heads = x_heads.index_copy(token_dim, index, y)
        return y_heads if heads is None else x.index_copy(head_dim, heads, y_heads)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int in Python


def finite_tensor(owner: str, name: str, value: object) -> Tensor:
    """``value`` as a floating-point tensor, refusing NaN and infinities (a NaN in a steering
    vector silently turns every later activation, and every logit, into NaN)."""
    if isinstance(value, (bool, str)) or value is None:
        raise TypeError(f"{owner}: {name} must be a tensor of numbers, got {value!r}")
    tensor = torch.as_tensor(value)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"{owner}: {name} must be a real tensor, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{owner}: {name} has {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}; "
            "check how it was computed (a zero norm, a mean over no samples)"
        )
    return tensor


def site_width(site: Site, geometry: Geometry) -> int:
    """Size of the last dimension of the activation at ``site``."""
    if site.kind in PROJECTION_KINDS:
        return geometry.d_head
    return {
        "attn.heads": geometry.d_head,
        "mlp.act": geometry.d_mlp,
        "logits": geometry.d_vocab,
        "attn.pattern": -1,  # keys: varies with the sequence
    }.get(site.kind, geometry.d_model)


def site_heads(site: Site, geometry: Geometry) -> int:
    """How many heads the activation at a head site has: the KV heads at ``attn.k`` /
    ``attn.v`` (fewer than the query heads under GQA), the query heads elsewhere."""
    return geometry.n_kv_heads if site.kind in KV_KINDS else geometry.n_heads


def _check_vector(
    owner: Intervention, name: str, vector: Tensor, site: Site, geometry: Geometry
) -> None:
    width = site_width(site, geometry)
    n_heads = owner.selected_heads(site, geometry)
    per_head_ok = site.kind in HEAD_KINDS and vector.ndim == 2 and vector.shape[0] == n_heads
    expected = f"[{width}]"
    if site.kind in HEAD_KINDS:
        expected += f" or [{n_heads}, {width}] (one row per selected head)"
    if vector.shape[-1] != width or not (vector.ndim == 1 or per_head_ok):
        raise ValueError(
            f"{type(owner).__name__} at {site}: {name} has shape {tuple(vector.shape)}, "
            f"expected {expected}"
        )


def moved(owner: nn.Module, name: str, like: Tensor) -> Tensor:
    """``owner``'s tensor ``name`` on ``like``'s device and dtype, copied once, not per call.

    On a model split over devices (``device_map``) a vector kept on another device would cross
    at every forward. The copy is kept per (name, device, dtype) and made again when the tensor
    changes: another tensor (``module.to``, ``param.data = ...``), or the same one written in
    place (an optimizer step, ``load_state_dict``: its version counter moves). A tensor that
    autograd must reach (a trainable vector, gradients on) is moved every call, in the graph.
    One write goes unseen: through ``.data`` (``vector.data.copy_(new)``), which has a version
    counter of its own, so a copy on another device or dtype keeps the old values. Write under
    ``torch.no_grad()`` instead (``vector.copy_(new)``), or assign a new tensor.
    """
    source = getattr(owner, name)
    if source.device == like.device and source.dtype == like.dtype:
        return source
    if (source.requires_grad and torch.is_grad_enabled()) or source.is_inference():
        return source.to(device=like.device, dtype=like.dtype)
    stamp = (id(source), source.data_ptr(), source._version)
    copies = owner.__dict__.setdefault("_moved", {})
    key = (name, like.device, like.dtype)
    if key not in copies or copies[key][0] != stamp:
        with torch.inference_mode(False), torch.no_grad():  # a copy later forwards can use
            copies[key] = (stamp, source.detach().to(device=like.device, dtype=like.dtype))
    return copies[key][1]


class AddBias(Intervention):
    """Add ``alpha * vector``. Trainable when asked (``trainable=True`` makes it a Parameter)."""

    def __init__(
        self,
        vector: Float[Tensor, "*heads d"],
        alpha: float = 1.0,
        *,
        trainable: bool = False,
        heads: Sequence[int] | None = None,
        positions: Positions = None,
    ):
        super().__init__(heads=heads, positions=positions)
        vector = finite_tensor("AddBias", "vector", vector)
        if vector.ndim not in (1, 2):
            raise ValueError(f"AddBias vector must be [d] or [heads, d], got {tuple(vector.shape)}")
        if trainable:
            self.vector = nn.Parameter(vector.detach().clone())
        else:
            self.register_buffer("vector", vector.detach().clone())
        self.alpha = number("AddBias: alpha", alpha)

    def check_width(self, site: Site, geometry: Geometry) -> None:
        _check_vector(self, "vector", self.vector, site, geometry)

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        vector = moved(self, "vector", x)
        return x + vector if self.alpha == 1.0 else x + self.alpha * vector


class Rescale(Intervention):
    """Scale the activation by ``factor``, or only its component along ``direction``."""

    def __init__(
        self,
        factor: float,
        direction: Float[Tensor, "*heads d"] | None = None,
        *,
        heads: Sequence[int] | None = None,
        positions: Positions = None,
    ):
        super().__init__(heads=heads, positions=positions)
        self.factor = number("Rescale: factor", factor)
        if direction is None:
            self.direction = None
        else:
            direction = finite_tensor("Rescale", "direction", direction)
            norm = direction.norm(dim=-1, keepdim=True)
            if (norm == 0).any():
                raise ValueError("Rescale direction must be non-zero")
            self.register_buffer("direction", (direction / norm).detach().clone())

    def check_width(self, site: Site, geometry: Geometry) -> None:
        if self.direction is not None:
            _check_vector(self, "direction", self.direction, site, geometry)

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        if self.direction is None:
            return x * self.factor
        u = moved(self, "direction", x)
        return x + (self.factor - 1.0) * (x * u).sum(-1, keepdim=True) * u


class Project(Intervention):
    """Remove the span of ``basis`` (rows; orthonormalised here), or keep only it."""

    def __init__(
        self,
        basis: Float[Tensor, "k d"] | Float[Tensor, " d"],
        keep: bool = False,
        *,
        heads: Sequence[int] | None = None,
        positions: Positions = None,
    ):
        super().__init__(heads=heads, positions=positions)
        basis = finite_tensor("Project", "basis", basis)
        basis = basis[None] if basis.ndim == 1 else basis
        if basis.ndim != 2 or basis.shape[0] > basis.shape[1]:
            raise ValueError(f"Project basis must be [k, d] with k <= d, got {tuple(basis.shape)}")
        q, r = torch.linalg.qr(basis.double().T)
        if (r.diagonal().abs() < 1e-10).any():
            raise ValueError("Project basis rows are linearly dependent")
        self.register_buffer("basis", q.T.to(basis.dtype))
        if not isinstance(keep, bool):
            raise TypeError(f"Project: keep must be True or False, got {keep!r}")
        self.keep = keep

    def check_width(self, site: Site, geometry: Geometry) -> None:
        _check_vector(self, "basis", self.basis[0], site, geometry)

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        b = moved(self, "basis", x)
        inside = (x @ b.T) @ b
        return inside if self.keep else x - inside


class Compose(Intervention):
    """Apply several interventions in order, each with its own selectors."""

    def __init__(self, *interventions: Intervention):
        super().__init__()
        if not interventions or not all(isinstance(i, Intervention) for i in interventions):
            raise TypeError("Compose takes one or more Intervention values")
        self.parts = nn.ModuleList(interventions)

    @property
    def reads_only(self) -> bool:  # type: ignore[override]
        return all(part.reads_only for part in self.parts)

    @property
    def counts_from_end(self) -> bool:  # type: ignore[override]
        return any(part.counts_from_end for part in self.parts)

    def check(self, site: Site, geometry: Geometry) -> None:
        for part in self.parts:
            part.check(site, geometry)

    def start_sequence(self) -> None:
        for part in self.parts:
            part.start_sequence()

    def forward(self, x: Tensor) -> Tensor:
        for part in self.parts:
            x = part(x)
        return x

    def apply(self, x: Tensor, step: Step, *, token_dim: int = 1, head_dim: int = 2) -> Tensor:
        for part in self.parts:
            x = part.apply(x, step, token_dim=token_dim, head_dim=head_dim)
        return x


# --- patching and ablation ------------------------------------------------------------------------


def feature_shape(site: Site, geometry: Geometry) -> tuple[int, ...]:
    """The dimensions after ``[batch, seq]`` of the activation at ``site`` (heads split)."""
    if site.kind in HEAD_KINDS:
        return (site_heads(site, geometry), site_width(site, geometry))
    return (site_width(site, geometry),)


class _Marks(Intervention):
    """Marks the part its selectors pick: ``apply`` on a boolean tensor of ``False`` gives
    ``True`` exactly where an intervention with the same ``heads`` / ``positions`` acts."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)


def _replace_from(owner: Intervention, site: Site, source: Tensor, x: Tensor, step: Step) -> Tensor:
    """``x`` with its selected part taken from ``source``, a whole activation of the site
    (``[batch or 1, seq, ...]`` over absolute positions from 0), aligned to this forward's
    columns. Out of place; where nothing is selected ``x`` itself comes back."""
    marker = owner.__dict__.get("_marker")
    if marker is None:
        marker = owner.__dict__["_marker"] = _Marks(heads=owner.heads, positions=owner.positions)
    marks = marker.apply(torch.zeros(x.shape, dtype=torch.bool, device=x.device), step)
    columns = marks.reshape(x.shape[0], x.shape[1], -1).any(-1).any(0).nonzero()
    if len(columns) == 0:
        return x
    return torch.where(marks, _aligned(owner, site, source, x, step, int(columns[-1])), x)


def _aligned(
    owner: Intervention, site: Site, source: Tensor, x: Tensor, step: Step, last_column: int
) -> Tensor:
    """The columns of ``source`` this forward computes (absolute positions ``first`` to
    ``first + width``), on ``x``'s batch, device and dtype. Columns past the end of ``source``
    that nothing selects are filled from ``x`` (never used: the caller selects)."""
    name = type(owner).__name__
    width = x.shape[1]
    first = step.offset + step.length - width
    have = source.shape[1]
    if first + last_column >= have:
        raise ValueError(
            f"{name} at {site}: the activation to patch from covers {have} positions, but this "
            f"forward patches position {first + last_column}: capture the clean run over at "
            "least as many tokens (under generate: the prompt and the generated tokens), or "
            "select fewer positions"
        )
    if source.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"{name} at {site}: the activation to patch from has {source.shape[0]} rows, this "
            f"forward {x.shape[0]}: give one row (patched into every row) or one per row"
        )
    part = source[:, first : min(first + width, have)].to(device=x.device, dtype=x.dtype)
    part = part.expand(x.shape[0], *part.shape[1:])
    if part.shape[1] < width:  # unselected columns past the source's end
        part = torch.cat([part, x[:, part.shape[1] :].detach()], dim=1)
    return part


def _whole_activation(owner: str, site: Site, geometry: Geometry, value: object) -> Tensor:
    """``value`` checked as a whole activation of ``site``: ``[batch, seq, *features]``."""
    tensor = finite_tensor(owner, f"the activation at {site}", value)
    features = feature_shape(site, geometry)
    if tensor.ndim != 2 + len(features) or tuple(tensor.shape[2:]) != features:
        layout = ", ".join(["batch", "seq", *map(str, features)])
        raise ValueError(
            f"{owner} at {site}: the activation to take values from has shape "
            f"{tuple(tensor.shape)}, "
            f"expected [{layout}] (the whole activation of the site, as a capture without "
            "heads= or positions= records it)"
        )
    return tensor


class Patch(Intervention):
    """Replace the selected part of the activation.

    ``Patch(values)``: by ``values``, a tensor broadcastable to the selected part (what
    ``forward`` sees: ``[batch, positions, ...]``, ``[n, ...]`` under a boolean mask, heads on
    dim 2 at ``attn.heads``); at one int position it may also have a capture's shape there
    (``[batch, ...]``, no token dim). ``trainable=True`` makes ``values`` a Parameter.

    ``Patch.from_cache(cache)``: by the values ``cache`` holds for the site the patch is placed
    at (an ``iv.Cache`` of a clean run, or any ``{site name: activation}``): the whole
    activation, captured without ``heads=`` / ``positions=``, ``[1 or batch, seq, ...]``. The
    patch picks the same heads and absolute positions from it as from the activation, so one
    clean row patches into every row of a corrupted batch, and positions mean the same under
    ``generate`` (the clean run must cover every position patched). Such a patch belongs to
    the first site it is placed at: build one per site.
    """

    def __init__(
        self,
        values: Float[Tensor, "..."],
        *,
        trainable: bool = False,
        heads: Sequence[int] | None = None,
        positions: Positions = None,
    ):
        super().__init__(heads=heads, positions=positions)
        values = finite_tensor("Patch", "values", values)
        if not isinstance(trainable, bool):
            raise TypeError(f"Patch: trainable must be True or False, got {trainable!r}")
        if trainable:
            self.values = nn.Parameter(values.detach().clone())
        else:
            self.register_buffer("values", values.detach().clone())
        self.__dict__.update(cache=None, site=None, _source=None)

    @classmethod
    def from_cache(
        cls,
        cache: Mapping[str, Tensor],
        *,
        heads: Sequence[int] | None = None,
        positions: Positions = None,
    ) -> "Patch":
        """A patch taking its values from ``cache`` at the site it is placed at."""
        if not isinstance(cache, Mapping):
            raise TypeError(
                "Patch.from_cache takes an iv.Cache (or a dict {site name: activation}), got "
                f"{type(cache).__name__}"
            )
        patch = cls.__new__(cls)
        Intervention.__init__(patch, heads=heads, positions=positions)
        patch.values = None
        patch.__dict__.update(cache=cache, site=None, _source=None)
        return patch

    def check(self, site: Site, geometry: Geometry) -> None:
        super().check(site, geometry)
        if self.cache is None:
            return
        if self.site is not None and self.site != site:
            raise ValueError(
                f"Patch.from_cache is placed at {site}, but it already patches {self.site}: "
                "build one per site, e.g. {s: iv.Patch.from_cache(cache) for s in sites}"
            )
        self.__dict__.update(site=site, _source=self._source_at(site, geometry))

    def _source_at(self, site: Site, geometry: Geometry) -> Tensor:
        capture = getattr(self.cache, "captures", {}).get(site)
        if capture is not None and capture.reduce is not None:
            raise ValueError(
                f"Patch.from_cache at {site}: the cache holds a reduced statistic there, not an "
                "activation; for a mean use iv.Ablate('mean', stats=...)"
            )
        if capture is not None and (capture.heads is not None or capture.positions is not None):
            raise ValueError(
                f"Patch.from_cache at {site}: the cache was captured with heads= or positions=; "
                "capture the clean run without them (the patch selects heads and positions "
                "itself), or pass the selected values to iv.Patch(values)"
            )
        try:
            value = self.cache[str(site)]
        except KeyError:
            raise ValueError(
                f"Patch.from_cache at {site}: the cache holds no {site}; it holds "
                f"{list(self.cache)}: capture that site in the clean run"
            ) from None
        return _whole_activation("Patch.from_cache", site, geometry, value)

    def check_width(self, site: Site, geometry: Geometry) -> None:
        if self.values is None:
            return
        width, n_heads = site_width(site, geometry), self.selected_heads(site, geometry)
        values = self.values
        wrong_heads = (
            site.kind in HEAD_KINDS and values.ndim >= 2 and values.shape[-2] not in (1, n_heads)
        )
        if (values.ndim >= 1 and values.shape[-1] not in (1, width)) or wrong_heads:
            heads = f" on {n_heads} selected heads" if site.kind in HEAD_KINDS else ""
            raise ValueError(
                f"Patch at {site}: values of shape {tuple(values.shape)} cannot broadcast to "
                f"the activation ([..., {width}]{heads})"
            )

    def apply(self, x: Tensor, step: Step, *, token_dim: int = 1, head_dim: int = 2) -> Tensor:
        if self.cache is None:
            return super().apply(x, step, token_dim=token_dim, head_dim=head_dim)
        if self._source is None:
            raise RuntimeError(
                "Patch.from_cache acts once placed in a plan (iv.intervene(model, {site: "
                "patch})): the plan tells it its site"
            )
        return _replace_from(self, self.site, self._source, x, step)

    def forward(self, x: Tensor) -> Tensor:
        values = moved(self, "values", x)
        if isinstance(self.positions, int) and values.ndim == x.ndim - 1 and values.ndim >= 2:
            values = values.unsqueeze(1)  # a capture at one position has no token dim
        try:
            fits = torch.broadcast_shapes(values.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"Patch: values of shape {tuple(values.shape)} do not broadcast to the selected "
                f"part of the activation, {tuple(x.shape)} ([batch, positions, ...], or [n, ...] "
                "under a boolean mask of positions)"
            )
        return values.expand(x.shape).contiguous()


ABLATIONS = ("zero", "mean", "resample")


class Ablate(Intervention):
    """Ablate the selected part of the activation.

    - ``Ablate("zero")``: zeros.
    - ``Ablate("mean", mean=m)`` or ``Ablate("mean", stats=reducer)``: the mean activation,
      given as ``[d]`` (or, at ``attn.heads``, ``[n_heads, d_head]`` over every head of the
      model, as a mean at the site gives it; the rows of ``heads`` are used), or read from an
      ``iv.Mean`` filled by ``iv.tally`` or a ``reduce=iv.Mean`` capture.
    - ``Ablate("resample", values=acts, seed=0)``: the activations of other inputs,
      ``acts`` ``[n, seq, ...]`` (a whole capture of the site over ``n`` inputs). Each row of
      each new sequence gets the row of ``acts`` drawn for it by a generator seeded with
      ``seed``, at the same heads and absolute positions (one draw per sequence, kept through
      the forwards of a ``generate`` call).
    """

    def __init__(
        self,
        kind: str,
        *,
        mean: Float[Tensor, "*heads d"] | None = None,
        stats: "Reducer | None" = None,
        values: Float[Tensor, "n seq ..."] | None = None,
        seed: int = 0,
        heads: Sequence[int] | None = None,
        positions: Positions = None,
    ):
        super().__init__(heads=heads, positions=positions)
        choice("Ablate: kind", kind, ABLATIONS)
        given = {"mean": mean, "stats": stats, "values": values}
        wanted = {"zero": (), "mean": ("mean", "stats"), "resample": ("values",)}[kind]
        extra = [name for name, value in given.items() if value is not None and name not in wanted]
        if extra:
            raise ValueError(f"Ablate({kind!r}) takes no {' or '.join(extra)}=")
        if kind == "mean" and (mean is None) == (stats is None):
            raise ValueError(
                "Ablate('mean') takes the mean as mean= (a tensor) or stats= (an iv.Mean filled "
                "by iv.tally or a reduce=iv.Mean capture), exactly one of them"
            )
        if kind == "resample" and values is None:
            raise ValueError(
                "Ablate('resample') takes values=: other inputs' activations at the site, "
                "[n, seq, ...], e.g. a capture over a batch of other inputs"
            )
        self.kind = kind
        if stats is not None:
            mean = _mean_of(stats)
        if mean is not None:
            self.register_buffer("mean", finite_tensor("Ablate", "mean", mean).detach().clone())
        else:
            self.mean = None
        if values is not None:
            values = finite_tensor("Ablate", "values", values)
            if values.ndim < 3 or values.shape[0] == 0:
                raise ValueError(
                    f"Ablate('resample'): values has shape {tuple(values.shape)}, expected "
                    "[n, seq, ...] with n >= 1 (other inputs' whole activations at the site)"
                )
            self.register_buffer("values", values.detach().clone())
        else:
            self.values = None
        self.seed = integer("Ablate: seed", seed, minimum=0)
        generator = torch.Generator().manual_seed(self.seed)
        self.__dict__.update(site=None, _generator=generator, _rows=None)

    def check(self, site: Site, geometry: Geometry) -> None:
        super().check(site, geometry)
        self.__dict__["site"] = site
        if self.values is not None:
            _whole_activation("Ablate('resample')", site, geometry, self.values)
        if self.mean is not None:
            _check_mean(self.mean, site, geometry)

    def start_sequence(self) -> None:
        self.__dict__["_rows"] = None  # draw again for each new sequence

    def apply(self, x: Tensor, step: Step, *, token_dim: int = 1, head_dim: int = 2) -> Tensor:
        if self.kind != "resample":
            return super().apply(x, step, token_dim=token_dim, head_dim=head_dim)
        rows = self._rows
        if rows is None or len(rows) != x.shape[0]:
            rows = torch.randint(len(self.values), (x.shape[0],), generator=self._generator)
            self.__dict__["_rows"] = rows
        return _replace_from(self, self.site, self.values[rows.to(self.values.device)], x, step)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "zero":
            return torch.zeros_like(x)
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        if mean.ndim == 2 and self.heads is not None:  # every head's mean: the selected rows
            mean = mean[list(self.heads)]
        return mean.expand(x.shape).contiguous()


def _mean_of(stats: object) -> Tensor:
    if not (is_reducer(stats) and getattr(stats, "is_mean", False)):
        raise TypeError(
            f"Ablate('mean', stats=...) takes an iv.Mean (filled by iv.tally or a "
            f"reduce=iv.Mean capture), got {type(stats).__name__}"
        )
    if stats.count == 0:
        raise ValueError(
            "Ablate('mean', stats=...): the iv.Mean has counted no samples; fill it first "
            "(iv.tally(model, batches, {site: mean}) or iv.capture(..., reduce=iv.Mean))"
        )
    return stats.value


def _check_mean(mean: Tensor, site: Site, geometry: Geometry) -> None:
    width, n_heads = site_width(site, geometry), site_heads(site, geometry)
    every_head = site.kind in HEAD_KINDS and mean.shape == (n_heads, width)
    if not (mean.shape == (width,) or every_head):
        expected = f"[{width}]"
        if site.kind in HEAD_KINDS:
            expected += f" or [{n_heads}, {width}] (every head of the site)"
        raise ValueError(
            f"Ablate('mean') at {site}: the mean has shape {tuple(mean.shape)}, expected "
            f"{expected}, as a mean over tokens at the site gives it"
        )


# --- capture ------------------------------------------------------------------------------------


def _replaying() -> bool:
    """Whether autograd is running a forward again inside backward: activation checkpointing
    (``model.gradient_checkpointing_enable()``) recomputes each layer there, hooks included."""
    if torch.compiler.is_compiling():  # a compiled graph replays nothing in Python
        return False
    # torch has no public flag for this; every recomputation runs inside a backward graph task
    return torch._C._current_graph_task_id() != -1


def _same_device(device: torch.device, wanted: str | torch.device) -> bool:
    wanted = torch.device(wanted)
    return device.type == wanted.type and wanted.index in (None, device.index)


def is_reducer(value: object) -> bool:
    """Whether ``value`` is a reducer instance (an ``iv.Reducer``: ``update(x)`` and ``value``),
    not a class or factory."""
    return (
        not isinstance(value, type)
        and callable(getattr(value, "update", None))
        and callable(getattr(value, "reset", None))
        and hasattr(type(value), "value")
    )


class Capture(Intervention):
    """Record the activation (returns it unchanged, so a plan of captures is bit-exact).

    ``keep_grad`` keeps the autograd graph, and the record of a forward run with gradients
    (on the model's device) hands out ``.grad`` after ``backward``: the gradient with respect
    to the activation at the selection (retained-grad semantics: it accumulates over backward
    calls). ``device`` moves records (e.g. ``"cpu"``);
    ``reduce`` (``Mean()``, ``MeanNorm()``, ``SecondMoment()`` or your own ``Reducer``)
    accumulates a statistic instead of keeping every activation.
    """

    reads_only = True

    def __init__(
        self,
        *,
        keep_grad: bool = False,
        device: str | torch.device | None = None,
        reduce: "Reducer | None" = None,
        heads: Sequence[int] | None = None,
        positions: Positions = None,
    ):
        super().__init__(heads=heads, positions=positions)
        if reduce is not None and not is_reducer(reduce):
            raise TypeError(
                f"Capture(reduce=...) takes a Reducer instance such as iv.Mean(), got {reduce!r}"
            )
        self.__dict__.update(  # plain attributes: see Intervention.__init__
            keep_grad=keep_grad,
            device=device,
            reduce=reduce,
            records=[],
            _feature_dims=1,
            _pattern=False,
            _reached=0,  # positions seen so far: says why a capture at far positions is empty
        )

    def check(self, site: Site, geometry: Geometry) -> None:
        super().check(site, geometry)
        self.__dict__.update(  # plain attributes: see Intervention.__init__
            _feature_dims=2 if site.kind in HEAD_KINDS else 1, _pattern=site.kind == "attn.pattern"
        )

    def start_sequence(self) -> None:
        if self.reduce is None:
            self.records.append([])

    def apply(self, x: Tensor, step: Step, *, token_dim: int = 1, head_dim: int = 2) -> Tensor:
        self.__dict__["_reached"] = max(self._reached, step.offset + step.length)
        return super().apply(x, step, token_dim=token_dim, head_dim=head_dim)

    def forward(self, x: Tensor) -> Tensor:
        tapped = self._taps(x)
        if _replaying():  # these values were recorded when the forward first ran; an edit to
            # the graph is made again (checkpointing checks the replay computes the same)
            return self._passed_on(x, self._one_position(x)) if tapped else x
        if tapped:
            return self._record_on_the_path(x)
        seen = x if self.keep_grad else x.detach()
        if self.device is not None:
            seen = seen.to(self.device)
        if self.reduce is not None:  # samples are tokens: [batch, tokens, *features] -> [n, ...]
            if self._pattern and seen.ndim == 4:  # [b, h, q, k]: a query's row over every head
                seen = seen.movedim(2, 1)
            self.reduce.update(seen.reshape(-1, *seen.shape[seen.ndim - self._feature_dims :]))
            return x
        if self.heads is None and self.positions is None and seen.device == x.device:
            # ``seen`` is the model's own tensor (no selection or move copied it): an in-place
            # op later in the forward (Falcon's ``mlp_output += attention_output``) would
            # rewrite the record
            seen = seen.clone()
        if self._one_position(seen):
            seen = seen.squeeze(2 if self._pattern else 1)
        self._store(seen)
        return x

    def _store(self, record: Tensor) -> None:
        if not self.records:
            self.records.append([])
        self.records[-1].append(record)

    def _one_position(self, x: Tensor) -> bool:
        return isinstance(self.positions, int) and x.ndim >= 2 + self._feature_dims

    def _taps(self, x: Tensor) -> bool:
        """Whether the record hands out ``.grad``: a kept graph, a record of the activation
        itself, on the model's device (a moved copy is not what the forward goes on with). The
        pattern is left out: attention has used it before its hook sees it."""
        return (
            self.keep_grad
            and self.reduce is None
            and not self._pattern
            and x.requires_grad
            and torch.is_grad_enabled()
            and (self.device is None or _same_device(x.device, self.device))
        )

    def _record_on_the_path(self, x: Tensor) -> Tensor:
        """Record ``x`` so that the forward goes on from the record: every gradient reaching
        the activation then passes through it, and ``record.grad`` (retained) is the gradient
        of a loss with respect to the activation, after ``backward``."""
        one_position = self._one_position(x)
        record = x.squeeze(1) if one_position else x
        record.retain_grad()
        self._store(record)
        return self._passed_on(record, one_position)

    def _passed_on(self, record: Tensor, one_position: bool) -> Tensor:
        """What the forward goes on with: a tensor computed from ``record``, not ``record``
        itself (an in-place op later in the forward would rewrite the record)."""
        if one_position:
            return record.unsqueeze(1)
        if self.heads is None and self.positions is None:  # the model's own tensor: a copy
            return record.clone()
        return record.view_as(record)  # a selection: the write-back copies it

    @property
    def values(self) -> list[Tensor]:
        """One tensor per sequence seen: forwards of one generate call are joined on tokens."""
        return [self._join(chunks) for chunks in self.records if chunks]

    @property
    def value(self) -> Tensor:
        """The last sequence's record (or the reduced statistic)."""
        if self.reduce is not None:
            return self.reduce.value
        values = self.values
        if not values and self._reached and self.positions is not None:
            raise ValueError(
                f"nothing was captured at positions={self.positions!r}: the forwards seen covered "
                f"positions 0..{self._reached - 1}"
            )
        if not values:
            raise ValueError("nothing was captured: run a forward inside the capture first")
        return values[-1]

    def _join(self, chunks: list[Tensor]) -> Tensor:
        if len(chunks) == 1:
            return chunks[0]
        token_dim = 2 if self._pattern else 1
        if self._pattern and len({c.shape[-1] for c in chunks}) > 1:
            raise ValueError(
                "attn.pattern was captured over forwards with different key lengths (generate "
                "with a KV cache): read capture.records for the per-forward patterns"
            )
        if isinstance(self.positions, int):  # one position per forward: stack them
            return torch.stack(chunks, dim=token_dim)
        return torch.cat(chunks, dim=token_dim)

    def clear(self) -> None:
        self.records = []
        self._reached = 0
        if self.reduce is not None:
            self.reduce.reset()


__all__ = [
    "Ablate",
    "AddBias",
    "Capture",
    "Compose",
    "Intervention",
    "Patch",
    "Positions",
    "Project",
    "Rescale",
    "Step",
    "feature_shape",
    "is_reducer",
    "resolve",
    "site_heads",
    "site_width",
]
