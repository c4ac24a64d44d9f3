"""Text in, tensors out: tokenising with character offsets, token spans, padding and batches.

One policy for every recipe and evaluation:

- ``encode`` always gives character offsets. A fast tokenizer gives them itself; a slow one (no
  ``return_offsets_mapping``) gets them from decoding growing prefixes of its ids; a tokenizer
  that cannot map its tokens back onto the text is refused with a TypeError.
- ``token_span`` turns a character span into the tokens that overlap it.
- ``pad`` builds a ``Batch`` padded on the side asked for, always with position ids from the
  attention mask, so a real token's position never depends on the padding.

>>> from interventions import text
>>> e = text.encode(tokenizer, "The Eiffel Tower is in")
>>> text.token_span(e, (4, 16))                      # the tokens of "Eiffel Tower"
>>> batch = text.pad([e.ids], text.pad_id(tokenizer), "left").to(model)
>>> model(**batch.inputs(model))
"""

import inspect
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from interventions.adapters import causal_lm
from interventions.checks import integer

SIDES = ("left", "right")
_NO_OFFSETS = (NotImplementedError, TypeError, KeyError, ValueError)


@dataclass(frozen=True)
class Encoded:
    """Token ids of one text and each token's character span ``(start, end)`` in it; special
    tokens (and any token that covers no character) have an empty span."""

    ids: list[int]
    offsets: list[tuple[int, int]]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.offsets):
            raise ValueError(
                f"Encoded needs one offset per token, got {len(self.ids)} ids and "
                f"{len(self.offsets)} offsets"
            )


def token_ids(tokenizer: Any, text: str, *, special: bool = True) -> list[int]:
    """The ids of ``text`` (with the tokenizer's special tokens, e.g. a BOS, when ``special``)."""
    _check_text("text", text)
    return [int(i) for i in tokenizer(text, add_special_tokens=special)["input_ids"]]


def encode(tokenizer: Any, text: str, *, special: bool = True) -> Encoded:
    """Tokenize ``text`` with character offsets (from the tokenizer, else from decoding growing
    prefixes of the ids). Raises TypeError when the tokens cannot be mapped onto the text."""
    _check_text("text", text)
    try:
        encoding = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
    except _NO_OFFSETS:
        ids = token_ids(tokenizer, text, special=special)
        return Encoded(ids, _offsets_from_prefixes(tokenizer, text, ids))
    ids = [int(i) for i in encoding["input_ids"]]
    return Encoded(ids, [(int(a), int(b)) for a, b in offsets])


def _offsets_from_prefixes(tokenizer: Any, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Offsets of a tokenizer without them: a token covers what decoding the tokens up to it
    adds to decoding those before it. Special tokens written in the text (a chat template's)
    decode to themselves; one the tokenizer added (a BOS) decodes to nothing of the text and
    gets an empty span. A prefix that does not decode to a prefix of ``text`` (a character split
    over several byte tokens) is joined to the next one that does."""
    decode = getattr(tokenizer, "decode", None)
    if decode is None:
        raise TypeError(_unmappable(tokenizer, "it has neither offsets nor a decode method"))
    added = set(getattr(tokenizer, "all_special_ids", None) or ())
    offsets: list[tuple[int, int]] = []
    kept: list[int] = []  # the ids whose decoding is part of the text
    done = 0  # characters of text covered by the tokens so far
    pending = 0  # tokens since the last prefix that decoded to a prefix of text
    for token in ids:
        decoded = decode([*kept, token], clean_up_tokenization_spaces=False)
        if text.startswith(decoded) and len(decoded) >= done:
            offsets += [(done, len(decoded))] * (pending + 1)
            done, pending = len(decoded), 0
            kept.append(token)
        elif token in added and not pending:
            offsets.append((done, done))
        else:
            pending += 1
            kept.append(token)
    if pending:
        raise TypeError(
            _unmappable(
                tokenizer,
                f"decoding its ids of {text!r} does not give the text back "
                f"(the first {len(ids) - pending} of {len(ids)} tokens map)",
            )
        )
    return offsets


def _unmappable(tokenizer: Any, why: str) -> str:
    return (
        f"{type(tokenizer).__name__} gives no character offsets ({why}): use a fast tokenizer, "
        "one that supports return_offsets_mapping=True (AutoTokenizer.from_pretrained(..., "
        "use_fast=True))"
    )


def encode_continuation(
    tokenizer: Any, prompt: str, continuation: str, *, special: bool = True
) -> tuple[Encoded, range]:
    """Tokenize ``prompt + continuation`` as one text (so the tokens are those of running text)
    and find the continuation's tokens by character offsets. The Encoded stops at the
    continuation's last token; the range gives its tokens. Raises ValueError where the
    continuation has no tokens of its own: none, not contiguous, merged with the prompt's end,
    or with no prompt token before it."""
    _check_text("prompt", prompt)
    _check_text("continuation", continuation)
    encoded = encode(tokenizer, prompt + continuation, special=special)
    cut = len(prompt)
    own = [i for i, (a, b) in enumerate(encoded.offsets) if b > a and a >= cut]
    if not own or own != list(range(own[0], own[-1] + 1)):
        raise ValueError(
            f"the continuation {continuation!r} of {prompt!r} gives no contiguous tokens of its "
            "own: use a continuation the tokenizer writes as one or more tokens after the prompt"
        )
    first, end = own[0], own[-1] + 1
    if first == 0:
        raise ValueError(
            f"no token comes before the continuation {continuation!r}: it is scored after at "
            "least one prompt token; give a non-empty prompt"
        )
    if any(b > cut for _, b in encoded.offsets[:first]):
        raise ValueError(
            f"the tokenizer merges the end of {prompt!r} with the continuation {continuation!r}: "
            "start the continuation where a token starts (often with a space)"
        )
    return Encoded(encoded.ids[:end], encoded.offsets[:end]), range(first, end)


def token_span(encoded: Encoded, chars: tuple[int, int]) -> range:
    """The tokens that overlap ``text[chars[0]:chars[1]]`` (tokens with an empty span skipped),
    as a range of token indices; an empty range when no token overlaps it."""
    if not isinstance(chars, Sequence) or isinstance(chars, str) or len(chars) != 2:
        raise TypeError(f"chars must be a (start, end) pair of character indices, got {chars!r}")
    start = integer("chars[0]", chars[0], minimum=0)
    end = integer("chars[1]", chars[1], minimum=0)
    if end < start:
        raise ValueError(f"chars must have start <= end, got {chars!r}")
    hits = [i for i, (a, b) in enumerate(encoded.offsets) if b > a and a < end and b > start]
    return range(hits[0], hits[-1] + 1) if hits else range(0)


@dataclass
class Batch:
    """Padded token rows: ``attention_mask`` marks the real tokens, ``position_ids`` count them
    (``positions``), so either padding side gives each real token the position it has alone."""

    input_ids: Int[Tensor, "b t"]
    attention_mask: Int[Tensor, "b t"]
    position_ids: Int[Tensor, "b t"]

    def to(self, where: torch.device | str | nn.Module) -> "Batch":
        """The batch on a device, or on the device a model takes its inputs on."""
        device = device_of(where) if isinstance(where, nn.Module) else where
        return Batch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids))
        )

    def inputs(self, model: nn.Module | None = None) -> dict[str, Tensor]:
        """Keyword arguments for ``model(**batch.inputs(model))``. With ``model``, position ids
        are left out where its forward takes none (BLOOM's ALiBi reads the mask instead)."""
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if model is None or _takes_position_ids(model):
            out["position_ids"] = self.position_ids
        return out

    def first_real(self) -> Int[Tensor, " b"]:
        """Column of each row's first real token (0 for right padding)."""
        return self.attention_mask.long().argmax(-1)

    def last_real(self) -> Int[Tensor, " b"]:
        """Column of each row's last real token (``t - 1`` for left padding)."""
        width = self.attention_mask.shape[1]
        return width - 1 - self.attention_mask.long().flip(-1).argmax(-1)

    def mask_at(self, positions: Sequence[int]) -> Bool[Tensor, "b t"]:
        """A boolean mask marking one column per row (``positions[row]``)."""
        if len(positions) != self.input_ids.shape[0]:
            raise ValueError(
                f"mask_at needs one position per row ({self.input_ids.shape[0]}), got "
                f"{len(positions)}"
            )
        width = self.input_ids.shape[1]
        columns = [integer(f"positions[{i}]", p, minimum=0) for i, p in enumerate(positions)]
        bad = [c for c in columns if c >= width]
        if bad:
            raise ValueError(f"positions {bad} are outside the batch's {width} columns")
        mask = torch.zeros_like(self.input_ids, dtype=torch.bool)
        rows = torch.arange(len(columns), device=mask.device)
        mask[rows, torch.tensor(columns, device=mask.device)] = True
        return mask


def pad(rows: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"]) -> Batch:
    """Token rows padded with ``pad_id`` to the longest one, on the left (decoding: position -1
    is every row's last token) or on the right (real tokens never attend to padding)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    pad_id = integer("pad_id", pad_id, minimum=0)
    if isinstance(rows, (str, Tensor)) or not isinstance(rows, Iterable):
        raise TypeError(f"rows must be a list of token id lists, got {type(rows).__name__}")
    rows = [list(r) for r in rows]
    if not rows:
        raise ValueError("pad got no rows: give at least one list of token ids")
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise ValueError(
            f"rows {empty} have no tokens: a row needs at least one real token (an all-padding "
            "row attends to nothing)"
        )
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, columns] = torch.tensor(row, dtype=torch.long)
        mask[i, columns] = 1
    return Batch(ids, mask, positions(mask))


def positions(attention_mask: Int[Tensor, "b t"]) -> Int[Tensor, "b t"]:
    """Position ids that count each row's real tokens (0 at the first one, and at padding
    before it), so a token's position does not depend on the padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def selected_tokens(
    attention_mask: Int[Tensor, "b t"],
    nth: int | None = None,
    *,
    skip_first_token: bool = False,
) -> Bool[Tensor, "b t"]:
    """The tokens a pass over a batch reads: the real ones (the mask), only each row's ``nth``
    real token when one is given (``-1`` the last), less each row's first real token with
    ``skip_first_token`` (the attention sink, an outlier in many models). Either padding side."""
    real = attention_mask.bool()
    rank = attention_mask.long().cumsum(-1) - 1  # a real token's place among its row's
    selected = real
    if nth is not None:
        length = attention_mask.long().sum(-1, keepdim=True)
        selected = selected & (rank == (nth if nth >= 0 else length + nth))
    if skip_first_token:
        selected = selected & (rank != 0)
    return selected


def batches(
    items: Iterable[Any], size: int, *, desc: str | None = None, progress: bool = False
) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter), with a tqdm bar when ``progress``.
    ``items`` may be a stream: nothing is read ahead of the batch being yielded."""
    size = integer("batch_size", size)
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise TypeError(
            f"items must be a list (or iterable) of items, got {type(items).__name__}: wrap a "
            "single text in a list"
        )
    total = math.ceil(len(items) / size) if hasattr(items, "__len__") else None
    return _chunked(
        items, size, tqdm(total=total, desc=desc, unit="batch", leave=False, disable=not progress)
    )


def _chunked(items: Iterable[Any], size: int, bar: tqdm) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    try:
        for item in items:
            chunk.append(item)
            if len(chunk) == size:
                yield chunk
                bar.update()
                chunk = []
        if chunk:
            yield chunk
            bar.update()
    finally:
        bar.close()


def pad_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-sequence token, else 0
    (padding is masked out, so the value only has to be a valid id)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    return 0


def device_of(model: nn.Module) -> torch.device:
    """The device a model takes its inputs on: its input embedding's (the first of a model split
    across devices). An offloaded model (parameters on the meta device) takes them on the CPU;
    accelerate's hooks move them where the weights are loaded."""
    embeddings = getattr(model, "get_input_embeddings", None)
    weight = getattr(embeddings(), "weight", None) if callable(embeddings) else None
    if not isinstance(weight, Tensor):
        weight = next(model.parameters(), None)
    if weight is None:
        raise ValueError(f"{type(model).__name__} has no parameters: no device to run on")
    return torch.device("cpu") if weight.is_meta else weight.device


def with_cache(model: nn.Module, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for ``model(...)``, under the keyword its forward names: ``cache``
    from transformers 5.24 (which deprecates ``past_key_values``, to be removed in 5.40),
    ``past_key_values`` before. Read a forward's cache back with ``returned_cache``."""
    return {_cache_keyword(type(causal_lm(model))): cache}


def returned_cache(output: Any) -> Any:
    """The KV cache a forward returned: ``output.cache`` (transformers 5.24 on; reading
    ``.past_key_values`` there warns) or ``output.past_key_values``."""
    fields = getattr(output, "__dataclass_fields__", {})
    return output.cache if "cache" in fields else output.past_key_values


def _cache_keyword(cls: type) -> str:
    names = _forward_names(cls)
    return "cache" if names is not None and "cache" in names else "past_key_values"


def _takes_position_ids(model: nn.Module) -> bool:
    # the causal LM's own forward: a PEFT or compiled wrapper forwards its keywords to it
    return _names_position_ids(type(causal_lm(model)))


def _names_position_ids(cls: type) -> bool:
    names = _forward_names(cls)
    return names is None or "position_ids" in names


@lru_cache(maxsize=64)
def _forward_names(cls: type) -> frozenset[str] | None:
    """The parameter names of ``cls.forward`` (None where its signature cannot be read)."""
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return None


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}: {value!r}")


def chunks(
    tokenizer: Any, texts: Iterable[str], max_length: int, max_tokens: int
) -> list[list[int]]:
    """The token ids of ``texts`` (special tokens included) cut into pieces of at most
    ``max_length`` tokens, in order, until ``max_tokens`` tokens in all (the last piece is cut
    short to fit): the rows of a ``stats.tally`` over a corpus. Blank texts are skipped, and so
    is a text's last piece when it is a lone token (it would see no context)."""
    max_length = integer("max_length", max_length, minimum=2)
    max_tokens = integer("max_tokens", max_tokens)
    if isinstance(texts, (str, bytes, Mapping)) or not isinstance(texts, Iterable):
        raise TypeError(
            f"texts must be an iterable of strings, got {type(texts).__name__}: wrap a single "
            "text in a list"
        )
    pieces: list[list[int]] = []
    total = 0
    for i, string in enumerate(texts):
        _check_text(f"texts[{i}]", string)
        if not string.strip():
            continue
        ids = token_ids(tokenizer, string)
        for start in range(0, len(ids), max_length):
            piece = ids[start : start + max_length]
            if len(piece) < 2:
                continue
            piece = piece[: max_tokens - total]
            pieces.append(piece)
            total += len(piece)
            if total >= max_tokens:
                return pieces
    return pieces


def checked_rows(
    batch: Any, index: int, caller: str
) -> tuple[Int[Tensor, "b t"], Int[Tensor, "b t"]]:
    """``(input_ids, attention_mask)`` of ``batch`` (a ``Batch`` or anything with those
    attributes), checked for ``caller``'s errors; an all-ones mask when it has none."""
    ids = getattr(batch, "input_ids", None)
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype not in _INTEGER_DTYPES:
        raise TypeError(
            f"{caller}: batch {index} is a {type(batch).__name__} whose input_ids are "
            f"{_describe(ids)}; expected a text.Batch (input_ids: integer tensor [batch, tokens])"
        )
    if ids.numel() == 0:
        raise ValueError(
            f"{caller}: batch {index} is empty (input_ids of shape {tuple(ids.shape)})"
        )
    mask = getattr(batch, "attention_mask", None)
    if mask is None:
        return ids, torch.ones_like(ids)
    if not isinstance(mask, Tensor) or mask.shape != ids.shape:
        raise ValueError(
            f"{caller}: batch {index}'s attention_mask is {_describe(mask)}; expected a tensor "
            f"of the input_ids' shape {tuple(ids.shape)}"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(
            f"{caller}: batch {index}'s attention_mask holds values other than 0 and 1"
        )
    return ids, mask


def model_inputs(model: nn.Module, batch: Any) -> dict[str, Tensor]:
    """Keyword arguments for ``model(**...)`` from a ``Batch`` (which knows what the model takes)
    or from anything with ``input_ids`` and optional ``attention_mask`` / ``position_ids``."""
    if isinstance(batch, Batch):
        return batch.inputs(model)
    inputs = {"input_ids": batch.input_ids}
    for name in ("attention_mask", "position_ids"):
        value = getattr(batch, name, None)
        if value is not None:
            inputs[name] = value
    return inputs


_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:80]
