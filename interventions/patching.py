"""Activation patching, attribution patching and the logit lens.

- ``patching``: put the clean run's activation into the corrupted run, one (layer, position)
  or (layer, head) cell at a time, and read a metric of the logits (a logit difference by
  default). The cells are batched: one forward runs many corrupted rows, each row patched at
  its own cell (an ``iv.Patch`` per layer whose boolean-mask ``positions`` mark each row's
  cell).
- ``attribution_patching``: the gradient approximation of the same map from one corrupted
  forward and one backward: ``metric(corrupted) + (clean - corrupted) . d metric / d act``.
- ``logit_lens``: decode residual states (``embed``, ``resid_pre`` / ``resid_mid`` /
  ``resid_post``) through the model's final norm and unembedding (``lm.unembed``: soft-caps and
  scales included), per site and position: top-k tokens, or the log-probs of chosen tokens.

>>> import interventions as iv
>>> metric = iv.logit_diff(paris, rome)                   # logits[:, -1, paris] - ...[rome]
>>> result = iv.patching(model, clean_ids, corrupted_ids, "layers.*.resid_pre", metric=metric)
>>> result.values                                          # [layers, positions]
>>> lens = iv.logit_lens(model, clean_ids, tokenizer=tokenizer)
>>> lens.top_tokens[-1][0][-1]                             # last layer, row 0, last position
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from interventions.adapters import adapter
from interventions.attach import Cache, capture, intervene
from interventions.checks import integer
from interventions.lm import unembed
from interventions.ops import Compose, Intervention, Patch
from interventions.sites import Site, SiteLike, expand
from interventions.text import device_of

Metric = Callable[[Float[Tensor, "rows t vocab"]], Float[Tensor, " rows"]]
RESIDUAL_KINDS = ("embed", "resid_pre", "resid_mid", "resid_post", "final_norm")
_NOT_RESIDUAL = (
    "{site} is not a residual state: the final norm of a contribution (attn.out, mlp.out) or "
    "of a head's output has no meaning on its own; decode resid_mid / resid_post instead"
)


# --- the metric -----------------------------------------------------------------------------------


def logit_diff(a: int, b: int, position: int = -1) -> Metric:
    """The default metric: ``logits[:, position, a] - logits[:, position, b]`` per row (token ids
    ``a`` and ``b``, e.g. from ``lm.first_token``)."""
    a, b = integer("a", a, minimum=0), integer("b", b, minimum=0)
    position = integer("position", position, minimum=None)

    def metric(logits: Float[Tensor, "rows t vocab"]) -> Float[Tensor, " rows"]:
        last = logits[:, position]
        if last.dtype in (torch.float16, torch.bfloat16):  # a difference of large logits
            last = last.float()
        return last[:, a] - last[:, b]

    metric.__name__ = f"logit_diff({a}, {b})"
    return metric


def _rows_of(metric: Metric, logits: Tensor) -> Tensor:
    values = metric(logits)
    if not isinstance(values, Tensor) or values.shape != (logits.shape[0],):
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"metric must map logits [rows, t, vocab] to one value per row [{logits.shape[0]}], "
            f"got {got}; reduce over positions and vocab inside the metric"
        )
    if not bool(torch.isfinite(values.detach()).all()):
        raise ValueError("metric returned NaN or inf; check the tokens it reads")
    return values


# --- patching -----------------------------------------------------------------------------------


@dataclass
class PatchingResult:
    """A patching map: ``values[i, j]`` is the metric of the corrupted run with the clean
    activation at ``layers[i]`` and column ``j`` (a position, or a head at ``attn.heads``)."""

    values: Float[Tensor, "layers columns"]
    site: str  # the pattern, e.g. "layers.*.resid_pre"
    kind: str  # its site kind, e.g. "resid_pre"
    layers: list[int]
    by: str  # "position" or "head"
    columns: list[str]  # a label per column: "3 ' Tower'" or "head 2"
    clean_metric: float
    corrupted_metric: float

    def normalized(self) -> Float[Tensor, "layers columns"]:
        """``(values - corrupted) / (clean - corrupted)``: 1 where a patch restores the clean
        metric, 0 where it changes nothing."""
        gap = self.clean_metric - self.corrupted_metric
        if gap == 0:
            raise ValueError("the clean and corrupted metrics are equal: nothing to normalise by")
        return (self.values - self.corrupted_metric) / gap

    def table(self) -> list[dict[str, Any]]:
        """One row per cell: site, layer, the column's index and label, metric, normalised."""
        same = self.clean_metric == self.corrupted_metric
        normalized = torch.full_like(self.values, float("nan")) if same else self.normalized()
        return [
            {
                "site": str(Site(self.kind, layer)),
                "layer": layer,
                self.by: j,
                "label": label,
                "metric": float(self.values[i, j]),
                "normalized": float(normalized[i, j]),
            }
            for i, layer in enumerate(self.layers)
            for j, label in enumerate(self.columns)
        ]

    def peak(self) -> dict[str, Any]:
        """The row of the cell with the largest metric."""
        return max(self.table(), key=lambda row: row["metric"])

    def plot(self, path: str | Path, *, normalized: bool = False) -> Path:
        """The map as a heatmap PNG (``plot.patching_map``), raw or normalised."""
        from interventions import plot

        values = self.normalized() if normalized else self.values
        title = f"{self.site}: {'normalised ' if normalized else ''}metric of the patched run"
        return plot.patching_map(values.numpy(), self.layers, self.columns, path, title=title)


def patching(
    model: nn.Module,
    clean: Int[Tensor, "1 t"] | Sequence[int],
    corrupted: Int[Tensor, "1 t"] | Sequence[int],
    site: SiteLike = "layers.*.resid_pre",
    *,
    metric: Metric | None = None,
    answers: tuple[int, int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    tokenizer: Any = None,
) -> PatchingResult:
    """Patch the clean run's activation at ``site`` (a layer pattern) into the corrupted run,
    one cell per row of a batched forward, and return the metric of every cell.

    Cells are (layer, position) at every site but ``attn.heads``, (layer, head) there (the head
    at every position). ``metric`` maps logits ``[rows, t, vocab]`` to ``[rows]``; without it,
    ``answers=(a, b)`` gives ``logit_diff(a, b)``. ``batch_size``: patched rows per forward.
    ``tokenizer`` labels the positions with their clean tokens."""
    clean_ids, corrupted_ids = _pair(model, clean, corrupted)
    metric = _metric(metric, answers)
    batch_size = integer("batch_size", batch_size)
    sites, by = _layer_sites(model, site)
    geometry = adapter(model).geometry(model.config)
    width = clean_ids.shape[1] if by == "position" else geometry.n_heads
    with torch.no_grad():
        clean_acts, clean_logits = _run(model, clean_ids, sites)
        corrupted_logits = model(input_ids=corrupted_ids).logits
        clean_metric = float(_rows_of(metric, clean_logits)[0])
        corrupted_metric = float(_rows_of(metric, corrupted_logits)[0])
        cells = [(i, j) for i in range(len(sites)) for j in range(width)]
        values = torch.empty(len(cells))
        chunks = range(0, len(cells), batch_size)
        for start in tqdm(chunks, desc=f"patching {site}", disable=not progress):
            part = cells[start : start + batch_size]
            plan = _patch_plan(sites, clean_acts, part, clean_ids.shape[1], by)
            rows = corrupted_ids.expand(len(part), -1)
            with intervene(model, plan):
                patched = model(input_ids=rows).logits
            values[start : start + len(part)] = _rows_of(metric, patched).cpu()
    return PatchingResult(
        values=values.reshape(len(sites), width),
        site=str(site),
        kind=sites[0].kind,
        layers=[s.layer for s in sites],
        by=by,
        columns=_columns(by, width, clean_ids, tokenizer),
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
    )


def _patch_plan(
    sites: list[Site],
    clean_acts: dict[Site, Tensor],
    cells: list[tuple[int, int]],
    length: int,
    by: str,
) -> dict[Site, Intervention]:
    """The plan of one chunk of cells: row r of the batch is patched at ``cells[r]`` only, by
    an ``iv.Patch`` per layer the chunk touches (per layer and head at ``attn.heads``) whose
    boolean-mask ``positions`` mark that row's cell."""
    plan: dict[Site, Intervention] = {}
    for i in sorted({i for i, _ in cells}):
        clean = {str(sites[i]): clean_acts[sites[i]]}  # the whole clean activation [1, t, ...]
        if by == "position":
            mask = torch.zeros(len(cells), length, dtype=torch.bool)
            for r, (layer, position) in enumerate(cells):
                mask[r, position] = layer == i
            plan[sites[i]] = Patch.from_cache(clean, positions=mask)
            continue
        patches = []
        for head in sorted({h for layer, h in cells if layer == i}):
            mask = torch.zeros(len(cells), length, dtype=torch.bool)
            mask[[r for r, cell in enumerate(cells) if cell == (i, head)]] = True
            patches.append(Patch.from_cache(clean, heads=[head], positions=mask))
        plan[sites[i]] = patches[0] if len(patches) == 1 else Compose(*patches)
    return plan


def attribution_patching(
    model: nn.Module,
    clean: Int[Tensor, "1 t"] | Sequence[int],
    corrupted: Int[Tensor, "1 t"] | Sequence[int],
    site: SiteLike = "layers.*.resid_pre",
    *,
    metric: Metric | None = None,
    answers: tuple[int, int] | None = None,
    tokenizer: Any = None,
) -> PatchingResult:
    """The first-order estimate of ``patching``'s map: ``metric(corrupted) + (clean -
    corrupted) . grad``, the gradient of the metric taken at the corrupted run, summed over the
    features of each cell (and the positions of a head). One clean forward (no graph), one
    corrupted forward and one backward; the model's parameters get no ``.grad``."""
    clean_ids, corrupted_ids = _pair(model, clean, corrupted)
    metric = _metric(metric, answers)
    sites, by = _layer_sites(model, site)
    with torch.no_grad():
        clean_acts, clean_logits = _run(model, clean_ids, sites)
        clean_metric = float(_rows_of(metric, clean_logits)[0])
    with torch.enable_grad(), capture(model, sites, keep_grad=True) as corrupted_acts:
        value = _rows_of(metric, model(input_ids=corrupted_ids).logits)[0]
        grads = torch.autograd.grad(value, [corrupted_acts[s] for s in sites])
    rows = []
    for s, grad in zip(sites, grads, strict=True):
        delta = (clean_acts[s] - corrupted_acts[s].detach()) * grad  # [1, t, d] / [1, t, h, d]
        rows.append(delta[0].sum(-1) if by == "position" else delta[0].sum((0, 2)))
    corrupted_metric = float(value.detach())
    width = clean_ids.shape[1]
    return PatchingResult(
        values=torch.stack(rows).float().cpu() + corrupted_metric,
        site=str(site),
        kind=sites[0].kind,
        layers=[s.layer for s in sites],
        by=by,
        columns=_columns(by, rows[0].shape[0], clean_ids, tokenizer) if width else [],
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
    )


def _run(model: nn.Module, ids: Tensor, sites: list[Site]) -> tuple[dict[Site, Tensor], Tensor]:
    with capture(model, sites) as cache:
        logits = model(input_ids=ids).logits
    return {s: cache[s] for s in sites}, logits


def _metric(metric: Metric | None, answers: tuple[int, int] | None) -> Metric:
    if metric is not None and answers is not None:
        raise ValueError("give metric= or answers=(a, b), not both")
    if metric is not None:
        if not callable(metric):
            raise TypeError(f"metric must be a callable of logits, got {metric!r}")
        return metric
    if answers is None:
        raise ValueError(
            "patching needs a metric: answers=(a, b) token ids for the default logit "
            "difference, or metric=f with f(logits [rows, t, vocab]) -> [rows]"
        )
    if isinstance(answers, (str, Tensor)) or not isinstance(answers, Sequence) or len(answers) != 2:
        raise TypeError(f"answers must be a pair of token ids (a, b), got {answers!r}")
    return logit_diff(*answers)


def _pair(model: nn.Module, clean: object, corrupted: object) -> tuple[Tensor, Tensor]:
    clean_ids = _ids("clean", clean).to(device_of(model))
    corrupted_ids = _ids("corrupted", corrupted).to(device_of(model))
    if clean_ids.shape != corrupted_ids.shape:
        raise ValueError(
            f"clean and corrupted must have the same number of tokens (position by position), "
            f"got {clean_ids.shape[1]} and {corrupted_ids.shape[1]}; pick prompts that tokenize "
            "to the same length"
        )
    return clean_ids, corrupted_ids


def _ids(name: str, value: object) -> Tensor:
    if isinstance(value, Tensor):
        ids = value[None] if value.ndim == 1 else value
    elif isinstance(value, Sequence) and not isinstance(value, str):
        ids = torch.tensor([list(value)])
    else:
        raise TypeError(f"{name} must be token ids ([t] or [1, t]), got {type(value).__name__}")
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise ValueError(f"{name} must be one prompt's token ids [t] or [1, t], got {ids.shape}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    return ids.long()


def _layer_sites(model: nn.Module, site: SiteLike) -> tuple[list[Site], str]:
    sites = expand(site, adapter(model).geometry(model.config).n_layers)
    kinds = {s.kind for s in sites}
    if any(s.layer is None for s in sites) or len(kinds) != 1:
        raise ValueError(
            f"site {site!r} must name one layer site kind, e.g. 'layers.*.resid_pre' or "
            "'layers.2:6.attn.heads'"
        )
    kind = kinds.pop()
    if kind == "attn.pattern":
        raise ValueError("attn.pattern can only be captured; patch attn.heads or attn.out")
    return sites, "head" if kind == "attn.heads" else "position"


def _columns(by: str, width: int, ids: Tensor, tokenizer: Any) -> list[str]:
    if by == "head":
        return [f"head {h}" for h in range(width)]
    if tokenizer is None:
        return [str(p) for p in range(width)]
    return [f"{p} {tokenizer.decode([int(t)])!r}" for p, t in enumerate(ids[0].tolist())]


# --- the logit lens -------------------------------------------------------------------------------


@dataclass
class Lens:
    """What each residual state predicts: ``sites[i]`` decoded at every row and position."""

    sites: list[str]
    top_ids: Int[Tensor, "sites b t k"]
    top_logprobs: Float[Tensor, "sites b t k"]
    token_logprobs: Float[Tensor, "sites b t n"] | None  # of ``tokens``, when asked
    top_tokens: list[list[list[list[str]]]] | None  # [site][row][position][k], with a tokenizer

    def plot(
        self, path: str | Path, *, row: int = 0, positions: Sequence[str] | None = None
    ) -> Path:
        """Row ``row``'s top-1 tokens and their probabilities per site and position, as a PNG
        (``plot.logit_lens``); needs ``top_tokens`` (a tokenizer given to ``logit_lens``)."""
        from interventions import plot

        if self.top_tokens is None:
            raise ValueError("the lens has no token strings: call logit_lens(..., tokenizer=tok)")
        row = integer("row", row, minimum=0)
        if row >= self.top_ids.shape[1]:
            raise ValueError(f"row {row} is out of range: the lens has {self.top_ids.shape[1]}")
        width = self.top_ids.shape[2]
        labels = [str(p) for p in range(width)] if positions is None else list(positions)
        tokens = [[cell[0] for cell in site[row]] for site in self.top_tokens]
        logprobs = self.top_logprobs[:, row, :, 0].numpy()
        return plot.logit_lens(logprobs, tokens, self.sites, labels, path)


def logit_lens(
    model: nn.Module,
    source: Int[Tensor, "b t"] | Cache,
    sites: SiteLike | Iterable[SiteLike] = "layers.*.resid_post",
    *,
    k: int = 5,
    tokens: Sequence[int] | None = None,
    tokenizer: Any = None,
) -> Lens:
    """Decode residual states through the final norm and the unembedding (``lm.unembed``, so the
    last layer's ``resid_post`` gives the model's own logits). ``source``: token ids (the sites
    are captured, the forward stopped after the last) or a ``Cache`` holding ``sites``.
    ``final_norm`` is unembedded as it is. Returns the top ``k`` tokens and, for ``tokens``,
    their log-probs at every site, row and position."""
    k = integer("k", k)
    table = adapter(model)
    geometry = table.geometry(model.config)
    names = expand(sites, geometry.n_layers)
    if not names:
        raise ValueError("logit_lens got no sites: name one, e.g. 'layers.*.resid_post'")
    for s in names:
        if s.kind not in RESIDUAL_KINDS:
            raise ValueError(_NOT_RESIDUAL.format(site=s))
    chosen = None
    if tokens is not None:
        chosen = [integer(f"tokens[{i}]", t, minimum=0) for i, t in enumerate(tokens)]
        bad = [t for t in chosen if t >= geometry.d_vocab]
        if bad or not chosen:
            raise ValueError(f"tokens must be ids in 0..{geometry.d_vocab - 1}, got {tokens!r}")
    states = _states(model, source, names)
    norm = table.module(model, table.final_norm)
    top_ids, top_logprobs, token_logprobs = [], [], []
    with torch.no_grad():
        for s in names:
            hidden = states[s]
            hidden = hidden if s.kind == "final_norm" else norm(hidden)
            logp = unembed(model, hidden).float().log_softmax(-1)
            best = logp.topk(min(k, logp.shape[-1]), dim=-1)
            top_ids.append(best.indices.cpu())
            top_logprobs.append(best.values.cpu())
            if chosen is not None:
                token_logprobs.append(logp[..., chosen].cpu())
    ids = torch.stack(top_ids)
    return Lens(
        sites=[str(s) for s in names],
        top_ids=ids,
        top_logprobs=torch.stack(top_logprobs),
        token_logprobs=None if chosen is None else torch.stack(token_logprobs),
        top_tokens=None if tokenizer is None else _decoded(tokenizer, ids),
    )


def _states(model: nn.Module, source: object, names: list[Site]) -> dict[Site, Tensor]:
    if isinstance(source, Cache):
        missing = [str(s) for s in names if str(s) not in source]
        if missing:
            raise KeyError(
                f"the cache holds no {missing}; it holds {list(source)}: capture those sites "
                "or pass sites= that it holds"
            )
        return {s: source[s] for s in names}
    if not isinstance(source, Tensor) or source.ndim != 2 or source.dtype.is_floating_point:
        raise TypeError(
            f"source must be token ids [b, t] or an iv.Cache, got {type(source).__name__}"
        )
    with torch.no_grad(), capture(model, names, stop=True) as cache:
        model(input_ids=source.to(device_of(model)))
    return {s: cache[s] for s in names}


def _decoded(tokenizer: Any, ids: Tensor) -> list[list[list[list[str]]]]:
    return [
        [[[tokenizer.decode([t]) for t in top] for top in row] for row in site]
        for site in ids.tolist()
    ]
