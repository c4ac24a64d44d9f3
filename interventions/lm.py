"""What a language model says about text: one definition each, one name per meaning.

- ``final_hidden`` / ``unembed``: the final norm's output with the forward stopped there, and
  the logits of only the rows a caller scores (soft-caps and scales included).
- ``continuation_logprobs``: log p(continuation | prompt), per-token mean or sum.
- ``choice_margin``: log p(a) - log p(b) of the next token (``first_token``: the id it scores).
- ``perplexity``: sliding-window perplexity of a long text; ``token_cross_entropy`` its loss.
- ``logits``: a forward's logits, of the last columns only where the model allows it.
- ``generate_texts``: greedy or seeded top-k continuations; ``n_gram_entropy``: their variety.

Every function takes a ``plan`` (``{site: Intervention}``) where it makes sense, so a steered or
edited model is scored the same way as the plain one.

>>> from interventions import lm
>>> lm.continuation_logprobs(model, tokenizer, [("The Eiffel Tower is in", " Paris")])
>>> lm.choice_margin(model, tokenizer, ["Is the sky green? Answer:"], (" Yes", " No"))
"""

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

from interventions.adapters import Adapter, adapter, causal_lm
from interventions.attach import capture, intervene
from interventions.checks import integer, number
from interventions.ops import Intervention
from interventions.sites import SiteLike, expand
from interventions.text import (
    Batch,
    batches,
    device_of,
    encode_continuation,
    pad,
    pad_id,
    token_ids,
)

Plan = Mapping[SiteLike, Intervention]
REDUCTIONS = ("mean", "sum")


# --- the final hidden state and the unembedding ---------------------------------------------------


def final_hidden(
    model: nn.Module, batch: Batch, plan: Plan | None = None
) -> Float[Tensor, "b t d_model"]:
    """The output of the final norm for ``batch`` under ``plan``; the forward stops there, so
    the logits are never computed (unembed only the rows you score). Keeps the autograd graph
    when grad is enabled (e.g. to optimise an intervention in ``plan``)."""
    _refuse_logits_in(model, plan)
    with capture(model, "final_norm", keep_grad=True, plan=plan, stop=True) as cache:
        model(**batch.inputs(model))
    return cache["final_norm"]


def _refuse_logits_in(model: nn.Module, plan: Plan | None) -> None:
    n_layers = adapter(model).geometry(model.config).n_layers
    if plan and any(s.kind == "logits" for key in plan for s in expand(key, n_layers)):
        raise ValueError(
            "the plan edits 'logits', which these functions never compute (they unembed the "
            "final norm's output themselves); edit an earlier site such as final_norm"
        )


def unembed(model: nn.Module, hidden: Float[Tensor, "*rows d_model"]) -> Float[Tensor, "*rows v"]:
    """The logits of final-norm outputs: the unembedding, then what the model applies after it
    (Gemma 2's soft-cap, Cohere's logit_scale, Granite's logits_scaling), so that
    ``unembed(model, final_hidden(model, batch))`` equals ``model(...).logits``."""
    table = adapter(model)
    if table.unembed is None:  # renamed between releases: the model knows its own
        head = causal_lm(model).get_output_embeddings()
    else:
        head = table.module(model, table.unembed)
    logits = head(hidden)
    return _after_unembed(table, model.config, logits)


def _after_unembed(table: Adapter, config: Any, logits: Tensor) -> Tensor:
    for operation, attribute in table.logits_after:
        value = getattr(config, attribute, None)
        if value is None:
            continue
        if operation == "softcap":
            logits = torch.tanh(logits / value) * value
        elif operation == "multiply":
            logits = logits * value
        elif operation == "divide":
            logits = logits / value
        else:
            raise NotImplementedError(
                f"the adapter {table.name!r} asks for {operation!r} after the unembedding; "
                "lm.unembed knows softcap, multiply and divide"
            )
    return logits


def logits(
    model: nn.Module, batch: Batch, *, keep: int | None = None
) -> Float[Tensor, "b k vocab"]:
    """The logits of ``batch``: every column, or the last ``keep`` only (computed only there
    when the model takes ``logits_to_keep``)."""
    inputs = batch.inputs(model)
    if keep is None:
        return model(**inputs).logits
    keep = integer("keep", keep)
    try:
        # some releases' models take the keyword into **kwargs and return every column
        return model(**inputs, logits_to_keep=keep).logits[:, -keep:]
    except TypeError as error:  # older models compute every column's logits
        if "logits_to_keep" not in str(error):
            raise
        return model(**inputs).logits[:, -keep:]


# --- scoring text -------------------------------------------------------------------------------


def continuation_logprobs(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    plan: Plan | None = None,
    reduce: Literal["mean", "sum"] = "mean",
    special: bool = True,
    names: Sequence[str] | None = None,
) -> Float[Tensor, " n"]:
    """log p(continuation | prompt) of each ``(prompt, continuation)`` pair: the mean (or sum)
    over the continuation's tokens, float32 on the CPU. ``prompt + continuation`` is tokenized
    as one text and split by character offsets (``encode_continuation``), so put the space
    between them where running text has it (``("The sky is", " blue")``). Only the continuation's
    positions are unembedded. ``names[i]`` is how an error names pair i (default ``pairs[i]``)."""
    batch_size = integer("batch_size", batch_size)
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    pairs = _pairs(pairs)
    if names is not None and len(names) != len(pairs):
        raise ValueError(f"names must name each of the {len(pairs)} pairs, got {len(names)}")
    encoded = []
    for i, (prompt, continuation) in enumerate(pairs):
        try:
            encoded.append(encode_continuation(tokenizer, prompt, continuation, special=special))
        except ValueError as error:
            raise ValueError(f"{names[i] if names else f'pairs[{i}]'}: {error}") from None
    pad_with, out = pad_id(tokenizer), []
    with torch.no_grad():
        for part in batches(encoded, batch_size):
            batch = pad([e.ids[:-1] for e, _ in part], pad_with, "right").to(model)
            hidden = final_hidden(model, batch, plan)
            rows = [i for i, (_, span) in enumerate(part) for _ in span]
            columns = [j - 1 for _, span in part for j in span]  # the column predicting token j
            tokens = [e.ids[j] for e, span in part for j in span]
            logp = unembed(model, hidden[rows, columns]).float().log_softmax(-1)
            on = logp.device
            logp = logp.gather(1, torch.tensor(tokens, device=on)[:, None])[:, 0]
            total = torch.zeros(len(part), device=on).index_add(
                0, torch.tensor(rows, device=on), logp
            )
            if reduce == "mean":
                total = total / torch.tensor([len(span) for _, span in part], device=on)
            out.append(total.cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _pairs(pairs: object) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, Mapping)) or not isinstance(pairs, Sequence):
        raise TypeError(
            f"pairs must be a list of (prompt, continuation) string pairs, got "
            f"{type(pairs).__name__}"
        )
    out = []
    for i, pair in enumerate(pairs):
        if (
            isinstance(pair, str)
            or not isinstance(pair, Sequence)
            or len(pair) != 2
            or not all(isinstance(s, str) for s in pair)
        ):
            raise TypeError(
                f"pairs[{i}] must be a (prompt, continuation) pair of str, got {pair!r}"
            )
        out.append((pair[0], pair[1]))
    return out


def choice_margin(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    choices: tuple[str, str],
    *,
    batch_size: int = 16,
    plan: Plan | None = None,
) -> Float[Tensor, " n"]:
    """``log p(a) - log p(b)`` of the next token after each prompt, for ``choices = (a, b)``
    (each choice scored by its first token), float32 on the CPU."""
    if isinstance(choices, str) or not isinstance(choices, Sequence) or len(choices) != 2:
        raise TypeError(f"choices must be a pair of strings (a, b), got {choices!r}")
    a, b = (first_token(tokenizer, c, f"choices[{i}]") for i, c in enumerate(choices))
    if a == b:
        raise ValueError(f"choices {tuple(choices)!r} start with the same token ({a})")
    rows = _prompt_rows(tokenizer, _texts("prompts", prompts), special=True)
    pad_with, out = pad_id(tokenizer), []
    with torch.no_grad():
        for chunk in batches(rows, batch_size):
            batch = pad(chunk, pad_with, "left").to(model)  # column -1: every row's last token
            scores = unembed(model, final_hidden(model, batch, plan)[:, -1]).float()
            out.append((scores[:, a] - scores[:, b]).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def first_token(tokenizer: Any, string: object, name: str = "string") -> int:
    """The id of the first token of ``string`` (no special tokens), which scores it as a next
    token; ``name`` names it in errors."""
    if not isinstance(string, str):
        raise TypeError(f"{name} must be a str, got {type(string).__name__}: {string!r}")
    ids = token_ids(tokenizer, string, special=False)
    if not ids:
        raise ValueError(f"{name} {string!r} encodes to no token")
    return ids[0]


def token_cross_entropy(
    logits: Float[Tensor, "b t vocab"], labels: Int[Tensor, "b t"], ignore_index: int = -100
) -> Float[Tensor, ""]:
    """The plain token loss: ``labels[:, j]`` is the token that follows column ``j``."""
    return nn.functional.cross_entropy(
        rearrange(logits.float(), "b t v -> (b t) v"),
        rearrange(labels, "b t -> (b t)"),
        ignore_index=ignore_index,
    )


def perplexity(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    *,
    window: int = 256,
    stride: int = 128,
    max_tokens: int | None = None,
) -> float:
    """Sliding-window perplexity: windows of ``window`` tokens every ``stride`` tokens, each
    token scored once, with up to ``window - stride`` tokens of context before it."""
    window, stride = integer("window", window, minimum=2), integer("stride", stride)
    if stride > window:
        raise ValueError(f"need stride <= window, got stride={stride}, window={window}")
    if max_tokens is not None:
        max_tokens = integer("max_tokens", max_tokens, minimum=2)
    ids = torch.tensor(token_ids(tokenizer, text), dtype=torch.long)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    device = device_of(model)
    nll, count, scored_to = 0.0, 0, 0
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + window, len(ids))
        chunk = ids[begin:end][None].to(device)
        labels = chunk.clone()
        labels[:, : max(scored_to - begin, 1)] = -100  # score only new tokens (never column 0)
        with torch.no_grad():
            scores = model(input_ids=chunk).logits
        n_new = int((labels[:, 1:] != -100).sum())
        if n_new:
            nll += float(token_cross_entropy(scores[:, :-1], labels[:, 1:])) * n_new
            count += n_new
        scored_to = end
        if end == len(ids):
            break
    return math.exp(nll / count)


# --- generating text ------------------------------------------------------------------------------


def generate_texts(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 40,
    sample: bool = False,
    seed: int = 0,
    top_k: int = 5,
    batch_size: int = 16,
    plan: Plan | None = None,
    special: bool = True,
    progress: bool = False,
) -> list[str]:
    """Continue each prompt: greedy, or (``sample=True``) top-``top_k`` sampling seeded with
    ``seed`` (the global random state is left as it was). Left-padded batches, ``plan``
    attached throughout; the new tokens are decoded without special tokens (not stripped).
    ``special``: add the tokenizer's special tokens (False for prompts from a chat template,
    which writes them itself)."""
    rows = _prompt_rows(tokenizer, _texts("prompts", prompts), special=special)
    max_new_tokens = integer("max_new_tokens", max_new_tokens)
    top_k = integer("top_k", top_k)
    seed = integer("seed", seed, minimum=None)
    if not isinstance(sample, bool):
        raise TypeError(f"sample must be True or False, got {sample!r}")
    device, pad_with = device_of(model), pad_id(tokenizer)
    options = {"do_sample": True, "top_k": top_k} if sample else {"do_sample": False}
    texts: list[str] = []
    chunks = batches(rows, batch_size, desc="generate", progress=progress)
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), torch.no_grad(), intervene(model, plan or {}):
        torch.manual_seed(seed)
        for chunk in chunks:
            batch = pad(chunk, pad_with, "left").to(device)
            out = model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_with,
                **options,
            )
            width = batch.input_ids.shape[1]
            texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


def n_gram_entropy(
    text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """CounterFact's fluency: the weighted mean of the n-gram entropies (bits) of the words of
    ``text`` (lower-cased words and punctuation marks), bi- and tri-grams by default."""
    if not isinstance(text, str):
        raise TypeError(f"n_gram_entropy takes a str, got {type(text).__name__}")
    ns = [integer(f"ns[{i}]", n) for i, n in enumerate(ns)]
    weights = [number(f"weights[{i}]", w) for i, w in enumerate(weights)]
    if not ns or len(ns) != len(weights):
        raise ValueError(f"need one weight per n-gram size, got ns={ns} and weights={weights}")
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    entropies = []
    for n in ns:
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        entropies.append(h)
    return sum(w * h for w, h in zip(weights, entropies, strict=True)) / len(ns)


def _prompt_rows(tokenizer: Any, prompts: list[str], *, special: bool) -> list[list[int]]:
    rows = [token_ids(tokenizer, p, special=special) for p in prompts]
    empty = [p for p, row in zip(prompts, rows, strict=True) if not row]
    if empty:
        raise ValueError(
            f"the prompt {empty[0]!r} encodes to no token: give text to continue (or "
            "special=True where the tokenizer adds a BOS)"
        )
    return rows


def _texts(name: str, values: object) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of str, got {type(values).__name__}")
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name}[{bad[0]}] must be a str, got {values[bad[0]]!r}")
    return list(values)
