"""DRESS: steer a few attention heads towards a style, with an adaptive per-token strength.

Paper: Ma et al., "DRESSing Up LLM: Efficient Stylized Question-Answering via Style Subspace
Editing", ICLR 2025; on top of Inference-Time Intervention (ITI; Li et al., 2023).

Algorithm, from triples (question, styled answer, plain answer):

1. ``layers.*.attn.heads`` at the last token of "prompt(question) + answer", styled and plain.
2. Split the *pairs* (``val_ratio`` 0.2, ``seed`` 42); one logistic probe per head, all heads
   at once (``interventions.probes``); rank by validation accuracy, then validation log-loss,
   then effect size; keep the top ``num_heads``.
3. Vector per head ``v = alpha · (mean styled − mean plain)`` (``vectors="iti"``: ITI's unit
   mass-mean direction × alpha × std of the projections).
4. Static edit: ``v`` baked into ``o_proj.bias = W_o · v`` (``fit.bake``), or added at run time
   at chosen positions (``fit.static``).
5. Style subspace per head: the top-K right singular vectors ``V`` of the per-pair differences
   ``styled_i − plain_i``; K a count, a fraction of d_head or a variance share (``Rank``).
6. Adaptive rule per head and position: ``w = V v``, ``w_cur = V a_cur``, ``w_tgt = V
   mean(styled)``, ``w ← w ⊙ (1 + β · sign(w) ⊙ (w_tgt − w_cur))`` (optional clamp), and the
   head gets ``a_cur + Vᵀ w``. ``a_cur`` is read before steering in the same forward (one
   forward per token, KV cache on); ``generate_separate`` is the paper's variant that reads it
   from a separate unsteered forward.

Usage::

    from interventions.recipes import dress
    triples = dress.load_triples("train")                      # bundled Shakespeare set
    fit = dress.fit(model, tokenizer, triples, num_heads=16, alpha=3.0)
    delta = fit.bake(model); delta.revert(model)               # static edit in o_proj.bias
    with fit.adaptive(model):                                  # per-token subspace rule
        model.generate(**inputs)
    fit.save("dress.safetensors"); fit = dress.load("dress.safetensors")

The paper's metrics are ``interventions.evals.style`` (``Embedder``, ``StyleJudge``, ``Scores``
and ``semantic_preservation`` are re-exported here; ``score_answers`` here takes questions).
"""

import json
import math
import numbers
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

import interventions as iv
from interventions import lm, text
from interventions.checks import integer, number
from interventions.evals import style
from interventions.evals.style import Embedder, Scores, StyleJudge, semantic_preservation
from interventions.ops import Positions
from interventions.probes import Ties, probe_pairs
from interventions.weights import load_tensors, save_tensors

_FORMAT = "interventions.dress/1"
_SAVED_TENSORS = ("direction", "basis", "styled_mean")  # and the probe scores
_SAVED_FIELDS = ("heads", "ranks", "alpha", "beta", "clamp", "geometry", "config")  # and ties
TRIPLE_FIELDS = ("question", "styled", "plain")
STYLE_INSTRUCTION = (
    "Answer in the style of Shakespeare, in Early Modern English (thee, thou, doth, hath)."
)
VECTOR_KINDS = ("mean_diff", "iti")
SCORES = ("val_accuracy", "val_loss", "effect", "train_accuracy")  # per head, of the probes


# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Triple:
    """One question with an answer in the target style and a plain answer."""

    question: str
    styled: str
    plain: str


def load_triples(split: str = "train", path: str | os.PathLike | None = None) -> list[Triple]:
    """Triples from a JSONL file (default: the bundled Shakespeare set, 257 triples).

    ``split`` is ``"train"`` (217), ``"test"`` (40 held-out questions) or ``"all"``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    bundled = resources.files("interventions.data").joinpath("dress_shakespeare.jsonl")
    content = bundled.read_text() if path is None else Path(path).read_text()
    triples = []
    for line_number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = set(TRIPLE_FIELDS) - set(row)
        if missing:
            raise ValueError(f"line {line_number} of the triples file lacks {sorted(missing)}")
        if split == "all" or row.get("split", "train") == split:
            triples.append(Triple(*(row[k] for k in TRIPLE_FIELDS)))
    return triples


def _as_triple(t: object, index: int) -> Triple:
    """One triple from a ``Triple``, a dict with ``TRIPLE_FIELDS`` or a 3-tuple; errors name
    the triple's index, the field and what was expected."""
    expected = f"a Triple, a dict with keys {list(TRIPLE_FIELDS)} or a (question, styled, plain)"
    if isinstance(t, Triple):
        fields = (t.question, t.styled, t.plain)
    elif isinstance(t, Mapping):
        missing = [k for k in TRIPLE_FIELDS if k not in t]
        if missing:
            raise ValueError(
                f"triples[{index}] has no key {missing[0]!r}: a triple dict needs the keys "
                f"{list(TRIPLE_FIELDS)}, got {sorted(t)}"
            )
        fields = tuple(t[k] for k in TRIPLE_FIELDS)
    elif isinstance(t, (tuple, list)) and len(t) == 3:
        fields = tuple(t)
    else:
        raise TypeError(f"triples[{index}] must be {expected} tuple, got {t!r}")
    for name, value in zip(TRIPLE_FIELDS, fields, strict=True):
        if not isinstance(value, str):
            raise TypeError(
                f"triples[{index}].{name} must be a string, got {value!r} ({type(value).__name__})"
            )
    return Triple(*fields)


def _as_triples(triples: Sequence) -> list[Triple]:
    out = [_as_triple(t, i) for i, t in enumerate(triples)]
    if len(out) < 5:
        raise ValueError(f"DRESS needs at least 5 triples, got {len(out)}")
    same = [i for i, t in enumerate(out) if t.styled == t.plain]
    if len(same) == len(out):
        raise ValueError(
            f"the styled and plain answers are identical in all {len(out)} triples: DRESS learns "
            "the difference between them; give each question a styled and a plain answer"
        )
    if same:
        warnings.warn(
            f"{len(same)} of {len(out)} triples have identical styled and plain answers "
            f"(triples {same[:5]}): they add nothing to learn from",
            stacklevel=3,
        )
    return out


# --- prompts and activations ----------------------------------------------------------------------


def format_prompt(tokenizer, question: str, *, instruction: str | None = None) -> str:
    """The generation prompt for ``question``: the chat template if the tokenizer has one."""
    content = question if instruction is None else f"{instruction}\n\n{question}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return f"Question: {content}\nAnswer:"


def _special(tokenizer) -> bool:
    """Add the tokenizer's special tokens, except to a chat template's text (it has its own)."""
    return not getattr(tokenizer, "chat_template", None)


HEADS = "layers.*.attn.heads"


@torch.no_grad()
def head_activations(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> Float[Tensor, "n layers heads d_head"]:
    """``layers.*.attn.heads`` at each text's last token (float32, CPU): left-padded batches,
    each forward stopped once the last layer's heads are captured."""
    rows, pad_with = [], text.pad_id(tokenizer)
    for chunk in text.batches(texts, batch_size, desc="attn.heads", progress=progress):
        ids = [text.token_ids(tokenizer, t, special=_special(tokenizer)) for t in chunk]
        batch = text.pad(ids, pad_with, "left").to(model)
        with iv.capture(model, HEADS, positions=-1, device="cpu", stop=True) as cache:
            model(**batch.inputs(model))
        rows.append(cache.stack(HEADS, dim=1).float())
    return torch.cat(rows, dim=0)


# --- the style subspace ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rank:
    """Size K of each head's style subspace: give exactly one of the three.

    ``count``: K itself; ``fraction``: K = round(fraction · d_head) (the paper's K = 64 at
    d_head = 128 is ``fraction=0.5``); ``variance``: the smallest K whose singular values explain
    that share of the squared norm of the differences.
    """

    count: int | None = None
    fraction: float | None = None
    variance: float | None = None

    def __post_init__(self) -> None:
        given = [v is not None for v in (self.count, self.fraction, self.variance)]
        if sum(given) != 1:
            raise ValueError("Rank takes exactly one of count=, fraction=, variance=")
        if self.count is not None:
            integer("Rank count", self.count)
        for name in ("fraction", "variance"):
            if getattr(self, name) is not None:
                number(f"Rank {name} (a share in (0, 1])", getattr(self, name), above=0, at_most=1)

    def resolve(self, singular_values: Float[Tensor, " m"], d_head: int) -> int:
        """K for one head, at most the number of singular vectors available."""
        available = len(singular_values)
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
        return min(k, available)

    def to_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


DEFAULT_RANK = Rank(fraction=0.5)


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
    """Unscaled steering vectors (alpha multiplies them later); ``kind`` is checked by
    ``_checked_options``."""
    diff = styled.double().mean(0) - plain.double().mean(0)
    if kind == "mean_diff":
        return diff.float()
    unit = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    both = torch.cat([styled, plain], dim=0).double()
    std = einsum(both, unit, "n k d, k d -> n k").std(0)  # ITI: std of the projections
    return (unit * std[:, None]).float()


def _checked_clamp(clamp: object) -> tuple[float, float] | None:
    """None, or ``(low, high)`` with low <= high (an infinite bound clamps one side only)."""
    if clamp is None:
        return None
    if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
        raise TypeError(f"clamp must be None or (low, high), got {clamp!r}")
    low = number("clamp[0] (low)", clamp[0], infinite=True)
    high = number("clamp[1] (high)", clamp[1], infinite=True)
    if low > high:
        raise ValueError(f"clamp must be (low, high) with low <= high, got {tuple(clamp)}")
    return low, high


def _checked_options(
    num_heads: object,
    alpha: object,
    beta: object,
    clamp: object,
    rank: object,
    vectors: object,
    probes: tuple[object, object, object],
    total_heads: int,
) -> tuple[int, float, float, tuple[float, float] | None, Rank]:
    """The options of ``fit`` / ``fit_activations``, checked before any work: ``probes`` is
    (val_ratio, seed, probe_c). Returns (num_heads, alpha, beta, clamp, rank)."""
    num_heads = integer("num_heads", num_heads)
    if num_heads > total_heads:
        raise ValueError(
            f"num_heads must be in 1..{total_heads} (layers x heads of the model), got {num_heads}"
        )
    if vectors not in VECTOR_KINDS:
        raise ValueError(f"vectors must be one of {VECTOR_KINDS}, got {vectors!r}")
    if isinstance(rank, bool) or not isinstance(rank, (Rank, numbers.Integral)):
        raise TypeError(f"rank must be a Rank or an integer count, got {rank!r}")
    val_ratio, seed, probe_c = probes
    number("val_ratio", val_ratio, above=0, below=1)
    integer("seed", seed, minimum=None)
    number("probe_c", probe_c, above=0)
    return (
        num_heads,
        number("alpha", alpha),
        number("beta", beta, at_least=0),
        _checked_clamp(clamp),
        rank if isinstance(rank, Rank) else Rank(count=int(rank)),
    )


# --- the adaptive intervention --------------------------------------------------------------------


class AdaptiveSteer(iv.Intervention):
    """DRESS's per-token rule at one layer's selected heads (site ``layers.{i}.attn.heads``).

    ``forward`` gets ``a_cur`` = the heads' activations before steering ``[..., heads, d_head]``
    and returns ``a_cur + Vᵀ (w ⊙ factor)`` with ``factor = 1 + β·sign(w)·(w_tgt − V a_cur)``,
    optionally clamped to ``clamp = (low, high)``. Rows of ``basis`` that are all zero pad
    heads with a smaller subspace and contribute nothing. If ``source`` is set (``[batch,
    heads, d_head]``), it replaces ``a_cur`` in the factor (the separate-forward variant).
    """

    def __init__(
        self,
        vectors: Float[Tensor, "heads d"],
        basis: Float[Tensor, "heads k d"],
        styled_mean: Float[Tensor, "heads d"],
        *,
        beta: float = 0.5,
        clamp: tuple[float, float] | None = None,
        heads: Sequence[int],
        positions: Positions = None,
    ):
        super().__init__(heads=heads, positions=positions)
        if basis.ndim != 3 or vectors.shape != (basis.shape[0], basis.shape[2]):
            raise ValueError(
                f"AdaptiveSteer: vectors {tuple(vectors.shape)} and basis "
                f"{tuple(basis.shape)} must be [heads, d] and [heads, k, d]"
            )
        if len(heads) != basis.shape[0]:
            raise ValueError(f"{len(heads)} heads but {basis.shape[0]} subspaces")
        clamp = _checked_clamp(clamp)
        beta = number("beta", beta, at_least=0)
        self.register_buffer("basis", basis.detach().float().clone())
        self.register_buffer("w", einsum(self.basis, vectors.float(), "h k d, h d -> h k"))
        self.register_buffer(
            "w_target", einsum(self.basis, styled_mean.float(), "h k d, h d -> h k")
        )
        self.beta = float(beta)
        self.clamp = clamp
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
    clamp: tuple[float, float] | None
    geometry: dict[str, int]  # n_layers, n_heads, d_head of the model it was fitted on
    scores: dict[str, Float[Tensor, "layers heads"]]  # val_accuracy, val_loss, effect, ...
    ties: Ties
    config: dict = field(default_factory=dict)
    activations: tuple[Tensor, Tensor] | None = field(default=None, repr=False)  # not saved

    # --- derived values ---------------------------------------------------------------------------
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

    def check_model(self, model: nn.Module) -> None:
        g = iv.geometry(model)
        found = {"n_layers": g.n_layers, "n_heads": g.n_heads, "d_head": g.d_head}
        if found != self.geometry:
            raise ValueError(
                f"this DRESS fit was made for a model with {self.geometry}, this one has {found}"
            )

    # --- static edit ------------------------------------------------------------------------------
    def plan(self, positions: Positions = None) -> dict[str, iv.Intervention]:
        """``{layers.i.attn.heads: AddBias(vectors, heads=[...])}``: the static edit."""
        vectors = self.vectors
        return {
            f"layers.{layer}.attn.heads": iv.AddBias(
                vectors[rows], heads=heads, positions=positions
            )
            for layer, (heads, rows) in self.by_layer().items()
        }

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

    # --- adaptive edit ----------------------------------------------------------------------------
    def adaptive_plan(
        self,
        *,
        beta: float | None = None,
        clamp: tuple[float, float] | None = None,
        positions: Positions = None,
    ) -> dict[str, AdaptiveSteer]:
        """One ``AdaptiveSteer`` per layer with selected heads."""
        beta = self.beta if beta is None else beta
        clamp = self.clamp if clamp is None else clamp
        vectors = self.vectors
        return {
            f"layers.{layer}.attn.heads": AdaptiveSteer(
                vectors[rows],
                self.basis[rows],
                self.styled_mean[rows],
                beta=beta,
                clamp=clamp,
                heads=heads,
                positions=positions,
            )
            for layer, (heads, rows) in self.by_layer().items()
        }

    def adaptive(
        self,
        model: nn.Module,
        *,
        beta: float | None = None,
        clamp: tuple[float, float] | None = None,
        positions: Positions = None,
    ) -> AbstractContextManager[iv.Attachment]:
        """Attach the adaptive rule (``positions=None``: every position, like the paper's bias;
        ``"generated"``: generated tokens only). Works with ``generate`` and the KV cache."""
        self.check_model(model)
        return iv.intervene(model, self.adaptive_plan(beta=beta, clamp=clamp, positions=positions))

    # --- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file (written atomically): the tensors, and the rest as JSON."""
        tensors = {name: getattr(self, name) for name in _SAVED_TENSORS}
        tensors |= {f"scores/{k}": v for k, v in self.scores.items()}
        meta = {name: getattr(self, name) for name in _SAVED_FIELDS} | {"ties": vars(self.ties)}
        return save_tensors(path, tensors, format=_FORMAT, metadata={"dress": json.dumps(meta)})

    def summary(self) -> str:
        acc = self.scores["val_accuracy"]
        lines = [
            f"DRESS: {len(self.heads)} heads, alpha {self.alpha}, beta {self.beta}, "
            f"clamp {self.clamp}, K {self.ranks}",
            f"probe ties: {self.ties}",
        ]
        for (layer, head), vec in zip(self.heads, self.vectors, strict=True):
            lines.append(
                f"  L{layer:>2}H{head}: val acc {float(acc[layer, head]):.3f}, "
                f"val loss {float(self.scores['val_loss'][layer, head]):.3f}, "
                f"effect {float(self.scores['effect'][layer, head]):.2f}, |v| {vec.norm():.3f}"
            )
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


def _subspaces(
    styled: Float[Tensor, "pairs k d"], plain: Float[Tensor, "pairs k d"], rank: Rank
) -> tuple[Float[Tensor, "k r d"], list[int]]:
    d = styled.shape[-1]
    diffs = styled - plain
    mean_diff = diffs.mean(0)
    bases = [style_subspace(diffs[:, j], rank, d, mean_diff[j]) for j in range(styled.shape[1])]
    # zero rows pad the smaller subspaces: they contribute nothing
    return pad_sequence(bases, batch_first=True), [b.shape[0] for b in bases]


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
    beta: float = 0.5,
    clamp: tuple[float, float] | None = None,
    rank: Rank | int = DEFAULT_RANK,
    vectors: str = "mean_diff",
    val_ratio: float = 0.2,
    seed: int = 42,
    probe_c: float = 1.0,
    keep_activations: bool = True,
) -> DressFit:
    """Steps 2-5 of DRESS from captured activations (``fit`` = capture + this)."""
    if styled.shape != plain.shape or styled.ndim != 4:
        raise ValueError(
            "styled and plain activations must both be [pairs, layers, heads, d_head], got "
            f"{tuple(styled.shape)} and {tuple(plain.shape)}"
        )
    n, n_layers, n_heads, d_head = styled.shape
    num_heads, alpha, beta, clamp, rank = _checked_options(
        num_heads, alpha, beta, clamp, rank, vectors, (val_ratio, seed, probe_c), n_layers * n_heads
    )
    _check_differences(styled, plain)
    positive = rearrange(styled.float(), "n l h d -> n (l h) d")
    negative = rearrange(plain.float(), "n l h d -> n (l h) d")
    paired = probe_pairs(positive, negative, val_ratio=val_ratio, seed=seed, c=probe_c)
    ranking = paired.ranking
    _warn_if_chance(ranking.val_accuracy, len(paired.val))
    top = ranking.top(num_heads)
    sel_styled, sel_plain = positive[:, top], negative[:, top]
    basis, ranks = _subspaces(sel_styled, sel_plain, rank)

    def grid(values: Tensor) -> Tensor:
        return rearrange(values.float(), "(l h) -> l h", h=n_heads)

    return DressFit(
        heads=[divmod(i, n_heads) for i in top],
        direction=_directions(sel_styled, sel_plain, vectors),
        basis=basis,
        ranks=ranks,
        styled_mean=sel_styled.mean(0),
        alpha=alpha,
        beta=beta,
        clamp=clamp,
        geometry={"n_layers": n_layers, "n_heads": n_heads, "d_head": d_head},
        scores={name: grid(getattr(ranking, name)) for name in SCORES},
        ties=ranking.ties(num_heads),
        config={
            "num_heads": num_heads,
            "vectors": vectors,
            "rank": rank.to_json(),
            "val_ratio": val_ratio,
            "seed": seed,
            "probe_c": probe_c,
            "n_pairs": n,
            "probe_iterations": paired.probes.n_iter,
            "probes_converged": paired.probes.converged,
        },
        activations=(styled, plain) if keep_activations else None,
    )


def fit(
    model: nn.Module,
    tokenizer,
    triples: Sequence,
    num_heads: int = 16,
    alpha: float = 3.0,
    *,
    beta: float = 0.5,
    clamp: tuple[float, float] | None = None,
    rank: Rank | int = DEFAULT_RANK,
    vectors: str = "mean_diff",
    val_ratio: float = 0.2,
    seed: int = 42,
    probe_c: float = 1.0,
    batch_size: int = 16,
    progress: bool = True,
) -> DressFit:
    """Fit DRESS on (question, styled, plain) triples: capture, probe, select, vectors, SVD."""
    triples = _as_triples(triples)
    g = iv.geometry(model)
    _checked_options(
        num_heads, alpha, beta, clamp, rank, vectors, (val_ratio, seed, probe_c),
        g.n_layers * g.n_heads,
    )  # fmt: skip
    prompts = [format_prompt(tokenizer, t.question) for t in triples]
    styled, plain = (
        head_activations(
            model,
            tokenizer,
            [p + getattr(t, side) for p, t in zip(prompts, triples, strict=True)],
            batch_size=batch_size,
            progress=progress,
        )
        for side in ("styled", "plain")
    )
    return fit_activations(
        styled,
        plain,
        num_heads,
        alpha,
        beta=beta,
        clamp=clamp,
        rank=rank,
        vectors=vectors,
        val_ratio=val_ratio,
        seed=seed,
        probe_c=probe_c,
    )


def random_heads(fit: DressFit, seed: int = 0) -> DressFit:
    """Control: as many random heads (none of the selected ones), each with its own mean
    difference direction rescaled to the norm of the DRESS vector of the same rank, and its own
    style subspace. Needs the activations kept by ``fit`` (not saved to files)."""
    if fit.activations is None:
        raise ValueError("random_heads needs the activations of a fresh fit (not a loaded one)")
    styled, plain = fit.activations
    n_layers, n_heads = fit.geometry["n_layers"], fit.geometry["n_heads"]
    chosen = set(fit.heads)
    pool = [(lay, h) for lay in range(n_layers) for h in range(n_heads) if (lay, h) not in chosen]
    if len(pool) < len(fit.heads):
        raise ValueError("not enough unselected heads for a random control")
    picked = random.Random(seed).sample(pool, len(fit.heads))
    index = torch.tensor([lay * n_heads + h for lay, h in picked])
    positive = rearrange(styled.float(), "n l h d -> n (l h) d")[:, index]
    negative = rearrange(plain.float(), "n l h d -> n (l h) d")[:, index]
    direction = _directions(positive, negative, "mean_diff")
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    direction = direction * fit.direction.norm(dim=-1, keepdim=True)
    basis, ranks = _subspaces(positive, negative, Rank(**fit.config["rank"]))
    return replace(
        fit,
        heads=picked,
        direction=direction,
        basis=basis,
        ranks=ranks,
        styled_mean=positive.mean(0),
        config={**fit.config, "control": f"random heads, seed {seed}, matched norms"},
    )


# --- the paper's separate-forward variant ---------------------------------------------------------


def _decode_step(
    model: nn.Module, new: Int[Tensor, "b s"], mask: Int[Tensor, "b t"], past: object
) -> object:
    """One cached forward over the newest tokens, positions counted from the mask (as
    ``text.pad`` counts them), so that left padding does not shift them."""
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -new.shape[1] :]
    return model(
        input_ids=new, attention_mask=mask, position_ids=positions, past_key_values=past,
        use_cache=True,
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
    clamp: tuple[float, float] | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> Int[Tensor, "b t_out"]:
    """Greedy decoding where ``a_cur`` comes from a separate unsteered forward (the paper's
    ``generate_faster``): at each step an unsteered forward over the source sequence (default:
    the same prompt; the paper uses the question alone) plus the tokens generated so far gives
    the heads' activations at its last token; they set the adaptive factor of the steered
    forward, which adds the resulting vector at every position it computes. Both forwards use
    their own KV cache. Returns prompt + generated tokens like ``generate``.
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
            past_src = _decode_step(model, new_src, src_mask, past_src).past_key_values
        for site, steer in plan.items():
            steer.source = cache[site][:, list(steer.heads)]
        with iv.intervene(model, plan):
            out = _decode_step(model, new_ids, mask, past)
        past = out.past_key_values
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


# --- evaluation -----------------------------------------------------------------------------------


def generate_answers(
    model: nn.Module,
    tokenizer,
    questions: list[str],
    *,
    instruction: str | None = None,
    max_new_tokens: int = 40,
    batch_size: int = 20,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to ``questions`` in DRESS's prompt (``format_prompt``), stripped."""
    prompts = [format_prompt(tokenizer, q, instruction=instruction) for q in questions]
    answers = lm.generate_texts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        special=_special(tokenizer),
        progress=progress,
    )
    return [a.strip() for a in answers]


def score_answers(
    model: nn.Module,
    tokenizer,
    judge: StyleJudge,
    questions: list[str],
    answers: list[str],
    references: list[str],
) -> Scores:
    """``evals.style.score_answers`` of answers to ``questions``, each scored given its plain
    prompt (``format_prompt``, no instruction); ``model`` must be unedited."""
    prompts = [format_prompt(tokenizer, q) for q in questions]
    return style.score_answers(
        model, tokenizer, judge, prompts, answers, references, special=_special(tokenizer)
    )


__all__ = [
    "DEFAULT_RANK",
    "STYLE_INSTRUCTION",
    "AdaptiveSteer",
    "DressFit",
    "Embedder",
    "Rank",
    "Scores",
    "StyleJudge",
    "Triple",
    "fit",
    "fit_activations",
    "format_prompt",
    "generate_answers",
    "generate_separate",
    "head_activations",
    "load",
    "load_triples",
    "random_heads",
    "score_answers",
    "semantic_preservation",
    "style_subspace",
]
