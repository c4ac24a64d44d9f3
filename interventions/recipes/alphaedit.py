"""AlphaEdit: rewrite facts with a closed-form MLP update kept in the null space of what to keep.

Paper
-----
Fang et al., "AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models", ICLR 2025,
built on MEMIT (Meng et al., "Mass-Editing Memory in a Transformer", ICLR 2023). A request
``{prompt: "The Eiffel Tower is located in {}", subject: "The Eiffel Tower", target_new: "Rome",
target_true: "Paris"}`` is written into the MLP down projections of a few layers; AlphaEdit
projects the update onto the null space of the keys of preserved knowledge, so what the model
knew stays put, also over many sequential batches of edits. ``method="memit"`` is the same code
with MEMIT's own system (P = I, a covariance prior instead of a null space, no accumulation).

Algorithm
---------
1. Key statistics: ``C0 = E[k kᵀ]`` of ``layers.l.mlp.act`` (the input of ``down_proj`` /
   GPT-2 ``mlp.c_proj``) over a text corpus, for all edited layers in ONE streaming pass, float32,
   cached on disk (``key_stats``). Null-space projector per layer: ``P = Û Ûᵀ`` with Û the
   eigenvectors (``eigh``) of C0 whose eigenvalues fall under a threshold (absolute, relative
   to the largest, or an energy fraction); the null-space dimension is logged.
2. Target value per request: a residual delta δ added to ``layers.L.resid_post`` (L = last edited
   layer) at the subject's last token (from tokenizer offsets) is optimised with Adam so the
   model predicts ``target_new`` after the plain prompt and after 5 short prefixes the model
   generated (fixed seed); a KL term on "{subject} is a", weight decay ‖δ‖/‖h‖², ‖δ‖ clamped to
   ``clamp_norm_factor·‖h‖``, early stop under a loss of 0.05. ``z = h + δ``.
3. Keys ``K1`` (``mlp.act`` at the subject's last token, ½ plain prompt + ½ mean over prefixes).
   Layer by layer (i-th of n), with ``R = (z − h_L(current model)) / (n − i)``:
   AlphaEdit ``ΔWᵀ = solve(P (K1K1ᵀ + K_pK_pᵀ) + λI, P K1 Rᵀ)`` (K_p: keys of earlier batches),
   MEMIT ``ΔWᵀ = solve(λ_mom2·C0 + K1K1ᵀ, K1 Rᵀ)``. Weights are seen in ``[out, in]`` through the
   adapter (GPT-2's Conv1D handled by module type). After the batch, AlphaEdit adds the keys
   recomputed on the edited model to ``K_pK_pᵀ``.
4. The result is an applied ``iv.WeightDelta`` (revert bit-exactly, save, load); a failure
   midway restores every touched weight.

Usage
-----
>>> from interventions.models import load
>>> from interventions.recipes import alphaedit
>>> model, tokenizer = load()                                        # SmolLM2-135M-Instruct
>>> records = alphaedit.load_requests()                              # bundled CounterFact-style
>>> stats = alphaedit.key_stats(model, tokenizer, layers=[4, 5, 6, 7, 8])  # cached
>>> before = alphaedit.evaluate(model, tokenizer, records[:10])
>>> delta = alphaedit.edit(model, tokenizer, records[:10], stats=stats)     # method="memit" too
>>> alphaedit.evaluate(model, tokenizer, records[:10]).summary()    # efficacy, paraphrase, ...
>>> delta.revert(model)                                              # bit-exact
>>> editor = alphaedit.Editor(model, tokenizer, stats)               # sequential: P, K_p state
>>> deltas = [editor.edit(batch) for batch in (records[:10], records[10:20])]
>>> editor.save("editor.safetensors"); editor.reset()
"""

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float, Int
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

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
)

log = logging.getLogger("interventions.alphaedit")

DATA = Path(__file__).resolve().parent.parent / "data"
BUNDLED_CORPUS = (DATA / "prose.txt", DATA / "encyclopedia.txt")
METHODS = ("alphaedit", "memit")
THRESHOLD_MODES = ("absolute", "relative", "energy")
PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")
KL_PROMPT = "{} is a"
_STATS_FORMAT = "interventions.alphaedit.KeyStats/1"
_EDITOR_FORMAT = "interventions.alphaedit.Editor/1"

Method = Literal["alphaedit", "memit"]
ThresholdMode = Literal["absolute", "relative", "energy"]


# --- hyperparameters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HParams:
    """Hyperparameters, named as in the paper's code. Defaults measured on SmolLM2-135M
    (docs/alphaedit.md); the paper's Llama3-8B values are noted where they differ.

    ``layers=None`` edits the layers of the key statistics.
    """

    layers: tuple[int, ...] | None = None  # Llama3-8B: 4..8 of 32
    v_lr: float = 0.5  # Llama3-8B: 0.1 (here it stops far from the target in 25 steps)
    v_num_grad_steps: int = 25
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    early_stop_loss: float = 0.05
    nullspace_threshold: float = 2e-2
    nullspace_mode: ThresholdMode = "absolute"
    L2: float = 1.0  # λ of AlphaEdit's system; Llama3-8B: 10 (too strong for keys this small)
    mom2_update_weight: float = 100.0  # λ_mom2 of MEMIT's C0; Llama3-8B: 15000 (no edit here)
    n_prefixes: int = 5  # generated context prefixes (0: plain prompt only)
    prefix_length: int = 10  # tokens per generated prefix
    seed: int = 0  # prefix generation

    def __post_init__(self) -> None:
        if self.nullspace_mode not in THRESHOLD_MODES:
            raise ValueError(
                f"nullspace_mode must be one of {THRESHOLD_MODES}, got {self.nullspace_mode!r}"
            )
        if self.nullspace_mode in ("relative", "energy") and not 0 <= self.nullspace_threshold <= 1:
            raise ValueError(
                f"a {self.nullspace_mode} nullspace_threshold is a fraction in [0, 1], got "
                f"{self.nullspace_threshold}"
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
        for name in (
            "v_weight_decay", "kl_factor", "early_stop_loss", "nullspace_threshold", "L2",
            "mom2_update_weight",
        ):  # fmt: skip
            number(name, getattr(self, name), at_least=0)


def default_layers(n_layers: int) -> list[int]:
    """The paper's Llama3-8B choice (layers 4..8 of 32) scaled to ``n_layers``."""
    if n_layers < 5:
        return list(range(n_layers))
    start = min(round(n_layers * 4 / 32), n_layers - 5)
    return list(range(start, start + 5))


# --- the corpus of preserved knowledge -----------------------------------------------------------


def load_corpus(path: str | os.PathLike | None = None) -> list[str]:
    """Paragraphs of a plain-text file, split at blank lines (default: the bundled corpus,
    ``prose.txt`` then ``encyclopedia.txt``: everyday prose and encyclopedia-style articles on
    places, people, companies, sports, science and culture, written for the project)."""
    paths = [Path(path)] if path is not None else list(BUNDLED_CORPUS)
    paragraphs = []
    for file in paths:
        text = file.read_text(encoding="utf-8")
        paragraphs += [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return [p for p in paragraphs if p]


# --- tokenizing --------------------------------------------------------------------------------


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        encoding = tokenizer(text, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError) as error:
        raise TypeError(
            "alphaedit locates subjects and targets from tokenizer offsets: use a fast "
            "tokenizer (one that supports return_offsets_mapping=True)"
        ) from error
    return list(encoding["input_ids"]), [(int(a), int(b)) for a, b in offsets]


def _last_token_in(offsets: Sequence[tuple[int, int]], start: int, end: int) -> int | None:
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    return hits[-1] if hits else None


def subject_last_token(tokenizer: Any, text: str, start: int, end: int) -> int:
    """Index of the token that holds the last character of ``text[start:end]`` (the subject),
    from the tokenizer's character offsets."""
    _, offsets = _encode(tokenizer, text)
    index = _last_token_in(offsets, start, end)
    if index is None:
        raise RequestError(f"no token covers the subject {text[start:end]!r} in {text!r}")
    return index


@dataclass(frozen=True)
class Encoded:
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
) -> Encoded:
    """Tokenize ``text`` (+ " " + ``target``) and locate the subject's last token and the
    target's tokens by character offsets. The returned ids stop at the last target token."""
    prompt = text.rstrip() if target is not None else text
    full = prompt if target is None else f"{prompt} {target.strip()}"
    ids, offsets = _encode(tokenizer, full)
    subject = -1
    if subject_span is not None:
        found = _last_token_in(offsets, *subject_span)
        if found is None:
            raise RequestError(f"no token covers the subject {text[slice(*subject_span)]!r}")
        subject = found
    if target is None:
        return Encoded(ids, subject, [], len(ids))
    positions = [i for i, (a, b) in enumerate(offsets) if b > a and a >= len(prompt)]
    if not positions or positions != list(range(positions[0], positions[-1] + 1)):
        raise RequestError(
            f"the target {target!r} of {prompt!r} gives no contiguous tokens of its own: use a "
            "target the tokenizer writes as one or more tokens after the prompt"
        )
    first = positions[0]
    if first == 0 or any(b > len(prompt) for a, b in offsets[:first]):
        raise RequestError(f"the tokenizer merges the end of {prompt!r} with target {target!r}")
    if subject >= first:
        raise RequestError(f"the subject of {prompt!r} overlaps the target {target!r}")
    return Encoded(ids[: positions[-1] + 1], subject, [ids[i] for i in positions], first)


def _subject_row(
    tokenizer: Any, context: str, prompt: str, subject: str, target: str | None = None
) -> Encoded:
    """``prompt`` with ``subject`` in its ``{}``, put in the ``{}`` of ``context``, encoded with
    the subject's last token (and ``target``'s tokens)."""
    start = context.index("{}") + prompt.index("{}")
    text = context.replace("{}", prompt.replace("{}", subject, 1))
    return encode(tokenizer, text, subject_span=(start, start + len(subject)), target=target)


@dataclass
class Batch:
    """Right-padded rows (real tokens never attend to padding in a causal model).

    A continuation of a cached prefix carries the mask of prefix + new tokens and explicit
    ``position_ids`` (so left-padded prefixes keep every row's true positions)."""

    input_ids: Int[Tensor, "b t"]
    attention_mask: Int[Tensor, "b all"]
    position_ids: Int[Tensor, "b t"] | None = None
    past: Any = None  # a KV cache of the prefix (copied before each use)

    def to(self, device: torch.device | str) -> "Batch":
        position_ids = None if self.position_ids is None else self.position_ids.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), position_ids)

    def mask_at(self, positions: Sequence[int]) -> Bool[Tensor, "b t"]:
        """A boolean mask with one marked token per row."""
        mask = torch.zeros_like(self.input_ids, dtype=torch.bool)
        device = self.input_ids.device
        rows = torch.arange(len(positions), device=device)
        mask[rows, torch.tensor(list(positions), device=device)] = True
        return mask


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad) if pad is not None else 0


def collate(rows: Sequence[Sequence[int]], pad_id: int) -> Batch:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return Batch(ids, mask)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --- running parts of the model through the public API ------------------------------------------


class _StopForward(Exception):
    """Raised by ``_Halt`` to end a forward once the sites we need have been seen."""


class _Halt(iv.Intervention):
    """Stops the forward (statistics and keys need no layers past the last edited one)."""

    def forward(self, x: Tensor) -> Tensor:
        raise _StopForward


def _halt_after(model: nn.Module, site: str) -> str:
    """A site whose hook runs after ``site`` (mlp.act -> mlp.out, resid_post -> next block)."""
    parsed = iv.parse(site)
    n_layers = iv.geometry(model).n_layers
    if parsed.kind == "mlp.act":
        return f"layers.{parsed.layer}.mlp.out"
    if parsed.kind == "resid_post":
        nxt = parsed.layer + 1
        return f"layers.{nxt}.resid_pre" if nxt < n_layers else "final_norm"
    raise ValueError(f"no halting site after {site}")


def _forward(model: nn.Module, batch: Batch, plan: Mapping[str, iv.Intervention]) -> None:
    """Run ``batch`` with ``plan`` attached, until a ``_Halt`` in the plan stops it."""
    inputs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if batch.position_ids is not None:
        inputs["position_ids"] = batch.position_ids
    if batch.past is not None:  # the forward appends to the cache: give it a copy
        inputs["past_key_values"] = copy.deepcopy(batch.past)
    with iv.intervene(model, plan), contextlib.suppress(_StopForward):
        model(**inputs, use_cache=batch.past is not None)


def _split_at_subject(
    model: nn.Module, rows: Sequence[Sequence[int]], subjects: Sequence[int], pad_id: int
) -> tuple[Batch, int]:
    """Run the tokens before each row's subject token once (no grad) and return the rest as a
    continuation of that cache, plus the prefix width P (the subject token is column P).

    Nothing before the subject's last token depends on a δ added there, so optimising δ only
    needs the suffixes: the same logits as whole rows (tested), at a fraction of the cost."""
    device = _device(model)
    width = max(subjects)
    n = len(rows)
    prefix = torch.full((n, width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((n, width), dtype=torch.long)
    for i, (row, s) in enumerate(zip(rows, subjects, strict=True)):
        if s:
            prefix[i, width - s :] = torch.tensor(list(row[:s]))
            prefix_mask[i, width - s :] = 1
    suffix = collate([row[s:] for row, s in zip(rows, subjects, strict=True)], pad_id)
    length = suffix.input_ids.shape[1]
    start = torch.tensor(list(subjects))[:, None]
    positions = start + torch.arange(length)[None]
    past = None
    if width > 0:
        with torch.no_grad():
            past = model(
                input_ids=prefix.to(device),
                attention_mask=prefix_mask.to(device),
                position_ids=(prefix_mask.cumsum(1) - 1).clamp(min=0).to(device),
                use_cache=True,
            ).past_key_values
    mask = torch.cat([prefix_mask, suffix.attention_mask], dim=1)
    batch = Batch(suffix.input_ids, mask, positions).to(device)
    batch.past = past
    return batch, width


class _Grab(iv.Intervention):
    """Keeps the activation (with its autograd graph) and stops the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.value: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.value = x
        raise _StopForward


def _final_hidden(
    model: nn.Module, batch: Batch, plan: Mapping[str, iv.Intervention]
) -> Float[Tensor, "b t d_model"]:
    """The output of the final norm under ``plan`` (the unembedding is skipped: callers unembed
    only the positions they score)."""
    grab = _Grab()
    _forward(model, batch, {**plan, "final_norm": grab})
    if grab.value is None:
        raise RuntimeError("the forward ended before the final norm")
    return grab.value


def _unembed(model: nn.Module, hidden: Float[Tensor, "n d_model"]) -> Float[Tensor, "n vocab"]:
    table = iv.adapter(model)
    return table.module(model, table.unembed)(hidden).float()


class SubjectShift(iv.Intervention):
    """Adds a trainable δ (one per request) to the residual stream at each row's subject token.

    ``positions`` is a boolean ``[rows, seq]`` mask with one token per row; ``owner[row]`` is the
    request (row of ``delta``) of each row. ``seen`` keeps the last unshifted activations.
    """

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
        meta = {"format": _STATS_FORMAT, "count": str(self.count), "info": json.dumps(self.info)}
        return _atomic_save(tensors, meta, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KeyStats":
        tensors, meta = _load_checked(Path(path), _STATS_FORMAT)
        moments = {int(k.split(".")[1]): v for k, v in tensors.items()}
        return cls(moments, int(meta["count"]), json.loads(meta.get("info", "{}")))


def null_space_projector(
    moment: Float[Tensor, "d d"],
    threshold: float = 2e-2,
    mode: ThresholdMode = "absolute",
    *,
    layer: int | None = None,
) -> tuple[Float[Tensor, "d d"], int]:
    """``P = Û Ûᵀ`` from the eigenvectors of ``moment`` under the threshold.

    ``absolute``: eigenvalue < threshold (the paper, 2e-2); ``relative``: eigenvalue <
    threshold · largest; ``energy``: the smallest eigenvalues holding at most ``threshold`` of
    the total. Returns ``(P, null_dim)``; the dimension is logged.
    """
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
        "%snull space %d of %d dims (%s threshold %g; it holds %.2e of the key energy)",
        where,
        null_dim,
        d,
        mode,
        threshold,
        kept,
    )
    if null_dim == 0:
        log.warning("%snull space is empty: AlphaEdit cannot change this layer", where)
    elif null_dim == d:
        log.warning("%snull space is everything: nothing is protected (threshold too high?)", where)
    return projector, null_dim


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "interventions" / "alphaedit"


def _digest(parts: Iterable[bytes | str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def _tensor_sample(t: Tensor) -> bytes:
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // 4096)
    return flat[::step].float().cpu().numpy().tobytes()


def model_fingerprint(model: nn.Module, layer: int) -> str:
    """Identity of everything the keys of ``layer`` depend on: config, embedding and every
    parameter of blocks 0..layer except the layer's own down projection (sampled values)."""
    table = iv.adapter(model)
    config = model.config
    parts: list[bytes | str] = [
        str(getattr(config, "_name_or_path", "")),
        str(config.model_type),
        str(iv.geometry(model)),
        str(next(model.parameters()).dtype),
    ]
    prefix = table.layers + "."
    down = f"{table.layers}.{layer}.{table.down_proj}."
    for name, param in model.named_parameters():
        if name.startswith(prefix):
            index = int(name[len(prefix) :].split(".")[0])
            if index > layer or name.startswith(down):
                continue
        parts += [name, _tensor_sample(param)]
    return _digest(parts)[:20]


def _chunks(
    tokenizer: Any, corpus: Iterable[str], max_length: int, max_tokens: int
) -> list[list[int]]:
    chunks: list[list[int]] = []
    total = 0
    for text in corpus:
        if not isinstance(text, str):
            raise TypeError(f"the corpus must yield strings, got {type(text).__name__}")
        if not text.strip():
            continue
        ids = list(tokenizer(text)["input_ids"])
        for start in range(0, len(ids), max_length):
            piece = ids[start : start + max_length]
            if len(piece) < 2:
                continue
            piece = piece[: max_tokens - total]
            chunks.append(piece)
            total += len(piece)
            if total >= max_tokens:
                return chunks
    return chunks


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
) -> KeyStats:
    """``E[k kᵀ]`` of ``layers.l.mlp.act`` for every layer in ``layers``, from ONE streaming pass.

    ``corpus``: any iterable of strings (default: the bundled corpus, ``load_corpus()``); each
    text is cut into pieces of ``max_length`` tokens, until ``max_tokens`` tokens. Padding never
    counts; ``skip_first_token`` also drops position 0 of each piece (an attention-sink outlier
    in some models). The forward stops after the last layer needed. Each layer's moment is cached on
    disk (default ``~/.cache/interventions/alphaedit``, or ``$XDG_CACHE_HOME``) under a key made
    of the model's weights that feed that layer, the exact token ids used and the options; only
    missing layers are computed. Nothing is written with ``cache=False``.
    """
    require_editable_mlp(model)
    n_layers = iv.geometry(model).n_layers
    if layers is None:
        layers = default_layers(n_layers)
    hint = "pass the layers to edit, e.g. default_layers(n_layers)"
    layers = sorted(indices("layers", layers, n_layers, hint=hint))
    max_tokens = integer("max_tokens", max_tokens)
    max_length = integer("max_length", max_length, minimum=2)  # shorter pieces are dropped
    batch_size = integer("batch_size", batch_size)
    corpus = load_corpus() if corpus is None else corpus
    if isinstance(corpus, str):
        raise TypeError("corpus is an iterable of texts; wrap a single text in a list")
    chunks = _chunks(tokenizer, corpus, max_length, max_tokens)
    if not chunks:
        raise ValueError(
            "the corpus gave no text to compute key statistics from (no text of two or more "
            "tokens): pass a list of texts, or corpus=None for the bundled one"
        )
    corpus_id = _digest(
        [json.dumps(chunks), str(max_length), str(skip_first_token), str(max_tokens)]
    )[:20]
    root = _cache_root(cache_dir)
    paths = {
        layer: root / f"keys-{model_fingerprint(model, layer)}-L{layer}-{corpus_id}.safetensors"
        for layer in layers
    }
    moments: dict[int, Tensor] = {}
    count = None
    if cache:
        for layer, path in paths.items():
            if path.is_file():
                loaded = KeyStats.load(path)
                moments[layer], count = loaded.moments[layer], loaded.count
                log.info("key statistics of layer %d loaded from %s", layer, path)
    missing = [layer for layer in layers if layer not in moments]
    if missing:
        computed, count = _stream_moments(
            model, tokenizer, chunks, missing, batch_size, skip_first_token, progress
        )
        moments.update(computed)
        if cache:
            for layer in missing:
                KeyStats({layer: computed[layer]}, count).save(paths[layer])
    info = {"corpus": corpus_id, "max_length": max_length, "skip_first_token": skip_first_token}
    return KeyStats({layer: moments[layer] for layer in layers}, int(count), info)


def _stream_moments(
    model: nn.Module,
    tokenizer: Any,
    chunks: list[list[int]],
    layers: list[int],
    batch_size: int,
    skip_first_token: bool,
    progress: bool,
) -> tuple[dict[int, Tensor], int]:
    device = _device(model)
    pad = _pad_id(tokenizer)
    reducers = {layer: iv.SecondMoment() for layer in layers}
    halt = _halt_after(model, f"layers.{max(layers)}.mlp.act")
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))  # little padding
    n_tokens = sum(len(c) - int(skip_first_token) for c in chunks)
    bar = tqdm(
        total=n_tokens, unit="tok", desc=f"key statistics, layers {layers}", disable=not progress
    )
    started = time.perf_counter()
    with torch.no_grad(), bar:
        for start in range(0, len(order), batch_size):
            rows = [chunks[i] for i in order[start : start + batch_size]]
            batch = collate(rows, pad).to(device)
            mask = batch.attention_mask.bool()
            if skip_first_token:
                mask[:, 0] = False
            plan: dict[str, iv.Intervention] = {
                f"layers.{layer}.mlp.act": iv.Capture(reduce=reducers[layer], positions=mask)
                for layer in layers
            }
            plan[halt] = _Halt()
            _forward(model, batch, plan)
            bar.update(int(mask.sum()))
    elapsed = time.perf_counter() - started
    count = reducers[layers[0]].count
    log.info(
        "key statistics: %d tokens, %d layers, one pass (%.0f tokens/s)",
        count,
        len(layers),
        count / max(elapsed, 1e-9),
    )
    return {layer: r.value.detach().float().cpu() for layer, r in reducers.items()}, count


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
    """Editing state for one model: the null-space projectors P and the accumulated keys of past
    edits per layer (AlphaEdit), or the key covariances (MEMIT), plus the generated prefixes.

    Nothing is global and nothing is written unless ``save`` is called; two editors never share
    state. ``edit(requests)`` applies one batch and returns its ``iv.WeightDelta``.
    """

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
        """``stats`` gives the layers (unless ``hparams.layers``), P (AlphaEdit) or C0 (MEMIT).
        ``projectors`` replaces the P computed from ``stats`` (your own null space)."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.model, self.tokenizer = model, tokenizer
        self.method: Method = method
        self.hparams = hparams or HParams()
        self.table = require_editable_mlp(model)
        self.geometry = iv.geometry(model)
        layers = self.hparams.layers
        if layers is None and stats is not None:
            layers = stats.layers
        if layers is None and projectors is not None:
            layers = sorted(projectors)
        if layers is None:
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
                if layer not in projectors:
                    raise ValueError(f"projectors has no layer {layer}")
                if tuple(projectors[layer].shape) != (d_mlp, d_mlp):
                    raise ValueError(
                        f"the projector of layer {layer} has shape "
                        f"{tuple(projectors[layer].shape)}, expected ({d_mlp}, {d_mlp})"
                    )
                self.projectors[layer] = projectors[layer].detach().float().cpu()
                self.null_dims[layer] = round(float(self.projectors[layer].trace()))
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
        tensors: dict[str, Tensor] = {}
        for layer in self.layers:
            if layer in self.projectors:
                tensors[f"P.{layer}"] = self.projectors[layer]
            if layer in self.moments:
                tensors[f"C0.{layer}"] = self.moments[layer]
            if layer in self.past:
                tensors[f"past.{layer}"] = self.past[layer].cpu()
        meta = {
            "format": _EDITOR_FORMAT,
            "method": self.method,
            "layers": json.dumps(self.layers),
            "hparams": json.dumps(asdict(self.hparams)),
            "prefixes": json.dumps(self._prefixes),
            "null_dims": json.dumps(self.null_dims),
            "n_edits": str(self.n_edits),
            "d_mlp": str(self.geometry.d_mlp),
        }
        return _atomic_save(tensors, meta, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module, tokenizer: Any) -> "Editor":
        tensors, meta = _load_checked(Path(path), _EDITOR_FORMAT)
        if int(meta["d_mlp"]) != iv.geometry(model).d_mlp:
            raise ValueError(
                f"{path} was saved for d_mlp={meta['d_mlp']}, the model has "
                f"{iv.geometry(model).d_mlp}: another model"
            )
        hp = json.loads(meta["hparams"])
        hp["layers"] = tuple(json.loads(meta["layers"]))
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
            hparams=HParams(**hp),
            prefixes=json.loads(meta["prefixes"]),
            projectors=by_kind["P"] if alphaedit else None,
        )
        editor.past = by_kind["past"]
        editor.null_dims = {int(k): v for k, v in json.loads(meta["null_dims"]).items()}
        editor.n_edits = int(meta["n_edits"])
        return editor

    # --- prefixes ---------------------------------------------------------------------------------
    @property
    def prefixes(self) -> list[str]:
        """Context prefixes: generated once by the model (fixed seed), or given."""
        if self._prefixes is None:
            self._prefixes = generate_prefixes(
                self.model,
                self.tokenizer,
                self.hparams.n_prefixes,
                self.hparams.prefix_length,
                self.hparams.seed,
            )
            log.info("context prefixes: %s", self._prefixes)
        return self._prefixes

    def contexts(self) -> list[str]:
        """``"{}"`` and ``"<prefix>. {}"``: the prompt is put where ``{}`` is."""
        return ["{}"] + [f"{p}. {{}}" for p in self.prefixes]

    # --- editing ----------------------------------------------------------------------------------
    def edit(self, requests: Iterable[Any]) -> iv.WeightDelta:
        """Write one batch of requests; returns the applied ``WeightDelta``.

        Every request is checked before any weight changes; if anything fails midway, the
        touched weights are restored and the editor's state is unchanged.
        """
        requests = as_requests(requests)
        model = self.model
        if model.training:
            raise RuntimeError("put the model in eval mode (model.eval()) before editing")
        contexts = self.contexts()
        rows, rewrites = self._rows(requests, contexts)
        started = time.perf_counter()
        # read from the modules, not by name: a PEFT model wrapping the causal LM names them
        # differently
        weights = {self._weight_name(layer): self._down_proj(layer).weight for layer in self.layers}
        originals = {n: w.detach().clone() for n, w in weights.items()}
        try:
            targets = self.compute_z(requests, rewrites)
            for i, layer in enumerate(self.layers):
                keys, current = self._keys_and_values(rows, layer, len(requests), len(contexts))
                residuals = (targets.z - current) / (len(self.layers) - i)
                self._update_layer(layer, keys, residuals)
            new_past = dict(self.past)
            if self.method == "alphaedit":
                keys = self._keys_all_layers(rows, len(requests), len(contexts))
                for layer, k in keys.items():
                    gram = (k.T @ k).float().cpu()
                    new_past[layer] = gram if layer not in new_past else new_past[layer] + gram
        except BaseException:
            with torch.no_grad():
                for name, original in originals.items():
                    weights[name].copy_(original)
            raise
        self.past = new_past
        self.n_edits += len(requests)
        changes = {n: w.detach().clone() for n, w in weights.items()}
        log.info(
            "%s: %d request(s) written into layers %s in %.1fs (target prob %s)",
            self.method,
            len(requests),
            self.layers,
            time.perf_counter() - started,
            [round(p, 3) for p in targets.prob],
        )
        return iv.WeightDelta(changes=changes, originals=originals, applied=True)

    def _weight_name(self, layer: int) -> str:
        return f"{self.table.layers}.{layer}.{self.table.down_proj}.weight"

    def _down_proj(self, layer: int) -> nn.Module:
        return self.table.block_module(self.model, layer, self.table.down_proj)

    def _update_layer(
        self, layer: int, keys: Float[Tensor, "n d_mlp"], residuals: Float[Tensor, "n d"]
    ) -> None:
        module = self._down_proj(layer)
        weight = self.table.weight(module)  # [out, in] by module type, a view
        k, r = keys.T.float(), residuals.T.float()
        if self.method == "alphaedit":
            past = self.past.get(layer)
            delta = alphaedit_update(
                k, r, self.projectors[layer], None if past is None else past, self.hparams.L2
            )
        else:
            delta = memit_update(k, r, self.moments[layer], self.hparams.mom2_update_weight)
        new = (weight.detach().float() + delta.to(weight.device)).to(weight.dtype)
        with torch.no_grad():
            module.weight.copy_(self.table.to_storage(new))
        log.debug(
            "layer %d: |ΔW| %.3g, |W| %.3g, |R| %.3g",
            layer,
            float(delta.norm()),
            float(weight.detach().norm()),
            float(residuals.norm()),
        )

    # --- rows -------------------------------------------------------------------------------------
    def _rows(
        self, requests: list[Request], contexts: list[str]
    ) -> tuple[list[Encoded], list[tuple[list[Encoded], Encoded]]]:
        """Key rows (request-major, context-minor: the prompt in each context, with the subject's
        last token) and, per request, its rows with target_new and its KL row. Every request is
        checked here, before anything runs."""
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

    def _keys_and_values(
        self, rows: list[Encoded], layer: int, n_requests: int, n_contexts: int
    ) -> tuple[Float[Tensor, "n d_mlp"], Float[Tensor, "n d_model"]]:
        """Keys at ``layer`` (½ plain + ½ mean of prefixed) and ``resid_post`` at the last edited
        layer for the plain prompts, on the current (partly edited) model."""
        last = self.layers[-1]
        found = self._capture(rows, [f"layers.{layer}.mlp.act", f"layers.{last}.resid_post"])
        keys = _average_contexts(found[f"layers.{layer}.mlp.act"], n_requests, n_contexts)
        values = rearrange(
            found[f"layers.{last}.resid_post"], "(r c) d -> r c d", r=n_requests, c=n_contexts
        )[:, 0]
        return keys, values

    def _keys_all_layers(
        self, rows: list[Encoded], n_requests: int, n_contexts: int
    ) -> dict[int, Float[Tensor, "n d_mlp"]]:
        found = self._capture(rows, [f"layers.{layer}.mlp.act" for layer in self.layers])
        return {
            layer: _average_contexts(found[f"layers.{layer}.mlp.act"], n_requests, n_contexts)
            for layer in self.layers
        }

    def _capture(self, rows: list[Encoded], sites: list[str]) -> dict[str, Tensor]:
        """Activations at ``sites`` at each row's subject token (one batch, halted early)."""
        batch = collate([r.ids for r in rows], _pad_id(self.tokenizer)).to(_device(self.model))
        mask = batch.mask_at([r.subject for r in rows])
        captures = {site: iv.Capture(positions=mask) for site in sites}
        last = max(sites, key=lambda s: (iv.parse(s).layer, iv.parse(s).kind == "resid_post"))
        with torch.no_grad():
            _forward(self.model, batch, {**captures, _halt_after(self.model, last): _Halt()})
        return {site: c.value.float() for site, c in captures.items()}

    # --- target values ----------------------------------------------------------------------------
    def compute_z(
        self,
        requests: list[Request],
        rewrites: list[tuple[list[Encoded], Encoded]] | None = None,
    ) -> ZResult:
        """Optimise one δ per request at ``resid_post`` of the last edited layer (all requests in
        one batch; each δ acts only on its own rows, so this equals separate optimisations)."""
        hp = self.hparams
        if rewrites is None:
            rewrites = self._rows(requests, self.contexts())[1]
        device = _device(self.model)
        n = len(requests)
        rows: list[Encoded] = []
        owner: list[int] = []
        for i, (rewrite, _) in enumerate(rewrites):
            rows += rewrite
            owner += [i] * len(rewrite)
        n_rewrite = len(rows)
        for i, (_, kl) in enumerate(rewrites):
            rows.append(kl)
            owner.append(i)
        # inputs stop before the last target token; the KL rows are whole
        inputs = [r.ids[:-1] if r.target else r.ids for r in rows]
        subjects = [r.subject for r in rows]
        batch, width = _split_at_subject(self.model, inputs, subjects, _pad_id(self.tokenizer))
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
        kl_rows = torch.arange(n_rewrite, len(rows), device=device)
        kl_pos = torch.zeros(len(kl_rows), dtype=torch.long, device=device)

        delta = nn.Parameter(torch.zeros(n, self.geometry.d_model, device=device))
        shift = SubjectShift(delta, owner_t, subject_mask)
        optimizer = torch.optim.Adam([delta], lr=hp.v_lr)
        plain_rows = torch.tensor([owner.index(i) for i in range(n)], device=device)
        init: Tensor | None = None
        kl_init: Tensor | None = None
        active = torch.ones(n, dtype=torch.bool, device=device)
        losses, probs, steps = [math.nan] * n, [0.0] * n, [0] * n
        site = f"layers.{self.layers[-1]}.resid_post"
        for step in range(max(hp.v_num_grad_steps, 1)):
            hidden = _final_hidden(self.model, batch, {site: shift})
            if init is None:
                init = shift.seen[plain_rows].float()
            token_lp = _unembed(self.model, hidden[t_row_t, t_pos_t]).log_softmax(-1)
            token_lp = token_lp.gather(1, t_tok_t[:, None])[:, 0]
            row_nll = -torch.zeros(n_rewrite, device=device).index_add(0, t_row_t, token_lp)
            row_nll = row_nll / per_row_tokens
            nll = torch.zeros(n, device=device).index_add(0, owner_t[:n_rewrite], row_nll)
            nll = nll / rows_per_request
            kl_lp = _unembed(self.model, hidden[kl_rows, kl_pos]).log_softmax(-1)
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
        log.info(
            "target values: loss %s, target prob %s, steps %s",
            [round(x, 3) for x in losses],
            [round(p, 3) for p in probs],
            steps,
        )
        return ZResult(z, init, losses, probs, steps)


def _average_contexts(
    found: Float[Tensor, "rows d"], n_requests: int, n_contexts: int
) -> Float[Tensor, "n d"]:
    per = rearrange(found, "(r c) d -> r c d", r=n_requests, c=n_contexts)
    if n_contexts == 1:
        return per[:, 0]
    return 0.5 * per[:, 0] + 0.5 * per[:, 1:].mean(1)


def generate_prefixes(
    model: nn.Module,
    tokenizer: Any,
    n: int = 5,
    length: int = 10,
    seed: int = 0,
) -> list[str]:
    """``n`` short texts the model writes after "The", "Therefore", ... (top-5 sampling, fixed
    seed), used as contexts before the edited prompt. Braces and newlines become spaces."""
    if n == 0:
        return []
    starts = [PREFIX_STARTS[i % len(PREFIX_STARTS)] for i in range(n)]
    texts = generate_texts(model, tokenizer, starts, max_new_tokens=length, seed=seed)
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
    """Edit one batch of requests; returns the applied ``iv.WeightDelta``.

    Without ``editor`` a fresh one is made from ``stats`` (no memory of earlier edits); pass an
    ``Editor`` to edit sequentially (AlphaEdit then keeps the earlier batches' keys).
    ``prefixes`` replaces the generated context prefixes.
    """
    if editor is None:
        editor = Editor(model, tokenizer, stats, method=method, hparams=hparams, prefixes=prefixes)
    elif editor.model is not model:
        raise ValueError("the editor was made for another model")
    return editor.edit(requests)


def combine(deltas: Sequence[iv.WeightDelta]) -> iv.WeightDelta:
    """One delta from sequential ones: the first originals and the last values of each weight."""
    if not deltas:
        raise ValueError("no deltas to combine")
    changes: dict[str, Tensor] = {}
    originals: dict[str, Tensor | None] = {}
    for delta in deltas:
        for name, value in delta.changes.items():
            changes[name] = value
            originals.setdefault(name, delta.originals[name])
    return iv.WeightDelta(changes=changes, originals=originals, applied=deltas[-1].applied)


def sequential(
    model: nn.Module,
    tokenizer: Any,
    records: Iterable[Any],
    *,
    stats: KeyStats,
    method: Method = "alphaedit",
    batch_size: int = 10,
    hparams: HParams | None = None,
    fluency: bool = False,
    progress: bool = True,
) -> SequentialRun:
    """Edit ``records`` in batches of ``batch_size`` with one editor; after each batch, score all
    edits so far (``counterfact.sequential``). The model stays edited:
    ``run.delta.revert(model)`` undoes every batch."""
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


# --- scoring and generation ------------------------------------------------------------------


def target_logprobs(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
) -> list[float]:
    """Mean log-probability per token of each ``target`` after its ``prompt``. ``names``
    says how an error names each pair (default ``pairs[i]``)."""
    batch_size = integer("batch_size", batch_size)
    encoded = []
    for i, (prompt, target) in enumerate(pairs):
        try:
            encoded.append(encode(tokenizer, prompt, target=target))
        except RequestError as error:
            raise RequestError(f"{names[i] if names else f'pairs[{i}]'}: {error}") from None
    device = _device(model)
    pad = _pad_id(tokenizer)
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            part = encoded[start : start + batch_size]
            batch = collate([e.ids[:-1] for e in part], pad).to(device)
            hidden = _final_hidden(model, batch, {})
            rows = torch.tensor([i for i, e in enumerate(part) for _ in e.target], device=device)
            positions = [e.target_start - 1 + j for e in part for j in range(len(e.target))]
            tokens = torch.tensor([t for e in part for t in e.target], device=device)
            lp = _unembed(model, hidden[rows, torch.tensor(positions, device=device)])
            lp = lp.log_softmax(-1).gather(1, tokens[:, None])[:, 0]
            sums = torch.zeros(len(part), device=device).index_add(0, rows, lp)
            counts = torch.tensor([len(e.target) for e in part], device=device)
            out += (sums / counts).tolist()
    return out


def n_gram_entropy(
    text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """CounterFact's fluency: weighted mean of the bi- and tri-gram entropies (bits) of words."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    entropies = []
    for n in ns:
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        entropies.append(h)
    return sum(w * h for w, h in zip(weights, entropies, strict=True)) / len(ns)


def generate_texts(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 40,
    seed: int = 0,
    batch_size: int = 16,
) -> list[str]:
    """Continue each prompt (top-5 sampling, fixed seed, left-padded batches)."""
    device = _device(model)
    pad = _pad_id(tokenizer)
    devices = [device] if device.type == "cuda" else []
    texts = []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            rows = [list(tokenizer(p)["input_ids"]) for p in prompts[start : start + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor(
                [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device
            )
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                top_k=5,
                pad_token_id=pad,
            )
            texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


# --- files -------------------------------------------------------------------------------------


def _atomic_save(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _load_checked(path: Path, fmt: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != fmt:
        raise ValueError(f"{path} is not a {fmt!r} file")
    return load_file(str(path)), metadata


__all__ = [
    "BUNDLED_CORPUS",
    "BUNDLED_REQUESTS",
    "Editor",
    "Encoded",
    "HParams",
    "KeyStats",
    "Request",
    "RequestError",
    "Scores",
    "SequentialRun",
    "SubjectShift",
    "ZResult",
    "alphaedit_update",
    "as_request",
    "as_requests",
    "combine",
    "default_layers",
    "edit",
    "encode",
    "evaluate",
    "filter_known",
    "generate_prefixes",
    "generate_texts",
    "key_stats",
    "load_corpus",
    "load_requests",
    "memit_update",
    "model_fingerprint",
    "n_gram_entropy",
    "null_space_projector",
    "scores_from_records",
    "sequential",
    "subject_last_token",
    "target_logprobs",
]
