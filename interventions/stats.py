"""Statistics of activations: streaming reducers that merge, and ``tally``, one pass for many sites.

A ``Reducer`` keeps a running sum of per-sample terms and the number of samples: ``Mean``,
``MeanNorm`` (of the L2 norm over the last dimension) and ``SecondMoment`` (``E[x xᵀ]``).
Reducers of the same kind ``merge`` (halves of a dataset give the statistic of the whole),
``all_reduce`` across the processes of ``torch.distributed`` (each rank's shard), and
``state_dict`` / ``load_state_dict`` are what a file stores.

``tally(model, batches, {site: reducer})`` fills the reducers over a dataset in one streaming
pass (real tokens only, each forward stopped after the last site), optionally cached on disk
under a key of the weights that feed each site (``fingerprint``), the tokens and the options.
Launched on N processes (``torchrun``), each runs its shard of the batches and the reducers are
summed over all (``interventions.distributed``; docs/scale.md).
"""

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from interventions import distributed as dist
from interventions.adapters import adapter, causal_lm
from interventions.attach import intervene, last_in_forward
from interventions.files import load_tensors, save_tensors
from interventions.ops import Capture
from interventions.sites import Site, SiteLike, parse
from interventions.text import checked_rows, device_of, model_inputs, selected_tokens

log = logging.getLogger(__name__)


class Reducer:
    """Streaming statistic over samples ``[n, *features]``; ``value`` is the result so far.

    Subclasses write ``summand(x)``: the sum over the samples of ``x`` of the term averaged.
    Sums are kept in float32 on the device the samples come from (or the dtype ``summand``
    returns, e.g. float64). That one method is all a subclass provides: ``merge``,
    ``all_reduce`` and the files work on its state (``count`` and ``total``), which is sums.
    A subclass whose state is not a sum over samples (a maximum, a sketch) overrides ``merge``,
    ``all_reduce`` and ``state_dict`` / ``load_state_dict`` together.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total: Tensor | None = None

    def summand(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, x: Tensor) -> None:
        part = self.summand(x.float())
        self.total = part if self.total is None else self.total + part
        self.count += x.shape[0]

    @property
    def value(self) -> Tensor:
        if self.total is None:
            raise ValueError("nothing was reduced yet: run a forward first")
        return self.total / self.count

    def reset(self) -> None:
        """Forget every sample seen."""
        self.count, self.total = 0, None

    def merge(self, other: "Reducer") -> "Reducer":
        """Add the samples ``other`` has seen (a reducer of the same kind); returns ``self``.

        The merged statistic is the one of all samples together, whatever way they were split.
        """
        if type(other) is not type(self):
            raise TypeError(
                f"{type(self).__name__}.merge takes another {type(self).__name__}, got "
                f"{type(other).__name__}: only reducers of one kind add up"
            )
        if other.total is None:
            return self
        if self.total is None:
            self.total = other.total.clone()
        else:
            if other.total.shape != self.total.shape:
                raise ValueError(
                    f"{type(self).__name__}.merge: the other reducer's statistic has shape "
                    f"{tuple(other.total.shape)}, this one's {tuple(self.total.shape)}; merge "
                    "reducers of the same site of the same model"
                )
            self.total = self.total + other.total.to(self.total.device)
        self.count += other.count
        return self

    def all_reduce(
        self, world: "dist.World | None" = None, device: torch.device | str | None = None
    ) -> "Reducer":
        """Add the samples every other rank's reducer has seen (every rank calls this on its
        reducer of the same kind, in the same order); returns ``self``, the same on every rank.

        ``world``: default ``distributed.world()`` (torchrun's processes; one process alone:
        nothing changes). The sums run through ``torch.distributed`` on the device of
        ``total`` (gloo on CPU, nccl on GPU) in its dtype; the count is summed exactly. A rank
        that has seen no samples takes part with zeros (made on ``device`` if given).
        """
        all_reduce([self], dist.world() if world is None else world, device)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """``{"count": int64 scalar, "total": float32 sum}`` (no total before any sample)."""
        state = {"count": torch.tensor(self.count, dtype=torch.int64)}
        if self.total is not None and self.count > 0:  # a sum over no samples says nothing
            state["total"] = self.total.detach()
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> "Reducer":
        """Take the state ``state_dict`` gave (of a reducer of this kind); returns ``self``."""
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, Mapping) or set(state) - {"count", "total"}:
            keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"{name}: expected the keys 'count' and 'total', got {keys}")
        count, total = state.get("count"), state.get("total")
        if not isinstance(count, Tensor) or count.ndim != 0 or count.is_floating_point():
            raise ValueError(f"{name}: 'count' must be an integer scalar tensor, got {count!r}")
        count = int(count)
        if count < 0 or (count == 0) != (total is None):
            raise ValueError(
                f"{name}: a count of {count} with {'no' if total is None else 'a'} total; a state "
                "has a total exactly when it counted samples"
            )
        if total is not None:
            if not isinstance(total, Tensor) or not total.is_floating_point():
                raise ValueError(f"{name}: 'total' must be a float tensor, got {total!r}")
            if not bool(torch.isfinite(total).all()):
                raise ValueError(f"{name}: 'total' holds NaN or infinite values")
        self.count, self.total = count, None if total is None else total.detach().clone()
        return self


def all_reduce(
    reducers: Sequence[Reducer],
    world: dist.World,
    device: torch.device | str | None = None,
    what: str = "merging the statistics",
) -> None:
    """``reducer.all_reduce`` for many reducers at once (one exchange of their layouts), the
    merge every distributed pass ends with; every rank passes its reducers in the same order."""
    if world.size == 1:
        return
    merged = dist.all_reduce([r.state_dict() for r in reducers], world, device, what)
    for reducer, state in zip(reducers, merged, strict=True):
        reducer.load_state_dict(state)


class Mean(Reducer):
    """Running mean over samples (float32 accumulation)."""

    is_mean = True  # what Ablate("mean", stats=...) asks of a reducer (ops cannot import stats)

    def summand(self, x: Float[Tensor, "n ..."]) -> Float[Tensor, "..."]:
        return x.sum(0)


class MeanNorm(Reducer):
    """Running mean of the L2 norm over the last dimension."""

    def summand(self, x: Float[Tensor, "n ... d"]) -> Float[Tensor, "..."]:
        return x.norm(dim=-1).sum(0)


class SecondMoment(Reducer):
    """Running uncentred second moment ``E[x xᵀ]`` (``total`` is ``Σ x xᵀ``)."""

    def summand(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "d d"]:
        x = x.reshape(x.shape[0], -1)
        return x.T @ x


# --- tally: one pass, many sites, cached on disk ---------------------------------------------

_FORMAT = "interventions.stats.Reducer/1"
# config entries that change no activation (and that differ between releases or copies)
_INERT_CONFIG = (
    "transformers_version",
    "_name_or_path",
    "_commit_hash",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)


def tally(
    model: nn.Module,
    batches: Iterable[Any],
    reducers: Mapping[SiteLike, Reducer],
    *,
    skip_first_token: bool = False,
    cache: str | os.PathLike | None | Literal[False] = None,
    progress: bool = True,
    desc: str | None = None,
    distributed: "bool | dist.World | None" = None,
) -> dict[str, Reducer]:
    """Reduce the activations at every site of ``reducers`` over ``batches``, in ONE pass.

    ``batches``: ``text.Batch`` values (anything with ``input_ids`` and ``attention_mask``
    ``[batch, tokens]``, and ``position_ids`` or ``inputs(model)`` where it has them, e.g. a
    tokenizer's output). ``reducers``: ``{site: a fresh Reducer}``, one per site. Only real
    tokens count (the attention mask), and with ``skip_first_token`` not the first real token
    of each row either (an attention-sink outlier in some models). Each forward ends after the
    last site needed; no gradients are kept. Returns ``{site name: reducer}`` (the reducers
    given, filled), their statistics in float32 on the CPU.

    ``cache``: None or False, no files; a folder (e.g. ``default_cache_dir("mine")``): each
    site's statistic is stored there under a key of the weights that feed the site
    (``fingerprint``), the exact token ids and the options, and read back instead of computed
    when present; the sites missing are computed together, in one pass. Files are written
    after the pass: an interrupted or failed tally writes none, and leaves the reducers empty.

    ``distributed`` (``distributed.world``): by default, when this process is one of N
    (``torchrun``, or an initialised process group), every rank must call ``tally`` with the
    same batches; each runs a contiguous block of them (balanced by padded size) and the
    reducers are summed over all ranks, so every rank returns the statistic of every batch (the
    order of summation is the only difference from one process). A rank that fails makes every
    rank raise ``distributed.RankFailed`` naming it. The cache is written by rank 0 alone, after
    the merge (a folder every rank can read, for the next run); a site is read from it only if
    every rank finds its file. ``False``: this process alone, whatever the group. One process
    (no torchrun) runs exactly as without the option.
    """
    sites = _checked_reducers(model, reducers)
    _check_flag("skip_first_token", skip_first_token)
    _check_flag("progress", progress)
    if desc is not None and not isinstance(desc, str):
        raise TypeError(f"tally: desc must be a str or None, got {desc!r}")
    folder = _cache_folder(cache)
    if isinstance(batches, (str, bytes, Mapping, Tensor)) or not isinstance(batches, Iterable):
        raise TypeError(
            f"tally: batches must be an iterable of text.Batch values, got "
            f"{type(batches).__name__}: wrap a single batch in a list"
        )
    world = dist.world(distributed)
    missing, paths = dict(sites), {}
    if world.size > 1:
        batches = list(batches)  # every rank takes its block of the list
    if folder is not None:
        batches = list(batches)  # the key holds every token id: read them before any forward
        tokens = _tokens_digest(batches)
        weights = fingerprints(model, list(sites))
        for site, reducer in sites.items():
            key = _digest(
                [
                    _FORMAT,
                    weights[str(site)],
                    tokens,
                    _options(reducer, skip_first_token),
                ]
            )
            paths[site] = folder / f"{site}-{type(reducer).__name__}-{key[:24]}.safetensors"
            if _load_cached(reducer, paths[site], site):
                del missing[site]
    if world.size > 1 and folder is not None:  # one set of sites to compute, or ranks disagree
        anywhere = {
            name for names in world.exchange(sorted(map(str, missing)), "tally") for name in names
        }
        missing = {site: r for site, r in sites.items() if str(site) in anywhere}
        for reducer in missing.values():
            reducer.reset()
    if missing:
        try:
            _reduce(model, batches, missing, skip_first_token, progress, desc, world)
            if paths:  # every rank returns once the files are there
                with world.guard("tally: writing the cache (rank 0)"):
                    if world.rank == 0:
                        _save_cached(paths, missing)
        except BaseException:
            for reducer in sites.values():  # cached ones too: a failed tally gives nothing
                reducer.reset()
            raise
    return {str(site): reducer for site, reducer in sites.items()}


def fingerprint(model: nn.Module, site: SiteLike) -> str:
    """Identity of the weights the activation at ``site`` is computed from: the config, the
    dtype, training mode and every parameter up to the site (the embedding, the blocks before
    it, its own block but for the module that only reads it: ``down_proj`` for ``mlp.act``,
    ``o_proj`` for ``attn.heads``; the final norm for ``final_norm``, and the unembedding only
    for ``logits``). Every byte of those parameters is hashed (sha256)."""
    (value,) = fingerprints(model, [site]).values()
    return value


def fingerprints(model: nn.Module, sites: Sequence[SiteLike]) -> dict[str, str]:
    """``{site name: fingerprint(model, site)}``, hashing each parameter once for all sites."""
    n_layers = adapter(model).geometry(model.config).n_layers
    digests: dict[str, str] = {}
    parsed = [parse(site, n_layers) for site in sites]
    return {str(site): _fingerprint(model, site, digests) for site in parsed}


def default_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/interventions/<name>``, or ``~/.cache/interventions/<name>``."""
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or "/" in name:
        raise ValueError(
            f"default_cache_dir: name must be one folder name such as 'alphaedit', got {name!r}"
        )
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "interventions" / name


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"tally: {name} must be True or False, got {value!r}")


def _checked_reducers(model: nn.Module, reducers: object) -> dict[Site, Reducer]:
    if not isinstance(reducers, Mapping) or not reducers:
        raise TypeError(
            "tally: reducers must be a non-empty dict {site: Reducer}, e.g. "
            f"{{'layers.3.mlp.act': iv.SecondMoment()}}, got {reducers!r}"
        )
    table = adapter(model)
    n_layers = table.geometry(model.config).n_layers
    sites: dict[Site, Reducer] = {}
    for key, reducer in reducers.items():
        site = parse(key, n_layers)
        table.refuse(site.kind, model.config)
        if not isinstance(reducer, Reducer):
            raise TypeError(
                f"tally: reducers[{key!r}] is a {type(reducer).__name__}; expected a Reducer "
                "instance such as iv.Mean() or iv.SecondMoment()"
            )
        if type(reducer).summand is Reducer.summand and type(reducer).update is Reducer.update:
            raise TypeError(
                f"tally: reducers[{key!r}] is the bare Reducer base class, which computes "
                "nothing: use iv.Mean(), iv.MeanNorm(), iv.SecondMoment() or a subclass"
            )
        if reducer.count or reducer.total is not None:
            raise ValueError(
                f"tally: reducers[{key!r}] has already counted {reducer.count} samples; give a "
                "fresh reducer per site (merge results afterwards with reducer.merge)"
            )
        if site in sites:
            raise ValueError(f"tally: site {site} is given twice in reducers")
        if any(reducer is other for other in sites.values()):
            raise ValueError(
                f"tally: reducers[{key!r}] is the same object as another site's; one reducer "
                "per site (it would mix their samples)"
            )
        sites[site] = reducer
    return sites


def _cache_folder(cache: object) -> Path | None:
    if cache is None or cache is False:
        return None
    if cache is True or not isinstance(cache, (str, os.PathLike)):
        raise TypeError(
            f"tally: cache must be None (no files) or a folder, e.g. "
            f"stats.default_cache_dir('mine'), got {cache!r}"
        )
    folder = Path(cache)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"tally: cache {str(folder)!r} is a file, not a folder")
    return folder


def _kind(reducer: Reducer) -> str:
    return f"{type(reducer).__module__}.{type(reducer).__qualname__}"


def _options(reducer: Reducer, skip_first_token: bool) -> str:
    return json.dumps({"reducer": _kind(reducer), "skip_first_token": skip_first_token})


def _save_cached(paths: Mapping[Site, Path], computed: Mapping[Site, Reducer]) -> None:
    for site in paths.keys() & computed.keys():
        metadata = {"site": str(site), "reducer": _kind(computed[site])}
        save_tensors(paths[site], computed[site].state_dict(), format=_FORMAT, metadata=metadata)
        log.info("statistic of %s saved to %s", site, paths[site])


def _load_cached(reducer: Reducer, path: Path, site: Site) -> bool:
    """Fill ``reducer`` from the file at ``path`` if it holds this site's statistic."""
    if not path.is_file():
        return False
    try:
        state, metadata = load_tensors(path, format=_FORMAT)
        if metadata.get("site") != str(site) or metadata.get("reducer") != _kind(reducer):
            raise ValueError(f"it holds {metadata.get('reducer')} of {metadata.get('site')}")
        reducer.load_state_dict(state)
    except ValueError as error:  # not one of ours, or damaged: computed again, then replaced
        log.warning("ignoring the cached statistic %s (%s); computing it again", path, error)
        reducer.reset()
        return False
    log.info("statistic of %s loaded from %s", site, path)
    return True


# --- the pass ----------------------------------------------------------------------------------


def _reduce(
    model: nn.Module,
    batches: Iterable[Any],
    sites: dict[Site, Reducer],
    skip_first_token: bool,
    progress: bool,
    desc: str | None,
    world: dist.World,
) -> None:
    device = device_of(model)
    if world.size > 1:
        if not batches:
            raise ValueError("tally got no batches: give at least one batch of token ids")
        sizes = [checked_rows(b, i, "tally")[0].numel() for i, b in enumerate(batches)]
        batches = world.shard(batches, weights=sizes)  # a forward costs its padded size
    last = last_in_forward(sites)
    total = None
    if isinstance(batches, Sequence):
        masks = (checked_rows(b, i, "tally")[1] for i, b in enumerate(batches))
        total = sum(int(selected_tokens(m, skip_first_token=skip_first_token).sum()) for m in masks)
    name = desc or f"tally, {len(sites)} site{'s' if len(sites) > 1 else ''}"
    bar = tqdm(total=total, unit="tok", desc=name, disable=not progress)
    n_batches = 0
    with world.guard("tally"), torch.no_grad(), bar:
        for index, batch in enumerate(batches):
            _, mask = checked_rows(batch, index, "tally")
            counted = selected_tokens(mask.to(device), skip_first_token=skip_first_token)
            inputs = {k: v.to(device) for k, v in model_inputs(model, batch).items()}
            plan = {site: Capture(reduce=r, positions=counted) for site, r in sites.items()}
            with intervene(model, plan, stop_after=last):
                model(**inputs, use_cache=False)
            bar.update(int(counted.sum()))
            n_batches += 1
        if n_batches == 0 and world.size == 1:
            raise ValueError("tally got no batches: give at least one batch of token ids")
        for site, reducer in sites.items():
            if reducer.count and not bool(torch.isfinite(reducer.total).all()):
                raise ValueError(
                    f"tally: the activations at {site} hold NaN or infinite values, so their "
                    "statistic is meaningless; check the model (a float16 overflow?) and the "
                    "inputs"
                )
    all_reduce(list(sites.values()), world, device, "tally: merging the statistics")
    for site, reducer in sites.items():
        if reducer.count == 0:
            raise ValueError(
                f"tally: no token was counted at {site} (every token is padding"
                + (", or the first of its row, skipped" if skip_first_token else "")
                + "): give batches with real tokens"
            )
        reducer.total = reducer.total.cpu()


# --- keys --------------------------------------------------------------------------------------


def hash_tensor(h: Any, t: Tensor) -> None:
    """Feed ``t``'s dtype, shape and bytes to the hashlib object ``h``, without copying the
    bytes of a contiguous CPU tensor (a copy per weight was two thirds of a fingerprint's time)."""
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy())


def _digest(parts: Iterable[bytes | str | Tensor]) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            hash_tensor(h, part)
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def _tokens_digest(batches: Sequence[Any]) -> str:
    parts: list[bytes | str | Tensor] = [str(len(batches))]
    for index, batch in enumerate(batches):
        ids, mask = checked_rows(batch, index, "tally")
        parts += [ids.long(), mask.long()]
        positions = getattr(batch, "position_ids", None)
        parts.append(b"" if positions is None else positions.long())
    if len(parts) == 1:
        raise ValueError("tally got no batches: give at least one batch of token ids")
    return _digest(parts)


def _fingerprint(model: nn.Module, site: Site, digests: dict[str, str]) -> str:
    config = {k: v for k, v in model.config.to_dict().items() if k not in _INERT_CONFIG}
    parts: list[bytes | str | Tensor] = [
        json.dumps(config, sort_keys=True, default=str),
        str(getattr(model.config, "_attn_implementation", None)),
        adapter(model).name,
        f"training={model.training}",
    ]
    for name, parameter in _feeding_parameters(model, site):
        if name not in digests:
            if parameter.is_meta:
                raise ValueError(
                    f"tally: the parameter {name} is offloaded (on the meta device), so the "
                    "weights cannot be fingerprinted for the cache; pass cache=None"
                )
            digests[name] = _digest([name, parameter])
        parts.append(digests[name])
    return _digest(parts)


def _feeding_parameters(model: nn.Module, site: Site) -> list[tuple[str, nn.Parameter]]:
    """The parameters an activation at ``site`` is computed from (their names and values)."""
    table = adapter(model)
    lm = causal_lm(model)
    if site.module_path is not None:  # a module site: no adapter says what feeds it, so all
        return list(lm.named_parameters())
    n_layers = table.geometry(model.config).n_layers
    unembedding = lm.get_output_embeddings()
    unembed = next((n for n, m in lm.named_modules() if m is unembedding), None)
    # blocks before `through` feed the site; in block `through`, all but the site's reader
    through = {"embed": -1, "final_norm": n_layers, "logits": n_layers}.get(site.kind, site.layer)
    if site.kind == "resid_pre":
        through -= 1
    reader = {"mlp.act": table.down_proj, "attn.heads": table.o_proj}.get(site.kind)
    blocks = table.layers + "."

    def feeds(name: str) -> bool:
        if name.startswith(blocks):
            layer, _, inside = name[len(blocks) :].partition(".")
            reads_only = int(layer) == site.layer and reader is not None and _under(inside, reader)
            return int(layer) <= through and not reads_only
        if _under(name, table.final_norm):
            return site.kind in ("final_norm", "logits")
        if unembed is not None and _under(name, unembed):
            return site.kind == "logits"
        return True  # embeddings, and anything else outside the blocks

    return [(name, p) for name, p in lm.named_parameters() if feeds(name)]


def _under(name: str, module_paths: str) -> bool:
    """Whether parameter ``name`` belongs to the module at one of the ``|``-separated paths."""
    return any(name.startswith(path + ".") for path in module_paths.split("|"))
