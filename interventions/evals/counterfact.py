"""CounterFact-style evaluation of fact edits (Meng et al., "Locating and Editing Factual
Associations in GPT", NeurIPS 2022): the request format, its bundled data, and the metrics.

A request rewrites one fact: ``{prompt: "The Eiffel Tower is located in {}", subject: "The Eiffel
Tower", target_new: "Rome", target_true: "Paris"}``, with paraphrases of the prompt, prompts
about other subjects that share the true answer (the neighbourhood) and generation prompts.

- efficacy: P(target_new) > P(target_true) after the rewritten prompt;
- paraphrase: the same on the paraphrases (does the edit generalise?);
- neighbourhood specificity: P(target_true) > P(target_new) on the neighbours (is it local?);
- fluency: n-gram entropy of sampled continuations (does the model still write varied text?).

P is the per-token mean probability of a target. ``sequential`` edits in batches with any editor
(an object with ``edit(requests) -> WeightDelta``) and scores all edits made so far after each.

>>> requests = load_requests()                                  # the bundled 234 facts
>>> evaluate(model, tokenizer, requests[:10]).summary()         # efficacy, paraphrase, ...
"""

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import nn
from tqdm.auto import tqdm

import interventions as iv
from interventions import lm
from interventions.checks import integer
from interventions.text import encode_continuation

log = logging.getLogger("interventions.evals.counterfact")

DATA = Path(__file__).resolve().parent.parent / "data"
BUNDLED_REQUESTS = DATA / "counterfact_small.json"


# --- requests ----------------------------------------------------------------------------------


class RequestError(ValueError):
    """A request that cannot be edited or scored; the message names the request and field."""


@dataclass(frozen=True)
class Request:
    """One fact to rewrite, CounterFact style.

    ``prompt`` holds one ``{}`` for the subject; paraphrase and neighbourhood prompts are full
    strings. Targets are words; the separating space is added when the text is built.
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    case_id: int | str | None = None

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject, 1)

    @property
    def subject_start(self) -> int:
        return self.prompt.index("{}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def as_request(record: Any, where: str = "request") -> Request:
    """Validate one request: a ``Request``, a flat dict, or a CounterFact record
    (``requested_rewrite`` with ``target_new: {"str": ...}``)."""
    if isinstance(record, Request):
        _check_request(record, where)
        return record
    if not isinstance(record, Mapping):
        raise RequestError(f"{where}: expected a dict or Request, got {type(record).__name__}")
    rewrite = record.get("requested_rewrite", record)
    if not isinstance(rewrite, Mapping):
        raise RequestError(f"{where}: 'requested_rewrite' must be a dict")

    def text(key: str, required: bool) -> str | None:
        value = rewrite.get(key)
        if isinstance(value, Mapping):  # CounterFact {"str": ..., "id": ...}
            value = value.get("str")
        if value is None:
            if required:
                raise RequestError(f"{where}: field {key!r} is missing")
            return None
        if not isinstance(value, str):
            raise RequestError(f"{where}: field {key!r} must be a string, got {value!r}")
        return value

    def strings(key: str) -> tuple[str, ...]:
        value = record.get(key, rewrite.get(key, ()))
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise RequestError(f"{where}: field {key!r} must be a list of strings")
        return tuple(value)

    request = Request(
        prompt=text("prompt", True),
        subject=text("subject", True),
        target_new=text("target_new", True),
        target_true=text("target_true", False),
        paraphrase_prompts=strings("paraphrase_prompts"),
        neighborhood_prompts=strings("neighborhood_prompts"),
        generation_prompts=strings("generation_prompts"),
        case_id=record.get("case_id"),
    )
    _check_request(request, where)
    return request


def _check_request(r: Request, where: str) -> None:
    for name in ("prompt", "subject", "target_new", "target_true"):
        value = getattr(r, name)
        if not isinstance(value, str) and (value is not None or name != "target_true"):
            raise RequestError(f"{where}: field {name!r} must be a string, got {value!r}")
    if r.prompt.count("{}") != 1:
        fix = ""
        if r.subject.strip() and r.subject in r.prompt:
            fix = f" (it holds the subject itself: write '{{}}' in place of {r.subject!r})"
        raise RequestError(
            f"{where}: prompt {r.prompt!r} must contain exactly one '{{}}' where the subject "
            f"goes{fix}"
        )
    if not r.subject.strip():
        raise RequestError(f"{where}: subject is empty: give the text that '{{}}' stands for")
    for name in ("target_new", "target_true"):
        target = getattr(r, name)
        if target is not None and not target.strip():
            raise RequestError(
                f"{where}: {name} is empty ({target!r}): give the word(s) that should follow "
                "the prompt, e.g. 'Rome' (the space before them is added)"
            )
    if r.target_true is not None and r.target_true.strip() == r.target_new.strip():
        raise RequestError(f"{where}: target_new and target_true are both {r.target_new!r}")


def as_requests(records: Iterable[Any]) -> list[Request]:
    """Validate a list of requests (``as_request`` on each, named by index); never empty."""
    if isinstance(records, (str, Path, Mapping, Request)):
        raise TypeError("requests is a list of requests; read a file with load_requests(path)")
    requests = [as_request(record, f"requests[{i}]") for i, record in enumerate(records)]
    if not requests:
        raise RequestError("no requests given")
    return requests


def load_requests(path: str | os.PathLike | None = None) -> list[Request]:
    """Read requests from a JSON array (default: the bundled ``counterfact_small.json``)."""
    path = Path(path) if path is not None else BUNDLED_REQUESTS
    if not path.is_file():
        raise FileNotFoundError(f"request file {path} does not exist")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise RequestError(f"{path}: expected a JSON array of requests")
    return [as_request(record, f"{path}[{i}]") for i, record in enumerate(data)]


# --- scoring targets -----------------------------------------------------------------------------


def target_logprobs(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
) -> list[float]:
    """Mean log-probability per token of each ``target`` after its ``prompt`` (CounterFact's P),
    with the text written as an edit writes it: ``prompt.rstrip() + " " + target.strip()``.
    ``names[i]`` is how an error names pair i (default ``pairs[i]``)."""
    continuations = []
    for i, (prompt, target) in enumerate(pairs):
        pair = (prompt.rstrip(), " " + target.strip())
        try:  # the request's own error, before any forward
            encode_continuation(tokenizer, *pair)
        except ValueError as error:
            name = names[i] if names else f"pairs[{i}]"
            raise RequestError(f"{name}: the target {target!r} of {pair[0]!r}: {error}") from None
        continuations.append(pair)
    scores = lm.continuation_logprobs(model, tokenizer, continuations, batch_size=batch_size)
    return scores.tolist()


# --- metrics -------------------------------------------------------------------------------------


@dataclass
class Scores:
    """CounterFact metrics. Rates are fractions in [0, 1]; ``*_diff`` are mean probability
    differences (new − true for efficacy / paraphrase, true − new for neighbourhood)."""

    per_record: list[dict[str, Any]]
    efficacy: float
    paraphrase: float
    neighborhood: float
    efficacy_diff: float
    paraphrase_diff: float
    neighborhood_diff: float
    fluency: float | None
    n: int

    def summary(self) -> dict[str, float | int | None]:
        return {k: v for k, v in asdict(self).items() if k != "per_record"}

    def head(self, n: int) -> "Scores":
        """The scores of the first ``n`` records alone (e.g. the unedited model on the edits made
        so far, to compare with ``sequential``'s rows)."""
        if not 0 < n <= self.n:
            raise ValueError(f"n must be in 1..{self.n}, got {n}")
        return scores_from_records(self.per_record[:n], fluency=self.fluency is not None)


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    records: Iterable[Any],
    *,
    fluency: bool = True,
    max_new_tokens: int = 40,
    batch_size: int = 16,
    seed: int = 0,
) -> Scores:
    """Efficacy (P(new) > P(true) after the prompt), paraphrase (same on the paraphrases),
    neighbourhood specificity (P(true) > P(new) on other subjects' prompts with the same true
    answer), probability differences, and fluency (n-gram entropy of sampled continuations of the
    generation prompts, or of the prompt). P is the per-token mean probability of a target."""
    requests = as_requests(records)
    missing = [i for i, r in enumerate(requests) if r.target_true is None]
    if missing:
        raise RequestError(f"requests {missing[:5]} have no target_true: cannot score them")
    integer("max_new_tokens", max_new_tokens)
    integer("seed", seed, minimum=None)
    pairs: list[tuple[str, str]] = []
    names: list[str] = []
    index: list[tuple[int, str]] = []
    for i, r in enumerate(requests):
        groups = (
            ("rewrite", [r.text]),
            ("paraphrase", r.paraphrase_prompts),
            ("neighborhood", r.neighborhood_prompts),
        )
        for kind, prompts in groups:
            for prompt in prompts:
                pairs += [(prompt, r.target_new), (prompt, r.target_true)]
                names += [f"requests[{i}] ({kind}, {t})" for t in ("target_new", "target_true")]
                index.append((i, kind))
    scores = target_logprobs(model, tokenizer, pairs, batch_size=batch_size, names=names)
    per = [
        {"case_id": r.case_id, "rewrite": [], "paraphrase": [], "neighborhood": []}
        for r in requests
    ]
    for k, (i, kind) in enumerate(index):
        per[i][kind].append((scores[2 * k], scores[2 * k + 1]))
    if fluency:
        prompts = [p for r in requests for p in (r.generation_prompts or (r.text,))]
        owners = [i for i, r in enumerate(requests) for _ in (r.generation_prompts or (r.text,))]
        texts = lm.generate_texts(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, sample=True, seed=seed
        )
        for i, text in zip(owners, texts, strict=True):
            per[i].setdefault("generations", []).append(text)
        for record in per:
            entropies = [lm.n_gram_entropy(t) for t in record["generations"]]
            record["fluency"] = sum(entropies) / len(entropies)
    return scores_from_records(per, fluency=fluency)


def _rate(per: Sequence[Mapping[str, Any]], kind: str, new_wins: bool) -> tuple[float, float]:
    hits, diffs = [], []
    for record in per:
        for new, true in record[kind]:
            pn, pt = math.exp(new), math.exp(true)
            hits.append(float((new > true) == new_wins))
            diffs.append(pn - pt if new_wins else pt - pn)
    return (sum(hits) / len(hits), sum(diffs) / len(diffs)) if hits else (math.nan, math.nan)


def scores_from_records(per: list[dict[str, Any]], *, fluency: bool) -> Scores:
    """The metrics of ``evaluate`` from its per-record log-probabilities (and fluencies)."""
    efficacy, efficacy_diff = _rate(per, "rewrite", True)
    paraphrase, paraphrase_diff = _rate(per, "paraphrase", True)
    neighborhood, neighborhood_diff = _rate(per, "neighborhood", False)
    mean_fluency = sum(r["fluency"] for r in per) / len(per) if fluency and per else None
    return Scores(
        per,
        efficacy,
        paraphrase,
        neighborhood,
        efficacy_diff,
        paraphrase_diff,
        neighborhood_diff,
        mean_fluency,
        len(per),
    )


def filter_known(model: nn.Module, tokenizer: Any, records: Iterable[Any]) -> list[Request]:
    """The requests whose rewrite prompt the model answers with target_true over target_new
    (how the bundled data set was filtered)."""
    requests = as_requests(records)
    pairs = [(r.text, t) for r in requests for t in (r.target_true, r.target_new)]
    scores = target_logprobs(model, tokenizer, pairs)
    return [r for i, r in enumerate(requests) if scores[2 * i] > scores[2 * i + 1]]


# --- sequential editing --------------------------------------------------------------------------


class Edits(Protocol):
    """What ``sequential`` edits with: anything that writes a batch of requests into the model
    and returns the applied ``WeightDelta`` (e.g. ``alphaedit.Editor``)."""

    def edit(self, requests: Iterable[Any]) -> iv.WeightDelta: ...


@dataclass
class SequentialRun:
    """Metrics after each batch (on all edits so far), the editor, and the combined delta."""

    rows: list[dict[str, Any]]
    editor: Edits
    delta: iv.WeightDelta


def sequential(
    model: nn.Module,
    tokenizer: Any,
    records: Iterable[Any],
    editor: Edits,
    *,
    batch_size: int = 10,
    fluency: bool = False,
    progress: bool = True,
    label: str = "edit",
) -> SequentialRun:
    """Edit ``records`` in batches of ``batch_size`` with ``editor``; after each batch, score all
    edits so far. The model stays edited: ``run.delta.revert(model)`` undoes every batch; a
    failure or interrupt midway reverts the batches already written and re-raises."""
    batch_size = integer("batch_size", batch_size)
    requests = as_requests(records)
    deltas: list[iv.WeightDelta] = []
    rows = []
    started = time.perf_counter()
    batches = range(0, len(requests), batch_size)
    try:
        for start in tqdm(batches, desc=f"{label} batches", disable=not progress):
            deltas.append(editor.edit(requests[start : start + batch_size]))
            done = requests[: start + batch_size]
            scores = evaluate(model, tokenizer, done, fluency=fluency)
            rows.append(
                {"edits": len(done), "seconds": time.perf_counter() - started} | scores.summary()
            )
            log.info("%s after %d edits: %s", label, len(done), rows[-1])
    except BaseException:
        for delta in reversed(deltas):
            delta.revert(model)
        raise
    return SequentialRun(rows, editor, iv.WeightDelta.combine(deltas))


__all__ = [
    "BUNDLED_REQUESTS",
    "Edits",
    "Request",
    "RequestError",
    "Scores",
    "SequentialRun",
    "as_request",
    "as_requests",
    "evaluate",
    "filter_known",
    "load_requests",
    "scores_from_records",
    "sequential",
    "target_logprobs",
]
