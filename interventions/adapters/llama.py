"""Llama-style blocks: Llama, Qwen2, Mistral (pre-norm, o_proj, gated MLP with down_proj)."""

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

_LLAMA_PATHS = dict(
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
)

LLAMA = register_adapter(
    Adapter(
        name="llama",
        bias_flags={
            "self_attn.o_proj": BiasFlag(
                "attention_bias",
                ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
            ),
            "mlp.down_proj": BiasFlag(
                "mlp_bias", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
            ),
        },
        **_LLAMA_PATHS,
    ),
    "llama",
)

# Qwen2 and Mistral hard-code their o_proj / down_proj without bias: no config flag keeps a
# created bias through save_pretrained, so save the WeightDelta instead.
QWEN2 = register_adapter(Adapter(name="qwen2", **_LLAMA_PATHS), "qwen2")
MISTRAL = register_adapter(Adapter(name="mistral", **_LLAMA_PATHS), "mistral")
