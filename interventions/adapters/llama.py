"""Pre-norm sequential blocks with Llama's module names: the Llama family and the many models
that copied its layout (attention ``self_attn.o_proj``, norms ``input_layernorm`` /
``post_attention_layernorm``, a gated MLP with ``mlp.down_proj``)."""

from dataclasses import replace

from interventions.adapters import Adapter, BiasFlag, register_adapter

LLAMA_CONFIG_KEYS = {
    "n_layers": ("num_hidden_layers",),
    "n_heads": ("num_attention_heads",),
    "n_kv_heads": ("num_key_value_heads",),
    "d_head": ("head_dim",),
    "d_model": ("hidden_size",),
    "d_mlp": ("intermediate_size",),
    "d_vocab": ("vocab_size",),
}

LLAMA_PATHS = dict(
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    unembed="lm_head",
    attn="self_attn",
    attn_norm="input_layernorm",
    o_proj="self_attn.o_proj",
    mlp_norm="post_attention_layernorm",
    down_proj="mlp.down_proj",
    config_keys=LLAMA_CONFIG_KEYS,
    q_proj="self_attn.q_proj",
    k_proj="self_attn.k_proj",
    v_proj="self_attn.v_proj",
    gate_proj="mlp.gate_proj",
    up_proj="mlp.up_proj",
)
# what tables whose projections are fused or not gated pass over LLAMA_PATHS
FUSED_QKV = dict(q_proj=None, k_proj=None, v_proj=None)
FUSED_GATE_UP = dict(gate_proj=None, up_proj=None, gate_up_proj="mlp.gate_up_proj")

ATTENTION_BIAS = BiasFlag(
    "attention_bias",
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
)
MLP_BIAS = BiasFlag("mlp_bias", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))

LLAMA = register_adapter(
    Adapter(
        name="llama",
        bias_flags={"self_attn.o_proj": ATTENTION_BIAS, "mlp.down_proj": MLP_BIAS},
        **LLAMA_PATHS,
    ),
    "llama",
)
# Llama's blocks under other model types (InternLM3 builds a LlamaForCausalLM)
for model_type in ("internlm3", "arcee", "smollm3"):
    register_adapter(replace(LLAMA, name=model_type), model_type)

# Qwen2, Mistral, Ministral and Phi-3 hard-code their o_proj / down_proj without bias: no config
# flag keeps a created bias through save_pretrained, so save the WeightDelta instead.
QWEN2 = register_adapter(Adapter(name="qwen2", **LLAMA_PATHS), "qwen2")
MISTRAL = register_adapter(Adapter(name="mistral", **LLAMA_PATHS), "mistral", "ministral")
PHI3 = register_adapter(
    Adapter(
        name="phi3",
        **{**LLAMA_PATHS, **FUSED_QKV, **FUSED_GATE_UP, "qkv_proj": "self_attn.qkv_proj"},
        qkv_concatenated=True,  # queries, then keys, then values (per KV head)
    ),
    "phi3",
)

# attention_bias switches q, k, v and o biases together, as in Llama
for model_type in ("qwen3", "olmo", "gemma", "seed_oss"):
    register_adapter(
        replace(LLAMA, name=model_type, bias_flags={"self_attn.o_proj": ATTENTION_BIAS}),
        model_type,
    )

# Helium's attention_bias leaves o_proj without one: only mlp_bias reaches a baked projection
HELIUM = register_adapter(
    replace(LLAMA, name="helium", bias_flags={"mlp.down_proj": MLP_BIAS}), "helium"
)
STABLELM = register_adapter(
    Adapter(name="stablelm", parallel_flag="use_parallel_residual", **LLAMA_PATHS), "stablelm"
)
# StarCoder2: a plain MLP (c_fc, c_proj); use_bias (default on) gives every projection a bias
STARCODER2 = register_adapter(
    Adapter(
        name="starcoder2",
        **{**LLAMA_PATHS, "down_proj": "mlp.c_proj", "up_proj": "mlp.c_fc", "gate_proj": None},
    ),
    "starcoder2",
)
# Apertus names its norms after what they feed; its MLP (xIELU) is not gated
APERTUS = register_adapter(
    Adapter(
        name="apertus",
        bias_flags={"self_attn.o_proj": ATTENTION_BIAS},
        **{
            **LLAMA_PATHS,
            "attn_norm": "attention_layernorm",
            "mlp_norm": "feedforward_layernorm",
            "gate_proj": None,
        },
    ),
    "apertus",
)

# Granite scales what attention and the MLP add by residual_multiplier outside any module, and
# the embeddings and logits too: embed and logits are read where the scaled values are, and the
# sites that would miss the multiplier are refused rather than misnamed.
_GRANITE_SCALED = (
    "the block multiplies attention's and the MLP's outputs by config.residual_multiplier "
    "outside any module before adding them, so no module outputs what they add; use "
    "attn.heads, mlp.act, resid_pre and resid_post"
)
GRANITE = register_adapter(
    Adapter(
        name="granite",
        bias_flags={"self_attn.o_proj": ATTENTION_BIAS, "mlp.down_proj": MLP_BIAS},
        logits_after=(("divide", "logits_scaling"),),
        refused={kind: _GRANITE_SCALED for kind in ("attn.out", "resid_mid", "mlp.out")},
        **LLAMA_PATHS,
    ),
    "granite",
)
