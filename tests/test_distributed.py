"""Data-parallel passes: two gloo processes (forked here) give what one process gives.

Every pass runs on 2 ranks over uneven shards (odd numbers of batches of different sizes, and a
rank with no sample at all for ``Reducer.all_reduce``) and is compared with the same call in this
process, which is one process with no group (``World()``: the code path of every user without
torchrun). Statistics are sums whose order of summation differs between 1 and 2 processes, so
they agree to float32 rounding of a sum (``SUM_ORDER``: rtol 1e-5, atol 1e-6); counts are equal,
and per-row captures (``dress.head_activations``, the activation store), which are not sums, are
bit-identical. Both ranks return the very same values.

A rank that raises, is killed or hangs makes the other raise ``RankFailed`` naming it, within
the (short) timeout of the test.
"""

import os
import pickle
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from fakes import WordTokenizer

import interventions as iv
from interventions import distributed, store, text
from interventions.distributed import RankFailed, World, shard
from interventions.models import tiny
from interventions.recipes import alphaedit, dress, head_scores

pytestmark = pytest.mark.usefixtures("one_thread")

SUM_ORDER = dict(rtol=1e-5, atol=1e-6)  # float32 sums added in another order
TIMEOUT = 4.0  # seconds a rank waits for the others in these tests
SITES = {
    "layers.0.resid_post": iv.Mean,
    "layers.1.attn.out": iv.MeanNorm,
    "layers.1.mlp.act": iv.SecondMoment,
}
CORPUS = [
    "a quiet river runs past the mill and the bakers wake early",
    "seven birds sat on the wire while the rain kept falling",
    "the map shows hills roads and a small lake near the village",
    "north winds bring snow to the harbour every winter",
    "an old clock in the hall strikes twelve at noon",
]
RECORDS = [
    {"question": q, "choices": {"label": ["A", "B"], "text": list(c)}, "answerKey": "A"}
    for q, c in [
        ("Where do fish live?", ("sea", "sky")),
        ("What melts in the sun?", ("ice", "rock")),
        ("Cut paper with?", ("scissors", "soup")),
        ("What do bees make?", ("honey", "silk")),
        ("Which season is coldest?", ("winter", "summer")),
    ]
]


def model():
    return tiny("llama", n_kv_heads=2, n_layers=2)


def batches() -> list[text.Batch]:
    """Five right-padded batches of 1 to 3 rows and different widths: uneven shards."""
    g = torch.Generator().manual_seed(3)
    out = []
    for size, width in [(3, 9), (1, 4), (2, 11), (3, 6), (2, 3)]:
        lengths = torch.randint(1, width + 1, (size,), generator=g).tolist()
        lengths[0] = width
        rows = [torch.randint(3, 99, (k,), generator=g).tolist() for k in lengths]
        out.append(text.pad(rows, 0, "right"))
    return out


# --- what each pass gives: run by both ranks, and by this process alone -----------------------


def tally_states(world: World, cache: Path | None = None) -> dict:
    reducers = {site: kind() for site, kind in SITES.items()}
    found = iv.tally(
        model(),
        batches(),
        reducers,
        skip_first_token=True,
        cache=cache,
        progress=False,
        distributed=world,
    )
    return {site: r.state_dict() for site, r in found.items()}


def passes(world: World | None, tokenizer: WordTokenizer, folder: Path) -> dict:
    """Every distributed pass on the tiny model; ``folder``: for the store and the cache.
    ``world`` None: each pass finds its own (the default)."""
    net = model()
    stats = alphaedit.key_stats(
        net,
        tokenizer,
        CORPUS,
        layers=[0, 1],
        max_tokens=120,
        max_length=16,
        batch_size=3,
        cache=False,
        progress=False,
        distributed=world,
    )
    table = head_scores.score(
        net, tokenizer, RECORDS, batch_size=2, progress=False, distributed=world
    )
    heads = dress.head_activations(
        net, tokenizer, CORPUS, batch_size=2, progress=False, distributed=world
    )

    def write():
        return store.write(
            net,
            CORPUS,
            ["layers.1.resid_post", "layers.0.attn.heads"],
            folder / "store",
            tokenizer=tokenizer,
            max_tokens=150,
            max_length=12,
            batch_size=2,
            shard_tokens=16,
            progress=False,
            distributed=world,
        )

    written = write()
    again = write()  # a finished store: checked against its inputs, nothing run
    cached = tally_states(world, folder / "cache")
    files = sorted(p.name for p in (folder / "cache").iterdir())
    read_back = tally_states(world, folder / "cache")  # from the files, on every rank
    return {
        "tally": tally_states(world),
        "key_stats": (stats.moments, stats.count),
        "head_scores": ({k: v.tolist() for k, v in table.raw.items()}, table.stats),
        "head_activations": heads,
        "store": [written[i] for i in range(len(written))],
        "store_again": [again[i] for i in range(len(again))],
        "cached": (cached, files, read_back),
    }


def empty_rank_all_reduce(world: World) -> dict:
    """Rank 0 sees two batches of samples, rank 1 none: the merge makes zeros for it."""
    mean, moment = iv.Mean(), iv.SecondMoment()
    g = torch.Generator().manual_seed(5)
    samples = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g)]
    for x in samples if world.rank == 0 else []:
        mean.update(x)
        moment.update(x)
    mean.all_reduce(world)
    moment.all_reduce(world)
    return {"mean": mean.state_dict(), "moment": moment.state_dict()}


def failing_tally(world: World, job: str, failing: int, cache: Path) -> dict:
    """``tally`` on every rank while rank ``failing`` raises, is killed or hangs in it."""
    net, data = model(), batches()
    if job == "raises" and world.rank == failing:  # its last batch, in its shard
        data[-1].input_ids[0, 0] = 10_000  # outside the vocabulary: the forward fails
    torch_dist.barrier()  # both ready: the clock measures the pass alone
    if world.rank == failing and job == "killed":
        os._exit(7)
    if world.rank == failing and job == "hangs":
        time.sleep(TIMEOUT * 10)
        os._exit(0)
    started = time.perf_counter()
    reducers = {site: kind() for site, kind in SITES.items()}
    try:
        iv.tally(net, data, reducers, cache=cache, progress=False, distributed=world)
    except RankFailed as error:
        seconds = time.perf_counter() - started
        written = list(cache.parent.rglob("*.safetensors"))
        return {"error": str(error), "seconds": seconds, "cache": written}
    return {"error": None}


# --- two processes -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, size: int, port: int, out: str, job: str, payload: bytes) -> None:
    torch.set_num_threads(1)
    folder = Path(out)
    arguments = pickle.loads(payload)
    try:
        if job == "passes":  # as torchrun starts a rank: the passes find the group themselves
            torchrun = dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=size, MASTER_PORT=port)
            os.environ.update({k: str(v) for k, v in torchrun.items()}, MASTER_ADDR="127.0.0.1")
            result = passes(None, arguments["tokenizer"], folder / "shared")
            world = distributed.world()
            result["world"] = (world.rank, world.size)
            result["all_reduce"] = empty_rank_all_reduce(world)
        else:  # a group the script made, and a short timeout
            torch_dist.init_process_group(
                "gloo",
                init_method=f"tcp://127.0.0.1:{port}",
                rank=rank,
                world_size=size,
                timeout=timedelta(seconds=60),
            )
            world = World(rank, size, timedelta(seconds=TIMEOUT))
            result = failing_tally(world, job, arguments["rank"], folder / "shared" / "cache")
        torch.save(result, folder / f"rank{rank}.pt")
    except BaseException:
        (folder / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def run_ranks(tmp_path: Path, job: str, size: int = 2, hung: int | None = None, **arguments):
    """Each rank's result of ``job`` (None for a rank that gave none), run on ``size`` forked
    gloo processes; rank ``hung`` is not waited for but killed once the others are done."""
    (tmp_path / "shared").mkdir(exist_ok=True)
    tally_states(World())  # imports and warms the code here, once, not in each forked rank
    port, payload = _free_port(), pickle.dumps(arguments)
    # fork, as DataLoader workers start on Linux: spawn imports torch and transformers again in
    # every rank, ~25 s a test on the 2 shared cores, against ~0.3 s
    context = mp.get_context("fork")
    ranks = [
        context.Process(target=_rank_main, args=(rank, size, port, str(tmp_path), job, payload))
        for rank in range(size)
    ]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + 120
    for rank, process in enumerate(ranks):
        if rank != hung:
            process.join(max(deadline - time.monotonic(), 1))
    for process in ranks:
        if process.is_alive():
            process.kill()
            process.join()
    errors = [p.read_text() for p in sorted(tmp_path.glob("rank*.err"))]
    assert not errors, "\n".join(errors)
    found = [tmp_path / f"rank{rank}.pt" for rank in range(size)]
    return [torch.load(f, weights_only=False) if f.exists() else None for f in found]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """(one process's results, [rank 0's, rank 1's]) of ``passes``."""
    threads = torch.get_num_threads()  # one thread, as the one_thread fixture (function-scoped)
    torch.set_num_threads(1)
    tokenizer = WordTokenizer(chars=True)  # ids in the order first seen: the same on every rank
    alone = passes(World(), tokenizer, tmp_path_factory.mktemp("alone"))
    ranks = run_ranks(tmp_path_factory.mktemp("ranks"), "passes", tokenizer=tokenizer)
    torch.set_num_threads(threads)
    return alone, ranks


def assert_states_close(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for site in ours:
        assert int(ours[site]["count"]) == int(theirs[site]["count"]), site
        torch.testing.assert_close(ours[site]["total"], theirs[site]["total"], **SUM_ORDER)


def same(a, b) -> bool:
    """Equal values, tensors bit for bit, through dicts, lists and tuples."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_both_ranks_return_the_same_values(two_ranks):
    _, (first, second) = two_ranks
    for key in ("tally", "key_stats", "head_activations", "store", "cached"):
        assert same(first[key], second[key]), key
    assert same(first["head_scores"][0], second["head_scores"][0])


def test_tally_on_two_ranks_equals_one_process(two_ranks):
    alone, ranks = two_ranks
    assert len(batches()) == 5  # 3 + 2 batches of different sizes: uneven shards
    assert_states_close(ranks[0]["tally"], alone["tally"])


def test_key_stats_on_two_ranks_equal_one_process(two_ranks):
    alone, ranks = two_ranks
    (moments, count), (expected, expected_count) = ranks[0]["key_stats"], alone["key_stats"]
    assert count == expected_count
    assert moments.keys() == expected.keys() == {0, 1}
    for layer in moments:
        torch.testing.assert_close(moments[layer], expected[layer], **SUM_ORDER)


def test_head_scores_on_two_ranks_equal_one_process(two_ranks):
    alone, ranks = two_ranks
    (raw, stats), (expected, expected_stats) = ranks[0]["head_scores"], alone["head_scores"]
    for metric in head_scores.RAW_METRICS:
        torch.testing.assert_close(
            torch.tensor(raw[metric]), torch.tensor(expected[metric]), **SUM_ORDER
        )
    for key in ("samples", "tokens", "query_tokens", "batches", "task_found", "data_sha1"):
        assert stats[key] == expected_stats[key], key
    assert stats["batches"] == 3  # 5 records in batches of 2: shards of 2 and 1 batches


def test_head_activations_on_two_ranks_are_the_rows_of_one_process(two_ranks):
    alone, ranks = two_ranks
    assert ranks[0]["head_activations"].shape[0] == len(CORPUS)
    assert torch.equal(ranks[0]["head_activations"], alone["head_activations"])


def test_activation_store_on_two_ranks_has_the_rows_of_one_process(two_ranks):
    alone, ranks = two_ranks
    rows, expected = ranks[0]["store"], alone["store"]
    assert len(rows) == len(expected) > 16  # more than one shard
    assert same(rows, expected)  # activations, example and position of every row
    assert same(ranks[0]["store_again"], expected)  # written again: the same store


def test_the_passes_find_the_group_from_torchruns_environment(two_ranks):
    assert [rank["world"] for rank in two_ranks[1]] == [(0, 2), (1, 2)]


def test_the_cache_is_written_once_by_rank_0_and_read_back_by_every_rank(two_ranks):
    alone, ranks = two_ranks
    for rank in ranks:
        cached, files, again = rank["cached"]
        assert len(files) == len(SITES)  # one file per site, not one per rank
        assert_states_close(cached, alone["tally"])
        for site in SITES:  # read back: exactly the merged statistic that was written
            assert torch.equal(again[site]["total"], cached[site]["total"])


def test_reducer_all_reduce_merges_a_rank_without_samples(two_ranks):
    alone = empty_rank_all_reduce(World())
    for result in (rank["all_reduce"] for rank in two_ranks[1]):
        for name in ("mean", "moment"):
            assert int(result[name]["count"]) == int(alone[name]["count"]) == 6
            assert result[name]["total"].dtype == alone[name]["total"].dtype
            torch.testing.assert_close(result[name]["total"], alone[name]["total"], **SUM_ORDER)


@pytest.mark.parametrize(
    "job,failing,size",
    [("raises", 1, 2), ("killed", 1, 2), ("killed", 0, 2), ("hangs", 1, 2), ("killed", 2, 3)],
)
def test_a_failed_rank_fails_every_rank_naming_it_within_the_timeout(tmp_path, job, failing, size):
    hung = failing if job == "hangs" else None
    results = run_ranks(tmp_path, job, size=size, hung=hung, rank=failing)
    survivors = [result for rank, result in enumerate(results) if rank != failing]
    for survivor in survivors:  # with 3 ranks, rank 1 hears of rank 2 from rank 0
        assert survivor["error"] is not None and f"rank {failing}" in survivor["error"]
        assert survivor["seconds"] < TIMEOUT + 2
        assert survivor["cache"] == []  # a failed tally writes no file
        if job == "raises":  # quoting the failed rank's own error
            assert "rank 1 failed: IndexError" in survivor["error"]
    if job == "raises":  # the rank that failed raises it too
        assert "rank 1 failed: IndexError" in results[1]["error"]
    else:
        assert results[failing] is None


# --- one process ------------------------------------------------------------------------------


def test_shard_gives_contiguous_blocks_covering_every_item_once():
    for n in range(0, 12):
        for size in (1, 2, 3, 5):
            blocks = [shard(n, rank, size) for rank in range(size)]
            assert [i for block in blocks for i in block] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    weighted = [shard(4, rank, 2, weights=[9, 1, 1, 1]) for rank in range(2)]
    assert weighted == [range(0, 1), range(1, 4)]  # balanced by weight, not by count


def test_shard_refuses_weights_that_do_not_fit():
    with pytest.raises(ValueError, match="3 items need 3 weights"):
        shard(3, 0, 2, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="weights >= 0"):
        shard(2, 0, 2, weights=[1.0, float("nan")])


def test_one_process_is_a_world_of_one_and_the_passes_are_unchanged(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.world() == World() == distributed.world(False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.world(True)
    assert World().shard([1, 2, 3]) == [1, 2, 3]
    assert World().exchange("x", "test") == ["x"]
    with World().guard("test"):  # no messages, no group needed
        pass
    # the default (no group) is the very same computation as distributed=False, bit for bit
    default, alone = tally_states(distributed.world()), tally_states(World())
    for site in SITES:
        assert torch.equal(default[site]["total"], alone[site]["total"])


def test_world_refuses_what_is_not_this_process():
    with pytest.raises(RuntimeError, match="process group"):
        World(rank=1, size=2)
    with pytest.raises(ValueError, match="rank"):
        World(rank=2, size=2)
    with pytest.raises(ValueError, match="timeout"):
        World(timeout=timedelta(0))
    with pytest.raises(TypeError, match="distributed must be"):
        distributed.world("yes")
