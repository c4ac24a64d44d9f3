import pytest
import torch

import interventions as iv
from interventions.models import tiny


def test_geometry_of_each_arch(model, arch):
    g = iv.geometry(model)
    assert (g.n_layers, g.n_heads, g.d_head, g.d_model, g.d_vocab) == (3, 4, 8, 32, 99)
    assert g.n_kv_heads == {"llama-mha": 4, "llama-gqa": 2, "qwen2-gqa": 2, "gpt2": 4}[arch]
    assert g.d_mlp == (128 if arch == "gpt2" else 64)


def test_explicit_head_dim_is_read():
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    model = AutoModelForCausalLM.from_config(config)
    assert iv.geometry(model).d_head == 16
    with iv.capture(model, "layers.0.attn.heads") as cache:
        model(torch.randint(0, 99, (1, 5)))
    assert cache["layers.0.attn.heads"].shape == (1, 5, 4, 16)


def test_weights_are_out_in(model):
    a = iv.adapter(model)
    o_proj = a.block_module(model, 0, a.o_proj)
    down = a.block_module(model, 0, a.down_proj)
    g = iv.geometry(model)
    assert a.weight(o_proj).shape == (g.d_model, g.n_heads * g.d_head)
    assert a.weight(down).shape == (g.d_model, g.d_mlp)
    assert a.from_storage(a.to_storage(a.weight(down))).shape == a.weight(down).shape


def test_unsupported_architecture_says_how_to_register():
    from transformers import AutoModelForCausalLM, MambaConfig

    model = AutoModelForCausalLM.from_config(
        MambaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, state_size=4)
    )
    with pytest.raises(NotImplementedError, match=r"no adapter for model_type 'mamba'.*register"):
        iv.adapter(model)


def test_an_unknown_model_type_of_a_known_class_uses_that_class_table():
    model = tiny("llama")
    model.config.model_type = "my_llama_finetune"  # e.g. a remote-code config around Llama
    assert iv.adapter(model).name == "llama"


def test_base_model_is_refused():
    model = tiny("llama")
    with pytest.raises(NotImplementedError, match="causal LM"):
        iv.adapter(model.model)


def test_register_adapter_adds_a_table():
    from transformers import AutoModelForCausalLM, MistralConfig

    model = AutoModelForCausalLM.from_config(
        MistralConfig(
            vocab_size=99,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    assert iv.adapter(model).name == "mistral"
    iv.register_adapter(iv.adapter(tiny("llama")), "my-llama")
    try:
        model.config.model_type = "my-llama"
        assert iv.adapter(model).name == "llama"
    finally:
        from interventions.adapters import _REGISTRY

        _REGISTRY.pop("my-llama")


def test_module_lookup_matches_get_submodule(model):
    from transformers.pytorch_utils import Conv1D

    a = iv.adapter(model)
    block = a.blocks(model)[1]
    for path in (a.attn, a.attn_norm, a.o_proj, a.mlp_norm, a.down_proj):
        assert a.block_module(model, 1, path) is block.get_submodule(path)
    projections = (a.q_proj, a.k_proj, a.v_proj, a.qkv_proj, a.gate_proj, a.up_proj)
    given = [path for path in projections if path is not None]
    assert len(given) == (2 if a.name == "gpt2" else 5)  # GPT-2: c_attn and c_fc
    for path in given:
        assert isinstance(a.block_module(model, 1, path), torch.nn.Linear | Conv1D), path
    assert a.block_module(model, 1, "") is block
    assert a.blocks(model) is model.get_submodule(a.layers)
    for path in (a.embed, a.final_norm, a.unembed):
        assert a.module(model, path) is model.get_submodule(path)
    with pytest.raises(AttributeError):
        a.block_module(model, 1, "no_such_module")
    with pytest.raises(AttributeError, match="not a module"):
        a.block_module(model, 1, f"{a.o_proj}.weight")
