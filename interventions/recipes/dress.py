"""DRESS: steer a few attention heads towards a style, with an adaptive per-token strength.

Paper: Ma et al., "DRESSing Up LLM: Efficient Stylized Question-Answering via Style Subspace
Editing", ICLR 2025; on top of Inference-Time Intervention (ITI; Li et al., 2023). From triples
(question, styled answer, plain answer):

1. ``layers.*.attn.heads`` at the last token of "prompt(question) + answer", styled and plain.
2. One logistic probe per head on a split of the pairs, all heads at once; rank by validation
   accuracy, then validation log-loss, then effect size; keep the top ``num_heads``.
3. Vector per head ``v = alpha · (mean styled − mean plain)`` (or ITI's, ``vectors="iti"``).
   ``alpha="auto"`` (the default): the largest alpha of a small grid whose adaptive edit keeps
   the fluency of short answers to the probes' validation questions within a budget of the
   unsteered model's and raises their style margin over alpha 0 (``choose_alpha``).
4. Static edit: ``v`` baked into ``o_proj.bias = W_o · v``, or added at run time.
5. Style subspace per head: the top-K right singular vectors ``V`` of ``styled_i − plain_i``.
6. Adaptive rule per head and position: ``w = V v``, ``w_cur = V a_cur``, ``w_tgt = V
   mean(styled)``, ``w ← w ⊙ (1 + β · sign(w) ⊙ (w_tgt − w_cur))`` (optional clamp); the head
   gets ``a_cur + Vᵀ w``, ``a_cur`` read before steering in the same forward (KV cache on), or
   from a separate unsteered forward (``generate_separate``, the paper's variant).

Usage (docs/dress.md)::

    from interventions.recipes import dress
    triples = dress.load_triples("train")                      # bundled Shakespeare set
    fit = dress.fit(model, tokenizer, triples)                 # probes, vectors, subspaces,
    print(fit.summary())                                       # alpha chosen on validation
    fit = dress.fit(model, tokenizer, triples, num_heads=16, alpha=3.0,
                    options=dress.Options(beta=0.5))           # the paper's fixed strength
    delta = fit.bake(model); delta.revert(model)               # static edit in o_proj.bias
    with fit.adaptive(model):                                  # per-token subspace rule
        model.generate(**inputs)
    fit.save("dress.safetensors"); fit = dress.load("dress.safetensors")

The data set (``load_triples``, ``Triple``, ``STYLE_INSTRUCTION``: re-exported here), answer
generation and the paper's metrics are ``interventions.evals.style``.
"""

import json
import math
import numbers
import os
import random
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

import interventions as iv
from interventions import text
from interventions.checks import choice, integer, interval, number
from interventions.evals.style import (
    STYLE_INSTRUCTION,
    Triple,
    as_triples,
    load_triples,
    steered_scores,
)
from interventions.files import load_tensors, save_tensors
from interventions.ops import Positions
from interventions.probes import Ties, probe_pairs, split_pairs

_FORMAT = "interventions.dress/1"
_SAVED_TENSORS = ("direction", "basis", "styled_mean")  # and the probe scores
_SAVED_FIELDS = ("heads", "ranks", "alpha", "beta", "clamp", "geometry", "config")  # and ties
VECTOR_KINDS = ("mean_diff", "iti")
SCORES = ("val_accuracy", "val_loss", "effect", "train_accuracy")  # per head, of the probes
HEADS = "layers.*.attn.heads"
Clamp = tuple[float, float] | None  # bounds of the adaptive factor (None: unbounded)
AUTO = "auto"  # alpha chosen on the validation pairs (``choose_alpha``)
DEFAULT_ALPHA_GRID = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # up to the paper's 3.0 (for 7B)


# --- prompts and activations ----------------------------------------------------------------------


def format_prompt(tokenizer, question: str, *, instruction: str | None = None) -> str:
    """The generation prompt for ``question``: the chat template if the tokenizer has one."""
    content = question if instruction is None else f"{instruction}\n\n{question}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return f"Question: {content}\nAnswer:"


def special_tokens(tokenizer) -> bool:
    """The ``special=`` for ``format_prompt``'s texts: add the tokenizer's special tokens,
    except to a chat template's text (it writes its own)."""
    return not getattr(tokenizer, "chat_template", None)


@torch.no_grad()
def head_activations(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    batch_size: int = 16,
    progress: bool = True,
    distributed: bool | iv.distributed.World | None = None,
) -> Float[Tensor, "n layers heads d_head"]:
    """``layers.*.attn.heads`` at each text's last token (float32, CPU): left-padded batches,
    each forward stopped once the last layer's heads are captured. Under ``torchrun`` each rank
    runs its block of the batches and every rank gets all the rows, in order (``distributed``,
    as in ``iv.tally``)."""
    world = iv.distributed.world(distributed)
    geometry = iv.geometry(model)
    chunks = world.shard(list(text.batches(texts, batch_size)))
    rows = [torch.zeros(0, geometry.n_layers, geometry.n_heads, geometry.d_head)]
    pad_with = text.pad_id(tokenizer)
    with world.guard("dress.head_activations"):
        for chunk in tqdm(chunks, desc="attn.heads", unit="batch", disable=not progress):
            ids = [text.token_ids(tokenizer, t, special=special_tokens(tokenizer)) for t in chunk]
            batch = text.pad(ids, pad_with, "left").to(model)
            with iv.capture(model, HEADS, positions=-1, device="cpu", stop=True) as cache:
                model(**batch.inputs(model))
            rows.append(cache.stack(HEADS, dim=1).float())
    return world.gather_rows(torch.cat(rows, dim=0), "dress.head_activations")


# --- the style subspace and the options -----------------------------------------------------------


@dataclass(frozen=True)
class Rank:
    """Size K of each head's style subspace: give exactly one of ``count`` (K itself),
    ``fraction`` (K = round(fraction · d_head)) or ``variance`` (the smallest K whose singular
    values explain that share of the squared norm of the differences)."""

    count: int | None = None
    fraction: float | None = None
    variance: float | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.count, self.fraction, self.variance)) != 1:
            raise ValueError("Rank takes exactly one of count=, fraction=, variance=")
        if self.count is not None:
            integer("Rank count", self.count)
        for name in ("fraction", "variance"):
            if getattr(self, name) is not None:
                number(f"Rank {name} (a share in (0, 1])", getattr(self, name), above=0, at_most=1)

    def resolve(self, singular_values: Float[Tensor, " m"], d_head: int) -> int:
        """K for one head, at most the number of singular vectors available."""
        if self.count is not None:
            if self.count > d_head:
                raise ValueError(f"Rank count {self.count} exceeds d_head {d_head}")
            k = self.count
        elif self.fraction is not None:
            k = max(1, round(self.fraction * d_head))
        else:
            energy = singular_values.double().pow(2)
            explained = energy.cumsum(0) / energy.sum().clamp_min(1e-30)
            k = int((explained < self.variance - 1e-12).sum()) + 1
        return min(k, len(singular_values))

    def to_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


DEFAULT_RANK = Rank(fraction=0.5)  # the paper's K = 64 at d_head = 128


@dataclass(frozen=True)
class Options:
    """How ``fit`` probes, selects and builds the edit; checked when made (docs/dress.md)."""

    beta: float = 0.5  # strength of the adaptive rule
    clamp: Clamp = None
    rank: Rank | int = DEFAULT_RANK  # K of each head's style subspace (an int: a count)
    vectors: str = "mean_diff"  # or "iti"
    val_ratio: float = 0.2  # share of the pairs that validate the probes
    seed: int = 42  # of the pair split
    probe_c: float = 1.0  # inverse L2 strength of the probes
    alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID  # alpha="auto": the strengths tried
    fluency_budget: float = 0.05  # alpha="auto": the largest validation fluency drop allowed
    alpha_tokens: int = 16  # alpha="auto": new tokens of each validation answer

    def __post_init__(self) -> None:
        choice("vectors", self.vectors, VECTOR_KINDS)
        if isinstance(self.rank, bool) or not isinstance(self.rank, (Rank, numbers.Integral)):
            raise TypeError(f"rank must be a Rank or an integer count, got {self.rank!r}")
        number("val_ratio", self.val_ratio, above=0, below=1)
        integer("seed", self.seed, minimum=None)
        number("probe_c", self.probe_c, above=0)
        rank = self.rank if isinstance(self.rank, Rank) else Rank(count=int(self.rank))
        object.__setattr__(self, "rank", rank)
        object.__setattr__(self, "beta", number("beta", self.beta, at_least=0))
        object.__setattr__(self, "clamp", interval("clamp", self.clamp, optional=True))
        object.__setattr__(self, "alpha_grid", _grid(self.alpha_grid))
        budget = number("fluency_budget", self.fluency_budget, at_least=0)
        object.__setattr__(self, "fluency_budget", budget)
        integer("alpha_tokens", self.alpha_tokens)


def _grid(values: object) -> tuple[float, ...]:
    """The alpha grid as distinct positive finite numbers, ascending."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise TypeError(
            f"alpha_grid must be a non-empty sequence of alphas > 0, e.g. {DEFAULT_ALPHA_GRID}, "
            f"got {values!r}"
        )
    grid = [number(f"alpha_grid[{i}]", v, above=0) for i, v in enumerate(values)]
    if len(set(grid)) < len(grid):
        raise ValueError(f"alpha_grid repeats an alpha: give each once, got {tuple(values)}")
    return tuple(sorted(grid))


DEFAULT_OPTIONS = Options()


def _checked(num_heads: object, alpha: object, options: object, total_heads: int):
    """``fit``'s plain arguments, checked before any work: (num_heads, alpha)."""
    num_heads = integer("num_heads", num_heads)
    if num_heads > total_heads:
        raise ValueError(
            f"num_heads must be in 1..{total_heads} (layers x heads of the model), got {num_heads}"
        )
    if not isinstance(options, Options):
        raise TypeError(f"options must be a dress.Options, got {type(options).__name__}")
    if isinstance(alpha, str):
        if alpha != AUTO:
            raise ValueError(f"alpha must be 'auto' or a finite number, got {alpha!r}")
        return num_heads, alpha
    return num_heads, number("alpha", alpha)


def style_subspace(
    differences: Float[Tensor, "pairs d"], rank: Rank, d_head: int, reference: Tensor
) -> Float[Tensor, "k d"]:
    """Top right singular vectors of the per-pair differences (rows), sign-fixed so each has a
    non-negative dot product with ``reference`` (the mean difference)."""
    _, s, vh = torch.linalg.svd(differences.double(), full_matrices=False)
    basis = vh[: rank.resolve(s, d_head)]
    sign = torch.where(basis @ reference.double() < 0, -1.0, 1.0).to(basis.dtype)
    return (basis * sign[:, None]).float()


def _directions(
    styled: Float[Tensor, "pairs k d"], plain: Float[Tensor, "pairs k d"], kind: str
) -> Float[Tensor, "k d"]:
    """Unscaled steering vectors (alpha multiplies them later)."""
    diff = styled.double().mean(0) - plain.double().mean(0)
    if kind == "mean_diff":
        return diff.float()
    unit = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    both = torch.cat([styled, plain], dim=0).double()
    std = einsum(both, unit, "n k d, k d -> n k").std(0)  # ITI: std of the projections
    return (unit * std[:, None]).float()


# --- the adaptive intervention --------------------------------------------------------------------


class AdaptiveSteer(iv.Intervention):
    """Step 6 at one layer's selected heads (site ``layers.{i}.attn.heads``): ``a_cur`` is the
    input; zero rows of ``basis`` pad smaller subspaces. A ``source`` (``[batch, heads, d]``,
    set by ``generate_separate``) replaces ``a_cur`` in the factor."""

    def __init__(
        self,
        vectors: Float[Tensor, "heads d"],
        basis: Float[Tensor, "heads k d"],
        styled_mean: Float[Tensor, "heads d"],
        *,
        beta: float = 0.5,
        clamp: Clamp = None,
        heads: Sequence[int],
        positions: Positions = None,
    ):  # beta and clamp: see ``Options``
        super().__init__(heads=heads, positions=positions)
        n = len(heads)
        if basis.ndim != 3 or basis.shape[0] != n or vectors.shape != (n, basis.shape[2]):
            raise ValueError(
                f"AdaptiveSteer: vectors {tuple(vectors.shape)} and basis {tuple(basis.shape)} "
                f"must be [heads, d] and [heads, k, d] for the {n} heads {list(heads)}"
            )
        self.beta = number("beta", beta, at_least=0)
        self.clamp = interval("clamp", clamp, optional=True)
        self.register_buffer("basis", basis.detach().float().clone())
        self.register_buffer("w", einsum(self.basis, vectors.float(), "h k d, h d -> h k"))
        self.register_buffer(
            "w_target", einsum(self.basis, styled_mean.float(), "h k d, h d -> h k")
        )
        self.source: Tensor | None = None

    def check_width(self, site: iv.Site, geometry: iv.Geometry) -> None:
        if site.kind != "attn.heads" or self.basis.shape[-1] != geometry.d_head:
            raise ValueError(
                f"AdaptiveSteer acts at attn.heads with d_head {self.basis.shape[-1]}; "
                f"got {site} with d_head {geometry.d_head}"
            )

    def factor(self, a_cur: Float[Tensor, "*batch heads d"]) -> Float[Tensor, "*batch heads k"]:
        basis = self.basis.to(a_cur.device, a_cur.dtype)
        w = self.w.to(a_cur.device, a_cur.dtype)
        w_cur = einsum(a_cur, basis, "... h d, h k d -> ... h k")
        factor = 1 + self.beta * torch.sign(w) * (self.w_target.to(w) - w_cur)
        return factor if self.clamp is None else factor.clamp(*self.clamp)

    def forward(self, x: Float[Tensor, "*batch heads d"]) -> Float[Tensor, "*batch heads d"]:
        a_cur = x
        if self.source is not None:
            if x.ndim != 4:
                raise ValueError("a source activation needs [batch, seq, heads, d] positions")
            a_cur = self.source.to(x.device, x.dtype)[:, None].expand_as(x)
        basis = self.basis.to(x.device, x.dtype)
        strength = self.w.to(x.device, x.dtype) * self.factor(a_cur)
        return x + einsum(strength, basis, "... h k, h k d -> ... h d")


# --- the fitted edit ------------------------------------------------------------------------------


@dataclass
class DressFit:
    """A fitted DRESS edit: selected heads (best first), vectors, subspaces and probe scores."""

    heads: list[tuple[int, int]]  # (layer, head), best first
    direction: Float[Tensor, "k d"]  # unscaled vector per selected head (alpha multiplies it)
    basis: Float[Tensor, "k r d"]  # style subspace rows, zero-padded to the largest K
    ranks: list[int]  # K per head
    styled_mean: Float[Tensor, "k d"]  # mean styled activation per selected head
    alpha: float
    beta: float
    clamp: Clamp
    geometry: dict[str, int]  # n_layers, n_heads, d_head of the model it was fitted on
    scores: dict[str, Float[Tensor, "layers heads"]]  # val_accuracy, val_loss, effect, ...
    ties: Ties
    config: dict = field(default_factory=dict)
    activations: tuple[Tensor, Tensor] | None = field(default=None, repr=False)  # not saved

    @property
    def vectors(self) -> Float[Tensor, "k d"]:
        """The static steering vectors, ``alpha · direction``."""
        return self.alpha * self.direction

    @property
    def projected_vectors(self) -> Float[Tensor, "k d"]:
        """The vectors projected on each head's style subspace (the adaptive edit at β = 0)."""
        return einsum(self.basis, self.basis, self.vectors, "h k d, h k e, h e -> h d")

    def with_alpha(self, alpha: float) -> "DressFit":
        """The same fit with another global strength (no refitting)."""
        return replace(self, alpha=number("alpha", alpha))

    def by_layer(self) -> dict[int, tuple[list[int], list[int]]]:
        """``layer -> (head indices, rows of the per-head tensors)``, layers ascending."""
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for row, (layer, head) in enumerate(self.heads):
            heads, rows = groups.setdefault(layer, ([], []))
            heads.append(head)
            rows.append(row)
        return dict(sorted(groups.items()))

    def _per_layer(self, make: Callable[[list[int], list[int]], iv.Intervention]) -> dict:
        """``{layers.i.attn.heads: make(head indices, rows)}`` for each layer with heads."""
        return {f"layers.{i}.attn.heads": make(*group) for i, group in self.by_layer().items()}

    def check_model(self, model: nn.Module) -> None:
        g = iv.geometry(model)
        found = {"n_layers": g.n_layers, "n_heads": g.n_heads, "d_head": g.d_head}
        if found != self.geometry:
            raise ValueError(
                f"this DRESS fit was made for a model with {self.geometry}, this one has {found}"
            )

    def plan(self, positions: Positions = None) -> dict[str, iv.Intervention]:
        """``{layers.i.attn.heads: AddBias(vectors, heads=[...])}``: the static edit."""
        vectors = self.vectors
        return self._per_layer(lambda h, r: iv.AddBias(vectors[r], heads=h, positions=positions))

    def bake(self, model: nn.Module) -> iv.WeightDelta:
        """Fold the static edit into ``o_proj`` biases (every position); returns the delta."""
        self.check_model(model)
        return iv.bake(model, self.plan())

    def static(
        self, model: nn.Module, positions: Positions = "generated"
    ) -> AbstractContextManager[iv.Attachment]:
        """The static edit at run time; by default on generated tokens only (the prompt is
        read unsteered, unlike the baked edit, which acts at every position)."""
        self.check_model(model)
        return iv.intervene(model, self.plan(positions))

    def adaptive_plan(
        self, *, beta: float | None = None, clamp: Clamp = None, positions: Positions = None
    ) -> dict[str, AdaptiveSteer]:
        """One ``AdaptiveSteer`` per layer with selected heads (``beta``, ``clamp``: the fit's
        unless given)."""
        beta, clamp = self.beta if beta is None else beta, self.clamp if clamp is None else clamp
        vectors = self.vectors

        def steer(h: list[int], r: list[int]) -> AdaptiveSteer:
            v, basis, mean = vectors[r], self.basis[r], self.styled_mean[r]
            return AdaptiveSteer(
                v, basis, mean, beta=beta, clamp=clamp, heads=h, positions=positions
            )

        return self._per_layer(steer)

    def adaptive(
        self,
        model: nn.Module,
        *,
        beta: float | None = None,
        clamp: Clamp = None,
        positions: Positions = None,
    ) -> AbstractContextManager[iv.Attachment]:
        """Attach the adaptive rule (``positions=None``: every position, like the paper's bias;
        ``"generated"``: generated tokens only). Works with ``generate`` and the KV cache."""
        self.check_model(model)
        return iv.intervene(model, self.adaptive_plan(beta=beta, clamp=clamp, positions=positions))

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file (written atomically): the tensors, and the rest as JSON."""
        tensors = {name: getattr(self, name) for name in _SAVED_TENSORS}
        tensors |= {f"scores/{k}": v for k, v in self.scores.items()}
        meta = {name: getattr(self, name) for name in _SAVED_FIELDS} | {"ties": vars(self.ties)}
        return save_tensors(path, tensors, format=_FORMAT, metadata={"dress": json.dumps(meta)})

    def summary(self) -> str:
        acc, loss, effect = (self.scores[k] for k in ("val_accuracy", "val_loss", "effect"))
        lines = [
            f"DRESS: {len(self.heads)} heads, alpha {self.alpha}, beta {self.beta}, "
            f"clamp {self.clamp}, K {self.ranks}\nprobe ties: {self.ties}"
        ] + [
            f"  L{i:>2}H{j}: val acc {float(acc[i, j]):.3f}, val loss {float(loss[i, j]):.3f}, "
            f"effect {float(effect[i, j]):.2f}, |v| {v.norm():.3f}"
            for (i, j), v in zip(self.heads, self.vectors, strict=True)
        ]
        choice = self.config.get("alpha_choice")
        if choice is not None:
            lines.append(
                f"alpha auto: {choice['alpha']} (largest whose fluency drop on "
                f"{choice['validation_pairs']} validation pairs is <= {choice['fluency_budget']} "
                f"and whose style margin beats alpha 0; within budget: {choice['within_budget']})"
            )
            lines += [
                f"  alpha {r['alpha']:<5g} fluency {r['fluency']:.4f}  style {r['style']:+.4f}"
                for r in choice["grid"]
            ]
        return "\n".join(lines)


def load(path: str | os.PathLike) -> DressFit:
    """Load a fit saved with ``DressFit.save``."""
    tensors, metadata = load_tensors(path, format=_FORMAT)
    meta = json.loads(metadata["dress"])
    scores = {k.removeprefix("scores/"): v for k, v in tensors.items() if k.startswith("scores/")}
    fields = {name: meta[name] for name in _SAVED_FIELDS} | {
        "heads": [tuple(h) for h in meta["heads"]],  # JSON gives lists back
        "clamp": None if meta["clamp"] is None else tuple(meta["clamp"]),
    }
    return DressFit(
        **fields,
        **{name: tensors[name] for name in _SAVED_TENSORS},
        scores=scores,
        ties=Ties(**meta["ties"]),
    )


# --- fitting --------------------------------------------------------------------------------------


def _flat(acts: Float[Tensor, "n layers heads d"]) -> Float[Tensor, "n probes d"]:
    return rearrange(acts.float(), "n l h d -> n (l h) d")


def _edit_at(
    styled: Float[Tensor, "pairs layers heads d"],
    plain: Float[Tensor, "pairs layers heads d"],
    heads: list[tuple[int, int]],
    rank: Rank,
    vectors: str,
) -> dict:
    """The per-head fields of a ``DressFit`` at ``heads`` (steps 3 and 5)."""
    index = [layer * styled.shape[2] + head for layer, head in heads]
    s, p = _flat(styled)[:, index], _flat(plain)[:, index]
    diffs = s - p
    mean = diffs.mean(0)
    bases = [style_subspace(diffs[:, j], rank, s.shape[-1], mean[j]) for j in range(len(index))]
    return {
        "heads": heads,
        "direction": _directions(s, p, vectors),
        "basis": pad_sequence(bases, batch_first=True),  # zero rows pad the smaller subspaces
        "ranks": [b.shape[0] for b in bases],
        "styled_mean": s.mean(0),
    }


def _check_differences(
    styled: Float[Tensor, "pairs layers heads d"], plain: Float[Tensor, "pairs layers heads d"]
) -> None:
    for name, acts in (("styled", styled), ("plain", plain)):
        if not bool(torch.isfinite(acts).all()):
            raise ValueError(f"the {name} activations hold NaN or infinite values")
    if not bool((styled.double().mean(0) - plain.double().mean(0)).any()):
        raise ValueError(
            "the styled and plain activations have the same mean at every head (zero "
            "mean-difference vectors): there is no style to steer towards; check that the "
            "styled and plain answers differ"
        )


def _warn_if_chance(val_accuracy: Float[Tensor, " probes"], n_val_pairs: int) -> None:
    """Warn when even the best probe is within two standard errors of a coin flip on the
    validation samples: the ranking, and so the selected heads, are then arbitrary."""
    best, samples = float(val_accuracy.max()), 2 * n_val_pairs
    noise = 1 / math.sqrt(samples)  # 2 x the standard error of a coin's accuracy
    if best <= 0.5 + noise:
        warnings.warn(
            f"the best probe's validation accuracy is {best:.3f} on {samples} samples, within "
            f"chance (0.5 + {noise:.3f}): no head tells styled from plain, so the selected "
            "heads are arbitrary; use more triples, answers that differ more in style, or a "
            "stronger model",
            stacklevel=3,
        )


def fit_activations(
    styled: Float[Tensor, "pairs layers heads d"],
    plain: Float[Tensor, "pairs layers heads d"],
    num_heads: int = 16,
    alpha: float = 3.0,
    *,
    options: Options = DEFAULT_OPTIONS,
    keep_activations: bool = True,
) -> DressFit:
    """Steps 2-5 of DRESS from captured activations (``fit`` = capture + this)."""
    if styled.shape != plain.shape or styled.ndim != 4:
        raise ValueError(
            "styled and plain activations must both be [pairs, layers, heads, d_head], got "
            f"{tuple(styled.shape)} and {tuple(plain.shape)}"
        )
    n, n_layers, n_heads, d_head = styled.shape
    num_heads, alpha = _checked(num_heads, alpha, options, n_layers * n_heads)
    if alpha == AUTO:
        raise ValueError(
            "alpha='auto' scores the model on the validation pairs: call dress.fit, or give a "
            "number here and then dress.choose_alpha(fit, model, tokenizer, triples)"
        )
    _check_differences(styled, plain)
    o = options
    paired = probe_pairs(
        _flat(styled), _flat(plain), val_ratio=o.val_ratio, seed=o.seed, c=o.probe_c
    )
    ranking = paired.ranking
    _warn_if_chance(ranking.val_accuracy, len(paired.val))
    heads = [divmod(i, n_heads) for i in ranking.top(num_heads)]

    def grid(values: Tensor) -> Tensor:
        return rearrange(values.float(), "(l h) -> l h", h=n_heads)

    return DressFit(
        **_edit_at(styled, plain, heads, o.rank, o.vectors),
        alpha=alpha,
        beta=o.beta,
        clamp=o.clamp,
        geometry={"n_layers": n_layers, "n_heads": n_heads, "d_head": d_head},
        scores={name: grid(getattr(ranking, name)) for name in SCORES},
        ties=ranking.ties(num_heads),
        config={"num_heads": num_heads, "vectors": o.vectors, "rank": o.rank.to_json()}
        | {"val_ratio": o.val_ratio, "seed": o.seed, "probe_c": o.probe_c, "n_pairs": n}
        | {"probe_iterations": paired.probes.n_iter, "probes_converged": paired.probes.converged},
        activations=(styled, plain) if keep_activations else None,
    )


def fit(
    model: nn.Module,
    tokenizer,
    triples: Sequence,
    num_heads: int = 16,
    alpha: float | str = AUTO,
    *,
    options: Options = DEFAULT_OPTIONS,
    batch_size: int = 16,
    progress: bool = True,
    distributed: bool | iv.distributed.World | None = None,
) -> DressFit:
    """Fit DRESS on (question, styled, plain) triples: capture (step 1), then
    ``fit_activations``, then for ``alpha="auto"`` ``choose_alpha`` on the options' grid and
    fluency budget. Every argument is checked before the first forward. Under ``torchrun`` the
    captures are shared out (``head_activations``) and every rank fits the same result."""
    triples = as_triples(triples)  # refuses, or warns about, identical styled and plain answers
    if len(triples) < 5:
        raise ValueError(f"DRESS needs at least 5 triples, got {len(triples)}")
    g = iv.geometry(model)
    _checked(num_heads, alpha, options, g.n_layers * g.n_heads)  # batch_size: text.batches
    world = iv.distributed.world(distributed)

    def heads_after(side: str) -> Tensor:
        texts = [format_prompt(tokenizer, t.question) + getattr(t, side) for t in triples]
        return head_activations(
            model, tokenizer, texts, batch_size=batch_size, progress=progress, distributed=world
        )

    styled, plain = heads_after("styled"), heads_after("plain")
    fitted = fit_activations(styled, plain, num_heads, 1.0 if alpha == AUTO else alpha,
                             options=options)  # fmt: skip
    if alpha != AUTO:
        return fitted
    return choose_alpha(
        fitted, model, tokenizer, triples, grid=options.alpha_grid,
        budget=options.fluency_budget, new_tokens=options.alpha_tokens, batch_size=batch_size,
    )  # fmt: skip


def choose_alpha(
    fit: DressFit,
    model: nn.Module,
    tokenizer,
    triples: Sequence,
    *,
    grid: Sequence[float] = DEFAULT_ALPHA_GRID,
    budget: float = 0.05,
    new_tokens: int = 16,
    batch_size: int = 16,
) -> DressFit:
    """``fit`` at the largest alpha of ``grid`` whose adaptive edit (the defaults of
    ``fit.adaptive``) keeps the fluency of greedy ``new_tokens``-token answers to the probes'
    validation questions within ``budget`` of the same heads at alpha 0, and raises the
    teacher-forced style margin of their reference answers over alpha 0
    (``evals.style.steered_scores``). ``triples`` are the ones ``fit`` was fitted on. With no
    such alpha it warns and takes the smallest. The grid's scores and the choice are in
    ``fit.config["alpha_choice"]`` (saved, and shown by ``summary``)."""
    grid, budget = _grid(grid), number("fluency_budget", budget, at_least=0)
    new_tokens = integer("new_tokens", new_tokens)
    triples = as_triples(triples)
    if len(triples) != fit.config.get("n_pairs"):
        raise ValueError(
            f"choose_alpha needs the {fit.config.get('n_pairs')} triples the fit was made on "
            f"(its validation pairs are indices into them), got {len(triples)}"
        )
    fit.check_model(model)
    _, val = split_pairs(len(triples), fit.config["val_ratio"], fit.config["seed"])
    held_out = [triples[i] for i in val.tolist()]
    prompts = [format_prompt(tokenizer, t.question) for t in held_out]

    def scored(alpha: float) -> dict[str, float]:
        scores = steered_scores(
            model, tokenizer, lambda: fit.with_alpha(alpha).adaptive(model), prompts,
            [t.styled for t in held_out], [t.plain for t in held_out], max_new_tokens=new_tokens,
            batch_size=batch_size, special=special_tokens(tokenizer),
        )  # fmt: skip
        return {"alpha": alpha, **scores.means()}

    rows = [scored(a) for a in (0.0, *grid)]
    base = rows[0]
    good = [
        r["alpha"]
        for r in rows[1:]
        if base["fluency"] - r["fluency"] <= budget and r["style"] > base["style"]
    ]
    if not good:
        warnings.warn(
            f"no alpha of {grid} keeps the validation fluency within {budget} of alpha 0 and "
            f"raises the style margin (grid in fit.summary()); took the smallest, {grid[0]}: "
            "give a smaller alpha_grid, a larger fluency_budget or an explicit alpha",
            stacklevel=2,
        )
    chosen = max(good) if good else grid[0]
    choice = {"alpha": chosen, "fluency_budget": budget, "validation_pairs": len(held_out)}
    choice |= {"new_tokens": new_tokens}
    choice |= {"within_budget": bool(good), "grid": rows}
    return replace(fit, alpha=chosen, config={**fit.config, "alpha_choice": choice})


def random_heads(fit: DressFit, seed: int = 0) -> DressFit:
    """Control: as many random unselected heads, each with its own mean-difference direction
    rescaled to the norm of the DRESS vector of the same rank, and its own style subspace.
    Needs the activations of a fresh fit (they are not saved)."""
    if fit.activations is None:
        raise ValueError("random_heads needs the activations of a fresh fit (not a loaded one)")
    styled, plain = fit.activations
    n_layers, n_heads = fit.geometry["n_layers"], fit.geometry["n_heads"]
    chosen = set(fit.heads)
    pool = [(lay, h) for lay in range(n_layers) for h in range(n_heads) if (lay, h) not in chosen]
    if len(pool) < len(fit.heads):
        raise ValueError("not enough unselected heads for a random control")
    picked = random.Random(seed).sample(pool, len(fit.heads))
    edit = _edit_at(styled, plain, picked, Rank(**fit.config["rank"]), "mean_diff")
    unit = edit["direction"] / edit["direction"].norm(dim=-1, keepdim=True).clamp_min(1e-30)
    edit["direction"] = unit * fit.direction.norm(dim=-1, keepdim=True)
    control = f"random heads, seed {seed}, matched norms"
    return replace(fit, **edit, config={**fit.config, "control": control})


# --- the paper's separate-forward variant ---------------------------------------------------------


def _decode_step(
    model: nn.Module, new: Int[Tensor, "b s"], mask: Int[Tensor, "b t"], past: object
) -> object:
    """One cached forward over the newest tokens, at positions counted from the mask."""
    return model(
        input_ids=new, attention_mask=mask, position_ids=text.positions(mask)[:, -new.shape[1] :],
        use_cache=True, **text.with_cache(model, past),
    )  # fmt: skip


@torch.no_grad()
def generate_separate(
    fit: DressFit,
    model: nn.Module,
    input_ids: Int[Tensor, "b t"],
    attention_mask: Int[Tensor, "b t"] | None = None,
    *,
    source_ids: Int[Tensor, "b s"] | None = None,
    source_mask: Int[Tensor, "b s"] | None = None,
    max_new_tokens: int = 32,
    beta: float | None = None,
    clamp: Clamp = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> Int[Tensor, "b t_out"]:
    """Greedy decoding with ``a_cur`` from a separate unsteered forward (the paper's
    ``generate_faster``) over ``source_ids`` (default: the prompt) plus the tokens generated so
    far; each forward has its own KV cache. Returns prompt + generated tokens like ``generate``.
    """
    fit.check_model(model)
    device = text.device_of(model)
    ids = input_ids.to(device)
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(device)
    if source_ids is None:
        src, src_mask = ids, mask
    else:
        src = source_ids.to(device)
        src_mask = torch.ones_like(src) if source_mask is None else source_mask.to(device)
    plan = fit.adaptive_plan(beta=beta, clamp=clamp, positions=None)
    new_src, new_ids, past_src, past = src, ids, None, None
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        with iv.capture(model, list(plan), positions=-1) as cache:
            past_src = text.returned_cache(_decode_step(model, new_src, src_mask, past_src))
        for site, steer in plan.items():
            steer.source = cache[site][:, list(steer.heads)]
        with iv.intervene(model, plan):
            out = _decode_step(model, new_ids, mask, past)
        past = text.returned_cache(out)
        token = out.logits[:, -1].argmax(-1)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        if eos_token_id is not None:
            finished |= token == eos_token_id
        ids = torch.cat([ids, token[:, None]], dim=1)
        ones = torch.ones_like(token[:, None])
        mask = torch.cat([mask, ones], dim=1)
        src_mask = torch.cat([src_mask, ones], dim=1)
        new_src = new_ids = token[:, None]
        if bool(finished.all()):
            break
    return ids


__all__ = [
    "DEFAULT_OPTIONS",
    "DEFAULT_RANK",
    "STYLE_INSTRUCTION",
    "AUTO",
    "DEFAULT_ALPHA_GRID",
    "AdaptiveSteer",
    "DressFit",
    "Options",
    "Rank",
    "Triple",
    "choose_alpha",
    "fit",
    "fit_activations",
    "format_prompt",
    "generate_separate",
    "head_activations",
    "load",
    "load_triples",
    "random_heads",
    "special_tokens",
    "style_subspace",
]
