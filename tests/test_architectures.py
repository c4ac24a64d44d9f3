"""Every architecture with an adapter, one check battery: sites mean what their names say.

Each check is its own test, parametrised over the model types that the installed transformers
builds (``available_tiny_types()``) and that have an adapter. A check is skipped only where the
adapter refuses the site kind (``table.refused``) or the check does not apply (parallel blocks
have no resid_mid). The tiny models are built once per session (``tiny_models`` in conftest).
Defects that the battery finds in adapters/ or attach.py are listed in KNOWN_DEFECTS: xfails
with the reason, shown in every run's summary.
"""

import copy
import importlib
import inspect
import re
import warnings
from contextlib import contextmanager
from typing import NamedTuple

import pytest
import torch
import transformers
from generation import generate
from packaging.version import Version
from torch import nn

import interventions as iv
from interventions.adapters import _REGISTRY, Adapter, Geometry
from interventions.models import (
    TINY_CONFIGS,
    TINY_TYPES,
    available_tiny_types,
    tiny,
    tiny_config,
)
from interventions.sites import LAYER_KINDS, MODEL_KINDS

# model types checked here: computed at collection, so a table registered in adapters/ joins
COVERED = [t for t in available_tiny_types() if t in _REGISTRY]
UNCOVERED = [t for t in available_tiny_types() if t not in _REGISTRY]
ATOL = 1e-5

release = Version(transformers.__version__)
before_5 = release.major < 5
before_4_57 = release.release < (4, 57)

# Defects of adapters/ and attach.py that this battery finds (not of the battery), for whoever
# fixes them: check -> model type -> (applies to the installed transformers, strict, what is
# wrong). Each is an xfail listed in every run's summary (-ra); a strict one turns red once
# fixed, until its entry here goes (in the fixing commit). Not strict: the release that fixed it
# is not known.
_REVERT_ADDS_CONFIG_FLAG = (
    "before 4.57 (seen on 4.53) SmolLM3's config has no mlp_bias; bake sets the flag to create "
    "down_proj's bias and WeightDelta.revert leaves config.mlp_bias = False instead of removing "
    "the attribute it added"
)
KNOWN_DEFECTS: dict[str, dict[str, tuple[bool, bool, str]]] = {
    "bake": {"smollm3": (before_4_57, False, _REVERT_ADDS_CONFIG_FLAG)},
}


def refuses(model_type: str, kind: str) -> bool:
    """Whether the table of ``model_type`` refuses ``kind`` on its tiny model's config."""
    try:
        _REGISTRY[model_type].refuse(kind, tiny_config(model_type))
    except NotImplementedError:
        return True
    return False


def over_covered(check: str, needs: tuple[str, ...] = (), only=None):
    """Parametrise a check over the COVERED types whose tables give every site it ``needs``
    (and for which ``only(model_type)`` holds), each known defect of it an xfail. A type that
    refuses one of them is not a parameter: the refusal test covers it."""
    defects = KNOWN_DEFECTS.get(check, {})
    params = []
    for model_type in COVERED:
        if any(refuses(model_type, kind) for kind in needs):
            continue
        if only is not None and not only(model_type):
            continue
        applies, strict, why = defects.get(model_type, (False, False, ""))
        marks = [pytest.mark.xfail(strict=strict, reason=why)] if applies else []
        params.append(pytest.param(model_type, marks=marks))
    return pytest.mark.parametrize("model_type", params)


class Arch(NamedTuple):
    """One model type's shared tiny model, its adapter table and geometry."""

    model: nn.Module
    table: Adapter
    g: Geometry

    @property
    def parallel(self) -> bool:  # in this configuration (GPT-NeoX: use_parallel_residual)
        return self.table.is_parallel(self.model.config)

    def refused(self, kind: str) -> bool:
        try:
            self.table.refuse(kind, self.model.config)
        except NotImplementedError:
            return True
        return False

    def sites(self, kinds) -> list[str]:
        """Every site of ``kinds`` (all layers) that the adapter does not refuse."""
        names = [k for k in kinds if k in MODEL_KINDS and not self.refused(k)]
        for layer in range(self.g.n_layers):
            names += [
                f"layers.{layer}.{k}" for k in kinds if k in LAYER_KINDS and not self.refused(k)
            ]
        return names


@pytest.fixture
def subject(model_type, tiny_models) -> Arch:
    model = tiny_models(model_type)
    table = iv.adapter(model)
    return Arch(model, table, table.geometry(model.config))


# --- helpers ------------------------------------------------------------------------------------
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def captured(model, sites, ids: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    with torch.no_grad(), iv.capture(model, sites) as cache:
        logits = model(ids).logits
    return {name: cache[name] for name in cache}, logits


@contextmanager
def recorded(modules, *, inputs: bool = False):
    """Record what each module returns (or, with ``inputs``, the hidden states it receives)
    with plain torch hooks: the reference the sites are compared with."""
    records: list[list[torch.Tensor]] = [[] for _ in modules]
    handles = []
    for record, module in zip(records, modules, strict=True):
        if inputs:

            def hook(mod, args, kwargs, record=record):
                record.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        else:

            def hook(mod, args, output, record=record):
                out = output if isinstance(output, torch.Tensor) else output[0]
                record.append(out.detach().clone())

            handles.append(module.register_forward_hook(hook))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eager_attention(model):
    """The model's own eager attention, as ``attn.pattern`` switches to it."""
    config = model.config
    saved = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = saved


def n_hooks(model) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=ATOL, msg=lambda m: f"{what}: {m}")


# --- the builder ------------------------------------------------------------------------------
MOE_LAYERS = {  # which layers of the 2-layer tiny model have experts
    "qwen2_moe": [0, 1],
    "qwen3_moe": [0, 1],
    "mixtral": [0, 1],
    "olmoe": [0, 1],
    "gpt_oss": [0, 1],
    "deepseek_v3": [1],  # a dense first layer, as released (first_k_dense_replace)
    "llama4_text": [1],  # dense and MoE layers interleaved, as released
}


def expert_counts(block: torch.nn.Module) -> list[int]:
    """How many experts each expert container of a block holds (a ModuleList of experts, or
    fused expert weights with the experts on the first axis)."""
    counts = []
    for name, module in block.named_modules():
        if not name.endswith("experts"):
            continue
        if isinstance(module, torch.nn.ModuleList):
            counts.append(len(module))
        else:
            counts += [p.shape[0] for p in module.parameters(recurse=False) if p.ndim == 3]
    return counts


@pytest.mark.parametrize("model_type", available_tiny_types())
def test_tiny_builds_a_small_float32_model_that_runs_and_generates(model_type, tiny_models, ids):
    model = tiny_models(model_type)
    assert model.config.model_type == model_type and not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) < 60_000
    logits = logits_of(model, ids)
    assert logits.shape == (2, 9, 99) and bool(logits.isfinite().all())
    tokens = model.generate(
        ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0
    )
    assert tokens.shape == (2, 13)


@pytest.mark.parametrize("model_type", available_tiny_types())
def test_tiny_eager_attention_computes_what_the_default_one_does(model_type, tiny_models, ids):
    # attn.pattern switches to eager attention: a config that only the default attention
    # tolerates (DeepSeek-V3's eager path divides heads by num_key_value_heads) shows here
    model = tiny_models(model_type)
    default = logits_of(model, ids)
    with eager_attention(model):
        eager = logits_of(model, ids)
    close(eager, default, f"{model_type}: eager vs {model.config._attn_implementation} attention")


@pytest.mark.parametrize("model_type", [t for t in MOE_LAYERS if t in available_tiny_types()])
def test_tiny_moe_models_have_four_small_experts_where_the_architecture_has_them(
    model_type, tiny_models
):
    model = tiny_models(model_type)
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)][0]
    for layer, block in enumerate(blocks):
        counts = expert_counts(block)
        if layer in MOE_LAYERS[model_type]:
            assert counts and set(counts) == {4}, f"layer {layer}: {counts}"
            routed = [p for n, p in block.named_parameters() if re.search(r"(^|\.)experts\.", n)]
            # width 16 (a fused gate-and-up projection is 2 x 16), nothing of the dense width
            assert any(16 in p.shape for p in routed), "experts 16 wide"
            assert max(max(p.shape[1:]) for p in routed) <= 32, "experts 16 wide"
        else:
            assert counts == [], f"layer {layer} should be dense, has experts {counts}"


@pytest.mark.skipif("qwen2_moe" not in available_tiny_types(), reason="no qwen2_moe")
def test_tiny_qwen2_moe_has_its_shared_expert(tiny_models):
    mlp = tiny_models("qwen2_moe").model.layers[0].mlp
    assert mlp.shared_expert.down_proj.in_features == 16 and mlp.shared_expert_gate is not None


def test_tiny_gemma_heads_are_wider_than_hidden_over_heads(tiny_models):
    attention = tiny_models("gemma").model.layers[0].self_attn
    assert attention.o_proj.in_features == 4 * 16 != 32


def test_tiny_keeps_its_old_defaults():
    # existing tests compare tiny("llama") (multi-head) with n_kv_heads=2 (grouped-query)
    assert tiny_config("llama").num_key_value_heads == 4
    assert tiny_config("llama", n_kv_heads=2).num_key_value_heads == 2
    assert tiny_config("gpt2", n_layers=3).n_layer == 3
    assert tiny_config("gpt2").n_inner is None  # d_mlp 4 x 32, as before


def test_tiny_types_are_all_listed_and_the_installed_release_builds_them():
    assert len(TINY_TYPES) == 36 and set(TINY_TYPES) == set(TINY_CONFIGS)
    assert {"llama", "qwen2", "mistral", "gpt2", "gemma", "falcon"} <= set(available_tiny_types())


def test_tiny_refuses_a_type_the_installed_release_cannot_build(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.52.1")
    assert "llama4_text" not in available_tiny_types()
    with pytest.raises(ValueError, match="transformers 4.52.1 .*'llama4_text' .*4.53"):
        tiny("llama4_text")


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (dict(model_type="bert"), ValueError, "tiny.. builds one of"),
        (dict(model_type="llama", n_kv_heads=3), ValueError, "must divide the 4 attention heads"),
        (dict(model_type="llama", n_kv_heads=2.0), TypeError, "n_kv_heads must be an int"),
        (dict(model_type="llama", n_kv_heads=True), TypeError, "n_kv_heads must be an int"),
        (dict(model_type="gpt2", n_kv_heads=2), ValueError, "gpt2 has no grouped-query option"),
        (dict(model_type="llama", n_layers=0), ValueError, "n_layers must be an int >= 1"),
        (dict(model_type="llama", n_layers=True), ValueError, "n_layers must be an int >= 1"),
        (dict(model_type="llama", seed=1.5), TypeError, "seed must be an int"),
    ],
)
def test_tiny_refuses_bad_arguments(arguments, error, message):
    model_type = arguments.pop("model_type")
    with pytest.raises(error, match=message):
        tiny(model_type, **arguments)


# --- which architectures are covered --------------------------------------------------------------
def test_the_battery_covers_the_first_architectures_and_every_registered_one():
    assert {"llama", "qwen2", "mistral", "gpt2"} <= set(COVERED)
    assert set(COVERED) | set(UNCOVERED) == set(available_tiny_types())
    assert not UNCOVERED, f"tiny types without an adapter: {UNCOVERED}"
    assert len(COVERED) >= (36 if not before_5 else 28)


# --- the battery -------------------------------------------------------------------------------
@over_covered("empty plan")
def test_empty_plan_gives_bit_identical_logits(subject, ids):
    model, _, _ = subject
    bare = logits_of(model, ids)
    with iv.intervene(model, {}):
        assert torch.equal(logits_of(model, ids), bare)


@over_covered("capture all")
def test_capturing_every_site_leaves_the_logits_bit_identical(subject, ids):
    model, table, g = subject
    kinds = [k for k in (*MODEL_KINDS, *LAYER_KINDS) if k != "attn.pattern"]
    bare = logits_of(model, ids)
    cache, logits = captured(model, subject.sites(kinds), ids)
    assert torch.equal(logits, bare)
    assert len(cache) == len(subject.sites(kinds))
    if subject.refused("attn.pattern"):
        return
    # attn.pattern switches to eager attention and asks it for its probabilities (4.x models
    # whose attention class was fixed at load compute them by their eager path then)
    with eager_attention(model), torch.no_grad():
        bare_eager = model(ids, output_attentions=True).logits
    attention = model.config._attn_implementation
    cache, logits = captured(model, subject.sites((*kinds, "attn.pattern")), ids)
    assert torch.equal(logits, bare_eager)
    assert model.config._attn_implementation == attention  # switched back


def check_through_projection(
    subject: Arch, ids: torch.Tensor, kind: str, out_kind: str, path: str, shape: tuple[int, ...]
) -> None:
    """``kind`` (the projection's input, ``shape`` per token) through the projection at ``path``
    gives its output, and ``out_kind`` is that output where the table reads it there."""
    model, table, g = subject
    projections = [table.block_module(model, i, path) for i in range(g.n_layers)]
    read_elsewhere = {"attn.out": table.attn_out, "mlp.out": table.mlp_out}[out_kind]
    with recorded(projections) as outputs:
        cache, _ = captured(model, subject.sites((kind, out_kind)), ids)
    for i, projection in enumerate(projections):
        x = cache[f"layers.{i}.{kind}"]
        assert x.shape == (*ids.shape, *shape)
        through = x.flatten(2) @ table.weight(projection).T  # heads: [b, t, h, d] -> [b, t, h*d]
        if projection.bias is not None:
            through = through + projection.bias
        close(through, outputs[i][0], f"layer {i}: {kind} @ {path}")
        if read_elsewhere is None and f"layers.{i}.{out_kind}" in cache:
            close(cache[f"layers.{i}.{out_kind}"], outputs[i][0], f"layer {i}: {out_kind}")


@over_covered("heads", needs=("attn.heads",))
def test_heads_through_the_output_projection_are_its_output(subject, ids):
    g = subject.g
    check_through_projection(
        subject, ids, "attn.heads", "attn.out", subject.table.o_proj, (g.n_heads, g.d_head)
    )


@over_covered("mlp.act", needs=("mlp.act",))
def test_mlp_act_through_the_down_projection_is_its_output(subject, ids):
    check_through_projection(
        subject, ids, "mlp.act", "mlp.out", subject.table.down_proj, (subject.g.d_mlp,)
    )


@over_covered("residual", needs=("resid_pre", "attn.out", "mlp.out", "resid_post"))
def test_the_residual_stream_adds_up(subject, ids):
    model, _, g = subject
    kinds = ("resid_pre", "attn.out", "mlp.out", "resid_post")
    # sequential blocks (parallel ones have none; Granite refuses it) also have resid_mid
    has_mid = not subject.parallel and not subject.refused("resid_mid")
    kinds += ("resid_mid",) if has_mid else ()
    cache, _ = captured(model, subject.sites(kinds), ids)
    for i in range(g.n_layers):
        site = {k: cache[f"layers.{i}.{k}"] for k in kinds}
        close(
            site["resid_post"],
            site["resid_pre"] + site["attn.out"] + site["mlp.out"],
            f"layer {i}: resid_post = resid_pre + attn.out + mlp.out",
        )
        if has_mid:
            close(
                site["resid_mid"],
                site["resid_pre"] + site["attn.out"],
                f"layer {i}: resid_mid = resid_pre + attn.out",
            )
            close(
                site["resid_post"],
                site["resid_mid"] + site["mlp.out"],
                f"layer {i}: resid_post = resid_mid + mlp.out",
            )


@over_covered("blocks chain", needs=("resid_pre", "resid_post"))
def test_each_block_reads_what_the_previous_one_wrote(subject, ids):
    model, table, g = subject
    cache, _ = captured(model, subject.sites(("resid_pre", "resid_post")), ids)
    for i in range(g.n_layers - 1):
        close(cache[f"layers.{i}.resid_post"], cache[f"layers.{i + 1}.resid_pre"], f"layer {i}")


def check_input_site(subject: Arch, kind: str, path: str, ids: torch.Tensor) -> None:
    """``kind`` at every layer equals the hidden states the block's module ``path`` receives."""
    model, table, g = subject
    modules = [table.block_module(model, i, path) for i in range(g.n_layers)]
    with recorded(modules, inputs=True) as inputs:
        cache, _ = captured(model, subject.sites((kind,)), ids)
    for i in range(g.n_layers):
        close(
            cache[f"layers.{i}.{kind}"], inputs[i][0], f"layer {i}: {kind} vs what {path} receives"
        )


@over_covered("attn.in", needs=("attn.in",))
def test_attn_in_is_what_attention_receives(subject, ids):
    check_input_site(subject, "attn.in", subject.table.attn, ids)


@over_covered("mlp.in", needs=("mlp.in",))
def test_mlp_in_is_what_the_mlp_receives(subject, ids):
    check_input_site(subject, "mlp.in", subject.table.mlp, ids)


@over_covered("reads", needs=("resid_pre", "attn.in"))
def test_attention_reads_resid_pre_and_the_mlp_reads_what_the_block_says(subject, ids):
    # attn.in is attn_norm(resid_pre); mlp.in is mlp_norm(resid_mid) in a sequential block and
    # mlp_norm(resid_pre) in a parallel one (the residual sums alone cannot tell them apart)
    model, table, g = subject
    mlp_reads = "resid_pre" if subject.parallel else "resid_mid"
    reads = [("attn.in", table.attn_norm, "resid_pre")]
    if not subject.refused("mlp.in") and not subject.refused(mlp_reads):  # Granite: no resid_mid
        reads.append(("mlp.in", table.mlp_norm, mlp_reads))
    kinds = {k for kind, _, stream in reads for k in (kind, stream)}
    cache, _ = captured(model, subject.sites(kinds), ids)
    for i in range(g.n_layers):
        for kind, norm, stream in reads:
            x = cache[f"layers.{i}.{stream}"]
            with torch.no_grad():
                expected = x if norm is None else table.block_module(model, i, norm)(x)
            close(cache[f"layers.{i}.{kind}"], expected, f"layer {i}: {kind} = {norm}({stream})")


@over_covered("embed", needs=("embed", "resid_pre"))
def test_embed_is_the_first_block_input(subject, ids):
    model, table, _ = subject
    cache, _ = captured(model, ["embed", "layers.0.resid_pre"], ids)
    close(cache["embed"], cache["layers.0.resid_pre"], "embed vs layers.0.resid_pre")


@over_covered("logits", needs=("logits",))
def test_the_logits_site_is_the_output_logits(subject, ids):
    model, table, _ = subject
    cache, logits = captured(model, ["logits"], ids)
    close(cache["logits"], logits, "logits site vs output logits")


@over_covered("pattern", needs=("attn.pattern",))
def test_attention_pattern_rows_are_distributions(subject, ids):
    model, table, g = subject
    cache, _ = captured(model, subject.sites(("attn.pattern",)), ids)
    for i in range(g.n_layers):
        pattern = cache[f"layers.{i}.attn.pattern"]
        assert pattern.shape == (ids.shape[0], g.n_heads, ids.shape[1], ids.shape[1])
        assert bool((pattern >= 0).all())
        rows = pattern.sum(-1)
        if table.attention_sinks:  # mass on the sinks is not in the returned pattern
            assert bool((rows <= 1 + ATOL).all()), f"layer {i}: rows sum to {rows.max()}"
        else:
            close(rows, torch.ones_like(rows), f"layer {i}: pattern rows")


@over_covered("generate", needs=("attn.heads",))
@pytest.mark.parametrize("positions", [-1, None])
def test_cached_generate_equals_uncached_under_a_head_bias(subject, positions, ids):
    model, table, g = subject
    vector = 4 * torch.randn(g.d_head, generator=torch.Generator().manual_seed(3))
    plan = {"layers.1.attn.heads": iv.AddBias(vector, positions=positions)}
    _, bare_logits = generate(model, ids, {}, use_cache=True)
    tokens, logits = generate(model, ids, plan, use_cache=True)
    re_tokens, re_logits = generate(model, ids, plan, use_cache=False)
    assert not torch.allclose(logits, bare_logits, atol=1e-4), "the bias must change something"
    assert torch.equal(tokens, re_tokens)
    close(logits, re_logits, "cached vs uncached generate")


def foldable_plan(subject: Arch) -> dict:
    _, table, g = subject
    generator = torch.Generator().manual_seed(4)
    plan = {
        "layers.0.attn.heads": iv.Compose(
            iv.AddBias(torch.randn(g.n_heads, g.d_head, generator=generator)), iv.Rescale(1.5)
        )
    }
    for kind, read_at in (("attn.out", table.attn_out), ("mlp.out", table.mlp_out)):
        if read_at is None and not subject.refused(kind):  # the projection's own output
            plan[f"layers.1.{kind}"] = iv.Compose(
                iv.AddBias(torch.randn(g.d_model, generator=generator)),
                iv.Rescale(0.5, direction=torch.randn(g.d_model, generator=generator)),
            )
    return plan


@over_covered("bake", needs=("attn.heads",))
def test_bake_equals_runtime_and_revert_is_bit_exact(subject, ids):
    shared, table, g = subject
    model = copy.deepcopy(shared)  # a failed revert must not leak into the other checks
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config_before = model.config.to_dict()
    plan = foldable_plan(subject)
    bare = logits_of(model, ids)
    with iv.intervene(model, plan):
        runtime = logits_of(model, ids)
    assert not torch.allclose(runtime, bare, atol=1e-4), "the plan must change something"
    with warnings.catch_warnings():  # a bias with no config flag to keep it: fine in memory
        warnings.simplefilter("ignore", UserWarning)
        delta = iv.bake(model, plan)
    close(logits_of(model, ids), runtime, f"baked vs runtime ({sorted(plan)})")
    delta.revert(model)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert model.config.to_dict() == config_before


def refused_kinds(model_type: str) -> list[str]:
    return [k for k in (*MODEL_KINDS, *LAYER_KINDS) if refuses(model_type, k)]


@over_covered("refused", only=lambda t: bool(refused_kinds(t)))
def test_every_refused_site_is_refused_at_attach_time_by_name(subject):
    model, table, _ = subject
    kinds = refused_kinds(model.config.model_type)
    hooks, attention = n_hooks(model), model.config._attn_implementation
    for kind in kinds:
        site = kind if kind in MODEL_KINDS else f"layers.0.{kind}"
        with pytest.raises(NotImplementedError, match=re.escape(table.name)):
            iv.attach(model, {site: iv.Capture()})
        with (
            pytest.raises(NotImplementedError, match=re.escape(table.name)),
            iv.capture(model, ["layers.0.resid_pre", site]),
        ):
            pass
    assert n_hooks(model) == hooks and model.config._attn_implementation == attention


def kv_heads_of(attention: nn.Module, n_heads: int) -> int | None:
    """The KV heads an attention module computes with, where it says (None: it does not)."""
    for name in ("num_kv_heads", "num_key_value_heads"):  # Falcon; Phi-3, StableLM, ...
        value = getattr(attention, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    groups = getattr(attention, "num_key_value_groups", None)
    return n_heads // groups if isinstance(groups, int) and groups > 0 else None


@over_covered("geometry")
def test_geometry_splits_the_output_projection(subject):
    model, table, g = subject
    assert g.n_layers == len(table.blocks(model)) == 2
    assert g.d_vocab == 99 and g.d_model == 32
    for i in range(g.n_layers):
        projection = table.block_module(model, i, table.o_proj)
        width = projection.weight.shape[0 if table.conv1d else 1]
        assert g.n_heads * g.d_head == width, f"layer {i}: {table.o_proj} takes {width}"
        kv_heads = kv_heads_of(table.block_module(model, i, table.attn), g.n_heads)
        assert kv_heads in (None, g.n_kv_heads), f"layer {i}: attention has {kv_heads} KV heads"


# --- weight names (iv.parameters) ----------------------------------------------------------------
@over_covered("parameters")
def test_weight_names_resolve_to_projections_of_their_shape(subject):
    """Each projection name resolves to the model's own parameters, its weight [out, in] of the
    geometry's shape, inside its sub-layer's and its block's parameters; one the architecture
    fuses is refused naming the fused module, which exists."""
    model, table, g = subject
    named = dict(model.named_parameters())
    shapes = {
        "attn.q_proj": (g.n_heads * g.d_head, g.d_model),
        "attn.k_proj": (g.n_kv_heads * g.d_head, g.d_model),
        "attn.v_proj": (g.n_kv_heads * g.d_head, g.d_model),
        "attn.o_proj": (g.d_model, g.n_heads * g.d_head),
        "mlp.gate_proj": (g.d_mlp, g.d_model),
        "mlp.up_proj": (g.d_mlp, g.d_model),
        "mlp.down_proj": (g.d_model, g.d_mlp),
    }
    for i in range(g.n_layers):
        prefix = f"{table.layers}.{i}."
        block = iv.parameters(model, f"layers.{i}")
        assert set(block) == {n for n in named if n.startswith(prefix)}
        groups = {group: iv.parameters(model, f"layers.{i}.{group}") for group in ("attn", "mlp")}
        assert groups["attn"] and groups["mlp"] and not set(groups["attn"]) & set(groups["mlp"])
        assert set(groups["attn"]) | set(groups["mlp"]) <= set(block)
        for kind, shape in shapes.items():
            try:
                found = iv.parameters(model, f"layers.{i}.{kind}")
            except NotImplementedError as error:
                fused = re.search(r"one fused module, '([^']+)'", str(error))
                if fused is not None:
                    alternatives = fused[1].split("|")
                    assert any(block_has(table, model, i, p) for p in alternatives), str(error)
                continue
            assert all(named[name] is param for name, param in found.items()), kind
            assert set(found) <= set(groups[kind.partition(".")[0]]), kind
            weight = found[next(n for n in found if n.endswith("weight"))]
            assert tuple(table.from_storage(weight).shape) == shape, f"layer {i} {kind}"


def block_has(table: Adapter, model, layer: int, path: str) -> bool:
    try:
        table.block_module(model, layer, path)
    except AttributeError:
        return False
    return True


def test_every_architecture_names_q_k_v_or_the_module_that_fuses_them():
    """A table without q/k/v paths says where they are (fused), except latent attention."""
    for name, table in _REGISTRY.items():
        qkv = (table.q_proj, table.k_proj, table.v_proj)
        assert all(qkv) or (not any(qkv) and table.qkv_proj) or name == "deepseek_v3", name
        assert table.up_proj or table.gate_up_proj, name


# --- attn.q / attn.k / attn.v (per head, before rotary) -------------------------------------------
QKV = ("attn.q", "attn.k", "attn.v")


def projection_outputs(subject: Arch, ids: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """What each layer's q / k / v projection outputs, [b, t, features], by plain torch hooks: the
    projection's own output, or its slice of a fused [queries | keys | values] output."""
    model, table, g = subject
    widths = {"q": g.n_heads * g.d_head, "k": g.n_kv_heads * g.d_head}
    widths["v"] = widths["k"]
    paths = {"q": table.q_proj, "k": table.k_proj, "v": table.v_proj}
    if all(paths.values()):
        modules = [
            table.block_module(model, i, p) for i in range(g.n_layers) for p in paths.values()
        ]
        with recorded(modules) as out:
            logits_of(model, ids)
        return {w: [out[3 * i + j][0] for i in range(g.n_layers)] for j, w in enumerate("qkv")}
    fused = [table.block_module(model, i, table.qkv_proj) for i in range(g.n_layers)]
    with recorded(fused) as out:
        logits_of(model, ids)
    q, k = widths["q"], widths["k"]
    slices = {"q": slice(0, q), "k": slice(q, q + k), "v": slice(q + k, q + 2 * k)}
    return {w: [out[i][0][..., s] for i in range(g.n_layers)] for w, s in slices.items()}


@over_covered("qkv", needs=QKV)
def test_q_k_v_are_the_projection_outputs_split_into_heads(subject, ids):
    """attn.q is [b, t, n_heads, d_head] and attn.k / attn.v are [b, t, n_kv_heads, d_head]
    (GQA), each its projection's output split "(h d)"; capturing them changes nothing."""
    model, table, g = subject
    expected = projection_outputs(subject, ids)
    bare = logits_of(model, ids)
    cache, logits = captured(model, subject.sites(QKV), ids)
    assert torch.equal(logits, bare)
    heads = {"q": g.n_heads, "k": g.n_kv_heads, "v": g.n_kv_heads}
    for i in range(g.n_layers):
        for w in "qkv":
            x = cache[f"layers.{i}.attn.{w}"]
            assert x.shape == (*ids.shape, heads[w], g.d_head), f"layer {i} attn.{w}"
            assert torch.equal(x.flatten(2), expected[w][i]), f"layer {i} attn.{w}"


@over_covered("v through the pattern", needs=("attn.v", "attn.pattern", "attn.heads"))
def test_the_pattern_applied_to_v_gives_the_heads(subject, ids):
    """The attention's own computation: each head's output (attn.heads) is its pattern applied to
    the values of its KV head, so attn.v is the values attention mixes, head by head."""
    model, table, g = subject
    cache, _ = captured(model, subject.sites(("attn.v", "attn.pattern", "attn.heads")), ids)
    group = g.n_heads // g.n_kv_heads
    for i in range(g.n_layers):
        v = cache[f"layers.{i}.attn.v"].repeat_interleave(group, dim=2)  # KV head h // group
        mixed = torch.einsum("bhqk,bkhd->bqhd", cache[f"layers.{i}.attn.pattern"], v)
        close(mixed, cache[f"layers.{i}.attn.heads"], f"layer {i}: pattern @ v")


@over_covered("qkv patched", needs=QKV)
def test_patching_q_k_v_with_their_own_values_is_bit_identical(subject, ids):
    model, table, g = subject
    cache, bare = captured(model, subject.sites(QKV), ids)
    plan = {name: Replace(value) for name, value in cache.items()}
    with torch.no_grad(), iv.intervene(model, plan):
        assert torch.equal(model(ids).logits, bare)


class Replace(iv.Intervention):
    """Writes given values (the whole activation): a patch for the checks above."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.register_buffer("values", values.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values.clone()


@over_covered("qkv refused", only=lambda t: any(refuses(t, k) for k in QKV))
def test_q_k_v_are_refused_where_no_module_or_verified_slice_computes_them(subject):
    model, table, _ = subject
    for kind in QKV:
        with pytest.raises(NotImplementedError, match="use attn.in"):
            iv.attach(model, {f"layers.0.{kind}": iv.Capture()})
    assert table.qkv_proj is None or not table.qkv_concatenated


def rotary_function(model_type: str):
    """The ``apply_rotary_pos_emb(q, k, cos, sin, ...)`` the type's attention calls on its
    queries and keys (None: it has none of that signature)."""
    if any(refuses(model_type, kind) for kind in QKV):
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    # the causal LM's module defines its attention too
    causal_lm_class = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    module = importlib.import_module(causal_lm_class.__module__)
    function = getattr(module, "apply_rotary_pos_emb", None)
    if function is None:
        return None
    first = list(inspect.signature(function).parameters)[:2]
    return (module, function) if first == ["q", "k"] else None


def normed(attention: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` [b, t, h, d] through the attention's own q_norm / k_norm where it has one, over each
    head (weight [d_head]) or over all heads together (OLMo 2: weight [h * d_head])."""
    norm = getattr(attention, name, None)
    if norm is None:
        return x
    if norm.weight.numel() == x.shape[-1]:
        return norm(x)
    return norm(x.flatten(2)).unflatten(-1, x.shape[-2:])


@over_covered("q k before rotary", needs=QKV, only=lambda t: rotary_function(t) is not None)
def test_q_and_k_are_what_attention_rotates(subject, ids, monkeypatch):
    """The attention's own computation: what it passes to apply_rotary_pos_emb are attn.q and
    attn.k as [b, h, t, d] (after its q_norm / k_norm, where it has them; the rotated dims only
    where the rotary embedding is partial, as in Phi and StableLM)."""
    model, table, g = subject
    module, function = rotary_function(model.config.model_type)
    attentions = [table.block_module(model, i, table.attn) for i in range(g.n_layers)]
    layer, rotated = [None], []

    def spy(q, k, *args, **kwargs):
        rotated.append((layer[0], q.detach().clone(), k.detach().clone()))
        return function(q, k, *args, **kwargs)

    def entering(i):
        return lambda *_: layer.__setitem__(0, i)

    monkeypatch.setattr(module, "apply_rotary_pos_emb", spy)
    handles = [a.register_forward_pre_hook(entering(i)) for i, a in enumerate(attentions)]
    try:
        cache, _ = captured(model, subject.sites(("attn.q", "attn.k")), ids)
    finally:
        for handle in handles:
            handle.remove()
    assert rotated, "the attention never called apply_rotary_pos_emb"
    with torch.no_grad():
        for i, q, k in rotated:
            for name, seen, norm in (("q", q, "q_norm"), ("k", k, "k_norm")):
                mine = normed(attentions[i], norm, cache[f"layers.{i}.attn.{name}"])
                mine = mine.transpose(1, 2)[..., : seen.shape[-1]]
                close(mine, seen, f"layer {i}: attn.{name} before rotary")


@pytest.mark.skipif("gpt2" not in COVERED, reason="no gpt2")
def test_gpt2_q_and_k_give_its_pattern(tiny_models, ids):
    """GPT-2 has no rotary embedding: its pattern is softmax(q k^T / sqrt(d_head)), causal, from
    the q and k slices of c_attn's output."""
    model = tiny_models("gpt2")
    g = iv.geometry(model)
    sites = [f"layers.{i}.{kind}" for i in range(g.n_layers) for kind in QKV + ("attn.pattern",)]
    cache, _ = captured(model, sites, ids)
    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
    for i in range(g.n_layers):
        q, k = cache[f"layers.{i}.attn.q"], cache[f"layers.{i}.attn.k"]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / g.d_head**0.5
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        close(pattern, cache[f"layers.{i}.attn.pattern"], f"layer {i}: softmax(q k^T)")
