"""Weight edits: fold linear interventions into weights (``bake``) and ``WeightDelta`` records.

``bake(model, plan)`` folds ``AddBias``, ``Rescale`` and ``Project`` (alone or composed) at
``attn.heads``, ``attn.out`` and ``mlp.out`` into the ``o_proj`` / ``down_proj`` weight and
bias. An intervention at ``attn.heads`` is an affine map ``x -> A x + c`` of the projection's
input, so ``W' = W A`` and ``b' = b + W c``; at ``attn.out`` / ``mlp.out`` it maps the output,
so ``W' = A W`` and ``b' = A b + c``. ``A`` and ``c`` are read off the intervention itself by
running it on the zero vector and the unit vectors (in float64).

A ``WeightDelta`` keeps the new values and the originals of every parameter it touches:
``revert`` restores them bit-exactly, ``save``/``load`` use safetensors (``save_tensors`` /
``load_tensors``, the one file format of the package: atomic, format-checked), ``apply`` refuses
a model whose parameters are not the ones it was made from, and ``revert`` one whose parameters
no longer hold what the delta wrote (stacked edits revert newest first).
"""

import difflib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from interventions.adapters import Adapter, adapter, causal_lm, require_in_memory
from interventions.attach import Plan, normalize_plan
from interventions.files import load_tensors, save_tensors
from interventions.ops import AddBias, Compose, Intervention, Project, Rescale
from interventions.sites import Site, layer_range

FOLDABLE_KINDS = ("attn.heads", "attn.out", "mlp.out")
_FORMAT = "interventions.WeightDelta/1"


@dataclass
class WeightDelta:
    """New values of some parameters, with the originals they replace.

    ``originals[name] is None`` marks a parameter the delta creates (a bias the architecture
    lacks); ``config`` holds ``attr -> (old, new)`` config changes that go with it.
    """

    changes: dict[str, Tensor]
    originals: dict[str, Tensor | None]
    config: dict[str, tuple[object, object]] = field(default_factory=dict)
    applied: bool = False

    # --- applying ---------------------------------------------------------------------------------
    def apply(self, model: nn.Module, *, check: bool = True) -> "WeightDelta":
        """Write the new values into ``model``. With ``check``, refuse a model whose current
        parameters differ from the originals this delta was made from."""
        if self.applied:
            raise RuntimeError("this WeightDelta is already applied; revert it first")
        model = causal_lm(model)
        self._validate(model, check=check)
        with torch.no_grad():
            for name, new in self.changes.items():
                if self.originals[name] is None:
                    module, attr = _owner(model, name)
                    reference = next(module.parameters())
                    # a copy: a Parameter sharing storage with ``changes`` would make later
                    # in-place edits of it look like this delta's values to ``revert``
                    value = new.to(reference.device, reference.dtype, copy=True)
                    setattr(module, attr, nn.Parameter(value))
                else:
                    model.get_parameter(name).copy_(new)
        for attr, (_, new_value) in self.config.items():
            setattr(model.config, attr, new_value)
        self.applied = True
        return self

    def revert(self, model: nn.Module) -> None:
        """Restore every touched parameter bit-exactly, remove created ones, undo config.

        Refuses (changing nothing) a model whose parameters do not hold exactly the values this
        delta wrote: a later edit of the same parameters must be reverted first, and another
        model must not receive this model's originals."""
        if not self.applied:
            raise RuntimeError("this WeightDelta is not applied to a model; nothing to revert")
        model = causal_lm(model)
        self._check_holds_changes(model)  # first: a refused revert changes nothing
        with torch.no_grad():
            for name, original in self.originals.items():
                if original is None:
                    module, attr = _owner(model, name)
                    module.register_parameter(attr, None)
                else:
                    model.get_parameter(name).copy_(original)
        for attr, (old_value, _) in self.config.items():
            setattr(model.config, attr, old_value)
        self.applied = False

    def _validate(self, model: nn.Module, *, check: bool) -> None:
        for name, new in self.changes.items():
            _require_finite(name, new)
            original = self.originals[name]
            if original is None:
                module, attr = _owner(model, name)
                if getattr(module, attr, None) is not None:
                    raise ValueError(
                        f"this WeightDelta creates {name}, but the model already has it: it was "
                        "made for a model without that parameter"
                    )
                require_in_memory(f"the weight beside {name}", next(module.parameters()))
                continue
            current = _parameter(model, name)
            require_in_memory(f"parameter {name}", current)
            if current.shape != new.shape:
                raise ValueError(
                    f"parameter {name} has shape {tuple(current.shape)} in this model, but the "
                    f"WeightDelta expects {tuple(new.shape)}: it was made for another model"
                )
            if check and not torch.equal(current.detach().cpu(), original.cpu()):
                raise ValueError(
                    f"parameter {name} differs from the one this WeightDelta was made from: "
                    "apply it to the model it was made for (or pass check=False)"
                )

    def _check_holds_changes(self, model: nn.Module) -> None:
        for name, new in self.changes.items():
            if self.originals[name] is None:
                current = _created_parameter(model, name)
            else:
                current = _parameter(model, name)
            require_in_memory(f"parameter {name}", current)
            if not _holds(current, new):
                raise ValueError(
                    f"parameter {name} does not hold the values this WeightDelta wrote, so "
                    "reverting would overwrite a later change: if other edits (bake, another "
                    "WeightDelta, training) changed it after this one, revert those first, "
                    "newest first; if this is another model, revert on the model the delta "
                    "was applied to. Nothing was reverted"
                )

    # --- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Save as one safetensors file (atomic: see ``save_tensors``)."""
        tensors = {f"new/{name}": t for name, t in self.changes.items()}
        for name, original in self.originals.items():
            if original is not None:
                tensors[f"old/{name}"] = original
        metadata = {
            "created": json.dumps([n for n, o in self.originals.items() if o is None]),
            "config": json.dumps({k: list(v) for k, v in self.config.items()}),
        }
        return save_tensors(path, tensors, format=_FORMAT, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WeightDelta":
        """Load a delta saved by ``save`` (not applied).

        A missing file raises FileNotFoundError; a file that is not a complete WeightDelta file
        (truncated, another format, damaged metadata) raises ValueError naming it."""
        path = Path(path)
        tensors, metadata = load_tensors(path, format=_FORMAT)
        created = _metadata_json(metadata, "created", path)
        config = _metadata_json(metadata, "config", path)
        if not isinstance(created, list) or not all(isinstance(n, str) for n in created):
            raise ValueError(f"{path}: metadata 'created' is not a list of parameter names")
        if not isinstance(config, dict) or not all(
            isinstance(v, list) and len(v) == 2 for v in config.values()
        ):
            raise ValueError(f"{path}: metadata 'config' is not a mapping of attr -> [old, new]")
        stray = [k for k in tensors if not k.startswith(("new/", "old/"))]
        if stray:
            raise ValueError(f"{path}: unexpected tensors {stray[:3]} (not written by save)")
        changes = {k[4:]: v for k, v in tensors.items() if k.startswith("new/")}
        originals: dict[str, Tensor | None] = {n: tensors.get(f"old/{n}") for n in changes}
        _check_file_entries(path, changes, originals, set(created), tensors)
        config_changes = {attr: tuple(values) for attr, values in config.items()}
        return cls(changes=changes, originals=originals, config=config_changes)

    @classmethod
    def from_change(cls, model: nn.Module, originals: Mapping[str, Tensor]) -> "WeightDelta":
        """An applied delta from parameters changed in place (e.g. by training).

        ``originals`` maps parameter names (of the causal LM, also when ``model`` is a PEFT
        model) to copies taken before the change.
        """
        if not isinstance(originals, Mapping):
            raise TypeError(
                "from_change: originals must map parameter names to copies taken before the "
                f"change, got {type(originals).__name__}"
            )
        model = causal_lm(model)
        changes = {
            name: _changed_parameter(model, name, original).detach().clone()
            for name, original in originals.items()
        }
        return cls(changes=changes, originals={n: t.detach().clone() for n, t in originals.items()},
                   applied=True)  # fmt: skip

    @property
    def names(self) -> list[str]:
        return list(self.changes)

    # --- recording and combining ------------------------------------------------------------------
    @staticmethod
    def recording(model: nn.Module, names: str | Iterable[str]) -> "Recording":
        """A context manager that records what happens to the parameters ``names`` inside it.

        ``names`` are parameter names of the causal LM (also when ``model`` is a PEFT model), one
        name or several, e.g. the keys of ``iv.parameters(model, "layers.3.mlp")``. On entry the
        parameters are copied; if the block raises anything (KeyboardInterrupt included), their
        values, ``requires_grad``, gradients and every module's train/eval mode are put back
        bit-exactly and the exception goes on. On success, ``.delta`` is the applied
        ``WeightDelta`` of the parameters that changed::

            with iv.WeightDelta.recording(model, iv.parameters(model, "layers.3.mlp")) as rec:
                train(model)
            rec.delta.revert(model)
        """
        return Recording(model, names)

    @classmethod
    def combine(cls, deltas: Iterable["WeightDelta"]) -> "WeightDelta":
        """One delta from deltas made one after another on one model, oldest first: each
        parameter's first original and last new value (config changes likewise).

        Applying it writes what applying them in order writes; reverting it restores what
        reverting them all restores (revert either the combined delta or its parts, not both).
        Refuses deltas that are not such a sequence: a delta made from values of a parameter
        other than those the delta before it wrote (another model, another order, an edit in
        between), of another shape, creating a parameter an earlier one wrote, or applied and
        not applied ones mixed."""
        deltas = _delta_list(deltas)
        applied = {delta.applied for delta in deltas}
        if len(applied) > 1:
            states = [delta.applied for delta in deltas]
            raise ValueError(
                f"combine: some deltas are applied and some are not (applied: {states}); combine "
                "deltas that are all applied (or all reverted)"
            )
        changes: dict[str, Tensor] = {}
        originals: dict[str, Tensor | None] = {}
        config: dict[str, tuple[object, object]] = {}
        writer: dict[str, int] = {}  # the delta that wrote each parameter last
        for i, delta in enumerate(deltas):
            for name, new in delta.changes.items():
                original = delta.originals.get(name)
                if name in changes:
                    _check_follows(name, original, changes[name], i, writer[name])
                else:
                    originals[name] = original
                changes[name], writer[name] = new, i
            for attr, (old, new_value) in delta.config.items():
                if attr in config and config[attr][1] != old:
                    raise ValueError(
                        f"combine: deltas[{i}] changes config {attr} from {old!r}, but an earlier "
                        f"delta set it to {config[attr][1]!r}: pass deltas made one after "
                        "another, oldest first"
                    )
                config[attr] = (config[attr][0] if attr in config else old, new_value)
        return cls(changes=changes, originals=originals, config=config, applied=applied.pop())


class Recording:
    """What ``WeightDelta.recording(model, names)`` returns: use it in a ``with`` block.

    ``originals`` (name -> copy taken on entry; read them, do not change them) and, after a block
    that ended without an exception, ``delta``: the applied WeightDelta of what changed (None
    before; an empty delta when nothing changed)."""

    def __init__(self, model: nn.Module, names: str | Iterable[str]) -> None:
        self._root = model  # a PEFT wrapper's own train/eval mode is restored too
        self._model = causal_lm(model)
        self._params = _recorded_parameters(self._model, names)
        self.originals: dict[str, Tensor] = {}
        self.delta: WeightDelta | None = None
        self._entered = False

    def __enter__(self) -> "Recording":
        if self._entered:
            raise RuntimeError("this recording was already used; call WeightDelta.recording again")
        self._entered = True
        self._modes = [(module, module.training) for module in self._root.modules()]
        self._state = {
            name: (p.requires_grad, None if p.grad is None else p.grad.detach().clone())
            for name, p in self._params.items()
        }
        self.originals = {name: p.detach().clone() for name, p in self._params.items()}
        return self

    def __exit__(self, error_type, error, traceback) -> bool:
        if error_type is not None:
            self._restore()
            return False  # re-raise
        changes, originals = {}, {}
        for name, original in self.originals.items():
            current = self._model.get_parameter(name)  # the block may have replaced it
            if current.shape != original.shape:
                self._restore()
                raise ValueError(
                    f"recording: parameter {name} changed shape inside the block, from "
                    f"{tuple(original.shape)} to {tuple(current.shape)}; a WeightDelta records "
                    "changes of values only, so the parameters were put back as they were"
                )
            if not _holds(current, original):
                changes[name] = current.detach().clone()
                originals[name] = original
        self.delta = WeightDelta(changes=changes, originals=originals, applied=True)
        return False

    def _restore(self) -> None:
        with torch.no_grad():
            for name, param in self._params.items():
                module, attr = _owner(self._model, name)
                if module._parameters.get(attr) is not param:  # replaced inside the block
                    module._parameters[attr] = param
                param.copy_(self.originals[name])
                requires_grad, grad = self._state[name]
                param.requires_grad_(requires_grad)
                param.grad = grad
        for module, training in self._modes:
            module.training = training


def _recorded_parameters(model: nn.Module, names: object) -> dict[str, nn.Parameter]:
    """The causal LM's parameters named in ``names`` (one name or an iterable of names)."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, Iterable) or isinstance(names, (bytes, Tensor)):
        raise TypeError(
            "recording: names must be parameter names (a str, or an iterable of them such as "
            f"iv.parameters(model, ...)), got {type(names).__name__}"
        )
    params: dict[str, nn.Parameter] = {}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"recording: names must be parameter names (str), got {name!r} "
                f"({type(name).__name__})"
            )
        param = _named_parameter(model, name, "recording")
        require_in_memory(f"parameter {name}", param)
        params[name] = param
    if not params:
        raise ValueError(
            "recording: names is empty; pass the names of the parameters the block may change, "
            "e.g. iv.parameters(model, 'layers.3.mlp')"
        )
    return params


def _delta_list(deltas: object) -> list[WeightDelta]:
    if isinstance(deltas, WeightDelta) or not isinstance(deltas, Iterable):
        raise TypeError(
            f"combine takes an iterable of WeightDelta (oldest first), got {type(deltas).__name__}"
        )
    deltas = list(deltas)
    for i, delta in enumerate(deltas):
        if not isinstance(delta, WeightDelta):
            raise TypeError(f"combine: deltas[{i}] is a {type(delta).__name__}, not a WeightDelta")
    if not deltas:
        raise ValueError("combine: no deltas to combine; pass at least one WeightDelta")
    return deltas


def _check_follows(name: str, original: Tensor | None, written: Tensor, i: int, j: int) -> None:
    """Refuse ``deltas[i]`` unless it was made from the values of ``name`` that ``deltas[j]``
    (the last earlier delta writing it) wrote."""
    if original is None:
        raise ValueError(
            f"combine: deltas[{i}] creates {name}, but deltas[{j}] before it already wrote it: "
            "pass deltas made one after another on one model, oldest first"
        )
    if original.shape != written.shape:
        raise ValueError(
            f"combine: {name} has shape {tuple(original.shape)} in deltas[{i}] but "
            f"{tuple(written.shape)} in deltas[{j}]: these deltas are for different models"
        )
    if not _holds(original, written):
        raise ValueError(
            f"combine: deltas[{i}] was made from values of {name} other than those deltas[{j}] "
            "wrote (another model, another order, or an edit in between): pass deltas made one "
            "after another on one model, oldest first"
        )


def _parameter(model: nn.Module, name: str) -> Tensor:
    """The parameter ``name`` of ``model``; a ValueError saying the delta was made for another
    architecture when the model has none (torch only says "has no attribute transformer")."""
    try:
        return model.get_parameter(name)
    except AttributeError as error:
        raise ValueError(
            f"the model ({type(model).__name__}) has no parameter {name!r}: this WeightDelta "
            "was made for another architecture"
        ) from error


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that holds (or is to hold) parameter ``name``, and the attribute's name; a
    ValueError saying the delta was made for another architecture when there is no such module."""
    module_name, _, attr = name.rpartition(".")
    try:
        return model.get_submodule(module_name), attr
    except AttributeError as error:
        raise ValueError(
            f"this WeightDelta creates {name}, but the model ({type(model).__name__}) has no "
            f"module {module_name!r}: it was made for another architecture"
        ) from error


def _created_parameter(model: nn.Module, name: str) -> Tensor:
    """A parameter the delta created, which must still be there to be removed."""
    module, attr = _owner(model, name)
    current = getattr(module, attr, None)
    if not isinstance(current, Tensor):
        raise ValueError(
            f"this WeightDelta created {name}, but the model has no such parameter: it was "
            "removed since (revert later edits first, newest first) or this is another model "
            "(revert on the model the delta was applied to). Nothing was reverted"
        )
    return current


def _require_finite(name: str, new: Tensor) -> None:
    if new.is_floating_point() or new.is_complex():
        bad = int((~torch.isfinite(new)).sum())
        if bad:
            raise ValueError(
                f"the new value of parameter {name} has {bad} non-finite (NaN or inf) entries, "
                f"so this WeightDelta was not applied and nothing was written: the edit that made "
                f"it overflowed {new.dtype} or diverged; use a smaller edit or redo the run"
            )


def _named_parameter(model: nn.Module, name: str, caller: str) -> nn.Parameter:
    """``model.get_parameter(name)``; a ValueError listing close names when there is none."""
    try:
        return model.get_parameter(name)
    except AttributeError:
        names = [n for n, _ in model.named_parameters()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"{caller}: the model ({type(model).__name__}) has no parameter {name!r}.{hint} "
            "Name parameters as the causal LM's named_parameters() does"
        ) from None


def _changed_parameter(model: nn.Module, name: object, original: object) -> Tensor:
    """The parameter ``name`` that ``original`` (a copy from before the change) belongs to."""
    if not isinstance(name, str):
        raise TypeError(f"from_change: originals' keys are parameter names, got {name!r}")
    if not isinstance(original, Tensor):
        raise TypeError(
            f"from_change: originals[{name!r}] must be a tensor (a copy of the parameter taken "
            f"before the change), got {type(original).__name__}"
        )
    current = _named_parameter(model, name, "from_change")
    require_in_memory(f"parameter {name}", current)
    if original.shape != current.shape:
        raise ValueError(
            f"from_change: originals[{name!r}] has shape {tuple(original.shape)}, but the "
            f"parameter has shape {tuple(current.shape)}: pass a copy of that parameter"
        )
    if not original.is_meta and original.untyped_storage().data_ptr() == (
        current.untyped_storage().data_ptr()
    ):
        raise ValueError(
            f"from_change: originals[{name!r}] is the parameter itself (or a view of it), not a "
            "copy from before the change: take p.detach().clone() before changing it"
        )
    return current


# --- files ---------------------------------------------------------------------------------------


def _metadata_json(metadata: Mapping[str, str], key: str, path: Path) -> object:
    if key not in metadata:
        raise ValueError(
            f"{path}: the WeightDelta metadata has no {key!r} entry; the file is damaged or was "
            "not written by WeightDelta.save"
        )
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: metadata {key!r} is not valid JSON ({error})") from None


def _check_file_entries(
    path: Path,
    changes: Mapping[str, Tensor],
    originals: Mapping[str, Tensor | None],
    created: set[str],
    tensors: Mapping[str, Tensor],
) -> None:
    """Every parameter of a loaded file has a new value and (unless created) an original of the
    same shape."""
    not_changed = sorted(created - set(changes))
    not_changed += sorted(k[4:] for k in tensors if k.startswith("old/") and k[4:] not in changes)
    if not_changed:
        raise ValueError(f"{path} has no new values of {not_changed[:3]}: the file is damaged")
    missing = sorted(n for n in set(changes) - created if originals[n] is None)
    if missing:
        raise ValueError(f"{path} is missing the original values of {missing[:3]}")
    for name, new in changes.items():
        original = originals[name]
        if original is not None and original.shape != new.shape:
            raise ValueError(
                f"{path}: {name} has new shape {tuple(new.shape)} but original shape "
                f"{tuple(original.shape)}: the file is damaged"
            )


def _holds(current: Tensor, written: Tensor) -> bool:
    """Whether ``current`` holds bit for bit what copying ``written`` into it wrote (NaNs
    included, which ``torch.equal`` never calls equal)."""
    expected = written.detach().to("cpu", current.dtype)
    current = current.detach().cpu()
    if current.shape != expected.shape:
        return False
    as_bytes = [t.contiguous().reshape(-1).view(torch.uint8) for t in (current, expected)]
    return torch.equal(*as_bytes)


# --- parameters: weight names -------------------------------------------------------------------

# weight kind -> the adapter field giving its module's path in a block
PROJECTIONS = {
    "attn.q_proj": "q_proj",
    "attn.k_proj": "k_proj",
    "attn.v_proj": "v_proj",
    "attn.o_proj": "o_proj",
    "mlp.gate_proj": "gate_proj",
    "mlp.up_proj": "up_proj",
    "mlp.down_proj": "down_proj",
}
# a whole sub-layer: the adapter field of its module, and the projections that belong to it
# (OPT has no MLP module: its MLP is fc1 and fc2)
GROUPS = {
    "attn": ("attn", ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj")),
    "mlp": ("mlp", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
}
WEIGHT_KINDS = (*GROUPS, *PROJECTIONS)
_WEIGHT_NAME = re.compile(r"^layers\.(?P<layers>[^.]+)(?:\.(?P<kind>.+))?$")
_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj"}
_FUSED |= {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
_FUSED_WHAT = {
    "qkv_proj": "queries, keys and values",
    "gate_up_proj": "the gate and up projections",
}


def parameters(model: nn.Module, pattern: str | Iterable[str]) -> dict[str, nn.Parameter]:
    """The parameters that weight names resolve to, keyed by the causal LM's parameter names
    (as its ``named_parameters()`` gives them, also when ``model`` is a PEFT model, whose
    adapter weights of a wrapped projection come with it).

    A weight name is ``layers.{i}`` (the whole block), ``layers.{i}.attn`` / ``layers.{i}.mlp``
    (all of attention / the MLP) or ``layers.{i}.{projection}``, projection one of
    ``attn.q_proj``, ``attn.k_proj``, ``attn.v_proj``, ``attn.o_proj``, ``mlp.gate_proj``,
    ``mlp.up_proj``, ``mlp.down_proj`` (weight and bias); ``{i}`` is a layer, ``*`` or a range
    ``3:8`` as sites write them. ``pattern`` is one name or an iterable of them::

        iv.parameters(model, ["layers.8:12.attn.v_proj", "layers.*.mlp.down_proj"])

    A projection the architecture does not have alone (GPT-2's fused ``attn.c_attn`` computes
    q, k and v) raises NotImplementedError naming what it has instead; a bad name raises
    ValueError listing close valid names. Offloaded (meta) parameters are returned as they are:
    what edits them refuses them.
    """
    table = adapter(model)
    n_layers = table.geometry(model.config).n_layers
    found: dict[str, nn.Parameter] = {}
    for name in _weight_names(pattern):
        kind, layers = _parse_weight_name(name, n_layers)
        for layer in layers:
            found.update(_layer_parameters(model, table, layer, kind))
    return found


def _weight_names(pattern: object) -> list[str]:
    names = [pattern] if isinstance(pattern, str) else pattern
    if isinstance(names, (bytes, Mapping, Tensor)) or not isinstance(names, Iterable):
        raise TypeError(
            "parameters: pattern must be a weight name such as 'layers.3.mlp.down_proj' or an "
            f"iterable of them, got {type(pattern).__name__}"
        )
    names = list(names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"parameters: weight names are str, such as 'layers.3.attn.v_proj', got "
                f"{name!r} ({type(name).__name__})"
            )
    if not names:
        raise ValueError(
            "parameters: pattern is empty; pass weight names such as 'layers.3.mlp' or "
            "'layers.*.attn.o_proj'"
        )
    return names


def _parse_weight_name(name: str, n_layers: int) -> tuple[str | None, list[int]]:
    """``(kind, layers)``: kind None for the whole block."""
    match = _WEIGHT_NAME.match(name)
    if match is None or (match["kind"] is not None and match["kind"] not in WEIGHT_KINDS):
        spec = match["layers"] if match is not None else "{i}"
        valid = [f"layers.{spec}"] + [f"layers.{spec}.{kind}" for kind in WEIGHT_KINDS]
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown weight name {name!r}.{hint} Weight names are layers.{{i}} (the block) or "
            f"layers.{{i}}.{{kind}}, kind one of {', '.join(WEIGHT_KINDS)}; {{i}} is a layer, "
            "'*' or 'start:stop'"
        )
    try:
        layers = layer_range(match["layers"], n_layers)
    except ValueError as error:
        raise ValueError(f"weight name {name!r}: {error}") from None
    return match["kind"], layers


def _layer_parameters(
    model: nn.Module, table: Adapter, layer: int, kind: str | None
) -> dict[str, nn.Parameter]:
    block = table.blocks(model)[layer]
    prefix = f"{table.layers}.{layer}"
    if kind is None:
        return dict(block.named_parameters(prefix=prefix))
    if kind in PROJECTIONS:
        path, module = _projection(table, block, layer, kind)
        return dict(module.named_parameters(prefix=f"{prefix}.{path}"))
    field_name, members = GROUPS[kind]
    modules = [_resolved(block, getattr(table, field_name))]
    for member in members:  # those outside the group's module (OPT's fc2), deduplicated below
        path = getattr(table, PROJECTIONS[member])
        modules.append(_resolved(block, path) if path is not None else None)
    found: dict[str, nn.Parameter] = {}
    for resolved in modules:
        if resolved is not None:
            path, module = resolved
            found.update(module.named_parameters(prefix=f"{prefix}.{path}" if path else prefix))
    return found


def _projection(table: Adapter, block: nn.Module, layer: int, kind: str) -> tuple[str, nn.Module]:
    """``(path, module)`` of projection ``kind`` in ``block``; NotImplementedError where the
    architecture has no such module alone."""
    group = kind.partition(".")[0]
    instead = f"use layers.{layer}.{group} (all of {'attention' if group == 'attn' else 'the MLP'})"
    path = getattr(table, PROJECTIONS[kind])
    resolved = None if path is None else _resolved(block, path)
    if resolved is None:
        reason = _why_absent(table, block, layer, kind)
        raise NotImplementedError(f"{kind} on {table.name}: {reason}; {instead}")
    path, module = resolved
    if "weight" not in module._parameters and "base_layer" not in module._modules:
        fused = [n for n, p in module.named_parameters(recurse=False) if p.ndim == 3]
        raise NotImplementedError(
            f"{kind} on {table.name}: {path!r} has no weight matrix"
            + (f" (its experts are fused 3-D parameters: {', '.join(fused)})" if fused else "")
            + (
                f" (it is a list of {len(module)} expert modules)"
                if isinstance(module, nn.ModuleList)
                else ""
            )
            + f"; {instead}"
        )
    return path, module


_UNLIKE = (
    "a layer unlike those the table describes, e.g. a dense layer of a mixture-of-experts model"
)


def _why_absent(table: Adapter, block: nn.Module, layer: int, kind: str) -> str:
    """Why ``block`` has no module for projection ``kind``: fused, not gated, or not there."""
    field_name = PROJECTIONS[kind]
    path = getattr(table, field_name)
    if path is not None:
        return f"layer {layer} has no module {path!r}, the table's {kind} ({_UNLIKE})"
    fused_field = _FUSED.get(field_name)
    fused = None if fused_field is None else getattr(table, fused_field)
    if fused is not None:
        together = _FUSED_WHAT[fused_field]
        if _resolved(block, fused) is None:
            return (
                f"the table's {field_name} is None, and layer {layer} has no {fused!r}, the "
                f"fused module computing {together} together ({_UNLIKE})"
            )
        return f"one fused module, {fused!r}, computes {together} together"
    if field_name == "gate_proj" and table.up_proj is not None:
        return f"its MLP is not gated (its up projection is {table.up_proj!r})"
    owner = _resolved(block, getattr(table, GROUPS[kind.partition(".")[0]][0]))
    names = [] if owner is None else _projection_names(owner[1])
    there = f"; the projections there: {', '.join(names)}" if names else ""
    return f"no module is {kind} alone (the table's {field_name} is None{there})"


def _resolved(block: nn.Module, path: str) -> tuple[str, nn.Module] | None:
    """``(path, module)`` for the first alternative of ``path`` (``"mlp|block_sparse_moe"``)
    that ``block`` has, the path as parameter names spell it; None when it has none."""
    for alternative in path.split("|"):
        try:
            return alternative, Adapter.submodule(block, alternative)
        except AttributeError:
            continue
    return None


def _projection_names(module: nn.Module) -> list[str]:
    """The children of ``module`` that hold a weight matrix."""
    return [
        name
        for name, child in module.named_children()
        if getattr(child, "weight", None) is not None and child.weight.ndim == 2
    ]


# --- bake ------------------------------------------------------------------------------------


def _affine(intervention: Intervention, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``(A, c)`` with ``f(x) = A x + c`` on the last dim, for each leading index of ``shape``.

    Returns ``A: [*lead, d, d]`` and ``c: [*lead, d]`` in float64.
    """
    *lead, d = shape
    probe = torch.cat([torch.zeros(1, d), torch.eye(d)], dim=0).double()  # [d + 1, d]
    probe = probe.reshape(d + 1, *([1] * len(lead)), d).expand(d + 1, *lead, d)
    with torch.no_grad():
        out = intervention(probe)
    c = out[0]
    a = (out[1:] - c).movedim(0, -1)  # [*lead, d_out, d_in]
    return a, c


def _check_foldable(site: Site, intervention: Intervention) -> None:
    if site.kind not in FOLDABLE_KINDS:
        raise ValueError(
            f"bake folds interventions at {', '.join(FOLDABLE_KINDS)}; {site} cannot be folded "
            "into weights (use iv.intervene instead)"
        )
    parts = intervention.parts if isinstance(intervention, Compose) else [intervention]
    for part in parts:
        if isinstance(part, Compose):
            _check_foldable(site, part)
            continue
        if type(part) not in (AddBias, Rescale, Project):
            raise ValueError(
                f"{type(part).__name__} at {site} is not a linear intervention; bake folds "
                "AddBias, Rescale and Project (and Compose of them)"
            )
        if part.positions is not None:
            raise ValueError(
                f"{type(part).__name__} at {site} acts at positions={part.positions!r}; weights "
                "act at every position, so only positions=None can be baked (use iv.intervene)"
            )


def _check_projection_output(table: Adapter, site: Site, config) -> None:
    """Only a site that is the projection's own output folds into its weights."""
    table.refuse(site.kind, config)
    read_at = {"attn.out": table.attn_out, "mlp.out": table.mlp_out}.get(site.kind)
    if read_at is not None:
        raise NotImplementedError(
            f"bake at {site} on {table.name}: this site is the output of {read_at!r}, not of "
            f"the projection {_projection_path(table, site)!r}, so it cannot be folded into its "
            "weights; bake at attn.heads, or use iv.intervene"
        )


def _input_affine(intervention: Intervention, n_heads: int, d_head: int) -> tuple[Tensor, Tensor]:
    """Block-diagonal ``A`` [n_heads*d_head]^2 and ``c`` of an intervention at attn.heads."""
    parts = intervention.parts if isinstance(intervention, Compose) else [intervention]
    a_full = torch.eye(n_heads * d_head, dtype=torch.float64)
    c_full = torch.zeros(n_heads * d_head, dtype=torch.float64)
    for part in parts:
        if isinstance(part, Compose):
            a_part, c_part = _input_affine(part, n_heads, d_head)
        else:
            heads = list(part.heads) if part.heads is not None else list(range(n_heads))
            a_heads, c_heads = _affine(part, (len(heads), d_head))
            a_part = torch.eye(n_heads * d_head, dtype=torch.float64)
            c_part = torch.zeros(n_heads * d_head, dtype=torch.float64)
            for i, h in enumerate(heads):
                block = slice(h * d_head, (h + 1) * d_head)
                a_part[block, block] = a_heads[i]
                c_part[block] = c_heads[i]
        a_full, c_full = a_part @ a_full, a_part @ c_full + c_part
    return a_full, c_full


def _output_affine(intervention: Intervention, d: int) -> tuple[Tensor, Tensor]:
    parts = intervention.parts if isinstance(intervention, Compose) else [intervention]
    a_full = torch.eye(d, dtype=torch.float64)
    c_full = torch.zeros(d, dtype=torch.float64)
    for part in parts:
        a_part, c_part = (
            _output_affine(part, d) if isinstance(part, Compose) else _affine(part, (d,))
        )
        a_full, c_full = a_part @ a_full, a_part @ c_full + c_part
    return a_full, c_full


def _projection_path(table: Adapter, site: Site) -> str:
    return table.o_proj if site.kind.startswith("attn") else table.down_proj


def bake(model: nn.Module, plan: Plan) -> WeightDelta:
    """Fold a plan of linear interventions into weights; returns the applied ``WeightDelta``.

    Nothing is changed if any entry cannot be folded.
    """
    table = adapter(model)
    geometry = table.geometry(model.config)
    sites = normalize_plan(model, plan)
    for site, intervention in sites.items():
        _check_foldable(site, intervention)
        _check_projection_output(table, site, model.config)
    layers_prefix = table.layers
    changes: dict[str, Tensor] = {}
    originals: dict[str, Tensor | None] = {}
    config: dict[str, tuple[object, object]] = {}
    # Input-side edits (attn.heads) before output-side edits (attn.out) of the same projection.
    order = {"attn.heads": 0, "attn.out": 1, "mlp.out": 1}
    for site in sorted(sites, key=lambda s: (s.layer, order[s.kind])):
        path = _projection_path(table, site)
        module = table.block_module(model, site.layer, path)
        prefix = f"{layers_prefix}.{site.layer}.{path}"
        weight_name, bias_name = f"{prefix}.weight", f"{prefix}.bias"
        w = changes.get(weight_name)
        w = table.weight(module).double() if w is None else table.from_storage(w).double()
        b = changes.get(bias_name)
        if b is None:
            b = (
                module.bias.double()
                if module.bias is not None
                else torch.zeros(w.shape[0]).double()
            )
        else:
            b = b.double()
        w, b = w.detach().cpu(), b.detach().cpu()
        if site.kind == "attn.heads":
            a, c = _input_affine(sites[site], geometry.n_heads, geometry.d_head)
            w, b = w @ a, b + w @ c
        else:
            a, c = _output_affine(sites[site], w.shape[0])
            w, b = a @ w, a @ b + c
        reference = module.weight
        changes[weight_name] = table.to_storage(w).to(reference.device, reference.dtype)
        originals.setdefault(weight_name, module.weight.detach().clone())
        if module.bias is None and not bool((b == 0).all()):
            _create_biases(table, model, site.layer, path, changes, originals, config)
        if module.bias is not None or bias_name in changes:
            changes[bias_name] = b.to(reference.device, reference.dtype)
            if module.bias is not None:
                originals.setdefault(bias_name, module.bias.detach().clone())
    delta = WeightDelta(changes=changes, originals=originals, config=config)
    return delta.apply(model)


def _create_biases(
    table: Adapter,
    model: nn.Module,
    layer: int,
    path: str,
    changes: dict[str, Tensor],
    originals: dict[str, Tensor | None],
    config: dict[str, tuple[object, object]],
) -> None:
    flag = table.bias_flags.get(path)
    if flag is None:
        warnings.warn(
            f"{table.name} has no config flag for a bias on {path}: the baked bias works in "
            "memory, but save_pretrained/from_pretrained will drop it; save the WeightDelta "
            "(delta.save(path)) to keep it",
            stacklevel=3,
        )
        targets = [(layer, path)]
    else:
        config[flag.config_attr] = (getattr(model.config, flag.config_attr, False), True)
        # The flag gives every block these biases on reload: create them all (zero) now.
        n_layers = table.geometry(model.config).n_layers
        targets = [(i, module_path) for i in range(n_layers) for module_path in flag.modules]
    for i, module_path in targets:
        module = table.block_module(model, i, module_path)
        name = f"{table.layers}.{i}.{module_path}.bias"
        if module.bias is None and name not in changes:
            out_features = table.weight(module).shape[0]
            changes[name] = torch.zeros(out_features, dtype=module.weight.dtype)
            originals[name] = None
