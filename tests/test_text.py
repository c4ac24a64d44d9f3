"""interventions.text: offsets (fast, and from decoding prefixes for slow tokenizers), token spans,
continuations, padding, batches; and the shared fake tokenizer of tests/fakes.py."""

import pytest
import torch
from fakes import WordTokenizer

from interventions import text
from interventions.models import tiny

TEXTS = ["The sky is blue.", "  two  spaces here", "a", "ends in space ", ""]


# --- the fake tokenizer ---------------------------------------------------------------------------


def test_fake_splits_words_with_their_leading_space_and_gives_their_offsets():
    tok = WordTokenizer()
    out = tok("The sky  is ", return_offsets_mapping=True)
    assert out["offset_mapping"] == [(0, 3), (3, 7), (7, 11)]  # "The", " sky", "  is"
    assert out["input_ids"] == [3, 4, 5] and out.attention_mask == [1, 1, 1]
    assert tok("is The")["input_ids"] == [6, 7]  # " The" is another token than "The"
    assert tok("The")["input_ids"] == [3]
    assert tok.decode(tok.encode("The sky  is")) == "The sky  is"


def test_fake_characters_bos_and_special_tokens():
    tok = WordTokenizer(chars=True, bos=True)
    out = tok("ab a", return_offsets_mapping=True)
    assert out["input_ids"] == [1, 3, 4, 5, 3]
    assert out["offset_mapping"] == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4)]
    assert tok("ab", add_special_tokens=False)["input_ids"] == [3, 4]
    assert tok.decode([1, 3, 4, 2]) == "<s>ab</s>"
    assert tok.decode(torch.tensor([1, 3, 4, 2]), skip_special_tokens=True) == "ab"
    assert tok.decode([97]) == "<97>"  # an id it never gave


def test_fake_pads_batches_on_its_padding_side():
    tok = WordTokenizer(bos=True)
    right = tok(["a b c", "d"], padding=True, return_tensors="pt")
    assert right["input_ids"].tolist() == [[1, 3, 4, 5], [1, 6, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    tok.padding_side = "left"
    left = tok(["a b c", "d"], padding=True, return_tensors="pt", return_offsets_mapping=True)
    assert left["input_ids"].tolist() == [[1, 3, 4, 5], [0, 0, 1, 6]]
    assert left["offset_mapping"][1].tolist() == [[0, 0], [0, 0], [0, 0], [0, 1]]
    assert tok.batch_decode(left["input_ids"], skip_special_tokens=True) == ["a b c", "d"]
    with pytest.raises(ValueError, match="padding=True"):
        tok(["a b", "c"], return_tensors="pt")


def test_fake_can_see_any_whitespace_before_a_word_as_one_space():
    tok = WordTokenizer(collapse_spaces=True)
    assert tok.encode("a  b\nb") == tok.encode("a b b") == [3, 4, 4]
    assert tok.decode(tok.encode("a  b")) == "a b"
    assert text.encode(tok.slow(), "a b").offsets == [(0, 1), (1, 3)]
    with pytest.raises(TypeError, match="does not give the text back"):  # it normalises
        text.encode(tok.slow(), "a  b")


def test_fake_ids_stay_in_the_tiny_vocabulary_and_the_slow_twin_shares_them():
    tok = WordTokenizer(vocab=[" True", " False"])
    assert tok.encode(" True False") == [3, 4]
    ids = tok.encode(" ".join(f"w{i}" for i in range(200)))
    assert min(ids) == 3 and max(ids) == 98  # wraps after 96 tokens
    slow = tok.slow()
    assert slow.encode(" True") == [3] and not slow.is_fast and tok.is_fast
    with pytest.raises(NotImplementedError, match="Python tokenizers"):
        slow("a b", return_offsets_mapping=True)


# --- encode: one policy for offsets ---------------------------------------------------------------


@pytest.mark.parametrize("chars", [False, True])
@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("special", [False, True])
def test_slow_tokenizer_offsets_from_decoded_prefixes_equal_the_fast_ones(chars, bos, special):
    fast = WordTokenizer(chars=chars, bos=bos)
    for s in TEXTS:
        expected = text.encode(fast, s, special=special)
        assert text.encode(fast.slow(), s, special=special) == expected, s
    assert text.encode(fast, "a b", special=special).ids[: int(bos and special)] == (
        [1] if bos and special else []
    )


def byte_level_tokenizer():
    """A real fast tokenizer (byte-level, no merges): a character of two UTF-8 bytes is two
    tokens, both with the character's offsets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


class WithoutOffsets:
    """A tokenizer seen as slow: the same tokens, no return_offsets_mapping."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, s, add_special_tokens=True, return_offsets_mapping=False):
        if return_offsets_mapping:
            raise NotImplementedError("no offsets")
        return self.tokenizer(s, add_special_tokens=add_special_tokens)

    def decode(self, ids, **options):
        return self.tokenizer.decode(ids, **options)


def test_prefix_offsets_on_a_real_byte_level_tokenizer_with_split_characters():
    fast = byte_level_tokenizer()
    s = "café au lait"
    encoded = text.encode(fast, s)
    assert len(encoded.ids) == len(s.encode()) == 13  # é is two byte tokens
    assert encoded.offsets[3:5] == [(3, 4), (3, 4)]
    assert text.encode(WithoutOffsets(fast), s) == encoded
    assert text.token_span(encoded, (3, 4)) == range(3, 5)


class Lowercasing(WordTokenizer):
    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        return super().decode(ids, skip_special_tokens).lower()


class NoDecode:
    def __call__(self, s, add_special_tokens=True):
        return {"input_ids": [3] * len(s)}


def test_a_tokenizer_without_usable_offsets_is_refused():
    with pytest.raises(TypeError, match=r"does not give the text back \(the first 0 of 2.*fast"):
        text.encode(Lowercasing(offsets=False), "Hello World")
    assert text.encode(Lowercasing(offsets=False), "hello world").offsets == [(0, 5), (5, 11)]
    with pytest.raises(TypeError, match="NoDecode gives no character offsets .* use a fast"):
        text.encode(NoDecode(), "abc")
    with pytest.raises(TypeError, match="text must be a str, got list"):
        text.encode(WordTokenizer(), ["a"])


def test_token_span_takes_the_tokens_that_overlap_the_characters():
    encoded = text.encode(WordTokenizer(bos=True), "The old tower stands")
    assert text.token_span(encoded, (4, 13)) == range(2, 4)  # "old tower"
    assert text.token_span(encoded, (5, 6)) == range(2, 3)  # inside " old"
    assert text.token_span(encoded, (0, 0)) == range(0)  # the BOS covers no character
    assert text.token_span(encoded, (30, 40)) == range(0)
    # byte-level BPE offsets include the leading space: " Where" starts before the question
    bpe = text.Encoded(list(range(8)), [(0, 8), (8, 9), (9, 15), (15, 18), (18, 23), (23, 28),
                                        (28, 29), (29, 30)])  # fmt: skip
    assert text.token_span(bpe, (10, 29)) == range(2, 7)
    with pytest.raises(ValueError, match=r"start <= end, got \(5, 2\)"):
        text.token_span(encoded, (5, 2))
    with pytest.raises(TypeError, match="chars\\[0\\] must be an integer >= 0, got 1.0"):
        text.token_span(encoded, (1.0, 2))
    with pytest.raises(TypeError, match="a \\(start, end\\) pair"):
        text.token_span(encoded, 3)


def test_encode_continuation_splits_by_offsets_and_stops_at_its_end():
    tok = WordTokenizer(bos=True)
    encoded, span = text.encode_continuation(tok, "The sky is", " very blue")
    assert span == range(4, 6)
    assert encoded.ids == tok.encode("The sky is very blue") and len(encoded.offsets) == 6
    with pytest.raises(ValueError, match="the continuation ' ' of 'The sea is' gives no contig"):
        text.encode_continuation(tok, "The sea is", " ")
    with pytest.raises(ValueError, match="merges the end of 'The sky' with the continuation 'is b"):
        text.encode_continuation(tok, "The sky", "is blue")
    with pytest.raises(ValueError, match="no token comes before the continuation 'Hi'"):
        text.encode_continuation(WordTokenizer(), "", "Hi")
    assert text.encode_continuation(tok, "", "Hi")[1] == range(1, 2)  # after the BOS


# --- padding and batches --------------------------------------------------------------------------


def test_pad_on_either_side_with_positions_from_the_mask():
    left = text.pad([[5, 6, 7], [8]], 0, "left")
    assert left.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert left.first_real().tolist() == [0, 2] and left.last_real().tolist() == [2, 2]
    right = text.pad([[5, 6, 7], [8]], 9, "right")
    assert right.input_ids.tolist() == [[5, 6, 7], [8, 9, 9]]
    assert right.position_ids[1, 0] == 0 and right.last_real().tolist() == [2, 0]
    assert right.mask_at([2, 0]).tolist() == [[False, False, True], [True, False, False]]
    with pytest.raises(ValueError, match="side must be one of"):
        text.pad([[1]], 0, "middle")
    with pytest.raises(ValueError, match=r"rows \[1\] have no tokens"):
        text.pad([[1], []], 0, "left")
    with pytest.raises(ValueError, match="no rows"):
        text.pad([], 0, "left")
    with pytest.raises(TypeError, match="pad_id must be an integer >= 0, got True"):
        text.pad([[1]], True, "left")
    with pytest.raises(ValueError, match=r"positions \[3\] are outside"):
        right.mask_at([3, 0])


def test_positions_count_the_real_tokens_of_each_row():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert text.positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3], [0, 1, 2, 3, 4]]
    assert text.positions(mask.bool()).dtype == torch.long  # a boolean mask counts the same
    assert text.positions(mask.bool()).tolist() == text.positions(mask).tolist()
    batch = text.pad([[5, 6, 7], [8]], 0, "left")
    assert torch.equal(batch.position_ids, text.positions(batch.attention_mask))


def test_selected_tokens_on_either_padding_side():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]])

    def rows(selected):
        return [row.nonzero().flatten().tolist() for row in selected]

    assert rows(text.selected_tokens(mask)) == [[2, 3, 4], [0, 1, 2, 3], []]
    assert rows(text.selected_tokens(mask, skip_first_token=True)) == [[3, 4], [1, 2, 3], []]
    assert rows(text.selected_tokens(mask, -1)) == [[4], [3], []]
    assert rows(text.selected_tokens(mask, 1, skip_first_token=True)) == [[3], [1], []]
    assert rows(text.selected_tokens(mask, 0, skip_first_token=True)) == [[], [], []]
    assert rows(text.selected_tokens(mask, 9)) == [[], [], []]  # past a row's end: none


def test_left_and_right_padding_give_the_same_logits_for_real_tokens(llama):
    rows = [[5, 6, 7, 8], [9, 10]]
    with torch.no_grad():
        left = llama(**text.pad(rows, 0, "left").inputs(llama)).logits
        right = llama(**text.pad(rows, 0, "right").inputs(llama)).logits
        alone = llama(torch.tensor([rows[1]])).logits
    torch.testing.assert_close(left[1, 2:], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right[1, :2], alone[0], atol=1e-5, rtol=1e-5)


def test_batch_inputs_and_devices():
    batch = text.pad([[5, 6]], 0, "left")
    llama, bloom = tiny("llama", n_layers=1), tiny("bloom", n_layers=1)
    assert set(batch.inputs()) == {"input_ids", "attention_mask", "position_ids"}
    assert set(batch.inputs(llama)) == {"input_ids", "attention_mask", "position_ids"}
    assert set(batch.inputs(bloom)) == {"input_ids", "attention_mask"}  # ALiBi: no positions
    assert text.device_of(llama) == torch.device("cpu")
    assert batch.to(llama).input_ids.device == torch.device("cpu")
    assert batch.to("cpu").position_ids.tolist() == [[0, 1]]


def test_device_of_an_offloaded_model_is_where_inputs_go(llama, offload):
    assert text.device_of(offload(llama)) == torch.device("cpu")


def test_batches_of_a_list_and_of_a_stream():
    assert list(text.batches([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    read = []

    def stream():
        for i in range(4):
            read.append(i)
            yield i

    chunks = text.batches(stream(), 3, desc="stream", progress=True)
    assert next(chunks) == [0, 1, 2] and read == [0, 1, 2]  # nothing read ahead
    assert list(chunks) == [[3]]
    assert list(text.batches([], 4)) == []
    for bad, error in ((0, ValueError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(error, match="batch_size must be an integer >= 1"):
            text.batches([1], bad)  # refused at the call, not at the first batch
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        text.batches("a text", 2)


def test_pad_id_prefers_pad_then_eos_then_zero():
    class Ids:
        def __init__(self, pad, eos):
            self.pad_token_id, self.eos_token_id = pad, eos

    assert text.pad_id(Ids(5, 2)) == 5
    assert text.pad_id(Ids(None, 2)) == 2
    assert text.pad_id(Ids(None, None)) == 0
    assert text.pad_id(Ids(True, 7)) == 7  # a bool is not an id


def test_token_ids_with_and_without_special_tokens():
    tok = WordTokenizer(bos=True)
    assert text.token_ids(tok, "a b") == [1, 3, 4]
    assert text.token_ids(tok, "a b", special=False) == [3, 4]
    with pytest.raises(TypeError, match="text must be a str, got NoneType"):
        text.token_ids(tok, None)


# --- the same as the recipe code it replaces (until phase B removes that code) --------------------


@pytest.mark.real
def test_prefix_offsets_on_smollm2_give_the_fast_tokenizers_spans(real_model):
    """Byte-level BPE with merges, split characters and a chat template's special tokens."""
    import re

    _, tokenizer = real_model
    chat = [{"role": "user", "content": "Hi there?"}]
    texts = [
        "The Eiffel Tower is located in Paris.",
        "café au lait — naïve 東京",
        "  spaces  and\nnew lines\n\n",
        tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
    ]
    for s in texts:
        fast, slow = text.encode(tokenizer, s), text.encode(WithoutOffsets(tokenizer), s)
        assert slow.ids == fast.ids
        for word in re.finditer(r"\S+", s):
            assert text.token_span(slow, word.span()) == text.token_span(fast, word.span()), word
    assert fast.offsets == slow.offsets  # the chat template: special tokens map to their text


# --- chunks --------------------------------------------------------------------------------------


def test_chunks_cut_texts_into_pieces_until_the_token_budget():
    tok = WordTokenizer(bos=True)
    a, b = text.token_ids(tok, "a b c d e"), text.token_ids(tok, "f g")  # 6 and 3 ids
    # pieces of 4: a -> 4 + 2, b -> 3; a blank text is skipped
    assert text.chunks(tok, ["a b c d e", " ", "f g"], 4, 100) == [a[:4], a[4:], b]
    seven = text.token_ids(tok, "a b c d e f")  # in pieces of 3 the last is a lone token: dropped
    assert text.chunks(tok, ["a b c d e f"], 3, 100) == [seven[:3], seven[3:6]]
    # the budget cuts the last piece short (even to one token) and stops
    assert text.chunks(tok, ["a b c d e", "f g"], 4, 5) == [a[:4], a[4:5]]
    assert text.chunks(tok, iter(["a b"]), 2, 10) == [text.token_ids(tok, "a b")[:2]]


def test_chunks_refuse_bad_texts_and_numbers():
    tok = WordTokenizer()
    with pytest.raises(TypeError, match="texts must be an iterable of strings, got str"):
        text.chunks(tok, "a b c", 4, 10)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        text.chunks(tok, ["a b", 3], 4, 10)
    with pytest.raises(ValueError, match="max_length must be an integer >= 2, got 1"):
        text.chunks(tok, ["a b"], 1, 10)
    with pytest.raises(TypeError, match="max_tokens must be an integer >= 1, got True"):
        text.chunks(tok, ["a b"], 4, True)
    assert text.chunks(tok, ["", "a"], 4, 10) == []  # nothing of two or more tokens


def test_checked_rows_and_model_inputs_of_batches_and_lookalikes(llama):
    batch = text.pad([[5, 6, 7], [8]], 0, "right")
    ids, mask = text.checked_rows(batch, 0, "caller")
    assert ids is batch.input_ids and mask is batch.attention_mask
    assert text.model_inputs(llama, batch).keys() == {"input_ids", "attention_mask", "position_ids"}

    class Bare:  # anything with input_ids: an all-ones mask, inputs of what it has
        input_ids = torch.tensor([[5, 6]])
        attention_mask = None

    assert torch.equal(
        text.checked_rows(Bare(), 3, "caller")[1], torch.ones(1, 2, dtype=torch.long)
    )
    assert text.model_inputs(llama, Bare()).keys() == {"input_ids"}
    floats = Bare()
    floats.input_ids = torch.ones(1, 2)
    with pytest.raises(TypeError, match="caller: batch 3 is a Bare whose input_ids are a torch.fl"):
        text.checked_rows(floats, 3, "caller")
    empty = Bare()
    empty.input_ids = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="caller: batch 1 is empty"):
        text.checked_rows(empty, 1, "caller")
    odd = Bare()
    odd.attention_mask = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="holds values other than 0 and 1"):
        text.checked_rows(odd, 0, "caller")
    odd.attention_mask = torch.ones(2, 2)
    with pytest.raises(ValueError, match="expected a tensor of the input_ids' shape \\(1, 2\\)"):
        text.checked_rows(odd, 0, "caller")


def test_with_cache_uses_the_keyword_the_forward_names_and_continues_one_sequence(model, ids):
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns and goes
    in 5.40): the recipes' cached forwards pass and read the cache through these two only."""
    import inspect

    from interventions.attach import cached_length

    (keyword,) = text.with_cache(model, None)
    assert keyword in inspect.signature(type(model).forward).parameters
    with torch.no_grad():
        whole = model(ids).logits[:, 5:]
        first = model(ids[:, :5], use_cache=True, **text.with_cache(model, None))
        cache = text.returned_cache(first)
        assert cached_length((), {"cache": cache}) == 5  # a Cache, or 4.x GPT-2's tuples
        continued = model(ids[:, 5:], use_cache=True, **text.with_cache(model, cache)).logits
    torch.testing.assert_close(continued, whole, atol=1e-5, rtol=1e-5)
