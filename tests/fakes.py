"""The one stand-in tokenizer of the test suite, for the tiny random models (vocabulary 99).

``WordTokenizer()`` splits a text into words with their leading whitespace (``"The sky"`` ->
``"The"``, ``" sky"``; trailing whitespace gives no token), ``WordTokenizer(chars=True)`` into
single characters. It answers what the library asks of a HuggingFace tokenizer: a call on a str or
a list of them, ``add_special_tokens`` (a BOS with ``bos=True``), ``return_offsets_mapping``,
``padding`` / ``padding_side``, ``return_tensors="pt"``, ``encode``, ``decode`` and
``batch_decode``, pad / BOS / EOS ids and ``chat_template = None``.

``collapse_spaces=True``: the whitespace before a word is one space to the vocabulary (``"a  b"``
gives the tokens of ``"a b"``, and decodes to it), as a tokenizer splitting on whitespace does.

``offsets=False`` (or ``tok.slow()``, which shares the vocabulary) is a slow tokenizer: asking it
for offsets raises NotImplementedError, as transformers' Python tokenizers do.

Ids: 0 pad, 1 BOS, 2 EOS; each new token string gets the next id from 3 in the order first seen
(``vocab=`` fixes some first, e.g. the answers a test compares), wrapping after 96, so ids stay
below 99 (decoding is exact while an instance has seen at most 96 distinct tokens).
"""

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

FIRST_ID = 3
VOCAB_SIZE = 99
_SPECIAL = {0: "<pad>", 1: "<s>", 2: "</s>"}


class Encoding(dict):
    """What a tokenizer call returns: a dict whose keys are attributes too (``enc.input_ids``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: torch.device | str) -> "Encoding":
        return Encoding({k: v.to(device) if torch.is_tensor(v) else v for k, v in self.items()})


class WordTokenizer:
    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    pad_token, bos_token, eos_token = _SPECIAL[0], _SPECIAL[1], _SPECIAL[2]
    chat_template = None
    model_max_length = 10**6

    def __init__(
        self,
        *,
        chars: bool = False,
        bos: bool = False,
        offsets: bool = True,
        collapse_spaces: bool = False,
        vocab: Iterable[str] = (),
    ):
        self.chars = chars
        self.bos = bos
        self.collapse_spaces = collapse_spaces
        self.is_fast = offsets
        self.padding_side = "right"
        self.vocab: dict[str, int] = {}
        for token in vocab:
            self._id(token)

    def slow(self) -> "WordTokenizer":
        """The same tokenizer (sharing its vocabulary) without offsets."""
        twin = WordTokenizer(
            chars=self.chars, bos=self.bos, offsets=False, collapse_spaces=self.collapse_spaces
        )
        twin.vocab = self.vocab
        return twin

    def __len__(self) -> int:
        return VOCAB_SIZE

    @property
    def all_special_ids(self) -> list[int]:
        return list(_SPECIAL)

    # --- tokenizing -------------------------------------------------------------------------

    def pieces(self, text: str) -> list[re.Match]:
        """The tokens of ``text`` as regex matches (their spans are the offsets)."""
        return list(re.finditer(r"(?s)." if self.chars else r"\s*\S+", text))

    def _id(self, token: str) -> int:
        if self.collapse_spaces:
            token = re.sub(r"^\s+", " ", token)
        if token not in self.vocab:
            self.vocab[token] = FIRST_ID + len(self.vocab) % (VOCAB_SIZE - FIRST_ID)
        return self.vocab[token]

    def _row(self, text: str, special: bool) -> tuple[list[int], list[tuple[int, int]]]:
        if not isinstance(text, str):
            raise TypeError(
                f"WordTokenizer takes a str or a list of str, got {type(text).__name__}"
            )
        matches = self.pieces(text)
        ids = [self._id(m.group()) for m in matches]
        spans = [m.span() for m in matches]
        if special and self.bos:
            ids, spans = [self.bos_token_id, *ids], [(0, 0), *spans]
        return ids, spans

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._row(text, add_special_tokens)[0]

    def __call__(
        self,
        text: str | Sequence[str],
        *,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        padding: bool | str = False,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
    ) -> Encoding:
        if return_offsets_mapping and not self.is_fast:
            raise NotImplementedError(
                "return_offset_mapping is not available when using Python tokenizers"
            )
        if return_tensors not in (None, "pt"):
            raise ValueError(f"WordTokenizer returns lists or 'pt' tensors, not {return_tensors!r}")
        single = isinstance(text, str)
        rows = [self._row(t, add_special_tokens) for t in ([text] if single else text)]
        ids = [r[0] for r in rows]
        spans = [r[1] for r in rows]
        masks = [[1] * len(r) for r in ids]
        if padding not in (False, "do_not_pad") and rows:
            width = max(len(r) for r in ids)
            ids, masks, spans = (
                [self._pad(r, width, fill) for r in column]
                for column, fill in ((ids, self.pad_token_id), (masks, 0), (spans, (0, 0)))
            )
        out = Encoding(input_ids=ids[0] if single else ids)
        if return_attention_mask:
            out["attention_mask"] = masks[0] if single else masks
        if return_offsets_mapping:
            out["offset_mapping"] = spans[0] if single else spans
        if return_tensors == "pt":
            if len({len(r) for r in ids}) > 1:
                raise ValueError("rows of different lengths: pass padding=True for tensors")
            for key in list(out):
                out[key] = torch.tensor(out[key], dtype=torch.long)
        return out

    def _pad(self, row: list, width: int, fill: Any) -> list:
        padding = [fill] * (width - len(row))
        return padding + row if self.padding_side == "left" else row + padding

    # --- decoding ---------------------------------------------------------------------------

    def decode(
        self,
        ids: Iterable[int] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> str:
        """The text of ``ids`` (an id never seen decodes as ``<id>``)."""
        if torch.is_tensor(ids):
            ids = ids.tolist()
        strings = {i: s for s, i in reversed(self.vocab.items())}  # the first string of an id
        out = []
        for i in ids:
            if i in _SPECIAL:
                out += [] if skip_special_tokens else [_SPECIAL[i]]
            else:
                out.append(strings.get(int(i), f"<{int(i)}>"))
        return "".join(out)

    def batch_decode(
        self,
        rows: Iterable[Iterable[int]] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> list[str]:
        return [self.decode(r, skip_special_tokens, clean_up_tokenization_spaces) for r in rows]


# A CounterFact-style request written for the fake vocabulary (AlphaEdit and its evaluation).
REQUEST = {
    "prompt": "The old tower of {} stands in",
    "subject": "north harbour",
    "target_new": "valley",
    "target_true": "market",
    "paraphrase_prompts": ["People say north harbour lies near"],
    "neighborhood_prompts": ["The old tower of south field stands in"],
}
