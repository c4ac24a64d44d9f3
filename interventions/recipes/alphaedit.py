"""AlphaEdit: rewrite facts with a closed-form MLP update kept in the null space of what to keep.

Paper: Fang et al., "AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models",
ICLR 2025, built on MEMIT (Meng et al., "Mass-Editing Memory in a Transformer", ICLR 2023). A
request ``{prompt: "The Eiffel Tower is located in {}", subject: "The Eiffel Tower", target_new:
"Rome", target_true: "Paris"}`` is written into the MLP down projections of a few layers; AlphaEdit
projects the update onto the null space of the keys of preserved knowledge, so what the model
knew stays put, also over many sequential batches. ``method="memit"`` is MEMIT's own system in
the same code (P = I, a covariance prior instead of a null space, no accumulation).

Algorithm:

1. ``key_stats``: ``C0 = E[k kᵀ]`` of ``layers.l.mlp.act`` (the down projection's input) over a
   corpus, one cached ``iv.tally`` pass for all edited layers. ``P = Û Ûᵀ``, Û the eigenvectors
   of C0 under a threshold (absolute, relative or energy).
2. ``compute_z``: a δ added to ``layers.L.resid_post`` (L: the last edited layer) at the subject's
   last token is optimised with Adam to write ``target_new`` after the prompt and 5 generated
   prefixes (plus KL on "{subject} is a", weight decay, ``‖δ‖ ≤ clamp_norm_factor·‖h‖``). z = h + δ.
3. Layer by layer (i-th of n), on the model edited so far: keys K1 at the subject (½ plain prompt
   + ½ mean over prefixes), ``R = (z − h_L) / (n − i)``; AlphaEdit ``ΔWᵀ = solve(P (K1K1ᵀ +
   K_pK_pᵀ) + λI, P K1 Rᵀ)`` (K_p: keys of earlier batches, added after each batch), MEMIT
   ``ΔWᵀ = solve(λ_mom2·C0 + K1K1ᵀ, K1 Rᵀ)``.
4. The result is an applied ``iv.WeightDelta``; a failure midway restores every touched weight.

Usage::

    model, tokenizer = interventions.models.load()                  # SmolLM2-135M-Instruct
    records = alphaedit.load_requests()                             # bundled CounterFact-style
    delta = alphaedit.edit(model, tokenizer, records[:10])  # statistics computed once, cached
    delta.revert(model)
    stats = alphaedit.key_stats(model, tokenizer, layers=[4, 5, 6, 7, 8])    # or choose them
    delta = alphaedit.edit(model, tokenizer, records[:10], stats=stats)      # method="memit" too
    alphaedit.evaluate(model, tokenizer, records[:10]).summary()   # efficacy, paraphrase, ...
    delta.revert(model)                                             # bit-exact
    editor = alphaedit.Editor(model, tokenizer, stats)              # sequential: P, K_p state
    deltas = [editor.edit(batch) for batch in (records[:10], records[10:20])]
    editor.save("editor.safetensors"); editor.reset()
"""

import copy
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

import interventions as iv
from interventions.checks import indices, integer, number
from interventions.evals import counterfact
from interventions.evals.counterfact import (
    BUNDLED_REQUESTS,
    Request,
    RequestError,
    Scores,
    SequentialRun,
    as_request,
    as_requests,
    evaluate,
    filter_known,
    load_requests,
    scores_from_records,
    target_logprobs,
)
from interventions.files import load_tensors, save_tensors
from interventions.lm import n_gram_entropy

log = logging.getLogger("interventions.alphaedit")

DATA = Path(__file__).resolve().parent.parent / "data"
BUNDLED_CORPUS = (DATA / "prose.txt", DATA / "encyclopedia.txt")
METHODS = ("alphaedit", "memit")
THRESHOLD_MODES = ("absolute", "relative", "energy")
PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")
KL_PROMPT = "{} is a"
Z_CHUNK = 10  # requests per target-value optimisation (memory grows with it)
_STATS_FORMAT = "interventions.alphaedit.KeyStats/1"
_EDITOR_FORMAT = "interventions.alphaedit.Editor/1"

Method = Literal["alphaedit", "memit"]
ThresholdMode = Literal["absolute", "relative", "energy"]


# --- hyperparameters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HParams:
    """Named as in the paper's code; defaults measured on SmolLM2-135M (docs/alphaedit.md), the
    paper's Llama3-8B values noted where they differ. ``layers=None``: those of the statistics."""

    layers: tuple[int, ...] | None = None  # Llama3-8B: 4..8 of 32
    v_lr: float = 0.5  # Llama3-8B: 0.1 (here it stops far from the target in 25 steps)
    v_num_grad_steps: int = 25
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    early_stop_loss: float = 0.05
    nullspace_threshold: float = 2e-2
    nullspace_mode: ThresholdMode = "absolute"
    L2: float = 1.0  # λ of AlphaEdit's system; Llama3-8B: 10 (better over 400 edits: the docs)
    mom2_update_weight: float = 100.0  # λ_mom2 of MEMIT's C0; Llama3-8B: 15000 (no edit here)
    n_prefixes: int = 5  # generated context prefixes (0: plain prompt only)
    prefix_length: int = 10  # tokens per generated prefix
    seed: int = 0  # prefix generation

    def __post_init__(self) -> None:
        if self.nullspace_mode not in THRESHOLD_MODES:
            raise ValueError(
                f"nullspace_mode must be one of {THRESHOLD_MODES}, got {self.nullspace_mode!r}"
            )
        if self.layers is not None:
            if not self.layers or len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers must be non-empty without repeats, got {self.layers}")
            layers = tuple(integer(f"layers[{i}]", x, minimum=0) for i, x in enumerate(self.layers))
            object.__setattr__(self, "layers", layers)
        for name in ("v_num_grad_steps", "n_prefixes", "prefix_length"):
            integer(name, getattr(self, name), minimum=0)
        integer("seed", self.seed, minimum=None)
        number("v_lr", self.v_lr, above=0)
        number("clamp_norm_factor", self.clamp_norm_factor, above=0)
        for name in ("v_weight_decay", "kl_factor", "early_stop_loss", "L2", "mom2_update_weight"):
            number(name, getattr(self, name), at_least=0)
        fraction = self.nullspace_mode in ("relative", "energy")  # of the largest / of the total
        at_most = 1.0 if fraction else None
        number("nullspace_threshold", self.nullspace_threshold, at_least=0, at_most=at_most)


def default_layers(n_layers: int) -> list[int]:
    """The paper's Llama3-8B choice (layers 4..8 of 32) scaled to ``n_layers``."""
    if n_layers < 5:
        return list(range(n_layers))
    start = min(round(n_layers * 4 / 32), n_layers - 5)
    return list(range(start, start + 5))


# --- the corpus of preserved knowledge -----------------------------------------------------------


def load_corpus(path: str | os.PathLike | None = None) -> list[str]:
    """Paragraphs of a plain-text file, split at blank lines (default: the bundled corpus,
    ``prose.txt`` then ``encyclopedia.txt``, see docs/alphaedit.md)."""
    paths = [path] if path is not None else BUNDLED_CORPUS
    texts = [Path(file).read_text(encoding="utf-8") for file in paths]
    paragraphs = [" ".join(p.split()) for text in texts for p in re.split(r"\n\s*\n", text)]
    return [p for p in paragraphs if p]


# --- tokenizing --------------------------------------------------------------------------------


def subject_last_token(tokenizer: Any, text: str, start: int, end: int) -> int:
    """Index of the token holding the last character of ``text[start:end]`` (from offsets)."""
    return encode(tokenizer, text, subject_span=(start, end)).subject


@dataclass(frozen=True)
class EditRow:
    """Token ids of one prompt (plus target tokens), the subject's last token, the targets."""

    ids: list[int]
    subject: int  # index of the subject's last token (-1 when not asked)
    target: list[int]  # target token ids; they are ids[target_start : target_start + n]
    target_start: int


def encode(
    tokenizer: Any,
    text: str,
    *,
    subject_span: tuple[int, int] | None = None,
    target: str | None = None,
) -> EditRow:
    """Tokenize ``text`` (+ " " + ``target``) and locate the subject's last token and the
    target's tokens by character offsets. The returned ids stop at the last target token."""
    if target is None:
        encoded, targets = iv.text.encode(tokenizer, text), None
    else:
        prompt = text.rstrip()
        try:
            encoded, targets = iv.text.encode_continuation(tokenizer, prompt, " " + target.strip())
        except ValueError as error:
            raise RequestError(f"the target {target!r} of {prompt!r}: {error}") from None
    subject = -1
    if subject_span is not None:
        span = iv.text.token_span(encoded, subject_span)
        if not span:
            raise RequestError(
                f"no token covers the subject {text[slice(*subject_span)]!r} in {text!r}"
            )
        subject = span[-1]
    if targets is None:
        return EditRow(encoded.ids, subject, [], len(encoded.ids))
    if subject >= targets.start:
        raise RequestError(f"the subject of {text!r} overlaps the target {target!r}")
    return EditRow(encoded.ids, subject, [encoded.ids[i] for i in targets], targets.start)


def _subject_row(
    tokenizer: Any, context: str, prompt: str, subject: str, target: str | None = None
) -> EditRow:
    """``prompt`` with ``subject`` in its ``{}``, put in the ``{}`` of ``context``, encoded with
    the subject's last token (and ``target``'s tokens)."""
    start = context.index("{}") + prompt.index("{}")
    text = context.replace("{}", prompt.replace("{}", subject, 1))
    return encode(tokenizer, text, subject_span=(start, start + len(subject)), target=target)


def _split_at_subject(
    model: nn.Module, rows: Sequence[Sequence[int]], subjects: Sequence[int], pad_with: int
) -> tuple[iv.text.Batch, Any, int]:
    """Nothing before the subject's last token depends on a δ added there: run those tokens once
    (no grad, left-padded) and return the rest of the rows as a continuation of that KV cache (the
    same logits as whole rows, tested), the cache (None: no prefix) and its width, the subject's
    column."""
    width = max(subjects)
    prefix = torch.full((len(rows), width), pad_with, dtype=torch.long)
    prefix_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, s) in enumerate(zip(rows, subjects, strict=True)):
        if s:
            prefix[i, width - s :] = torch.tensor(list(row[:s]))
            prefix_mask[i, width - s :] = 1
    suffix = iv.text.pad([r[s:] for r, s in zip(rows, subjects, strict=True)], pad_with, "right")
    positions = torch.tensor(list(subjects))[:, None] + torch.arange(suffix.input_ids.shape[1])
    mask = torch.cat([prefix_mask, suffix.attention_mask], dim=1)
    past = None
    if width > 0:
        prefix_batch = iv.text.Batch(prefix, prefix_mask, (prefix_mask.cumsum(1) - 1).clamp(min=0))
        with torch.no_grad():
            output = model(**prefix_batch.to(model).inputs(model), use_cache=True)
            past = iv.text.returned_cache(output)
    return iv.text.Batch(suffix.input_ids, mask, positions).to(model), past, width


class SubjectShift(iv.Intervention):
    """Adds ``delta[owner[row]]`` (a trainable δ per request) to the residual stream at the one
    token per row of the ``positions`` mask; ``seen`` keeps the last unshifted activations."""

    def __init__(self, delta: nn.Parameter, owner: Int[Tensor, " rows"], positions: Tensor):
        super().__init__(positions=positions)
        self.delta = delta
        self.register_buffer("owner", owner)
        self.seen: Tensor | None = None

    def check_width(self, site: iv.Site, geometry: iv.Geometry) -> None:
        if self.delta.shape[-1] != geometry.d_model:
            raise ValueError(
                f"SubjectShift at {site}: delta has width {self.delta.shape[-1]}, the residual "
                f"stream {geometry.d_model}"
            )

    def forward(self, x: Float[Tensor, "rows d"]) -> Float[Tensor, "rows d"]:
        self.seen = x.detach()
        return x + self.delta[self.owner.to(x.device)].to(x.dtype)


# --- key statistics ------------------------------------------------------------------------------


@dataclass
class KeyStats:
    """Uncentred second moments ``E[k kᵀ]`` of ``mlp.act`` per layer (float32, on CPU)."""

    moments: dict[int, Float[Tensor, "d_mlp d_mlp"]]
    count: int  # number of key vectors (tokens) averaged
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.moments)

    def projector(
        self, layer: int, threshold: float = 2e-2, mode: ThresholdMode = "absolute"
    ) -> tuple[Float[Tensor, "d_mlp d_mlp"], int]:
        """``(P, null_dim)``: the projector on the null space of this layer's keys."""
        if layer not in self.moments:
            raise KeyError(f"no key statistics for layer {layer}; have layers {self.layers}")
        return null_space_projector(self.moments[layer], threshold, mode, layer=layer)

    def save(self, path: str | os.PathLike) -> Path:
        tensors = {f"layer.{layer}": m.contiguous() for layer, m in self.moments.items()}
        meta = {"count": str(self.count), "info": json.dumps(self.info)}
        return save_tensors(path, tensors, format=_STATS_FORMAT, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KeyStats":
        tensors, meta = load_tensors(path, format=_STATS_FORMAT)
        moments = {int(k.split(".")[1]): v for k, v in tensors.items()}
        return cls(moments, int(meta["count"]), json.loads(meta.get("info", "{}")))


def null_space_projector(
    moment: Float[Tensor, "d d"],
    threshold: float = 2e-2,
    mode: ThresholdMode = "absolute",
    *,
    layer: int | None = None,
) -> tuple[Float[Tensor, "d d"], int]:
    """``(P, null_dim)``, ``P = Û Ûᵀ`` from the eigenvectors of ``moment`` with eigenvalues under
    ``threshold`` (``absolute``, the paper's 2e-2), under threshold · largest (``relative``), or
    the smallest ones holding at most ``threshold`` of the total (``energy``); logged."""
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    threshold = number("threshold", threshold, at_least=0)
    values, vectors = torch.linalg.eigh(moment.double())  # ascending
    if mode == "absolute":
        small = values < threshold
    elif mode == "relative":
        small = values < threshold * values.max()
    else:
        energy = values.clamp(min=0).cumsum(0) / values.clamp(min=0).sum().clamp(min=1e-30)
        small = energy <= threshold
    basis = vectors[:, small]
    projector = (basis @ basis.T).float()
    null_dim, d = int(small.sum()), moment.shape[0]
    kept = float(values[small].clamp(min=0).sum() / values.clamp(min=0).sum().clamp(min=1e-30))
    where = f"layer {layer}: " if layer is not None else ""
    log.info(
        f"{where}null space {null_dim} of {d} dims ({mode} threshold {threshold:g}; it holds "
        f"{kept:.2e} of the key energy)"
    )
    if null_dim == 0:
        log.warning("%snull space is empty: AlphaEdit cannot change this layer", where)
    elif null_dim == d:
        log.warning("%snull space is everything: nothing is protected (threshold too high?)", where)
    return projector, null_dim


def require_editable_mlp(model: nn.Module) -> iv.Adapter:
    """The model's adapter, if its MLPs are what AlphaEdit edits: a down projection whose input
    is ``mlp.act`` and whose output is what the MLP adds to the residual stream."""
    table = iv.adapter(model)
    try:
        table.refuse("mlp.act", model.config)
    except NotImplementedError as error:
        raise NotImplementedError(f"AlphaEdit / MEMIT edit a down projection: {error}") from None
    if table.mlp_out is not None:
        raise NotImplementedError(
            f"AlphaEdit / MEMIT on {table.name}: what the MLP adds to the residual stream is the "
            f"output of {table.mlp_out!r}, not of the down projection {table.down_proj!r}, so "
            "the closed-form update of down_proj would not move the residual stream linearly"
        )
    return table


def key_stats(
    model: nn.Module,
    tokenizer: Any,
    corpus: Iterable[str] | None = None,
    layers: Sequence[int] | None = None,
    *,
    max_tokens: int = 200_000,
    max_length: int = 128,
    batch_size: int = 8,
    skip_first_token: bool = False,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    distributed: bool | iv.distributed.World | None = None,
) -> KeyStats:
    """``E[k kᵀ]`` of ``layers.l.mlp.act`` for every layer in ``layers``, from ONE pass of
    ``iv.tally`` over ``text.chunks`` of ``corpus`` (default ``load_corpus()``), each layer cached
    in ``cache_dir`` (default ``stats.default_cache_dir("alphaedit")``) unless ``cache=False``.
    Under ``torchrun`` every rank passes the same corpus and gets the statistics of all of it,
    each rank running a block of the batches (``distributed``: see ``iv.tally``)."""
    require_editable_mlp(model)
    n_layers = iv.geometry(model).n_layers
    if layers is None:
        layers = default_layers(n_layers)
    hint = "pass the layers to edit, e.g. default_layers(n_layers)"
    layers = sorted(indices("layers", layers, n_layers, hint=hint))
    corpus = load_corpus() if corpus is None else corpus
    chunks = iv.text.chunks(tokenizer, corpus, max_length, max_tokens)
    if not chunks:
        raise ValueError(
            "the corpus gave no text to compute key statistics from (no text of two or more "
            "tokens): pass a list of texts, or corpus=None for the bundled one"
        )
    rows = sorted(chunks, key=len, reverse=True)  # little padding
    pad_with = iv.text.pad_id(tokenizer)
    padded = [iv.text.pad(part, pad_with, "right") for part in iv.text.batches(rows, batch_size)]
    folder = iv.stats.default_cache_dir("alphaedit") if cache_dir is None else Path(cache_dir)
    sites = {layer: f"layers.{layer}.mlp.act" for layer in layers}
    found = iv.tally(
        model,
        padded,
        {site: iv.SecondMoment() for site in sites.values()},
        skip_first_token=skip_first_token,
        cache=folder if cache else None,
        progress=progress,
        desc=f"key statistics, layers {layers}",
        distributed=distributed,
    )
    moments = {layer: found[site].value.float() for layer, site in sites.items()}
    identity = json.dumps([chunks, max_length, skip_first_token, max_tokens])
    info = {
        "corpus": hashlib.sha256(identity.encode()).hexdigest()[:20],
        "max_length": max_length,
        "skip_first_token": skip_first_token,
    }
    return KeyStats(moments, found[sites[layers[0]]].count, info)


def default_key_stats(
    model: nn.Module, tokenizer: Any, layers: Sequence[int] | None = None
) -> KeyStats:
    """What an ``Editor`` without ``stats`` uses, as the official code does: ``key_stats`` on the
    bundled corpus at ``layers`` (default ``default_layers``), with the default disk cache
    (``stats.default_cache_dir("alphaedit")``, so only the first call runs the model) and a
    progress bar; logged, with where the cache lives."""
    folder = iv.stats.default_cache_dir("alphaedit")
    shown = "default_layers" if layers is None else list(layers)
    log.info(
        f"no key statistics given: computing E[k kᵀ] on the bundled corpus at layers {shown}, "
        f"or loading them from the cache in {folder} (pass stats=key_stats(...) to choose)"
    )
    stats = key_stats(model, tokenizer, layers=layers, cache_dir=folder)
    log.info(f"key statistics: layers {stats.layers}, {stats.count} tokens, cached in {folder}")
    return stats


# --- the closed-form updates -----------------------------------------------------------------


def alphaedit_update(
    keys: Float[Tensor, "d_in n"],
    residuals: Float[Tensor, "d_out n"],
    projector: Float[Tensor, "d_in d_in"] | None,
    past: Float[Tensor, "d_in d_in"] | None = None,
    l2: float = 1.0,
) -> Float[Tensor, "d_out d_in"]:
    """``ΔW = solve(P (K Kᵀ + K_p K_pᵀ) + λI, P K Rᵀ)ᵀ`` in float32 (``[out, in]``).

    The exact solution X = ΔWᵀ lies in the range of P (λX = P(B − MX)); the float32 solve
    leaks a little out of it when λ is small against ‖KKᵀ‖, so X is projected once more, which
    keeps ``ΔW K0 ≈ 0`` for the preserved keys at any λ. ``projector=None`` is P = I: the
    ridge least-squares fit of ``ΔW K ≈ R`` that also keeps ``ΔW K_p ≈ 0``."""
    keys, residuals = keys.float(), residuals.float()
    d_in = keys.shape[0]
    gram = keys @ keys.T if past is None else keys @ keys.T + past.float().to(keys.device)
    rhs = keys @ residuals.T
    eye = torch.eye(d_in, dtype=torch.float32, device=keys.device)
    if projector is None:
        return torch.linalg.solve(gram + l2 * eye, rhs).T
    p = projector.float().to(keys.device)
    return (p @ torch.linalg.solve(p @ gram + l2 * eye, p @ rhs)).T


def memit_update(
    keys: Float[Tensor, "d_in n"],
    residuals: Float[Tensor, "d_out n"],
    moment: Float[Tensor, "d_in d_in"],
    mom2_update_weight: float = 100.0,
) -> Float[Tensor, "d_out d_in"]:
    """MEMIT: ``ΔW = R Kᵀ (λ_mom2 C0 + K Kᵀ)⁻¹`` (float32, ``[out, in]``)."""
    keys, residuals = keys.float(), residuals.float()
    system = mom2_update_weight * moment.float().to(keys.device) + keys @ keys.T
    return torch.linalg.solve(system, keys @ residuals.T).T


# --- the editor ------------------------------------------------------------------------------


@dataclass
class ZResult:
    """Optimised target values at the last edited layer, one per request."""

    z: Float[Tensor, "n d_model"]
    init: Float[Tensor, "n d_model"]
    loss: list[float]
    prob: list[float]  # mean probability of the target tokens at the end
    steps: list[int]


class Editor:
    """Editing state for one model: per layer P and the keys of past edits (AlphaEdit) or C0
    (MEMIT), and the prefixes. Two editors share nothing; nothing is written but by ``save``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        stats: KeyStats | None = None,
        *,
        method: Method = "alphaedit",
        hparams: HParams | None = None,
        prefixes: Sequence[str] | None = None,
        projectors: Mapping[int, Float[Tensor, "d_mlp d_mlp"]] | None = None,
    ):
        """``stats`` gives the layers (unless ``hparams.layers``), P (AlphaEdit) or C0 (MEMIT);
        without ``stats`` and ``projectors`` they are computed by ``default_key_stats`` (bundled
        corpus, ``hparams.layers`` or ``default_layers``, cached on disk). ``projectors``
        replaces the P computed from ``stats`` (your own null space)."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if stats is not None and not isinstance(stats, KeyStats):
            raise TypeError(
                f"stats must be KeyStats from alphaedit.key_stats(...) or None (computed on the "
                f"bundled corpus), got {type(stats).__name__}"
            )
        self.model, self.tokenizer = model, tokenizer
        self.pad_with = iv.text.pad_id(tokenizer)
        self.method: Method = method
        self.hparams = hparams or HParams()
        self.table = require_editable_mlp(model)
        self.geometry = iv.geometry(model)
        if stats is None and projectors is None:
            stats = default_key_stats(model, tokenizer, self.hparams.layers)
        layers = self.hparams.layers or (stats and stats.layers) or sorted(projectors or {})
        if not layers:
            raise ValueError("give key statistics (stats=...), projectors=... or hparams.layers")
        self.layers: list[int] = sorted(indices("layers", layers, self.geometry.n_layers))
        for layer in self.layers:  # refuses weights it cannot edit (offloaded, PEFT-wrapped)
            self.table.weight(self._down_proj(layer))
        d_mlp = self.geometry.d_mlp
        self.projectors: dict[int, Tensor] = {}
        self.null_dims: dict[int, int] = {}
        self.moments: dict[int, Tensor] = {}
        if projectors is not None:
            for layer in self.layers:
                given = projectors.get(layer)
                if given is None or tuple(given.shape) != (d_mlp, d_mlp):
                    shape = None if given is None else tuple(given.shape)
                    raise ValueError(f"projectors[{layer}] must be ({d_mlp}, {d_mlp}), got {shape}")
                self.projectors[layer] = given.detach().float().cpu()
                self.null_dims[layer] = round(float(given.trace()))
        if stats is not None:
            missing = [layer for layer in self.layers if layer not in stats.moments]
            if missing:
                raise ValueError(
                    f"the key statistics have no layers {missing} (they have {stats.layers}); "
                    "compute them with key_stats(..., layers=...)"
                )
            for layer in self.layers:
                if stats.moments[layer].shape[0] != d_mlp:
                    raise ValueError(
                        f"key statistics of layer {layer} are {stats.moments[layer].shape[0]}-"
                        f"dimensional, the model's mlp.act {d_mlp}: made for another model?"
                    )
                if method == "memit":
                    self.moments[layer] = stats.moments[layer].float()
                elif layer not in self.projectors:
                    self.projectors[layer], self.null_dims[layer] = stats.projector(
                        layer, self.hparams.nullspace_threshold, self.hparams.nullspace_mode
                    )
        if method == "memit" and not self.moments:
            raise ValueError("method='memit' needs key statistics (stats=...)")
        if method == "alphaedit" and not self.projectors:
            raise ValueError("method='alphaedit' needs key statistics (stats=...) or projectors")
        self.past: dict[int, Tensor] = {}
        self.n_edits = 0
        self._prefixes: list[str] | None = None if prefixes is None else list(prefixes)

    # --- state ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the keys of past edits (P and the prefixes stay)."""
        self.past = {}
        self.n_edits = 0

    def save(self, path: str | os.PathLike) -> Path:
        """Save P, the accumulated keys, hyperparameters and prefixes (one safetensors file)."""
        kinds = {"P": self.projectors, "C0": self.moments, "past": self.past}
        tensors = {f"{k}.{layer}": v[layer] for k, v in kinds.items() for layer in v}
        meta = {
            "method": self.method,  # the layers are those of the P / C0 tensors
            "hparams": json.dumps(asdict(self.hparams)),
            "prefixes": json.dumps(self._prefixes),
            "n_edits": str(self.n_edits),
        }
        return save_tensors(path, tensors, format=_EDITOR_FORMAT, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module, tokenizer: Any) -> "Editor":
        """An editor saved by ``save``; the constructor refuses its tensors for another model."""
        tensors, meta = load_tensors(path, format=_EDITOR_FORMAT)
        by_kind: dict[str, dict[int, Tensor]] = {"P": {}, "C0": {}, "past": {}}
        for key, value in tensors.items():
            kind, layer = key.split(".")
            by_kind[kind][int(layer)] = value
        alphaedit = meta["method"] == "alphaedit"
        editor = cls(
            model,
            tokenizer,
            None if alphaedit else KeyStats(by_kind["C0"], 0),
            method=meta["method"],
            hparams=HParams(**json.loads(meta["hparams"])),
            prefixes=json.loads(meta["prefixes"]),
            projectors=by_kind["P"] if alphaedit else None,
        )
        editor.past = by_kind["past"]
        editor.n_edits = int(meta["n_edits"])
        return editor

    # --- prefixes ---------------------------------------------------------------------------------
    @property
    def prefixes(self) -> list[str]:
        """Context prefixes: generated once by the model (fixed seed), or given."""
        if self._prefixes is None:
            hp = self.hparams
            self._prefixes = generate_prefixes(
                self.model, self.tokenizer, hp.n_prefixes, hp.prefix_length, hp.seed
            )
            log.info("context prefixes: %s", self._prefixes)
        return self._prefixes

    def contexts(self) -> list[str]:
        """``"{}"`` and ``"<prefix>. {}"``: the prompt is put where ``{}`` is."""
        return ["{}"] + [f"{p}. {{}}" for p in self.prefixes]

    # --- editing ----------------------------------------------------------------------------------
    def edit(self, requests: Iterable[Any]) -> iv.WeightDelta:
        """Write one batch of requests; returns the applied ``WeightDelta``. Every request is
        checked first; on any error the weights and the editor's state stay as they were."""
        requests = as_requests(requests)
        if self.model.training:
            raise RuntimeError("put the model in eval mode (model.eval()) before editing")
        rows, rewrites = self._rows(requests, self.contexts())
        started = time.perf_counter()
        keys = {layer: f"layers.{layer}.mlp.act" for layer in self.layers}
        value = f"layers.{self.layers[-1]}.resid_post"
        down = iv.parameters(self.model, [f"layers.{layer}.mlp.down_proj" for layer in self.layers])
        with iv.WeightDelta.recording(self.model, down) as record:  # restored on any error
            targets = self._targets(requests, rewrites)
            for i, layer in enumerate(self.layers):  # keys and values of the edited model so far
                found = self._at_subject(rows, [keys[layer], value], len(requests))
                residuals = (targets.z - found[value][:, 0]) / (len(self.layers) - i)
                self._update_layer(layer, _average_contexts(found[keys[layer]]), residuals)
            new_past = dict(self.past)
            if self.method == "alphaedit":  # the keys as the edit left them join K_p
                found = self._at_subject(rows, list(keys.values()), len(requests))
                for layer, site in keys.items():
                    k = _average_contexts(found[site])
                    gram = (k.T @ k).float().cpu()
                    new_past[layer] = new_past[layer] + gram if layer in new_past else gram
        self.past = new_past
        self.n_edits += len(requests)
        log.info(
            f"{self.method}: {len(requests)} request(s) written into layers {self.layers} in "
            f"{time.perf_counter() - started:.1f}s (target prob {_rounded(targets.prob)})"
        )
        return record.delta

    def _targets(
        self, requests: list[Request], rewrites: list[tuple[list[EditRow], EditRow]]
    ) -> ZResult:
        """``compute_z`` over chunks of ``Z_CHUNK`` requests: each δ acts only on its own rows,
        so chunks give the same z, and memory stays that of one chunk (a batch of 100 in one
        optimisation took 18.9 GB on SmolLM2-135M and was killed)."""
        parts = [
            self.compute_z(requests[i : i + Z_CHUNK], rewrites[i : i + Z_CHUNK])
            for i in range(0, len(requests), Z_CHUNK)
        ]
        return ZResult(
            torch.cat([p.z for p in parts]),
            torch.cat([p.init for p in parts]),
            [x for p in parts for x in p.loss],
            [x for p in parts for x in p.prob],
            [x for p in parts for x in p.steps],
        )

    def _down_proj(self, layer: int) -> nn.Module:
        return self.table.block_module(self.model, layer, self.table.down_proj)

    def _update_layer(
        self, layer: int, keys: Float[Tensor, "n d_mlp"], residuals: Float[Tensor, "n d"]
    ) -> None:
        module = self._down_proj(layer)
        weight = self.table.weight(module).detach()  # [out, in] by module type, a view
        k, r = keys.T.float(), residuals.T.float()
        if self.method == "alphaedit":
            projector, past = self.projectors[layer], self.past.get(layer)
            delta = alphaedit_update(k, r, projector, past, self.hparams.L2)
        else:
            delta = memit_update(k, r, self.moments[layer], self.hparams.mom2_update_weight)
        new = (weight.float() + delta.to(weight.device)).to(weight.dtype)
        with torch.no_grad():
            module.weight.copy_(self.table.to_storage(new))
        norms = [float(t.norm()) for t in (delta, weight, residuals)]
        log.debug("layer %d: |ΔW| %.3g, |W| %.3g, |R| %.3g", layer, *norms)

    # --- rows -------------------------------------------------------------------------------------
    def _rows(
        self, requests: list[Request], contexts: list[str]
    ) -> tuple[list[EditRow], list[tuple[list[EditRow], EditRow]]]:
        """Key rows (request-major, context-minor) and per request its rows with target_new and
        its KL row, each with the subject's last token; every request is checked here, first."""
        keys, rewrites = [], []
        for n, r in enumerate(requests):
            try:
                rows = [_subject_row(self.tokenizer, c, r.prompt, r.subject) for c in contexts]
                if rows[0].subject == 0:
                    raise RequestError(
                        f"the subject {r.subject!r} ends on the first token of {r.text!r}, an "
                        "attention sink in most models: put text before it"
                    )
                targets = [
                    _subject_row(self.tokenizer, c, r.prompt, r.subject, r.target_new)
                    for c in contexts
                ]
                kl = _subject_row(self.tokenizer, "{}", KL_PROMPT, r.subject)
            except RequestError as error:
                raise RequestError(f"requests[{n}]: {error}") from None
            keys += rows
            rewrites.append((targets, kl))
        return keys, rewrites

    def _at_subject(
        self, rows: list[EditRow], sites: list[str], n_requests: int
    ) -> dict[str, Float[Tensor, "n contexts d"]]:
        """Activations at ``sites`` at each row's subject token, per request and context (one
        batch, stopped after the last site)."""
        batch = iv.text.pad([r.ids for r in rows], self.pad_with, "right").to(self.model)
        at_subject = batch.mask_at([r.subject for r in rows])
        with torch.no_grad(), iv.capture(self.model, sites, positions=at_subject, stop=True) as c:
            self.model(**batch.inputs(self.model), use_cache=False)
        return {s: rearrange(c[s].float(), "(r c) d -> r c d", r=n_requests) for s in sites}

    # --- target values ----------------------------------------------------------------------------
    def compute_z(
        self, requests: list[Request], rewrites: list[tuple[list[EditRow], EditRow]] | None = None
    ) -> ZResult:
        """Optimise one δ per request at ``resid_post`` of the last edited layer (all requests in
        one batch; each δ acts only on its own rows, so this equals separate optimisations)."""
        hp = self.hparams
        if rewrites is None:
            rewrites = self._rows(requests, self.contexts())[1]
        device = iv.text.device_of(self.model)
        n = len(requests)
        # every request's target rows, then one KL row per request; owner: the request of a row
        rows = [row for targets, _ in rewrites for row in targets] + [kl for _, kl in rewrites]
        owner = [i for i, (targets, _) in enumerate(rewrites) for _ in targets] + list(range(n))
        n_rewrite = len(rows) - n
        inputs = [r.ids[:-1] if r.target else r.ids for r in rows]  # up to the last target token
        subjects = [r.subject for r in rows]
        batch, past, width = _split_at_subject(self.model, inputs, subjects, self.pad_with)
        owner_t = torch.tensor(owner, device=device)
        subject_mask = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
        subject_mask[:, width] = True  # every row's subject token is the first new column
        # loss positions (in the suffix): target token j is predicted at target_start - 1 + j
        targets = [
            (row, r.target_start - 1 + j - r.subject, token, owner[row])
            for row, r in enumerate(rows[:n_rewrite])
            for j, token in enumerate(r.target)
        ]
        t_row_t, t_pos_t, t_tok_t, t_req_t = torch.tensor(targets, device=device).T
        per_row_tokens = torch.bincount(t_row_t, minlength=n_rewrite).float()
        rows_per_request = torch.bincount(owner_t[:n_rewrite], minlength=n).float()
        kl_rows = torch.arange(n_rewrite, len(rows), device=device)  # scored at the subject

        delta = nn.Parameter(torch.zeros(n, self.geometry.d_model, device=device))
        shift = SubjectShift(delta, owner_t, subject_mask)
        optimizer = torch.optim.Adam([delta], lr=hp.v_lr)
        plain_rows = torch.tensor([owner.index(i) for i in range(n)], device=device)
        init: Tensor | None = None
        kl_init: Tensor | None = None
        active = torch.ones(n, dtype=torch.bool, device=device)
        losses, probs, steps = [math.nan] * n, [0.0] * n, [0] * n
        plan = {f"layers.{self.layers[-1]}.resid_post": shift}
        for step in range(max(hp.v_num_grad_steps, 1)):
            # the forward appends to the cache: give it a copy
            cache = {} if past is None else iv.text.with_cache(self.model, copy.deepcopy(past))
            with iv.capture(self.model, "final_norm", keep_grad=True, plan=plan, stop=True) as c:
                self.model(**batch.inputs(self.model), use_cache=past is not None, **cache)
            hidden = c["final_norm"]
            if init is None:
                init = shift.seen[plain_rows].float()
            token_lp = iv.lm.unembed(self.model, hidden[t_row_t, t_pos_t]).float().log_softmax(-1)
            token_lp = token_lp.gather(1, t_tok_t[:, None])[:, 0]
            row_nll = -torch.zeros(n_rewrite, device=device).index_add(0, t_row_t, token_lp)
            row_nll = row_nll / per_row_tokens
            nll = torch.zeros(n, device=device).index_add(0, owner_t[:n_rewrite], row_nll)
            nll = nll / rows_per_request
            kl_lp = iv.lm.unembed(self.model, hidden[kl_rows, 0]).float().log_softmax(-1)
            if kl_init is None:
                kl_init = kl_lp.detach().clone()
            kl = F.kl_div(kl_init, kl_lp, log_target=True, reduction="none").sum(-1)
            decay = hp.v_weight_decay * delta.norm(dim=-1) / init.norm(dim=-1) ** 2
            loss = nll + hp.kl_factor * kl + decay
            with torch.no_grad():
                prob = torch.zeros(n, device=device).index_add(0, t_req_t, token_lp.exp())
                prob = prob / torch.bincount(t_req_t, minlength=n).float()
                for i in active.nonzero()[:, 0].tolist():
                    losses[i], probs[i], steps[i] = float(loss[i]), float(prob[i]), step
                active = active & (loss >= hp.early_stop_loss)
            if not bool(active.any()) or step >= hp.v_num_grad_steps - 1:
                break
            (delta.grad,) = torch.autograd.grad((loss * active).sum(), [delta])
            frozen = delta.detach().clone()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # finished requests keep their δ; clamp ‖δ‖ to the ball
                delta[~active] = frozen[~active]
                max_norm = hp.clamp_norm_factor * init.norm(dim=-1, keepdim=True)
                norm = delta.norm(dim=-1, keepdim=True)
                delta.mul_(torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm)))
        assert init is not None
        z = (init + delta.detach()).float()
        log.info(f"target values: loss {_rounded(losses)}, prob {_rounded(probs)}, steps {steps}")
        return ZResult(z, init, losses, probs, steps)


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(v, 3) for v in values]


def _average_contexts(per: Float[Tensor, "n contexts d"]) -> Float[Tensor, "n d"]:
    """½ the plain prompt's key + ½ the mean over the prefixed ones (the paper's keys)."""
    return per[:, 0] if per.shape[1] == 1 else 0.5 * per[:, 0] + 0.5 * per[:, 1:].mean(1)


def generate_prefixes(
    model: nn.Module, tokenizer: Any, n: int = 5, length: int = 10, seed: int = 0
) -> list[str]:
    """``n`` short texts the model writes after "The", "Therefore", ... (top-5 sampling, fixed
    seed), used as contexts before the edited prompt. Braces and newlines become spaces."""
    if n == 0:
        return []
    starts = [PREFIX_STARTS[i % len(PREFIX_STARTS)] for i in range(n)]
    texts = iv.lm.generate_texts(
        model, tokenizer, starts, max_new_tokens=length, sample=True, seed=seed
    )
    return [
        " ".join(re.sub(r"[{}]", " ", start + text).split())
        for start, text in zip(starts, texts, strict=True)
    ]


# --- entry point -----------------------------------------------------------------------------


def edit(
    model: nn.Module,
    tokenizer: Any,
    requests: Iterable[Any],
    *,
    stats: KeyStats | None = None,
    method: Method = "alphaedit",
    hparams: HParams | None = None,
    editor: Editor | None = None,
    prefixes: Sequence[str] | None = None,
) -> iv.WeightDelta:
    """Edit one batch of requests with ``editor`` (sequential editing), else a fresh editor on
    ``stats`` (None: ``default_key_stats``, computed once and cached); returns the applied
    ``iv.WeightDelta``. ``prefixes`` replace the generated ones."""
    if editor is None:
        editor = Editor(model, tokenizer, stats, method=method, hparams=hparams, prefixes=prefixes)
    elif editor.model is not model:
        raise ValueError("the editor was made for another model")
    return editor.edit(requests)


combine = iv.WeightDelta.combine  # one delta from sequential ones (the name of earlier releases)


def sequential(
    model: nn.Module,
    tokenizer: Any,
    records: Iterable[Any],
    *,
    stats: KeyStats | None = None,
    method: Method = "alphaedit",
    batch_size: int = 10,
    hparams: HParams | None = None,
    fluency: bool = False,
    progress: bool = True,
) -> SequentialRun:
    """``counterfact.sequential`` with one editor: batches of ``batch_size``, all edits so far
    scored after each; the model stays edited (``run.delta.revert(model)`` undoes them)."""
    editor = Editor(model, tokenizer, stats, method=method, hparams=hparams)
    return counterfact.sequential(
        model,
        tokenizer,
        records,
        editor,
        batch_size=batch_size,
        fluency=fluency,
        progress=progress,
        label=method,
    )


# fmt: off
__all__ = [  # its own names, then those it re-exports (evals.counterfact, lm)
    "BUNDLED_CORPUS", "EditRow", "Editor", "HParams", "KeyStats", "SubjectShift", "ZResult",
    "alphaedit_update", "combine", "default_key_stats", "default_layers", "edit", "encode",
    "generate_prefixes", "key_stats", "load_corpus", "memit_update", "null_space_projector",
    "sequential", "subject_last_token", "BUNDLED_REQUESTS", "Request", "RequestError", "Scores",
    "SequentialRun", "as_request", "as_requests", "evaluate", "filter_known", "load_requests",
    "n_gram_entropy", "scores_from_records", "target_logprobs",
]
# fmt: on
