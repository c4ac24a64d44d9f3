"""Activation stores: sharded files equal to an in-memory capture, resume, refusals, memory."""

import pickle

import pytest
import torch
from fakes import WordTokenizer
from torch.utils.data import DataLoader

import interventions as iv
from interventions import store, text

pytestmark = pytest.mark.usefixtures("one_thread")

SITES = ["layers.1.resid_post", "layers.0.attn.heads", "layers.2.mlp.act"]


def token_rows(n: int = 11, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (n,), generator=g).tolist()
    return [torch.randint(3, 99, (k,), generator=g).tolist() for k in lengths]


def padded(rows, side: str, size: int = 3) -> list[text.Batch]:
    return [text.pad(rows[i : i + size], 0, side) for i in range(0, len(rows), size)]


def everything(data: store.ActivationDataset) -> dict[str, torch.Tensor]:
    shards = [data.shard(k) for k in range(data.n_shards)]
    return {name: torch.cat([s[name] for s in shards]) for name in shards[0]}


def in_memory(model, batches, sites=SITES) -> dict[str, torch.Tensor]:
    """What the store should hold: a full capture of each batch, its real tokens kept."""
    out = {name: [] for name in [*sites, "index"]}
    examples = 0
    for batch in batches:
        with iv.capture(model, sites) as cache:
            model(**batch.inputs(model))
        real = batch.attention_mask.bool()
        for name in sites:
            out[name].append(cache[name][real])
        where = real.nonzero(as_tuple=True)
        out["index"].append(torch.stack([where[0] + examples, batch.position_ids[where]], 1))
        examples += batch.input_ids.shape[0]
    return {name: torch.cat(parts) for name, parts in out.items()}


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def counting(model, monkeypatch, *, interrupt_at: int | None = None) -> list[int]:
    """Count block 0's forwards (one per batch that runs); with ``interrupt_at``, that call
    raises KeyboardInterrupt, as Ctrl-C would."""
    block = iv.adapter(model).blocks(model)[0]
    forward = block.forward
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(block, "forward", counted)
    return calls


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_store_equals_an_in_memory_capture_of_the_real_tokens(llama, tmp_path, side):
    batches = padded(token_rows(), side)
    data = store.write(llama, batches, SITES, tmp_path / "acts", shard_tokens=10, progress=False)
    expected = in_memory(llama, batches)
    stored = everything(data)
    assert stored.keys() == expected.keys()
    for name, value in expected.items():
        assert stored[name].dtype == value.dtype and torch.equal(stored[name], value), name
    assert len(data) == sum(len(r) for r in token_rows()) == len(expected["index"])
    for i in (0, 7, 23, len(data) - 1, -1):  # one row at a time, through the memory maps
        row = data[i]
        for name in SITES:
            assert torch.equal(row[name], expected[name][i]), (i, name)
        assert row["example"] == expected["index"][i, 0]
        assert row["position"] == expected["index"][i, 1]


def test_shard_boundaries_anywhere_give_the_same_rows(llama, tmp_path):
    batches = padded(token_rows(), "right")
    reference = everything(store.write(llama, batches, SITES, tmp_path / "one", progress=False))
    for size in (1, 3, 7, 10, 64):
        data = store.write(
            llama, batches, SITES, tmp_path / f"by{size}", shard_tokens=size, progress=False
        )
        assert data.n_shards == -(-len(reference["index"]) // size)
        assert all(torch.equal(everything(data)[k], v) for k, v in reference.items()), size


def test_positions_keep_one_token_per_row_and_skip_first_token_drops_the_first(llama, tmp_path):
    rows = token_rows()
    batches = padded(rows, "left")
    full = in_memory(llama, batches)
    last = everything(store.write(llama, batches, SITES, tmp_path / "last", positions=-1))
    ends = torch.tensor([len(r) for r in rows]).cumsum(0) - 1
    assert torch.equal(last["layers.1.resid_post"], full["layers.1.resid_post"][ends])
    assert torch.equal(last["index"][:, 1], torch.tensor([len(r) - 1 for r in rows]))
    second = everything(store.write(llama, batches, SITES, tmp_path / "second", positions=1))
    assert second["index"][:, 0].tolist() == [i for i, r in enumerate(rows) if len(r) > 1]
    assert (second["index"][:, 1] == 1).all()
    skipped = everything(
        store.write(llama, batches, SITES, tmp_path / "skip", skip_first_token=True)
    )
    kept = full["index"][:, 1] != 0
    assert torch.equal(skipped["layers.2.mlp.act"], full["layers.2.mlp.act"][kept])


def test_texts_with_a_tokenizer_are_chunked_padded_and_batched(llama, tmp_path):
    tokenizer = WordTokenizer()
    texts = ["the cat sat on the mat and looked at the dog", "", "a b c d e f", "one two"]
    data = store.write(
        llama, texts, SITES, tmp_path / "t", tokenizer=tokenizer, max_length=4, max_tokens=15,
        batch_size=2, padding="left", progress=False,
    )  # fmt: skip
    rows = text.chunks(tokenizer, texts, 4, 15)
    batches = [text.pad(b, text.pad_id(tokenizer), "left") for b in text.batches(rows, 2)]
    expected = in_memory(llama, batches)
    assert len(data) == 15 == sum(map(len, rows))
    assert all(torch.equal(everything(data)[k], v) for k, v in expected.items())
    assert data.options["text"] == {"batch_size": 2, "max_length": 4, "padding": "left"}


def test_an_interrupted_write_resumes_to_the_same_files(llama, tmp_path, monkeypatch):
    batches = padded(token_rows(20), "right", size=2)  # 10 batches
    calls = counting(llama, monkeypatch)
    store.write(llama, batches, SITES, tmp_path / "whole", shard_tokens=9, progress=False)
    assert len(calls) == 10
    counting(llama, monkeypatch, interrupt_at=7)
    with pytest.raises(KeyboardInterrupt):
        store.write(llama, batches, SITES, tmp_path / "resumed", shard_tokens=9, progress=False)
    partial = files(tmp_path / "resumed")
    assert not any(name.startswith(".") for name in partial)  # no temporary file left
    with pytest.raises(ValueError, match="unfinished"):
        store.read(tmp_path / "resumed")
    manifest = store._read_manifest(tmp_path / "resumed")
    stored = sum(s["rows"] for s in manifest["shards"])
    assert 0 < stored < len(store.read(tmp_path / "whole"))
    # the batches that run again: those with a row not in a finished shard
    ends = torch.tensor([int(b.attention_mask.sum()) for b in batches]).cumsum(0).tolist()
    rerun = sum(end > stored for end in ends)
    calls = counting(llama, monkeypatch)
    store.write(llama, batches, SITES, tmp_path / "resumed", shard_tokens=9, progress=False)
    assert len(calls) == rerun < 10
    assert files(tmp_path / "resumed") == files(tmp_path / "whole")
    calls = counting(llama, monkeypatch)  # a finished store: checked, nothing runs
    store.write(llama, batches, SITES, tmp_path / "resumed", shard_tokens=9, progress=False)
    assert calls == [] and files(tmp_path / "resumed") == files(tmp_path / "whole")


def test_a_folder_written_otherwise_is_refused_and_left_as_it_was(llama, tmp_path):
    batches = padded(token_rows(), "right")
    folder = tmp_path / "acts"
    store.write(llama, batches, SITES, folder, shard_tokens=8, progress=False)
    before = files(folder)
    with pytest.raises(ValueError, match="other options \\(skip_first_token differs"):
        store.write(llama, batches, SITES, folder, shard_tokens=8, skip_first_token=True)
    with pytest.raises(ValueError, match="shard_tokens differs"):
        store.write(llama, batches, SITES, folder, shard_tokens=9)
    with pytest.raises(ValueError, match="sites differ"):
        store.write(llama, batches, SITES[:1], folder, shard_tokens=8)
    with pytest.raises(ValueError, match="the inputs differ"):
        store.write(llama, padded(token_rows(seed=1), "right"), SITES, folder, shard_tokens=8)
    with pytest.raises(ValueError, match="the inputs differ"):  # one batch more
        store.write(llama, [*batches, batches[0]], SITES, folder, shard_tokens=8)
    with torch.no_grad():
        llama.model.layers[0].mlp.down_proj.weight[0, 0] += 1
    with pytest.raises(ValueError, match="fingerprints differ"):
        store.write(llama, batches, SITES, folder, shard_tokens=8)
    assert files(folder) == before


def test_a_write_of_many_shards_holds_at_most_one_shard(llama, tmp_path, monkeypatch):
    batches = padded(token_rows(40, seed=2), "right", size=4)
    held: list[int] = []
    add = store._Shards.add

    def watched(self, acts, rows, inputs):
        add(self, acts, rows, inputs)
        parts = [sum(len(p) for p in parts) for parts in self.parts.values()]
        assert set(parts) == {self.buffered}  # every site and the index hold the same rows
        held.append(self.buffered)

    monkeypatch.setattr(store._Shards, "add", watched)
    data = store.write(llama, batches, SITES, tmp_path / "acts", shard_tokens=5, progress=False)
    assert data.n_shards >= 30
    assert max(held) < 5  # a full shard is written at once, never kept


def test_a_dataset_loads_in_batches_pickles_and_refuses_bad_rows(llama, tmp_path):
    batches = padded(token_rows(), "left")
    data = store.write(llama, batches, SITES, tmp_path / "acts", shard_tokens=6, progress=False)
    first = next(iter(DataLoader(data, batch_size=8)))
    assert first["layers.0.attn.heads"].shape == (8, 4, 8)
    assert torch.equal(first["layers.1.resid_post"], everything(data)["layers.1.resid_post"][:8])
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy[-1]["layers.2.mlp.act"], data[len(data) - 1]["layers.2.mlp.act"])
    with pytest.raises(IndexError, match="outside the store's"):
        data[len(data)]
    with pytest.raises(TypeError, match="index must be an integer"):
        data[1.0]
    with pytest.raises(IndexError, match="shard 99 does not exist"):
        data.shard(99)
    (tmp_path / "acts" / "shard-00001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shard 1 of the store"):
        store.read(tmp_path / "acts").shard(1)
    with pytest.raises(FileNotFoundError, match="holds no activation store"):
        store.read(tmp_path)


def test_bad_input_is_refused_before_anything_is_written(llama, tmp_path):
    batches = padded(token_rows(), "right")
    folder = tmp_path / "acts"
    twos = torch.full((2, 3), 2)
    cases = [
        (TypeError, "give tokenizer=", dict(data=["a text"])),
        (TypeError, "iterable of text.Batch", dict(data="a text")),
        (TypeError, "input_ids are", dict(data=[{"input_ids": 3}])),
        (ValueError, "needs max_tokens", dict(tokenizer=WordTokenizer())),
        (ValueError, "per-token rows", dict(sites=["layers.0.attn.pattern"])),
        (ValueError, "no sites", dict(sites=[])),
        (TypeError, "positions must be 'all' .* an int", dict(positions=True)),
        (TypeError, "positions must be", dict(positions="last")),
        (TypeError, "skip_first_token must be True or False", dict(skip_first_token=1)),
        (ValueError, "shard_tokens must be an integer >= 1", dict(shard_tokens=0)),
        (TypeError, "shard_tokens must be an integer", dict(shard_tokens=2.0)),
        (ValueError, "no token was selected", dict(positions=50)),
        (ValueError, "no token was selected", dict(data=[])),
        (ValueError, "values other than 0 and 1", dict(data=[text.Batch(*[twos] * 3)])),
    ]  # fmt: skip
    for error, message, changed in cases:
        arguments = {"data": batches, "sites": SITES, **changed}
        data, sites = arguments.pop("data"), arguments.pop("sites")
        with pytest.raises(error, match=message):
            store.write(llama, data, sites, folder, progress=False, **arguments)
        assert not folder.exists(), message
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        store.write(llama, batches, SITES, tmp_path / "file")
    (folder / "notes.txt").parent.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no manifest.json"):
        store.write(llama, batches, SITES, folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


@pytest.mark.real
def test_a_store_of_smollm2_texts_equals_the_in_memory_capture(real_model, tmp_path):
    model, tokenizer = real_model
    texts = [
        "The Eiffel Tower is located in Paris, the capital of France.",
        "The Colosseum is an ancient amphitheatre in the centre of Rome.",
        "Water boils at one hundred degrees Celsius at sea level.",
    ]
    sites = ["layers.5.resid_post", "layers.5.attn.heads"]
    data = store.write(
        model, texts, sites, tmp_path / "acts", tokenizer=tokenizer, max_tokens=1000,
        batch_size=2, padding="left", skip_first_token=True, shard_tokens=16, progress=False,
    )  # fmt: skip
    rows = text.chunks(tokenizer, texts, 128, 1000)
    batches = [text.pad(b, text.pad_id(tokenizer), "left") for b in text.batches(rows, 2)]
    expected = in_memory(model, batches, sites)
    kept = expected["index"][:, 1] != 0
    stored = everything(data)
    for name in [*sites, "index"]:
        assert torch.equal(stored[name], expected[name][kept]), name
    assert len(data) == sum(len(r) - 1 for r in rows)
    assert data[0]["layers.5.attn.heads"].shape == (9, 64)  # SmolLM2: 9 heads of 64


def test_an_offloaded_model_is_refused_for_want_of_a_fingerprint(llama, offload, tmp_path):
    batches = padded(token_rows(), "right")
    with pytest.raises(ValueError, match="cannot be fingerprinted"):
        store.write(offload(llama), batches, SITES, tmp_path / "acts", progress=False)
    assert not (tmp_path / "acts").exists()
