"""Representation tuning: fine-tune a behaviour direction into (or out of) the residual stream.

Paper: C. Ackerman, "Representation Tuning", 2024 (arXiv:2409.06927). Instead of steering at
inference, fine-tune the model so that its own residual stream at chosen layers and positions
lines up with a behaviour direction ("in") or is orthogonal to it ("out"), while a token loss
keeps the output coherent.

1. Direction: mean (or first principal component) of paired ``resid_post`` differences at the
   last N prompt tokens (left-padded prompts; never position 0, the attention sink).
2. Losses: projection ``(1 - cos)/2`` (in) or ``|cos|`` (out); token loss on a completion, a
   target distribution, or ``AnyOf`` choices (``format_loss``: keeps the format, not an answer).
3. Tuning: each loss updates only its own parameter group (AdamW with warmup); the token step
   waits while the token loss is within ``token_tolerance`` of its minimum; early stopping keeps
   the best validated weights. Returns the ``iv.WeightDelta``.
4. Learning rate (``lr="auto"``, the default): a short trial run at each rate of a small grid,
   each reverted; the largest rate whose trial lowers the validation loss and keeps the
   perplexity of a plain text within a budget (default +5 %) is the one the full run takes; the
   full run stops where its perplexity leaves the budget.
5. Block search: short runs over parameter blocks, ranked by validation loss.

The honesty data and metrics are ``interventions.evals.honesty``'s (re-exported here). Small
models need larger learning rates than the paper's 1e-6 / 1e-5 (docs/reptune.md).

>>> train, test = reptune.split_claims(reptune.load_claims(), held_out=0.3)
>>> d = reptune.extract_direction(model, tokenizer, reptune.honesty_pairs(train), [20, 21, 22])
>>> delta = reptune.tune(model, tokenizer, reptune.tuning_examples(train), direction=d,
...                      layers=[21, 22], mode="in", lr=3e-4, steps=30)
>>> reptune.cosine_to_direction(model, tokenizer, reptune.claim_prompts(test), d, [21, 22])
>>> delta.revert(model)                                          # bit-exact original
"""

import itertools
import json
import logging
import math
import os
import random
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange, reduce
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

import interventions as iv
from interventions import lm, text
from interventions.checks import choice, indices, integer, number
from interventions.evals import honesty
from interventions.evals.honesty import CHOICES, Claim, Pair, claim_prompts, residuals

# re-exported (so are residuals, claim_prompts, CHOICES): reptune.load_claims() keeps working
from interventions.evals.honesty import claim_prompt as claim_prompt
from interventions.evals.honesty import forced_choice as forced_choice
from interventions.evals.honesty import honesty_pairs as honesty_pairs
from interventions.evals.honesty import load_claims as load_claims
from interventions.evals.honesty import load_prose as load_prose
from interventions.evals.honesty import split_claims as split_claims
from interventions.files import load_tensors, save_tensors
from interventions.lm import perplexity as perplexity
from interventions.lm import token_cross_entropy

_FORMAT = "interventions.reptune.Direction/1"
DEFAULT_LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnyOf:
    """A target that keeps the answer format, not the answer: the next token is one of
    ``choices``, in any proportion (``format_loss``)."""

    choices: tuple[str, ...] = CHOICES


@dataclass(frozen=True)
class Example:
    """``target``: a completion (plain token loss), a next-token distribution such as
    ``{" True": 0.5, " False": 0.5}``, an ``AnyOf``, or None (projection loss only)."""

    prompt: str
    target: str | Mapping[str, float] | AnyOf | None = None


def tuning_examples(
    claims: Iterable[Claim],
    target: str | Mapping[str, float] | AnyOf | None = AnyOf(CHOICES),
    honest: bool | None = None,
) -> list[Example]:
    """Claim prompts (both contexts by default), each with ``target``."""
    return [Example(p, target) for p in claim_prompts(claims, honest)]


# --- batching -------------------------------------------------------------------------------------


@dataclass
class Batch(text.Batch):
    """Left-padded prompts, each followed by its completion (if any); ``prompt_end`` is the
    column just after each prompt."""

    prompt_end: Int[Tensor, " b"]

    def to(self, where: torch.device | str | nn.Module) -> "Batch":
        moved = super().to(where)
        end = self.prompt_end.to(moved.input_ids.device)
        return Batch(moved.input_ids, moved.attention_mask, moved.position_ids, end)

    def last_prompt_tokens(self, n: int) -> Bool[Tensor, "b t"]:
        """Mask of the last ``n`` prompt tokens of each row (refusing position 0)."""
        start = self.prompt_end - n
        first_real = self.first_real()
        if bool((start <= first_real).any()):
            short = int((self.prompt_end - first_real).min())
            raise ValueError(
                f"a prompt has only {short} tokens: the last {n} would include its first token "
                "(the attention sink, an outlier in norm); use fewer positions or longer prompts"
            )
        columns = torch.arange(self.input_ids.shape[1], device=start.device)
        return (columns >= start[:, None]) & (columns < self.prompt_end[:, None])


def make_batch(
    tokenizer, prompts: Sequence[str], completions: Sequence[str] | None = None
) -> Batch:
    """Tokenize prompts (and completions appended to them), pad on the left."""
    rows, ends = [], []
    for i, prompt in enumerate(prompts):
        ids = text.token_ids(tokenizer, prompt)
        ends.append(len(ids))
        if completions is not None and completions[i]:
            ids += text.token_ids(tokenizer, completions[i], special=False)
        rows.append(ids)
    padded = text.pad(rows, text.pad_id(tokenizer), "left")
    width = padded.input_ids.shape[1]
    end = torch.tensor([width - len(r) + e for r, e in zip(rows, ends, strict=True)])
    return Batch(padded.input_ids, padded.attention_mask, padded.position_ids, end)


# --- direction ------------------------------------------------------------------------------------


def _check_vectors(vectors: Tensor, layers: Sequence[int] | None = None) -> None:
    """Refuse NaN or infinite values (they would reach the weights) and zero vectors (the cosine
    to one is 0 whatever the activations: nothing to tune). ``layers`` names the first axis."""
    bad = int((~torch.isfinite(vectors)).sum())
    if bad:
        raise ValueError(
            f"the direction holds {bad} NaN or infinite values (of {vectors.numel()}): extract "
            "it again (extract_direction) from finite activations"
        )
    zero = torch.linalg.vector_norm(vectors.double(), dim=-1) == 0
    if bool(zero.any()):
        found = zero.nonzero().tolist()[:4]
        where = "" if zero.ndim == 0 else f" at index {found}"
        if layers is not None and zero.ndim:
            where = f" at (layer, position) {[(layers[i], *rest) for i, *rest in found]}"
        raise ValueError(
            f"the direction is a zero vector{where}: the cosine to it is 0 whatever the "
            "activations, so the loss cannot tune anything there; use a direction from pairs "
            "whose activations differ (extract_direction), or leave those layers out"
        )


@dataclass
class Direction:
    """``vectors[i, j]``: the direction at layer ``layers[i]`` and the j-th of the last
    ``n_positions`` prompt tokens. Mean differences keep their scale; principal components are
    unit vectors, oriented to agree with the mean difference."""

    vectors: Float[Tensor, "l p d"]
    layers: tuple[int, ...]
    method: str = "mean"
    n_pairs: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = tuple(int(i) for i in self.layers)
        if self.vectors.ndim != 3 or self.vectors.shape[0] != len(self.layers):
            raise ValueError(
                f"vectors must be [layers={len(self.layers)}, positions, d_model], got "
                f"{tuple(self.vectors.shape)}"
            )
        _check_vectors(self.vectors, self.layers)

    @property
    def n_positions(self) -> int:
        return self.vectors.shape[1]

    def at(self, layers: Sequence[int]) -> Float[Tensor, "l p d"]:
        """Vectors of the given layers (in that order)."""
        missing = [i for i in layers if i not in self.layers]
        if missing:
            raise ValueError(f"the direction has no layer {missing}; it has {list(self.layers)}")
        return self.vectors[[self.layers.index(i) for i in layers]]

    def steering_plan(
        self, layer: int, alpha: float = 1.0, everywhere: bool = False
    ) -> dict[str, iv.Intervention]:
        """Add ``alpha`` times the direction at ``layers.{layer}.resid_post``: each vector at its
        own one of the last positions, or with ``everywhere`` their mean at every position."""
        alpha = number("alpha", alpha)
        site, vectors, n = f"layers.{layer}.resid_post", self.at([layer])[0], self.n_positions
        if everywhere:
            return {site: iv.AddBias(reduce(vectors, "p d -> d", "mean"), alpha)}
        parts = [iv.AddBias(vectors[j], alpha, positions=j - n) for j in range(n)]
        return {site: iv.Compose(*parts)}

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file, written atomically."""
        metadata = {"layers": json.dumps(list(self.layers)), "method": self.method,
                    "n_pairs": str(self.n_pairs), "meta": json.dumps(self.meta)}  # fmt: skip
        return save_tensors(path, {"vectors": self.vectors}, format=_FORMAT, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Direction":
        tensors, m = load_tensors(path, format=_FORMAT)
        layers, meta = tuple(json.loads(m["layers"])), json.loads(m["meta"])
        return cls(tensors["vectors"], layers, m["method"], int(m["n_pairs"]), meta)


def _direction_at(direction: Direction, layers: Sequence[int], model: nn.Module) -> Tensor:
    """The vectors at ``layers`` on the model's device, checked again (they may have changed)."""
    if not isinstance(direction, Direction):
        raise TypeError(
            "direction must be a reptune.Direction (from extract_direction or Direction.load), "
            f"got {type(direction).__name__}"
        )
    vectors = direction.at(layers)
    _check_vectors(vectors, layers)
    d_model = iv.geometry(model).d_model
    if vectors.shape[-1] != d_model:
        raise ValueError(
            f"the direction has width {vectors.shape[-1]}, the model's residual stream "
            f"{d_model}: it was made for another model; extract it from this one"
        )
    return vectors.to(text.device_of(model))


def extract_direction(
    model: nn.Module,
    tokenizer,
    pairs: Sequence[Pair],
    layers: Sequence[int],
    *,
    n_positions: int = 4,
    only_correct: bool = False,
    method: str = "mean",
    choices: tuple[str, str] = CHOICES,
    batch_size: int = 16,
) -> Direction:
    """Mean (``method="pca"``: first principal component) of paired ``resid_post`` differences
    per layer and position at the last ``n_positions`` prompt tokens; ``only_correct`` keeps the
    pairs the model answers as ``positive_answer`` / ``negative_answer`` expect."""
    method = choice("method", method, ("mean", "pca"))
    if not pairs:
        raise ValueError("extract_direction needs at least one pair")
    hint = "name the layers to read, e.g. [20, 21]"
    layers = indices("layers", layers, iv.geometry(model).n_layers, hint=hint)
    n_positions = integer("n_positions", n_positions)
    offered = list(pairs)
    if only_correct:
        pairs = honesty.answered_as_expected(
            model, tokenizer, offered, choices, batch_size=batch_size
        )
        if not pairs:
            raise ValueError(
                f"none of the {len(offered)} pairs is answered as expected (positive and "
                "negative); use only_correct=False or other prompts"
            )
    positive, negative = (
        residuals(model, tokenizer, prompts, layers, n_positions, batch_size)
        for prompts in ([p.positive for p in pairs], [p.negative for p in pairs])
    )
    diffs = (positive - negative).double()  # [pairs, layers, positions, d]
    same = (diffs == 0).all(-1).all(0)  # [layers, positions]
    if bool(same.any()):
        where = [(layers[i], j - n_positions) for i, j in same.nonzero().tolist()[:4]]
        raise ValueError(
            f"the positive and negative prompts of all {len(pairs)} pairs give the same "
            f"resid_post at (layer, position) {where}: there is no difference to take a "
            "direction from; use pairs whose prompts differ before their last tokens"
        )
    vectors = mean = reduce(diffs, "n l p d -> l p d", "mean")
    if method == "pca":
        if len(pairs) < 2:
            raise ValueError("method='pca' needs at least two pairs")
        flat = rearrange(diffs, "n l p d -> (l p) n d")
        _, _, vh = torch.linalg.svd(flat, full_matrices=False)  # uncentred: PC of the differences
        pc = rearrange(vh[:, 0], "(l p) d -> l p d", l=len(layers))
        sign = torch.sign((pc * mean).sum(-1, keepdim=True))
        vectors = pc * torch.where(sign == 0, torch.ones_like(sign), sign)
    meta = {"pairs_offered": len(offered), "only_correct": only_correct}
    return Direction(vectors.float(), tuple(layers), method, len(pairs), meta)


# --- losses ---------------------------------------------------------------------------------------


def projection_loss(
    acts: Float[Tensor, "b l p d"],
    direction: Direction | Float[Tensor, "l p d"],
    mode: str = "in",
    flip: bool = False,
) -> Float[Tensor, ""]:
    """Mean over batch, layers and positions of ``(1 - cos) / 2`` (``mode="in"``: 0 aligned,
    1 anti-aligned) or ``|cos|`` (``"out"``) to the direction (``flip``: its negative). A
    Direction must hold exactly the layers of ``acts``; a tensor broadcasts against ``acts[0]``."""
    mode = choice("mode", mode, ("in", "out"))
    vectors = direction.vectors if isinstance(direction, Direction) else direction
    _check_vectors(vectors, direction.layers if isinstance(direction, Direction) else None)
    try:
        fits = torch.broadcast_shapes(vectors.shape, acts.shape[1:]) == acts.shape[1:]
    except RuntimeError:
        fits = False
    if not fits or vectors.shape[-1] != acts.shape[-1]:
        raise ValueError(
            f"direction of shape {tuple(vectors.shape)} does not match activations [batch, "
            f"layers, positions, d] = {tuple(acts.shape)}: it must broadcast, with their width"
        )
    vectors = (-vectors if flip else vectors).to(acts.dtype)
    norms = torch.linalg.vector_norm(acts, dim=-1) * torch.linalg.vector_norm(vectors, dim=-1)
    cos = (acts * vectors).sum(-1) / norms.clamp_min(1e-8)  # 0 where a vector is zero, no NaN
    loss = (1 - cos) / 2 if mode == "in" else cos.abs()
    return loss.mean()


def soft_target_cross_entropy(
    logits: Float[Tensor, "*batch vocab"], targets: Float[Tensor, "*batch vocab"], mean: bool = True
) -> Float[Tensor, "*b"]:
    """``-sum(targets * log_softmax(logits))``, mean over rows unless ``mean=False``; its
    minimum is ``target_entropy(targets)``."""
    if logits.shape != targets.shape:
        try:
            targets = targets.expand_as(logits)
        except RuntimeError as error:
            raise ValueError(
                f"targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}"
            ) from error
    log_p = torch.log_softmax(logits.float(), dim=-1)
    loss = -(targets.float() * log_p).sum(-1)
    return loss.mean() if mean else loss


def target_entropy(
    targets: Float[Tensor, "*batch vocab"], mean: bool = True
) -> Float[Tensor, "*b"]:
    t = targets.float()
    entropy = -(t * torch.log(t.clamp_min(1e-30))).sum(-1)
    return entropy.mean() if mean else entropy


def format_loss(
    logits: Float[Tensor, "b vocab"], choices: Bool[Tensor, "b vocab"], mean: bool = True
) -> Float[Tensor, "*b"]:
    """``-log p(choices)``. The gradient reaches the choices' logits only through their mean
    (one shared push against the other tokens), so the loss never prefers one choice."""
    logits = logits.float()
    n = choices.sum(-1, keepdim=True).clamp_min(1)
    level = (logits * choices).sum(-1, keepdim=True) / n
    shared = torch.where(choices, logits.detach() + (level - level.detach()), logits)
    inside = torch.logsumexp(shared.masked_fill(~choices, -torch.inf), -1)
    loss = torch.logsumexp(shared, -1) - inside
    return loss.mean() if mean else loss


def soft_targets(
    tokenizer, distribution: Mapping[str, float], vocab_size: int
) -> Float[Tensor, " vocab"]:
    """A distribution over the first token of each string, e.g. ``{" True": .5, " False": .5}``."""
    total = sum(_probabilities(distribution))
    target = torch.zeros(vocab_size)
    for string, p in distribution.items():
        target[lm.first_token(tokenizer, string, "target key")] += p / total
    return target


def _probabilities(distribution: Mapping[str, float]) -> list[float]:
    weights = [number(f"target[{key!r}]", p, at_least=0) for key, p in distribution.items()]
    if sum(weights) <= 0:
        raise ValueError(f"target probabilities must be >= 0 with a positive sum: {distribution}")
    return weights


# --- parameter blocks -----------------------------------------------------------------------------

# the recipe's block kinds as iv.parameters names their weights ("" is the whole block)
_WEIGHTS = {"attn": ".attn", "attn.q": ".attn.q_proj", "attn.k": ".attn.k_proj",
            "attn.v": ".attn.v_proj", "attn.o": ".attn.o_proj", "mlp": ".mlp",
            "mlp.down": ".mlp.down_proj", "block": ""}  # fmt: skip
MODULE_KINDS = tuple(_WEIGHTS)


def block_parameters(model: nn.Module, blocks: str | Iterable[str]) -> dict[str, nn.Parameter]:
    """Parameters of blocks ``"layers.{i|a:b|*}.{kind}"`` (kinds in ``MODULE_KINDS``, joined
    with ``+``), keyed by the causal LM's parameter names (``iv.parameters``)."""
    n_layers = iv.geometry(model).n_layers
    found: dict[str, nn.Parameter] = {}
    for block in [blocks] if isinstance(blocks, str) else list(blocks):
        parts = block.split(".", 2)
        if len(parts) != 3 or parts[0] != "layers":
            raise ValueError(
                f"bad block {block!r}: expected 'layers.{{i|a:b|*}}.{{kind}}' with kind in "
                f"{', '.join(MODULE_KINDS)}, e.g. 'layers.8:12.attn.v+attn.o'"
            )
        kinds = parts[2].split("+")
        unknown = [kind for kind in kinds if kind not in _WEIGHTS]
        if unknown:
            raise ValueError(
                f"unknown module kind {unknown[0]!r} in block {block!r}; expected one of "
                f"{', '.join(MODULE_KINDS)}"
            )
        try:
            for layer in iv.layer_range(parts[1], n_layers):
                for kind in kinds:
                    found.update(iv.parameters(model, f"layers.{layer}{_WEIGHTS[kind]}"))
        except (ValueError, NotImplementedError) as error:  # e.g. GPT-2's fused c_attn
            raise ValueError(f"block {block!r}: {error}") from error
    offloaded = [name for name, param in found.items() if param.is_meta]
    if offloaded:
        raise ValueError(
            f"{offloaded[0]} is offloaded (accelerate keeps it on the meta device), so it cannot "
            "be trained: load the model with its weights in memory (no CPU or disk offload)"
        )
    return found


def default_projection_kind(model: nn.Module) -> str:
    """``attn.v+attn.o`` where the attention has a separate value projection, else ``attn``."""
    table = iv.adapter(model)
    attn = table.block_module(model, 0, table.attn)
    return "attn.v+attn.o" if hasattr(attn, "v_proj") else "attn"


# --- tuning ---------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    batch: Batch
    proj_mask: Bool[Tensor, "b t"]
    soft: Float[Tensor, "b vocab"] | None  # rows without a soft target are zero
    soft_rows: Bool[Tensor, " b"]
    any_of: Bool[Tensor, " b"]  # AnyOf rows: ``soft`` is a 0/1 mask of the choices
    labels: Int[Tensor, "b k"] | None  # completion labels for the last k columns
    keep: int  # logits_to_keep


def _prepare(
    tokenizer, examples: Sequence[Example], n_positions: int, vocab: int, device: torch.device
) -> _Prepared:
    targets = [e.target for e in examples]
    completions = [t if isinstance(t, str) else "" for t in targets]
    batch = make_batch(tokenizer, [e.prompt for e in examples], completions).to(device)
    width = batch.input_ids.shape[1]
    soft_rows = torch.tensor([isinstance(t, (Mapping, AnyOf)) for t in targets], device=device)
    any_of = torch.tensor([isinstance(t, AnyOf) for t in targets], device=device)
    soft = None
    if bool(soft_rows.any()):
        soft = torch.stack([_next_token_target(tokenizer, t, vocab) for t in targets]).to(device)
    lengths = (width - batch.prompt_end).tolist()  # completion tokens per row
    keep = max([n + 1 for n in lengths if n] + [1 if soft is not None else 0])
    labels = None
    if any(lengths):
        labels = torch.full((len(examples), keep), -100, dtype=torch.long, device=device)
        for row, n in enumerate(lengths):
            if n:  # logit column width-1-n .. width-2 predicts tokens width-n .. width-1
                labels[row, keep - 1 - n : keep - 1] = batch.input_ids[row, width - n :]
    mask = batch.last_prompt_tokens(n_positions)
    return _Prepared(batch, mask, soft, soft_rows, any_of, labels, keep)


def _next_token_target(tokenizer, target: object, vocab: int) -> Float[Tensor, " vocab"]:
    """A row of ``_Prepared.soft``: the distribution, a 0/1 mask of AnyOf's choices, or zeros."""
    if isinstance(target, AnyOf):
        return (soft_targets(tokenizer, dict.fromkeys(target.choices, 1.0), vocab) > 0).float()
    if isinstance(target, Mapping):
        return soft_targets(tokenizer, target, vocab)
    return torch.zeros(vocab)


def _token_loss(p: _Prepared, logits: Tensor) -> tuple[Tensor, Tensor]:
    """(loss, its minimum) over the rows with a token target."""
    losses, minima = [], []
    if p.soft is not None:
        last = logits[:, -1].float()
        fixed, any_of = p.soft_rows & ~p.any_of, p.any_of
        row_loss = torch.zeros(len(last), device=last.device)
        row_min = torch.zeros(len(last), device=last.device)
        if bool(fixed.any()):
            row_loss[fixed] = soft_target_cross_entropy(last[fixed], p.soft[fixed], mean=False)
            row_min[fixed] = target_entropy(p.soft[fixed], mean=False)
        if bool(any_of.any()):
            row_loss[any_of] = format_loss(last[any_of], p.soft[any_of] > 0, mean=False)
        losses.append(row_loss[p.soft_rows].mean())
        minima.append(row_min[p.soft_rows].mean())
    if p.labels is not None:
        losses.append(token_cross_entropy(logits, p.labels))
        minima.append(torch.zeros((), device=logits.device))
    return torch.stack(losses).mean(), torch.stack(minima).mean()


@contextmanager
def _only_trainable(model: nn.Module, params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Only ``params`` require grad inside (a frozen LoRA base weight in a group trains, nothing
    else builds a graph); every flag is put back after."""
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    keep = {id(p) for p in params}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])


def _split(data: Sequence[Example], val_fraction: float, seed: int):
    if not data:
        raise ValueError("tune needs at least one example")
    val_fraction = number("val_fraction", val_fraction, at_least=0, below=1)
    n_val = round(val_fraction * len(data))
    if n_val >= len(data):
        raise ValueError(f"val_fraction={val_fraction} leaves no training examples")
    shuffled = list(data)
    random.Random(seed).shuffle(shuffled)  # the seeded split of honesty.split_claims
    return shuffled[n_val:], shuffled[:n_val]


def tune(
    model: nn.Module,
    tokenizer,
    data: Sequence[Example],
    *,
    direction: Direction,
    layers: Sequence[int],
    mode: str = "in",
    flip: bool = False,
    projection_blocks: Sequence[str] | None = None,
    token_blocks: Sequence[str] | None = None,
    lr: float | Literal["auto"] = "auto",
    token_lr: float | None = None,
    steps: int = 50,
    batch_size: int = 8,
    warmup: int = 5,
    weight_decay: float = 0.0,
    token_tolerance: float = 0.05,
    val_fraction: float = 0.2,
    val_data: Sequence[Example] | None = None,
    eval_every: int = 10,
    patience: int = 3,
    seed: int = 0,
    progress: bool = True,
    history: list[dict] | None = None,
) -> iv.WeightDelta:
    """Tune ``direction`` in or out at ``layers``; returns the applied ``iv.WeightDelta``.

    ``projection_blocks`` (default: ``attn.v+attn.o`` of ``layers``, ``attn`` on GPT-2) move
    with the projection loss only, ``token_blocks`` (default: their ``mlp``; ``[]``: none) with
    the token loss only. Validation (``val_data`` or ``val_fraction`` of ``data``) every
    ``eval_every`` steps; ``history`` receives a dict per step and per evaluation.

    ``lr="auto"`` first runs ``choose_lr`` with these arguments (its defaults: the grid
    ``DEFAULT_LR_GRID``, 10-step trials, perplexity of the bundled prose within +5 %), then the
    full run at the chosen rate (``token_lr`` too, unless given), which checks the perplexity at
    every evaluation and stops at the first past the budget, keeping the best weights validated
    within it; ``history`` starts with ``{"lr_choice": LrChoice}`` and ends with
    ``{"perplexity": ..., "perplexity_rise": ...}`` of the returned weights."""
    mode = choice("mode", mode, ("in", "out"))
    hint = "name the layers the projection loss acts at, e.g. list(direction.layers)"
    layers = indices("layers", layers, iv.geometry(model).n_layers, hint=hint)
    vectors = _direction_at(direction, layers, model)
    auto = isinstance(lr, str) and lr == "auto"
    lr = 0.0 if auto else number("lr", lr, above=0)
    token_lr = None if token_lr is None else number("token_lr", token_lr, above=0)
    steps, batch_size = integer("steps", steps), integer("batch_size", batch_size)
    warmup = integer("warmup", warmup, minimum=0)
    eval_every, patience = integer("eval_every", eval_every), integer("patience", patience)
    weight_decay = number("weight_decay", weight_decay, at_least=0)
    # inf: never take a token step, a negative value: always
    token_tolerance = number("token_tolerance", token_tolerance, infinite=True)
    spec = _layer_spec(min(layers), max(layers) + 1)
    if projection_blocks is None:
        projection_blocks = [f"{spec}.{default_projection_kind(model)}"]
    token_blocks = [f"{spec}.mlp"] if token_blocks is None else token_blocks
    proj_params = block_parameters(model, projection_blocks)
    token_params = block_parameters(model, token_blocks)
    if not proj_params:
        raise ValueError("the projection group is empty: name at least one block")
    train, val = (
        _split(data, val_fraction, seed) if val_data is None else (list(data), list(val_data))
    )
    for example in [*train, *val]:  # refused before anything runs
        if isinstance(example.target, Mapping):
            _probabilities(example.target)
    if not any(e.target is not None for e in train):
        token_params = {}
    # A parameter named in both groups is the token loss's alone (the projection loss never
    # moves what keeps the output coherent).
    proj_params = {k: param for k, param in proj_params.items() if k not in token_params}
    if not proj_params:
        raise ValueError(
            "every parameter of projection_blocks is also in token_blocks, which only the token "
            "loss updates: name projection blocks outside the token group (or token_blocks=[])"
        )
    # Validation always measures the token loss when there is one, so that runs with and
    # without a token group (block search) are scored alike.
    val_tokens = any(e.target is not None for e in val)
    vocab, device, n = iv.geometry(model).d_vocab, text.device_of(model), direction.n_positions
    history = [] if history is None else history
    tuned = {**proj_params, **token_params}  # named from the causal LM (a PEFT model wraps it)

    sites = [f"layers.{i}.resid_post" for i in layers]
    lr_choice = None
    if auto:
        lr_choice = choose_lr(
            model, tokenizer, data, direction=direction, layers=layers, mode=mode, flip=flip,
            projection_blocks=projection_blocks, token_blocks=token_blocks, batch_size=batch_size,
            token_tolerance=token_tolerance, val_fraction=val_fraction, val_data=val_data,
            seed=seed, progress=progress,
        )  # fmt: skip
        lr = lr_choice.lr
        history.append({"lr_choice": lr_choice})
    token_lr = lr if token_lr is None else token_lr

    def losses(p: _Prepared, with_tokens: bool, keep_grad: bool) -> tuple[Tensor, ...]:
        """(projection loss, token loss, its minimum); without logits to score, the forward
        stops after the last tuned layer and the last two are None."""
        keep, logits = p.keep if with_tokens else 0, None  # a batch may hold no token target
        mask = p.proj_mask
        with iv.capture(model, sites, positions=mask, keep_grad=keep_grad, stop=not keep) as c:
            if keep:
                logits = lm.logits(model, p.batch, keep=keep)
            else:
                model(**p.batch.inputs(model))  # ends the block: nothing after the last layer runs
        acts = rearrange(torch.stack([c[s] for s in sites]), "l (b n) d -> b l n d", b=len(mask))
        proj = projection_loss(acts, vectors, mode, flip)
        return (proj, None, None) if logits is None else (proj, *_token_loss(p, logits))

    def validate(step: int) -> float:
        """Logs the mean validation losses; returns their sum (lower is better)."""
        proj_sum, excess_sum = 0.0, 0.0
        with torch.no_grad():
            for p in val_batches:
                proj, token, minimum = losses(p, val_tokens, keep_grad=False)
                proj_sum += float(proj)
                excess_sum += float(token - minimum) if token is not None else 0.0
        k = max(1, len(val_batches))
        history.append({"step": step, "val_projection": proj_sum / k,
                        "val_token_excess": excess_sum / k})  # fmt: skip
        return proj_sum / k + excess_sum / k

    # a failed or interrupted run (Ctrl-C too) puts every tuned parameter back bit-exactly
    with iv.WeightDelta.recording(model, tuned) as recording:
        proj_group = _Group(proj_params, lr, weight_decay, warmup)
        token_group = _Group(token_params, token_lr, weight_decay, warmup)
        val_batches = [
            _prepare(tokenizer, chunk, n, vocab, device) for chunk in text.batches(val, batch_size)
        ]
        chunks = _cycled(train, batch_size, seed)
        best, best_state, bad = math.inf, None, 0
        if lr_choice is not None:  # the untuned weights are within any perplexity budget
            best_state = dict(recording.originals)
        bar = tqdm(range(steps), desc=f"reptune {mode}", disable=not progress, leave=False)
        with bar, _only_trainable(model, tuned.values()), torch.enable_grad():
            if val_batches:
                best, best_state = validate(0), dict(recording.originals)
            for step in bar:
                p = _prepare(tokenizer, next(chunks), n, vocab, device)
                proj, token, minimum = losses(p, bool(token_params), keep_grad=True)
                excess = None if token is None else float((token - minimum).detach())
                token_step = excess is not None and excess > token_tolerance
                # both gradients before either step: the token loss's graph holds the old weights
                proj_grads = proj_group.grads(proj, retain_graph=token_step)
                token_grads = token_group.grads(token) if token_step else None
                proj_group.step(proj_grads)
                if token_step:
                    token_group.step(token_grads)
                proj = float(proj.detach())
                history.append({"step": step + 1, "projection": proj, "token_excess": excess,
                                "token_step": token_step})  # fmt: skip
                bar.set_postfix(proj=f"{proj:.4f}", tok="-" if excess is None else f"{excess:.3f}")
                if (step + 1) % eval_every != 0 and step + 1 != steps:
                    continue
                if lr_choice is not None and _past_budget(model, tokenizer, lr_choice, step + 1,
                                                          history):  # fmt: skip
                    break  # the best weights validated within the budget are kept
                if val_batches:
                    score = validate(step + 1)
                    if score < best - 1e-6:
                        best, bad = score, 0
                        best_state = {k: param.detach().clone() for k, param in tuned.items()}
                    elif (bad := bad + 1) >= patience:
                        break
                elif lr_choice is not None:  # no validation: the last weights within the budget
                    best_state = {k: param.detach().clone() for k, param in tuned.items()}
        if best_state is not None:
            with torch.no_grad():
                for name, value in best_state.items():
                    tuned[name].copy_(value)
        if lr_choice is not None:
            ppl = _fluency_perplexity(model, tokenizer, lr_choice.fluency_tokens)
            history.append({"perplexity": ppl,
                            "perplexity_rise": ppl / lr_choice.untuned_perplexity - 1})  # fmt: skip
    return recording.delta


def _past_budget(model: nn.Module, tokenizer, choice: "LrChoice", step: int, history) -> bool:
    """Whether the tuned model's perplexity has gone past ``choice``'s budget (a full run can
    where its short trial did not: it is checked at every evaluation)."""
    ppl = _fluency_perplexity(model, tokenizer, choice.fluency_tokens)
    rise = ppl / choice.untuned_perplexity - 1
    history.append({"step": step, "perplexity": ppl, "perplexity_rise": rise})
    past = rise > choice.budget
    if past:
        budget = f"+{100 * choice.budget:g} %"
        log.info(f"reptune: stopped at step {step}: perplexity {100 * rise:+.1f} %, past {budget}")
    return past


class _Group:
    """A parameter group with its own AdamW and linear warmup (over its own steps)."""

    def __init__(self, params: Mapping[str, nn.Parameter], lr: float, decay: float, warmup: int):
        self.params = list(params.values())
        if self.params:  # AdamW refuses an empty group
            self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=decay)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup))
            )

    def grads(self, loss: Tensor, retain_graph: bool = False) -> tuple[Tensor | None, ...]:
        return torch.autograd.grad(loss, self.params, retain_graph=retain_graph, allow_unused=True)

    def step(self, grads: Sequence[Tensor | None]) -> None:
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = grad
        self.optimizer.step()
        self.scheduler.step()
        for param in self.params:
            param.grad = None


def _cycled(items: Sequence, batch_size: int, seed: int) -> Iterator[list]:
    """Batches of ``items`` from a seeded order, reshuffled whenever it runs short."""
    rng, order = random.Random(seed), []
    while True:
        if len(order) < batch_size:
            fresh = list(range(len(items)))
            rng.shuffle(fresh)
            order += fresh
        yield [items[i] for i in order[:batch_size]]
        del order[:batch_size]


# --- block search ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockScore:
    projection_blocks: tuple[str, ...]
    token_blocks: tuple[str, ...]
    val_projection: float
    val_token_excess: float

    @property
    def score(self) -> float:
        return self.val_projection + self.val_token_excess


@dataclass
class BlockSearch:
    """Block combinations ranked by validation loss (best first)."""

    rows: list[BlockScore]
    baseline: dict[str, float]

    @property
    def best(self) -> BlockScore:
        return self.rows[0]

    def table(self) -> str:
        header = f"{'rank':>4}  {'score':>8}  {'val_proj':>8}  {'val_tok+':>8}  projection | token"
        untuned = [self.baseline["val_projection"], self.baseline["val_token_excess"]]
        rows = [("-", sum(untuned), *untuned, "(untuned)")]
        for rank, r in enumerate(self.rows, 1):
            blocks = f"{' '.join(r.projection_blocks)} | {' '.join(r.token_blocks) or '-'}"
            rows.append((rank, r.score, r.val_projection, r.val_token_excess, blocks))
        body = [f"{a:>4}  {b:8.4f}  {c:8.4f}  {d:8.4f}  {e}" for a, b, c, d, e in rows]
        return "\n".join([header, "-" * len(header), *body])


def candidate_blocks(
    layer_ranges: Sequence[tuple[int, int]], modules: Sequence[str] = ("attn.v+attn.o", "mlp")
) -> list[tuple[str, ...]]:
    """Single blocks ``layers.a:b.{module}`` for every range ``(a, b)`` (b excluded) x module."""
    out = []
    for (a, b), module in itertools.product(layer_ranges, modules):
        if b <= a:
            raise ValueError(f"empty layer range ({a}, {b})")
        out.append((f"{_layer_spec(a, b)}.{module}",))
    return out


def _layer_spec(start: int, stop: int) -> str:
    return f"layers.{start}:{stop}" if stop - start > 1 else f"layers.{start}"


def search_blocks(
    model: nn.Module,
    tokenizer,
    data: Sequence[Example],
    *,
    direction: Direction,
    layers: Sequence[int],
    projection_candidates: Sequence[Sequence[str]],
    token_candidates: Sequence[Sequence[str]] = ((),),
    mode: str = "in",
    steps: int = 10,
    lr: float = 1e-4,
    batch_size: int = 8,
    val_fraction: float = 0.25,
    seed: int = 0,
    progress: bool = True,
) -> BlockSearch:
    """A ``steps``-step run of ``tune`` for every (projection, token) combination whose groups
    do not overlap, scored by its validation loss, then reverted; the untuned score is the
    baseline."""
    train, val = _split(data, val_fraction, seed)
    rows, baseline = [], None
    proj_candidates = [tuple(c) for c in projection_candidates]
    token_candidates = [tuple(c) for c in token_candidates]
    names = {c: set(block_parameters(model, c)) for c in [*proj_candidates, *token_candidates]}
    pairs = itertools.product(proj_candidates, token_candidates)
    combos = [(a, b) for a, b in pairs if not names[a] & names[b]]
    if not combos:
        raise ValueError("no combination of projection and token blocks is disjoint")
    for proj_blocks, token_blocks in tqdm(combos, desc="block search", disable=not progress):
        history: list[dict] = []
        delta = tune(
            model, tokenizer, train, direction=direction, layers=layers, mode=mode,
            projection_blocks=proj_blocks, token_blocks=token_blocks, lr=lr, steps=steps,
            batch_size=batch_size, val_data=val, eval_every=steps, patience=steps + 1,
            warmup=1, seed=seed, progress=False, history=history,
        )  # fmt: skip
        delta.revert(model)
        evals = [h for h in history if "val_projection" in h]
        keys = ("val_projection", "val_token_excess")
        baseline = baseline or {k: evals[0][k] for k in keys}
        last = evals[-1]  # after the short run (tune itself would keep the untuned weights)
        rows.append(BlockScore(proj_blocks, token_blocks, *(last[k] for k in keys)))
    rows.sort(key=lambda r: r.score)
    return BlockSearch(rows, baseline or {})


# --- choosing the learning rate ---------------------------------------------------------------


@dataclass(frozen=True)
class LrChoice:
    """What ``choose_lr`` measured. ``grid``: per rate tried, the validation loss after its trial
    (projection + token excess, as ``tune`` validates), the perplexity and its rise."""

    lr: float
    budget: float
    within_budget: bool
    trial_steps: int
    fluency_tokens: int
    untuned_val_loss: float
    untuned_perplexity: float
    grid: tuple[dict[str, float], ...]

    def table(self) -> str:
        rows = [f"untuned      val loss {self.untuned_val_loss:.4f}  perplexity "
                f"{self.untuned_perplexity:.3f}"]  # fmt: skip
        for r in self.grid:
            mark = "  <- chosen" if r["lr"] == self.lr else ""
            rise = 100 * r["perplexity_rise"]
            rows.append(f"lr {r['lr']:<9g} val loss {r['val_loss']:.4f}  perplexity "
                        f"{r['perplexity']:.3f} ({rise:+.1f} %){mark}")  # fmt: skip
        return "\n".join(rows)


def _fluency_perplexity(model: nn.Module, tokenizer, tokens: int) -> float:
    return perplexity(
        model, tokenizer, honesty.load_prose(), window=128, stride=64, max_tokens=tokens
    )


def choose_lr(
    model: nn.Module,
    tokenizer,
    data: Sequence[Example],
    *,
    direction: Direction,
    layers: Sequence[int],
    mode: str = "in",
    flip: bool = False,
    projection_blocks: Sequence[str] | None = None,
    token_blocks: Sequence[str] | None = None,
    grid: Sequence[float] = DEFAULT_LR_GRID,
    trial_steps: int = 10,
    perplexity_budget: float = 0.05,
    fluency_tokens: int = 256,
    batch_size: int = 8,
    token_tolerance: float = 0.05,
    val_fraction: float = 0.2,
    val_data: Sequence[Example] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> LrChoice:
    """The largest rate of ``grid`` whose ``trial_steps``-step ``tune`` lowers the validation
    loss below the untuned model's and raises the perplexity of the bundled prose (its first
    ``fluency_tokens`` tokens) by at most ``perplexity_budget`` (relative). Rates are tried in
    increasing order, each trial reverted bit-exactly, and the search stops at the first rate
    past the budget. With no such rate it warns and takes the smallest. The validation loss is
    that of ``val_data`` or ``val_fraction`` of ``data`` (with neither, of the training examples
    themselves). The model is left as it was, also on error or interrupt."""
    grid = [number(f"grid[{i}]", x, above=0) for i, x in enumerate(grid)]
    if not grid or len(set(grid)) != len(grid):
        raise ValueError(f"grid must hold distinct learning rates, got {grid}")
    grid.sort()
    trial_steps = integer("trial_steps", trial_steps)
    budget = number("perplexity_budget", perplexity_budget, at_least=0)
    fluency_tokens = integer("fluency_tokens", fluency_tokens, minimum=2)
    train, val = (
        _split(data, val_fraction, seed) if val_data is None else (list(data), list(val_data))
    )
    if not val:  # no split asked for: judge the trials on the examples they train on
        val = train
    untuned_ppl = _fluency_perplexity(model, tokenizer, fluency_tokens)
    rows, untuned_loss = [], math.nan
    for lr in tqdm(grid, desc="reptune lr", disable=not progress, leave=False):
        history: list[dict] = []
        delta = tune(
            model, tokenizer, train, direction=direction, layers=layers, mode=mode, flip=flip,
            projection_blocks=projection_blocks, token_blocks=token_blocks, lr=lr,
            steps=trial_steps, batch_size=batch_size, warmup=1, token_tolerance=token_tolerance,
            val_data=val, eval_every=trial_steps, patience=trial_steps + 1, seed=seed,
            progress=False, history=history,
        )  # fmt: skip
        try:
            evals = [h["val_projection"] + h["val_token_excess"] for h in history
                     if "val_projection" in h]  # fmt: skip
            ppl = _fluency_perplexity(model, tokenizer, fluency_tokens)
        finally:
            delta.revert(model)
        untuned_loss = evals[0]
        rows.append({"lr": lr, "val_loss": evals[-1], "perplexity": ppl,
                     "perplexity_rise": ppl / untuned_ppl - 1})  # fmt: skip
        if rows[-1]["perplexity_rise"] > budget:
            break
    # a trial that did not lower the validation loss left the untuned weights (tune keeps the
    # best validated ones): its perplexity says nothing, so it is never chosen
    good = [r["lr"] for r in rows
            if r["val_loss"] < untuned_loss - 1e-6 and r["perplexity_rise"] <= budget]  # fmt: skip
    if not good:
        warnings.warn(
            f"no learning rate of {grid} lowered the validation loss in {trial_steps} steps "
            f"within +{100 * budget:g} % perplexity; took the smallest, {grid[0]:g}: give lr, "
            "a larger perplexity_budget or more trial_steps",
            stacklevel=2,
        )
    choice = LrChoice(
        max(good) if good else grid[0], budget, bool(good), trial_steps, fluency_tokens,
        untuned_loss, untuned_ppl, tuple(rows),
    )  # fmt: skip
    log.info("reptune: learning rate chosen\n%s", choice.table())
    return choice


# --- evaluation at a Direction (the metrics are interventions.evals.honesty's) --------------------


def cosine_to_direction(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    direction: Direction,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
) -> dict[int, dict[str, float]]:
    """``honesty.cosine_to_direction`` at ``layers`` of the direction (default: all)."""
    layers = list(direction.layers if layers is None else layers)
    vectors = _direction_at(direction, layers, model)
    return honesty.cosine_to_direction(
        model, tokenizer, prompts, vectors, layers, batch_size=batch_size
    )


def steerability(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    direction: Direction,
    layer: int,
    alphas: Sequence[float] = (-2.0, 0.0, 2.0),
    choices: tuple[str, str] = CHOICES,
    batch_size: int = 16,
) -> dict[str, float | list[float]]:
    """``honesty.steerability`` under ``direction.steering_plan(layer, alpha)``."""
    _direction_at(direction, [layer], model)
    plan = lambda alpha: direction.steering_plan(layer, alpha)  # noqa: E731
    return honesty.steerability(model, tokenizer, prompts, plan, alphas, choices, batch_size)
