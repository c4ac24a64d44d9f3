"""Site names: one grammar for every architecture (DESIGN.md §1).

A site is a small frozen value ``Site(kind, layer)``; its string form is its saved form,
``"layers.12.attn.heads"`` or ``"logits"``. Patterns such as ``"layers.*.attn.heads"`` and
``"layers.3:8.resid_post"`` and lists such as ``"layers.3,5,9.resid_post"`` expand to many
sites.

One escape hatch reaches any module by its path in the causal LM, outside the adapter's
guarantees: ``"module:model.layers.3.mlp.act_fn:output"`` (or ``:input``, the module's first
input). Its kind is that whole name and it has no layer.
"""

import difflib
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

LAYER_KINDS = (
    "resid_pre",
    "attn.in",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.pattern",
    "attn.heads",
    "attn.out",
    "resid_mid",
    "mlp.in",
    "mlp.act",
    "mlp.out",
    "resid_post",
)
MODEL_KINDS = ("embed", "final_norm", "logits")
HEAD_KINDS = ("attn.heads", "attn.pattern", "attn.q", "attn.k", "attn.v")
PROJECTION_KINDS = ("attn.q", "attn.k", "attn.v")  # per head, before rotary; k, v per KV head
KV_KINDS = ("attn.k", "attn.v")
CAPTURE_ONLY_KINDS = ("attn.pattern",)

_LAYER_NAME = re.compile(r"^layers\.(?P<layers>[^.]+)\.(?P<kind>.+)$")
# "module:" cannot start a site name, and a module path has no ':' of its own
_MODULE_SITE = re.compile(
    r"^module:(?P<path>[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*):(?P<end>input|output)$"
)
MODULE_FORM = "'module:<path>:output' or 'module:<path>:input', e.g. 'module:model.norm:output'"
_INDEX = re.compile(r"[0-9]+")  # not str.isdigit: it accepts "²", which int() refuses


@dataclass(frozen=True, order=True)
class Site:
    """One activation in the forward pass: ``kind`` at ``layer`` (None for model-level sites)."""

    kind: str
    layer: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.kind, str) and self.kind.startswith("module:"):
            _module_parts(self.kind)
            if self.layer is not None:
                raise ValueError(f"module site {self.kind!r} has no layer, got layer={self.layer}")
        elif self.kind in MODEL_KINDS:
            if self.layer is not None:
                raise ValueError(f"site kind {self.kind!r} has no layer, got layer={self.layer}")
        elif self.kind in LAYER_KINDS:
            layer = _as_index(self.layer)
            if layer is None or layer < 0:
                raise ValueError(
                    f"site kind {self.kind!r} needs a layer index >= 0, got {self.layer!r} "
                    f"({type(self.layer).__name__})"
                )
            object.__setattr__(self, "layer", layer)  # a numpy or torch integer becomes an int
        else:
            raise ValueError(_unknown_message(str(self.kind), _example_names()))

    def __str__(self) -> str:
        return self.kind if self.layer is None else f"layers.{self.layer}.{self.kind}"

    @property
    def is_head_site(self) -> bool:
        return self.kind in HEAD_KINDS

    @property
    def module_path(self) -> str | None:
        """The module path of a ``module:`` site (None for every other site)."""
        return _module_parts(self.kind)[0] if self.kind.startswith("module:") else None

    @property
    def module_end(self) -> str | None:
        """``"input"`` or ``"output"`` for a ``module:`` site (None for every other site)."""
        return _module_parts(self.kind)[1] if self.kind.startswith("module:") else None


def _module_parts(name: str) -> tuple[str, str]:
    match = _MODULE_SITE.match(name)
    if match is None:
        raise ValueError(
            f"bad module site {name!r}: expected {MODULE_FORM} (the path as in "
            "model.named_modules(), of the causal LM)"
        )
    return match["path"], match["end"]


SiteLike = str | Site


def _as_index(value: object) -> int | None:
    """``value`` as an int when it is an integer (numpy and torch ones too), else None; a bool
    is not a layer index."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _not_a_site(value: object) -> TypeError:
    return TypeError(
        "a site is a str such as 'layers.3.attn.heads' or an iv.Site, got "
        f"{type(value).__name__} {value!r}"
    )


def _example_names(n_layers: int = 1) -> list[str]:
    names = list(MODEL_KINDS)
    for i in range(n_layers):
        names += [f"layers.{i}.{kind}" for kind in LAYER_KINDS]
    return names


def _unknown_message(name: str, valid: list[str]) -> str:
    layer = re.match(r"^layers\.([^.]+)\.", name)
    if layer is not None:  # suggest names at the layer (or range) the user wrote
        valid = list(MODEL_KINDS) + [f"layers.{layer[1]}.{kind}" for kind in LAYER_KINDS]
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    kinds = ", ".join(MODEL_KINDS) + ", layers.{i}." + ", layers.{i}.".join(LAYER_KINDS)
    return (
        f"unknown site {name!r}.{hint} Valid sites are: {kinds}; layers.{{i}} may also be "
        f"'*', a range '3:8' or a list '3,5,9'; any module by path: {MODULE_FORM}."
    )


def parse(name: SiteLike, n_layers: int | None = None) -> Site:
    """Parse one site name (no wildcards). With ``n_layers``, check the layer exists."""
    if isinstance(name, Site):
        site = name
    elif not isinstance(name, str):
        raise _not_a_site(name)
    else:
        sites = expand(name, n_layers)
        if len(sites) != 1 or (not name.startswith("module:") and any(c in name for c in "*:,")):
            raise ValueError(f"{name!r} names {len(sites)} sites; expected exactly one site")
        site = sites[0]
    if site.layer is not None:
        _within([site.layer], n_layers, f"site {str(site)!r}")
    return site


def expand(pattern: SiteLike | Iterable[SiteLike], n_layers: int | None = None) -> list[Site]:
    """Expand a name, a pattern (``layers.*.x``, ``layers.3:8.x``, ``layers.3,5,9.x``) or a
    list of them."""
    if isinstance(pattern, Site):
        return [parse(pattern, n_layers)]
    if isinstance(pattern, str):
        return list(_expand_name(pattern, n_layers))
    if isinstance(pattern, (bytes, bytearray)) or not isinstance(pattern, Iterable):
        raise _not_a_site(pattern)
    return [site for item in pattern for site in expand(item, n_layers)]


@lru_cache(maxsize=1024)
def _expand_name(pattern: str, n_layers: int | None) -> tuple[Site, ...]:
    # cached: every `with iv.capture(model, "layers.*.x")` expands its names again
    if pattern in MODEL_KINDS or pattern.startswith("module:"):
        return (Site(pattern),)
    match = _LAYER_NAME.match(pattern)
    if match is None or match["kind"] not in LAYER_KINDS:
        raise ValueError(_unknown_message(pattern, _example_names(n_layers or 1)))
    kind, spec = match["kind"], match["layers"]
    layers = _within(_layer_indices(spec, n_layers, pattern), n_layers, f"site {pattern!r}")
    return tuple(Site(kind, i) for i in layers)


def layer_range(spec: str, n_layers: int) -> list[int]:
    """The layer indices of a layer spec as sites write them: ``"3"``, ``"*"`` (every layer),
    ``"start:stop"`` (stop excluded, either end may be left out: ``":8"``, ``"3:"``) or a list of
    numbers and ranges, in the order written (``"3,5,9"``, ``"1,4:6"``).

    >>> layer_range("3:6", 30)
    [3, 4, 5]
    """
    return _within(_layer_indices(spec, n_layers, spec), n_layers, f"layers {spec!r}")


def _within(layers: list[int], n_layers: int | None, what: str) -> list[int]:
    """``layers``, after checking they exist in a model of ``n_layers`` (None: not known)."""
    if n_layers is not None and max(layers) >= n_layers:
        raise ValueError(
            f"{what} is out of range: the model has {n_layers} layers "
            f"(valid layer indices 0..{n_layers - 1})"
        )
    return layers


_FORMS = "a number, '*' or 'start:stop', or a list of numbers and ranges such as '3,5,9' or '1,4:6'"


def _layer_indices(spec: str, n_layers: int | None, pattern: str) -> list[int]:
    if "," in spec:
        return _listed_layers(spec, n_layers, pattern)
    if _INDEX.fullmatch(spec):
        return [int(spec)]
    if spec.startswith("-") and _INDEX.fullmatch(spec.lstrip("-")):
        last = f" (this model's last layer is {n_layers - 1})" if n_layers else ""
        raise ValueError(
            f"bad layer index {spec!r} in {pattern!r}: layers count from 0 and cannot be "
            f"negative{last}"
        )
    if spec == "*" or ":" in spec:
        if n_layers is None and (spec == "*" or spec.endswith(":")):
            raise ValueError(f"{pattern!r} needs the model's layer count to expand")
        if spec == "*":
            return list(range(n_layers))
        start, _, stop = spec.partition(":")
        if not all(end == "" or _INDEX.fullmatch(end) for end in (start, stop)):
            raise ValueError(
                f"bad layer range in {pattern!r}: expected 'start:stop' with non-negative "
                "integers, e.g. 'layers.3:8.resid_post' (stop excluded)"
            )
        lo = int(start) if start else 0
        if n_layers is not None and lo >= n_layers:
            raise ValueError(
                f"{pattern!r} starts at layer {lo}, but the model has {n_layers} layers "
                f"(0..{n_layers - 1})"
            )
        hi = int(stop) if stop else n_layers
        if hi <= lo:
            raise ValueError(
                f"empty layer range in {pattern!r}: stop {hi} is not greater than start {lo} "
                f"(stop is excluded: {lo}:{lo + 1} is layer {lo} alone)"
            )
        return list(range(lo, hi))
    raise ValueError(f"bad layer index {spec!r} in {pattern!r}: expected {_FORMS}")


def _listed_layers(spec: str, n_layers: int | None, pattern: str) -> list[int]:
    """``"1,4:6"``: each item a number or a range, in the order written, none twice."""
    layers: list[int] = []
    for item in spec.split(","):
        if item == "" or item == "*":
            raise ValueError(
                f"bad layer list {spec!r} in {pattern!r}: "
                + ("an empty item" if item == "" else "'*' is every layer, not a list item")
                + f"; expected {_FORMS}"
            )
        for layer in _layer_indices(item, n_layers, pattern):
            if layer in layers:
                raise ValueError(
                    f"layer {layer} is listed twice in {pattern!r}; name each layer once"
                )
            layers.append(layer)
    return layers


def all_sites(n_layers: int) -> list[Site]:
    """Every site of a model with ``n_layers`` layers, in forward order."""
    layer_sites = [Site(kind, i) for i in range(n_layers) for kind in LAYER_KINDS]
    return [Site("embed"), *layer_sites, Site("final_norm"), Site("logits")]
