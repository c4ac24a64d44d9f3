"""Head scores: which attention heads does a task light up, and how did fine-tuning change them?

Cheap, probe-free statistics of every attention head from one pass over a task's prompts: before
fine-tuning they rank candidate heads (for head-selective tuning or steering), after it the same
statistics show which heads moved. Output magnitude as head importance (Michel et al., 2019, "Are
Sixteen Heads Really Better than One?"), attention entropy (Clark et al., 2019, "What Does BERT
Look At?"; Voita et al., 2019, "Analyzing Multi-Head Self-Attention") and attention to a
task-relevant span; attention sinks (Xiao et al., 2023, "Efficient Streaming Language Models with
Attention Sinks") make the first token dominate norms and entropies, so it can be left out.

Scores (for every score, HIGHER = MORE TASK-RELEVANT), averaged over the query tokens:
- ``S_out = E‖y_h‖₂``, y_h the head's slice of ``layers.i.attn.heads`` (the input of ``o_proj``);
  ``out_resid = E‖W_O^h y_h‖₂``, the head's write into the residual stream, is reported too.
- ``S_ent = −H``, H the entropy of the head's attention (divided by log(#keys) with
  ``normalize_entropy``; over the keys after the first, renormalised, with ``exclude_sink``).
  The raw table keeps H (``ent``), ``ent_all``, ``ent_nosink`` and ``sink`` (first-key mass).
- ``S_task = E[attention mass on the task span]`` (multiple choice: the question's tokens, from
  the tokenizer's character offsets), over the queries after the span; prompts without a span
  are counted (``task_missing``).

Algorithm
---------
1. Render each record (``evals.tasks``; multiple choice: ``Question: …\nA. …\nAnswer:``),
   tokenize it, right-pad each batch (real tokens never see padding).
2. One forward per batch, ended after the last layer scored, with an ``iv.Capture`` at
   ``layers.i.attn.heads`` and ``layers.i.attn.pattern`` (``positions=`` the query tokens:
   ``last_token`` or ``all_tokens``, optionally without the first token), each feeding a
   streaming reducer kept across batches (``OutputNorms``, ``AttentionStats``).
3. Per layer, normalise each score (``zscore`` or ``percentile``), rank it (within each layer,
   or over all heads with ``rank_scope="global"``) and fuse
   ``S_combined = rank(S_out) + λ_ent·rank(S_ent) + λ_task·rank(S_task)``.
4. Top-k globally (ties broken by the other scope's fusion) and per layer; ``compare`` two tables.

Usage
-----
>>> from interventions import report
>>> from interventions.models import load
>>> from interventions.recipes import head_scores
>>> model, tokenizer = load()                                   # SmolLM2-135M-Instruct
>>> records = head_scores.load_records(head_scores.BUNDLED_DATA)
>>> table = head_scores.score(model, tokenizer, records, batch_size=8)
>>> table.top_k(5)                                              # [{"layer": .., "head": ..}, ..]
>>> report.save_table(table, "runs/heads")                      # CSV, JSON, heatmaps
>>> diff = head_scores.compare(table, head_scores.score(tuned, tokenizer, records))
>>> diff.movers["out_resid"][:5], diff.spearman["combined_vs_abs_change"]

Command line: ``interventions score-heads`` and ``interventions compare-heads``; details in
docs/head_scores.md.
"""

import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from einops import einsum, rearrange
from jaxtyping import Bool, Float, Int
from scipy import stats as scipy_stats
from torch import Tensor, nn

import interventions as iv
from interventions import text
from interventions.checks import choice, indices, integer, number
from interventions.evals.tasks import BUNDLED_DATA as BUNDLED_DATA
from interventions.evals.tasks import MC_QUESTION_PREFIX as MC_QUESTION_PREFIX
from interventions.evals.tasks import NO_RECORDS, DataError, Prompt, parse_record
from interventions.evals.tasks import TEXT_FIELDS as TEXT_FIELDS
from interventions.evals.tasks import load_records as load_records
from interventions.evals.tasks import mc_prompt as mc_prompt
from interventions.report import plain

log = logging.getLogger("interventions.head_scores")

QUERY_MODES = ("last_token", "all_tokens")
NORMS = ("zscore", "percentile")
RANK_SCOPES = ("layer", "global")
# raw per-head metrics, all [layers, heads]; see the module docstring
RAW_METRICS = ("out", "out_resid", "ent", "ent_all", "ent_nosink", "sink", "task")
SCORES = ("out", "ent", "task")  # the fused scores; S_ent uses -ent
COMPARED = ("out", "out_resid", "ent", "sink", "task")
# the fields of each row of top_k / top_k_per_layer
TOP_K_FIELDS = ("layer", "head", "combined", *(f"rank_{s}" for s in SCORES))
TOP_K_FIELDS += tuple(f"{m}_raw" for m in COMPARED)
FUSIONS = ("combined", "combined_layer", "combined_global")
TABLE_FORMAT = "interventions.head_scores/1"
COMPARISON_FORMAT = "interventions.head_scores.comparison/1"


# --- tokens and query rows ------------------------------------------------------------------


class PromptTokens(NamedTuple):
    """One prompt's token ids, its task span in tokens ``[start, end)`` (None where it is not
    found or was cut off) and whether the prompt was truncated."""

    ids: list[int]
    span: tuple[int, int] | None
    truncated: bool


def prompt_tokens(tokenizer: Any, prompt: Prompt, max_length: int | None = None) -> PromptTokens:
    """Tokenize ``prompt`` (``text.encode``: character offsets from any tokenizer) and find its
    span's tokens. Truncation keeps the first ``max_length`` tokens."""
    encoded = text.encode(tokenizer, prompt.text)
    if not encoded.ids:
        raise DataError(f"{prompt.where or 'prompt'}: the tokenizer returned no tokens")
    found = range(0) if prompt.span is None else text.token_span(encoded, prompt.span)
    ids = encoded.ids[:max_length]
    span = (found.start, min(found.stop, len(ids))) if found and found.start < len(ids) else None
    return PromptTokens(ids, span, len(ids) < len(encoded.ids))


def query_mask(
    lengths: Int[Tensor, " b"], width: int, mode: str, exclude_first_token: bool
) -> Bool[Tensor, "b t"]:
    """Query tokens of a right-padded batch: the last real token, or every real token."""
    choice("query_mode", mode, QUERY_MODES)
    position = torch.arange(width, device=lengths.device)[None]
    if mode == "last_token":
        mask = position == (lengths - 1)[:, None]
    else:
        mask = position < lengths[:, None]
    return mask & (position > 0) if exclude_first_token else mask


@dataclass
class QueryRows:
    """Key information for each selected query, in the order a boolean ``positions`` mask
    selects them (row-major over [batch, seq], as ``x[mask]`` does)."""

    keys: Bool[Tensor, "n k"]  # causal keys of the query that are real tokens
    task_keys: Bool[Tensor, "n k"]  # keys inside the query's prompt's task span
    task_rows: Bool[Tensor, " n"]  # span found and the query comes after it


def query_rows(
    attention_mask: Int[Tensor, "b t"],
    mask: Bool[Tensor, "b t"],
    spans: Sequence[tuple[int, int] | None],
) -> QueryRows:
    """The ``QueryRows`` of the queries ``mask`` selects; ``spans``: each row's task span."""
    bounds = torch.tensor([s or (-1, -1) for s in spans], device=mask.device)  # [b, 2]
    start, end = bounds[:, 0], bounds[:, 1]
    row, query = mask.nonzero(as_tuple=True)
    key = torch.arange(mask.shape[1], device=mask.device)[None]
    keys = (key <= query[:, None]) & attention_mask[row].bool()
    task_keys = (key >= start[row][:, None]) & (key < end[row][:, None]) & keys
    task_rows = (start[row] >= 0) & (query >= end[row])
    return QueryRows(keys, task_keys, task_rows)


# --- streaming statistics (stats.Reducer subclasses fed by iv.Capture) ----------------------


ATTENTION_STATS = ("ent_all", "ent_nosink", "sink", "task_all", "task_nosink")


def attention_sums(
    pattern: Float[Tensor, "n h k"],
    keys: Bool[Tensor, "n k"],
    task_keys: Bool[Tensor, "n k"],
    task_rows: Bool[Tensor, " n"],
    normalize: bool,
) -> tuple[Float[Tensor, "5 h"], Float[Tensor, " 5"]]:
    """Sums over query rows of ``ATTENTION_STATS`` per head, and how many rows each sums.

    Entropies need >= 2 keys (>= 2 keys after the sink for ``ent_nosink``); with ``normalize``
    they are divided by log(#keys). ``task_nosink`` is the span mass renormalised without the
    first key; the first key is never part of the span there.
    """
    p = pattern.double() * keys[:, None, :]
    n_keys = keys.sum(-1).double()
    plogp = torch.special.xlogy(p, p)
    ent_all = -plogp.sum(-1)
    rest = p[..., 1:].sum(-1).clamp_min(1e-30)  # mass off the first key
    ent_nosink = rest.log() - plogp[..., 1:].sum(-1) / rest
    if normalize:
        ent_all = ent_all / n_keys.clamp_min(2).log()[:, None]
        ent_nosink = ent_nosink / (n_keys - 1).clamp_min(2).log()[:, None]
    task = task_keys[:, None, :].double()
    task_all = (p * task).sum(-1)
    task_nosink = (p[..., 1:] * task[..., 1:]).sum(-1) / rest
    rows = torch.stack([n_keys >= 2, n_keys >= 3, n_keys >= 1, task_rows, task_rows]).double()
    values = torch.stack([ent_all, ent_nosink, p[..., 0], task_all, task_nosink])
    sums = einsum(values, rows, "s n h, s n -> s h")
    return sums, rows.sum(-1)


class AttentionStats(iv.Reducer):
    """Running means of ``ATTENTION_STATS`` over the query rows ``[n, h, k]`` of
    ``attn.pattern``; ``total`` is ``[sums, rows counted]`` (each statistic counts its own rows).
    Set ``rows`` before each forward: the capture hands over only the probabilities."""

    def __init__(self, normalize: bool):
        super().__init__()
        self.normalize = normalize
        self.rows: QueryRows | None = None

    def summand(self, x: Float[Tensor, "n h k"]) -> Float[Tensor, "2 5 h"]:
        if self.rows is None or self.rows.keys.shape != (x.shape[0], x.shape[-1]):
            raise RuntimeError(
                "AttentionStats.rows does not match the captured queries: set it from the "
                "same positions mask before each forward"
            )
        r = self.rows  # layers may sit on other devices (device_map="auto")
        keys, task_keys, task_rows = (t.to(x.device) for t in (r.keys, r.task_keys, r.task_rows))
        sums, counts = attention_sums(x, keys, task_keys, task_rows, self.normalize)
        return torch.stack([sums, counts[:, None].expand_as(sums)])

    @property
    def value(self) -> Float[Tensor, "5 h"]:
        if self.total is None:
            raise ValueError("nothing was reduced yet: run a forward first")
        sums, counts = self.total
        return torch.where(counts > 0, sums / counts.clamp_min(1), math.nan)


class OutputNorms(iv.Reducer):
    """Running mean over tokens of ``[‖y_h‖, ‖W_O^h y_h‖]`` from ``attn.heads`` (``[n, h, d]``).

    ``‖W_O^h y‖² = yᵀ G_h y`` with the per-head Gram matrix ``G_h = W_O^hᵀ W_O^h``, so memory is
    ``n·h·d_head``, never ``n·h·d_model``."""

    def __init__(self, gram: Float[Tensor, "h d d"]):
        super().__init__()
        self.gram = gram

    def summand(self, y: Float[Tensor, "n h d"]) -> Float[Tensor, "2 h"]:
        gram = self.gram.to(device=y.device, dtype=y.dtype)
        head = y.norm(dim=-1)
        resid = einsum(y, gram, y, "n h d, h d e, n h e -> n h").clamp_min(0).sqrt()
        return torch.stack([head.sum(0), resid.sum(0)]).double()


def head_gram(model: nn.Module, layer: int, heads: Sequence[int]) -> Float[Tensor, "h d d"]:
    """``W_O^hᵀ W_O^h`` for the given heads of ``layer`` (float32, from the [out, in] weight)."""
    table, geometry = iv.adapter(model), iv.geometry(model)
    weight = table.weight(table.block_module(model, layer, table.o_proj)).detach()
    per_head = rearrange(weight.double(), "m (h d) -> h m d", d=geometry.d_head)[list(heads)]
    return einsum(per_head, per_head, "h m d, h m e -> h d e").float()


# --- the table ----------------------------------------------------------------------------------


Grid = Float[np.ndarray, "layers heads"]


@dataclass
class HeadScores:
    """``[len(layers), len(heads)]`` grids: ``raw[m]`` (m in ``RAW_METRICS``), ``norm[s]`` and
    ``rank[s]`` (s in ``SCORES``, higher = more relevant), the fusions; ``stats``: counts,
    timing and ``data_sha1``, the fingerprint of the token ids ``compare`` checks."""

    layers: list[int]
    heads: list[int]
    raw: dict[str, Grid]
    norm: dict[str, Grid]
    rank: dict[str, Grid]
    combined: Grid
    combined_layer: Grid
    combined_global: Grid
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.layers), len(self.heads)

    def index(self, layer: int, head: int) -> tuple[int, int]:
        if layer not in self.layers or head not in self.heads:
            raise KeyError(f"(layer {layer}, head {head}) was not scored")
        return self.layers.index(layer), self.heads.index(head)

    def row(self, layer: int, head: int) -> dict[str, Any]:
        """Every value of one head as a flat dict."""
        i, j = self.index(layer, head)
        row: dict[str, Any] = {"layer": layer, "head": head}
        row |= {f"{m}_raw": float(self.raw[m][i, j]) for m in RAW_METRICS}
        row |= {f"{s}_norm": float(self.norm[s][i, j]) for s in SCORES}
        row |= {f"rank_{s}": float(self.rank[s][i, j]) for s in SCORES}
        return row | {k: float(getattr(self, k)[i, j]) for k in FUSIONS}

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(layer, head) for layer in self.layers for head in self.heads]

    def top_k(self, k: int = 10) -> list[dict[str, Any]]:
        """The k heads with the highest ``combined`` score over all layers."""
        return self._top(np.arange(self.combined.size), k)

    def top_k_per_layer(self, k: int = 3) -> dict[int, list[dict[str, Any]]]:
        """The k best heads of each layer."""
        n = len(self.heads)
        return {
            layer: self._top(np.arange(i * n, (i + 1) * n), k)
            for i, layer in enumerate(self.layers)
        }

    def _top(self, index: Int[np.ndarray, " n"], k: int) -> list[dict[str, Any]]:
        # combined first, then the other scope's fusion, then S_out: deterministic ties
        layer_scope = self.config.get("rank_scope", "layer") == "layer"
        other = self.combined_global if layer_scope else self.combined_layer
        keys = (self.norm["out"].ravel()[index], other.ravel()[index], self.combined.ravel()[index])
        n = len(self.heads)
        best = index[np.lexsort(tuple(-key for key in keys))][:k]
        rows = [self.row(self.layers[i // n], self.heads[i % n]) for i in best]
        return [{key: row[key] for key in TOP_K_FIELDS} for row in rows]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data (lists, numbers, None for NaN); ``from_dict`` reads it back."""
        keys = ("layers", "heads", "config", "stats", "raw", "norm", "rank", *FUSIONS)
        return plain({"format": TABLE_FORMAT} | {k: getattr(self, k) for k in keys})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HeadScores":
        if not isinstance(data, Mapping) or data.get("format", TABLE_FORMAT) != TABLE_FORMAT:
            got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(
                f"not a head-score table: expected format {TABLE_FORMAT!r}, got {got!r}"
            )

        def grid(x: Any) -> np.ndarray:
            return np.array([[math.nan if v is None else v for v in line] for line in x], float)

        return cls(
            layers=list(data["layers"]),
            heads=list(data["heads"]),
            **{k: {m: grid(v) for m, v in data[k].items()} for k in ("raw", "norm", "rank")},
            **{k: grid(data[k]) for k in FUSIONS},
            config=dict(data.get("config", {})),
            stats=dict(data.get("stats", {})),
        )


# --- normalisation and fusion -----------------------------------------------------------------


def normalize_layers(x: Grid, method: str) -> Grid:
    """Normalise each layer's heads: ``zscore`` (mean 0, std 1; 0 where the layer is constant)
    or ``percentile`` (0 = lowest head of the layer, 100 = highest, ties averaged)."""
    if choice("norm", method, NORMS) == "zscore":
        std = x.std(axis=1, keepdims=True)
        return (x - x.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
    n = x.shape[1]
    ranks = scipy_stats.rankdata(x, axis=1)
    return 100.0 * (ranks - 1) / (n - 1) if n > 1 else np.full_like(x, 50.0)


def rank_scores(x: Grid, scope: str) -> Grid:
    """Ranks (1 = lowest, ties averaged) within each layer or over all heads."""
    if choice("rank_scope", scope, RANK_SCOPES) == "layer":
        return scipy_stats.rankdata(x, axis=1)
    return scipy_stats.rankdata(x.ravel()).reshape(x.shape)


def fuse(
    norm: Mapping[str, Grid], lambda_ent: float, lambda_task: float, scope: str
) -> tuple[dict[str, Grid], Grid]:
    """``rank(S_out) + λ_ent·rank(S_ent) + λ_task·rank(S_task)``. A score that is NaN (e.g. no
    task span anywhere) or has weight 0 drops out; its rank grid is NaN."""
    weights = {"out": 1.0, "ent": lambda_ent, "task": lambda_task}
    ranks, combined = {}, np.zeros_like(norm["out"])
    for name, weight in weights.items():
        if weight == 0 or np.isnan(norm[name]).any():
            ranks[name] = np.full_like(norm[name], math.nan)
            continue
        ranks[name] = rank_scores(norm[name], scope)
        combined = combined + weight * ranks[name]
    return ranks, combined


def _fusion_options(
    norm: object, lambda_ent: object, lambda_task: object, rank_scope: object
) -> tuple[float, float]:
    """The weights as floats, once every fusion option is checked (a weight of 0 leaves a score
    out; a negative one would reward the opposite of what the score measures)."""
    lambda_ent = number("lambda_ent", lambda_ent, at_least=0)
    lambda_task = number("lambda_task", lambda_task, at_least=0)
    choice("norm", norm, NORMS)
    choice("rank_scope", rank_scope, RANK_SCOPES)
    return lambda_ent, lambda_task


def build_table(
    raw: Mapping[str, Grid],
    layers: Sequence[int],
    heads: Sequence[int],
    *,
    norm: str = "zscore",
    lambda_ent: float = 1.0,
    lambda_task: float = 1.0,
    rank_scope: str = "layer",
    config: Mapping[str, Any] | None = None,
    stats: Mapping[str, Any] | None = None,
) -> HeadScores:
    """Normalise, rank and fuse raw grids into a ``HeadScores`` (also used to re-fuse a saved
    table with other weights: ``build_table(t.raw, t.layers, t.heads, lambda_ent=0.5)``)."""
    lambda_ent, lambda_task = _fusion_options(norm, lambda_ent, lambda_task, rank_scope)
    signed = {"out": raw["out"], "ent": -raw["ent"], "task": raw["task"]}  # higher = better
    normed = {s: normalize_layers(signed[s], norm) for s in SCORES}
    normed = {s: np.where(np.isnan(signed[s]), math.nan, v) for s, v in normed.items()}
    fused = {scope: fuse(normed, lambda_ent, lambda_task, scope) for scope in RANK_SCOPES}
    options = dict(norm=norm, lambda_ent=lambda_ent, lambda_task=lambda_task, rank_scope=rank_scope)
    return HeadScores(
        layers=list(layers),
        heads=list(heads),
        raw={m: np.asarray(raw[m], dtype=float) for m in RAW_METRICS},
        norm=normed,
        rank=fused[rank_scope][0],
        combined=fused[rank_scope][1],
        combined_layer=fused["layer"][1],
        combined_global=fused["global"][1],
        config=dict(config or {}, **options),
        stats=dict(stats or {}),
    )


# --- scoring --------------------------------------------------------------------------------


def score(
    model: nn.Module,
    tokenizer: Any,
    records: Iterable[Prompt | Mapping | str],
    batch_size: int = 8,
    *,
    query_mode: str = "last_token",
    exclude_first_token: bool = True,
    exclude_sink: bool = True,
    normalize_entropy: bool = True,
    norm: str = "zscore",
    lambda_ent: float = 1.0,
    lambda_task: float = 1.0,
    rank_scope: str = "layer",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    max_length: int | None = 512,
    progress: bool = True,
    distributed: bool | iv.distributed.World | None = None,
) -> HeadScores:
    """Score every (layer, head) from one streaming pass, one forward per batch. ``records``:
    ``Prompt`` values, records as in the data files (``parse_record``) or strings, any iterable
    (read once); the options are described in docs/head_scores.md. Under ``torchrun`` each rank
    scores its block of the batches and the sums merge, as in ``iv.tally`` (``distributed``)."""
    geometry = iv.geometry(model)
    layers = _indices(layers, geometry.n_layers, "layer")
    heads = _indices(heads, geometry.n_heads, "head")
    batch_size = integer("batch_size", batch_size)
    _fusion_options(norm, lambda_ent, lambda_task, rank_scope)
    choice("query_mode", query_mode, QUERY_MODES)
    if isinstance(records, (str, Path)):
        raise TypeError("records is a list of records; read a file with load_records(path)")
    if hasattr(records, "__len__") and len(records) == 0:  # type: ignore[arg-type]
        raise ValueError(NO_RECORDS)
    if max_length is not None:
        max_length = integer("max_length (or None)", max_length)
    device, pad_id = text.device_of(model), text.pad_id(tokenizer)
    select = None if heads == list(range(geometry.n_heads)) else heads
    outputs = {layer: OutputNorms(head_gram(model, layer, heads)) for layer in layers}
    patterns = {layer: AttentionStats(normalize_entropy) for layer in layers}
    counts = dict(
        samples=0, tokens=0, query_tokens=0, task_found=0, task_missing=0, truncated=0, batches=0
    )
    digests = []  # one per prompt, in order: the same however prompts are batched or sharded
    last = f"layers.{layers[-1]}.attn.heads"  # the forward ends after it: no later layer, no logits
    started = time.perf_counter()
    world = iv.distributed.world(distributed)
    chunks = text.batches(records, batch_size, desc="scoring heads", progress=progress)
    first = 0
    if world.size > 1:
        chunks = list(chunks)
        block = iv.distributed.shard(len(chunks), world.rank, world.size, [len(c) for c in chunks])
        first, chunks = block.start, chunks[block.start : block.stop]
    with world.guard("head_scores.score"):
        for b, chunk in enumerate(chunks, start=first):
            prompts = [
                parse_record(r, f"records[{b * batch_size + i}]") for i, r in enumerate(chunk)
            ]
            encoded = [prompt_tokens(tokenizer, prompt, max_length) for prompt in prompts]
            batch = text.pad([e.ids for e in encoded], pad_id, "right").to(device)
            lengths = batch.attention_mask.sum(-1)
            mask = query_mask(lengths, batch.input_ids.shape[1], query_mode, exclude_first_token)
            rows = query_rows(batch.attention_mask, mask, [e.span for e in encoded])
            for layer in layers:
                patterns[layer].rows = rows
            plan = {
                f"layers.{layer}.attn.{kind}": iv.Capture(
                    reduce=r[layer], positions=mask, heads=select
                )
                for layer in layers
                for kind, r in (("heads", outputs), ("pattern", patterns))
            }
            with torch.inference_mode(), iv.intervene(model, plan, stop_after=last):
                model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
                )
            digests += [
                hashlib.sha1(json.dumps([e.ids, e.span]).encode()).hexdigest() for e in encoded
            ]
            counts["samples"] += len(encoded)
            counts["batches"] += 1
            counts["tokens"] += int(lengths.sum())
            counts["query_tokens"] += int(mask.sum())
            counts["task_found"] += sum(e.span is not None for e in encoded)
            counts["truncated"] += sum(e.truncated for e in encoded)
    seconds = time.perf_counter() - started
    if world.size > 1:
        reducers = [*outputs.values(), *patterns.values()]
        iv.stats.all_reduce(reducers, world, device, "head_scores.score: merging the statistics")
        parts = world.exchange((counts, digests, seconds), "head_scores.score")
        counts = {key: sum(part[0][key] for part in parts) for key in counts}
        digests = [digest for part in parts for digest in part[1]]
        seconds = max(part[2] for part in parts)
    fingerprint = hashlib.sha1("".join(digests).encode())
    if counts["samples"] == 0:
        raise ValueError(NO_RECORDS)
    if counts["query_tokens"] == 0:
        raise ValueError(
            "no query tokens: every prompt is a single token and exclude_first_token=True"
        )
    counts["task_missing"] = counts["samples"] - counts["task_found"]
    raw = _raw_grids(outputs, patterns, layers, exclude_sink)
    notes = []
    if counts["task_missing"]:
        notes.append(
            f"task span not found in {counts['task_missing']} of {counts['samples']} prompts"
        )
    if counts["truncated"]:
        notes.append(f"{counts['truncated']} prompts truncated to {max_length} tokens")
    for name, lam in (("ent", lambda_ent), ("task", lambda_task)):
        if lam != 0 and np.isnan(raw[name]).any():
            notes.append(f"S_{name} is undefined on this data; left out of the fusion")
    for note in notes:
        log.warning(note)
    stats = dict(counts, seconds=seconds, tokens_per_second=counts["tokens"] / seconds)
    stats |= dict(data_sha1=fingerprint.hexdigest(), notes=notes)
    config = dict(
        batch_size=batch_size,
        query_mode=query_mode,
        exclude_first_token=exclude_first_token,
        exclude_sink=exclude_sink,
        normalize_entropy=normalize_entropy,
        max_length=max_length,
        model_type=getattr(model.config, "model_type", None),
    )
    done = (counts["samples"], counts["tokens"], seconds, stats["tokens_per_second"])
    log.info("scored %d prompts (%d tokens) in %.2f s (%.0f tokens/s)", *done)
    fusion = dict(norm=norm, lambda_ent=lambda_ent, lambda_task=lambda_task, rank_scope=rank_scope)
    return build_table(raw, layers, heads, **fusion, config=config, stats=stats)


def _raw_grids(
    outputs: Mapping[int, OutputNorms],
    patterns: Mapping[int, AttentionStats],
    layers: Sequence[int],
    exclude_sink: bool,
) -> dict[str, Grid]:
    out = torch.stack([outputs[layer].value.cpu() for layer in layers]).numpy()  # [L, 2, H]
    att = torch.stack([patterns[layer].value.cpu() for layer in layers]).numpy()  # [L, 5, H]
    a = {name: att[:, i] for i, name in enumerate(ATTENTION_STATS)}
    keys = "nosink" if exclude_sink else "all"  # S_ent and S_task without the first key or with
    grids = {"out": out[:, 0], "out_resid": out[:, 1], "ent": a[f"ent_{keys}"]}
    grids |= {m: a[m] for m in ("ent_all", "ent_nosink", "sink")}
    return grids | {"task": a[f"task_{keys}"]}


def _indices(values: Sequence[int] | None, n: int, what: str) -> list[int]:
    if values is None:
        return list(range(n))
    return sorted(indices(f"{what}s", values, n, what=what, hint=f"pass None for every {what}"))


# --- comparison -------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Per-head change from ``before`` to ``after`` of each m in ``COMPARED``: ``diff`` (also of
    ``combined``), ``ratio``, ``log_ratio``, Spearman correlations and the heads that moved most
    (by |log ratio|), as docs/head_scores.md describes."""

    layers: list[int]
    heads: list[int]
    before: dict[str, Grid]
    after: dict[str, Grid]
    diff: dict[str, Grid]
    ratio: dict[str, Grid]
    log_ratio: dict[str, Grid]
    spearman: dict[str, dict[str, float]]
    movers: dict[str, list[dict[str, Any]]]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data (lists, numbers, None for NaN)."""
        data = {"format": COMPARISON_FORMAT, "layers": self.layers, "heads": self.heads}
        data |= {"spearman": self.spearman, "top_movers": self.movers, "diff": self.diff}
        return plain(data | {"ratio": self.ratio, "log_ratio": self.log_ratio})


def compare(
    table_before: HeadScores, table_after: HeadScores, *, top: int = 10, check_data: bool = True
) -> Comparison:
    """Per-head differences, ratios, Spearman correlations and top movers between two tables
    scored on the same samples (``check_data`` compares the token-id fingerprints)."""
    top = integer("top", top, minimum=0)
    b, a = table_before, table_after
    if b.layers != a.layers or b.heads != a.heads:
        raise ValueError(
            f"tables cover different heads: before layers {b.layers} heads {b.heads}, after "
            f"layers {a.layers} heads {a.heads}"
        )
    fp_b, fp_a = b.stats.get("data_sha1"), a.stats.get("data_sha1")
    if check_data and fp_b and fp_a and fp_b != fp_a:
        raise ValueError(
            "the two tables were scored on different token ids (data_sha1 differs): compare "
            "models on identical samples with the same tokenizer, or pass check_data=False"
        )
    before = {m: b.raw[m] for m in COMPARED} | {"combined": b.combined}
    after = {m: a.raw[m] for m in COMPARED} | {"combined": a.combined}
    diff = {m: after[m] - before[m] for m in before}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = {m: np.where(before[m] != 0, after[m] / before[m], math.nan) for m in COMPARED}
        log_ratio = {m: np.log(ratio[m]) for m in COMPARED}
    spearman: dict[str, dict[str, float]] = {
        "before_vs_after": {m: _spearman(before[m], after[m]) for m in before},
        "pre_vs_change": {m: _spearman(before[m], diff[m]) for m in before},
        "pre_vs_abs_change": {m: _spearman(before[m], np.abs(log_ratio[m])) for m in COMPARED},
        "combined_vs_abs_change": {
            m: _spearman(before["combined"], np.abs(log_ratio[m])) for m in COMPARED
        },
    }
    movers = {m: _movers(b, before[m], after[m], log_ratio[m], top) for m in COMPARED}
    return Comparison(
        list(b.layers), list(b.heads), before, after, diff, ratio, log_ratio, spearman, movers
    )


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.ravel(), y.ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(scipy_stats.spearmanr(x[ok], y[ok]).statistic)


def _movers(
    table: HeadScores, before: Grid, after: Grid, log_ratio: Grid, top: int
) -> list[dict[str, Any]]:
    size = np.nan_to_num(np.abs(log_ratio), nan=-1.0).ravel()
    order = np.argsort(-size, kind="stable")[:top]
    n = len(table.heads)
    return [
        {
            "layer": table.layers[i // n],
            "head": table.heads[i % n],
            "before": float(before.ravel()[i]),
            "after": float(after.ravel()[i]),
            "ratio": float(math.exp(log_ratio.ravel()[i])),
            "log_ratio": float(log_ratio.ravel()[i]),
        }
        for i in order
    ]
