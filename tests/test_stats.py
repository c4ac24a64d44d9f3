import copy
from dataclasses import dataclass

import pytest
import torch

import interventions as iv
from interventions import ops, stats, text


def hooks_on(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


REDUCERS = [stats.Mean, stats.MeanNorm, stats.SecondMoment]


def test_the_reducers_live_in_stats_under_their_old_names():
    assert iv.Mean is stats.Mean and iv.Reducer is stats.Reducer
    assert iv.SecondMoment is stats.SecondMoment and iv.MeanNorm is stats.MeanNorm
    # ops never imports stats (stats builds on ops): a reducer is recognised by what it does
    assert all(ops.is_reducer(kind()) for kind in REDUCERS) and not ops.is_reducer(stats.Mean)


@pytest.mark.parametrize("kind", REDUCERS)
def test_merging_two_halves_gives_the_statistic_of_the_whole(kind):
    x = torch.randn(10, 6, dtype=torch.float64)
    whole, first, second = kind(), kind(), kind()
    whole.update(x)
    first.update(x[:4])
    second.update(x[4:])
    assert first.merge(second) is first
    assert first.count == 10
    torch.testing.assert_close(first.value, whole.value)
    empty = kind()
    assert empty.merge(first).count == 10  # into an empty one: a copy, not the same tensor
    assert empty.total is not first.total
    torch.testing.assert_close(empty.value, whole.value)
    assert first.merge(kind()).count == 10  # an empty one adds nothing


def test_merge_refuses_other_kinds_and_shapes():
    mean = stats.Mean()
    mean.update(torch.ones(2, 3))
    with pytest.raises(TypeError, match="Mean.merge takes another Mean, got SecondMoment"):
        mean.merge(stats.SecondMoment())
    other = stats.Mean()
    other.update(torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"has shape \(4,\), this one's \(3,\)"):
        mean.merge(other)
    assert mean.count == 2


@pytest.mark.parametrize("kind", REDUCERS)
def test_a_state_round_trip_restores_the_reducer(kind):
    reducer = kind()
    assert kind().load_state_dict(reducer.state_dict()).count == 0
    reducer.update(torch.randn(5, 4))
    state = reducer.state_dict()
    assert state["count"].dtype == torch.int64 and state["count"].ndim == 0
    loaded = kind().load_state_dict(state)
    assert loaded.count == 5 and torch.equal(loaded.value, reducer.value)
    # a reducer accumulating in float64 (head scores' do) keeps its precision through a state
    wide = {"count": state["count"], "total": state["total"].double() / 3}
    assert torch.equal(kind().load_state_dict(wide).total, wide["total"])
    reducer.reset()
    assert reducer.count == 0 and reducer.total is None


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ({"count": torch.tensor(2), "mean": torch.ones(3)}, "expected the keys"),
        ({"count": torch.tensor(2.0), "total": torch.ones(3)}, "integer scalar"),
        ({"count": torch.tensor(0), "total": torch.ones(3)}, "a count of 0 with a total"),
        ({"count": torch.tensor(3)}, "a count of 3 with no total"),
        ({"count": torch.tensor(3), "total": torch.ones(3, dtype=torch.long)}, "float tensor"),
        ({"count": torch.tensor(3), "total": torch.tensor([1.0, float("nan")])}, "NaN"),
        ([1, 2], "expected the keys"),
    ],
)
def test_a_bad_state_is_refused(state, words):
    with pytest.raises(ValueError, match=words):
        stats.Mean().load_state_dict(state)


def test_capture_clear_resets_its_reducer(llama, ids):
    capture = iv.Capture(reduce=iv.Mean())
    with iv.intervene(llama, {"layers.0.resid_post": capture}):
        llama(ids)
    assert capture.reduce.count == 18
    capture.clear()
    assert capture.reduce.count == 0 and capture.reduce.total is None


# --- tally -----------------------------------------------------------------------------------


@dataclass
class Rows:
    """What tally reads of a text.Batch: padded token ids, the mask of real tokens, positions."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor


def padded(rows: list[list[int]], side: str) -> Rows:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, columns], mask[i, columns] = torch.tensor(row), 1
    return Rows(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))


def token_rows(seed: int, n: int = 6) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (n,), generator=g).tolist()
    return [torch.randint(3, 99, (k,), generator=g).tolist() for k in lengths]


def batches_of(rows: list[list[int]], side: str = "right", size: int = 3) -> list[Rows]:
    return [padded(rows[i : i + size], side) for i in range(0, len(rows), size)]


class Forwards:
    """Counts the model's forwards and those of one block while the block of code runs."""

    def __init__(self, model, block: int):
        self.model, self.block = model, iv.adapter(model).blocks(model)[block]

    def __enter__(self):
        self.calls, self.block_calls = 0, 0
        self.handles = [
            self.model.register_forward_pre_hook(lambda *_: self._count("calls")),
            self.block.register_forward_pre_hook(lambda *_: self._count("block_calls")),
        ]
        return self

    def _count(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


SITES = {
    "layers.1.mlp.act": stats.SecondMoment,
    "layers.0.resid_post": stats.Mean,
    "layers.1.attn.heads": stats.MeanNorm,
}


EXPECTED = {  # each reducer, computed by hand over samples [n, ...] in float64
    stats.SecondMoment: lambda x: x.T @ x / len(x),
    stats.Mean: lambda x: x.mean(0),
    stats.MeanNorm: lambda x: x.norm(dim=-1).mean(0),
}


def fresh(sites=SITES) -> dict:
    return {site: kind() for site, kind in sites.items()}


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("skip_first_token", [False, True])
def test_tally_equals_a_manual_reduction_over_the_real_tokens(model, side, skip_first_token):
    batches = batches_of(token_rows(0), side)
    with iv.capture(model, list(SITES)) as full:
        for b in batches:
            model(
                input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids
            )
    counted = []
    for b in batches:
        mask = b.attention_mask.bool().clone()
        if skip_first_token:
            mask[torch.arange(len(mask)), b.attention_mask.argmax(-1)] = False
        counted.append(mask)
    result = stats.tally(model, batches, fresh(), skip_first_token=skip_first_token, progress=False)
    assert list(result) == list(SITES)
    for site in SITES:
        x = torch.cat([r[m] for r, m in zip(full.records(site), counted, strict=True)]).double()
        assert result[site].count == sum(int(m.sum()) for m in counted)
        expected = EXPECTED[SITES[site]](x)
        torch.testing.assert_close(result[site].value.double(), expected, atol=1e-5, rtol=1e-5)
        assert result[site].value.device.type == "cpu"


def test_tally_is_one_pass_that_stops_after_the_last_site(llama):
    batches = batches_of(token_rows(1))
    with Forwards(llama, block=2) as forwards:
        stats.tally(llama, batches, fresh(), progress=False)
    assert forwards.calls == len(batches)  # one forward per batch for all three sites
    assert forwards.block_calls == 0  # nothing after layer 1 ran


def test_the_cache_returns_the_same_statistics_without_running_the_model(llama, tmp_path):
    batches = batches_of(token_rows(2))
    first = stats.tally(llama, batches, fresh(), cache=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == len(SITES)
    with Forwards(llama, block=0) as forwards:
        again = stats.tally(llama, iter(batches), fresh(), cache=tmp_path, progress=False)
    assert forwards.calls == 0
    for site in SITES:
        assert again[site].count == first[site].count
        assert torch.equal(again[site].total, first[site].total)
        assert torch.equal(again[site].value, first[site].value)


def changed_weight(model, name: str):
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.get_parameter(name).view(-1)[0] += 1e-3  # one element of one parameter
    return changed


def test_the_cache_misses_when_what_feeds_a_site_changes(llama, tmp_path):
    batches = batches_of(token_rows(3))
    site = {"layers.1.mlp.act": stats.SecondMoment}
    stats.tally(llama, batches, fresh(site), cache=tmp_path, progress=False)

    def misses(model=llama, batches=batches, sites=site, skip=False) -> bool:
        with Forwards(model, block=0) as forwards:
            stats.tally(
                model, batches, fresh(sites), cache=tmp_path, skip_first_token=skip, progress=False
            )
        return forwards.calls > 0

    a = iv.adapter(llama)
    layers = a.layers
    assert misses(changed_weight(llama, f"{layers}.0.self_attn.q_proj.weight"))
    assert misses(changed_weight(llama, f"{layers}.1.mlp.up_proj.weight"))
    assert misses(changed_weight(llama, "model.embed_tokens.weight"))
    assert misses(batches=batches_of(token_rows(3), size=2))  # other batches of the same rows
    other = copy.deepcopy(batches)
    other[0].input_ids[0, 0] += 1
    assert misses(batches=other)
    assert misses(skip=True)
    assert misses(sites={"layers.1.mlp.act": stats.Mean})
    trained = copy.deepcopy(llama).train()
    assert misses(trained)
    # what only reads the site, or comes after it, leaves its statistic valid
    assert not misses(changed_weight(llama, f"{layers}.1.{a.down_proj}.weight"))
    assert not misses(changed_weight(llama, f"{layers}.2.self_attn.q_proj.weight"))
    assert not misses(changed_weight(llama, "lm_head.weight"))
    assert not misses(changed_weight(llama, "model.norm.weight"))
    assert not misses()


def test_the_down_projection_feeds_later_sites(llama):
    down = f"{iv.adapter(llama).layers}.1.{iv.adapter(llama).down_proj}.weight"
    changed = changed_weight(llama, down)
    assert stats.fingerprint(changed, "layers.1.mlp.act") == stats.fingerprint(
        llama, "layers.1.mlp.act"
    )
    for site in ("layers.1.mlp.out", "layers.1.resid_post", "layers.2.resid_pre", "final_norm"):
        assert stats.fingerprint(changed, site) != stats.fingerprint(llama, site), site
    assert stats.fingerprint(llama, "layers.1.resid_pre") == stats.fingerprint(
        changed_weight(llama, f"{iv.adapter(llama).layers}.1.self_attn.q_proj.weight"),
        "layers.1.resid_pre",
    )


def test_only_the_sites_missing_from_the_cache_are_computed(llama, tmp_path):
    batches = batches_of(token_rows(4))
    one = {"layers.0.resid_post": stats.Mean}
    cached = stats.tally(llama, batches, fresh(one), cache=tmp_path, progress=False)
    with Forwards(llama, block=0) as forwards:
        both = stats.tally(llama, batches, fresh(), cache=tmp_path, progress=False)
    assert forwards.calls == len(batches)
    assert torch.equal(both["layers.0.resid_post"].total, cached["layers.0.resid_post"].total)
    assert len(list(tmp_path.iterdir())) == len(SITES)


def test_an_interrupted_tally_writes_no_file_and_leaves_no_hook(llama, tmp_path):
    batches = batches_of(token_rows(5))
    calls = []

    def interrupt(*_):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    handle = iv.adapter(llama).blocks(llama)[0].register_forward_hook(interrupt)
    reducers = fresh()
    try:
        with pytest.raises(KeyboardInterrupt):
            stats.tally(llama, batches, reducers, cache=tmp_path / "stats", progress=False)
    finally:
        handle.remove()
    assert not (tmp_path / "stats").exists() or not list((tmp_path / "stats").iterdir())
    assert hooks_on(llama) == 0
    assert all(r.count == 0 and r.total is None for r in reducers.values())


def test_merging_tallies_of_two_halves_equals_one_pass(llama):
    rows = token_rows(6, n=8)
    whole = stats.tally(llama, batches_of(rows), fresh(), progress=False)
    first = stats.tally(llama, batches_of(rows[:3]), fresh(), progress=False)
    second = stats.tally(llama, batches_of(rows[3:]), fresh(), progress=False)
    for site in SITES:
        merged = first[site].merge(second[site])
        assert merged.count == whole[site].count
        torch.testing.assert_close(merged.value, whole[site].value)


def test_tally_refuses_bad_input_clearly(llama, tmp_path):
    batches = batches_of(token_rows(7))
    mean = {"layers.0.resid_post": stats.Mean()}
    with pytest.raises(ValueError, match="tally got no batches"):
        stats.tally(llama, [], mean, progress=False)
    with pytest.raises(ValueError, match="tally got no batches"):
        stats.tally(llama, iter([]), {"layers.0.resid_post": stats.Mean()}, cache=tmp_path)
    with pytest.raises(ValueError, match="unknown site 'layers.0.resid'"):
        stats.tally(llama, batches, {"layers.0.resid": stats.Mean()})
    with pytest.raises(ValueError, match="expected exactly one site"):
        stats.tally(llama, batches, {"layers.*.resid_post": stats.Mean()})
    with pytest.raises(TypeError, match="is a type; expected a Reducer instance"):
        stats.tally(llama, batches, {"layers.0.resid_post": stats.Mean})
    with pytest.raises(TypeError, match="bare Reducer base class"):
        stats.tally(llama, batches, {"layers.0.resid_post": stats.Reducer()})
    with pytest.raises(TypeError, match="non-empty dict"):
        stats.tally(llama, batches, {})
    used = stats.Mean()
    used.update(torch.ones(2, 32))
    with pytest.raises(ValueError, match="already counted 2 samples"):
        stats.tally(llama, batches, {"layers.0.resid_post": used})
    shared = stats.Mean()
    with pytest.raises(ValueError, match="same object as another site's"):
        stats.tally(llama, batches, {"layers.0.resid_post": shared, "layers.1.resid_post": shared})
    with pytest.raises(TypeError, match="cache must be None"):
        stats.tally(llama, batches, {"layers.0.resid_post": stats.Mean()}, cache=True)
    with pytest.raises(TypeError, match="batches must be an iterable"):
        stats.tally(llama, batches[0].input_ids, {"layers.0.resid_post": stats.Mean()})
    floats = Rows(batches[0].input_ids.float(), batches[0].attention_mask, batches[0].position_ids)
    with pytest.raises(TypeError, match="batch 0 is a Rows whose input_ids are a torch.float32"):
        stats.tally(llama, [floats], {"layers.0.resid_post": stats.Mean()}, progress=False)
    short = Rows(batches[0].input_ids, batches[0].attention_mask[:, :2], batches[0].position_ids)
    with pytest.raises(ValueError, match="attention_mask is a torch.int64 tensor of shape"):
        stats.tally(llama, [short], {"layers.0.resid_post": stats.Mean()}, progress=False)
    padding = Rows(batches[0].input_ids[:, :1], torch.zeros(3, 1, dtype=torch.long), None)
    padding.attention_mask[0] = 1  # one real token per batch, which skip_first_token drops
    with pytest.raises(ValueError, match="no token was counted at layers.0.resid_post"):
        stats.tally(
            llama,
            [padding],
            {"layers.0.resid_post": stats.Mean()},
            skip_first_token=True,
            progress=False,
        )
    with pytest.raises(TypeError, match="skip_first_token must be True or False"):
        stats.tally(llama, batches, {"layers.0.resid_post": stats.Mean()}, skip_first_token=1)
    assert hooks_on(llama) == 0


def test_non_finite_activations_are_refused_and_cache_nothing(llama, tmp_path):
    broken = copy.deepcopy(llama)
    with torch.no_grad():
        broken.get_parameter("model.embed_tokens.weight")[5:] = float("inf")
    reducer = stats.Mean()
    with pytest.raises(ValueError, match="activations at layers.0.resid_post hold NaN or inf"):
        stats.tally(
            broken,
            batches_of(token_rows(8)),
            {"layers.0.resid_post": reducer},
            cache=tmp_path,
            progress=False,
        )
    assert list(tmp_path.iterdir()) == [] and reducer.count == 0


def test_a_foreign_file_under_the_key_is_computed_again(llama, tmp_path):
    batches = batches_of(token_rows(9))
    first = stats.tally(llama, batches, fresh(), cache=tmp_path, progress=False)
    for path in tmp_path.iterdir():
        path.write_bytes(b"not a safetensors file")
    again = stats.tally(llama, batches, fresh(), cache=tmp_path, progress=False)
    for site in SITES:
        assert torch.equal(again[site].total, first[site].total)
    assert all(path.stat().st_size > 100 for path in tmp_path.iterdir())  # replaced


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert stats.default_cache_dir("alphaedit") == tmp_path / "interventions" / "alphaedit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert stats.default_cache_dir("x") == tmp_path / "home" / ".cache" / "interventions" / "x"
    for bad in ("", "a/b", "..", 3):
        with pytest.raises(ValueError, match="one folder name"):
            stats.default_cache_dir(bad)


def test_a_module_site_is_fingerprinted_by_every_weight_and_tallied(llama, ids):
    site = "module:model.layers.0.mlp.act_fn:output"
    lm_head = changed_weight(llama, "lm_head.weight")
    assert stats.fingerprint(lm_head, site) != stats.fingerprint(llama, site)  # no adapter says
    batch = text.pad(ids.tolist(), 0, "right")
    tallied = stats.tally(llama, [batch], {site: iv.Mean()}, progress=False)[site]
    with iv.capture(llama, site) as cache:
        llama(**batch.inputs(llama))
    torch.testing.assert_close(tallied.value, cache[site].flatten(0, 1).mean(0))


def test_fingerprints_of_many_sites_equal_each_sites_own(llama):
    sites = ["layers.0.mlp.act", "layers.1.resid_post", "final_norm"]
    together = stats.fingerprints(llama, sites)
    assert together == {site: stats.fingerprint(llama, site) for site in sites}
    assert len(set(together.values())) == len(sites)  # each site is fed by other weights
