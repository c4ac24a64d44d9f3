"""GPT-2: Conv1D projections stored [in, out]; positions added before the first block."""

from interventions.adapters import Adapter, register_adapter

GPT2_CONFIG_KEYS = {
    "n_layers": ("n_layer",),
    "n_heads": ("n_head",),
    "n_kv_heads": (),
    "d_head": (),
    "d_model": ("n_embd",),
    "d_mlp": ("n_inner",),
    "d_vocab": ("vocab_size",),
}

GPT2 = register_adapter(
    Adapter(
        name="gpt2",
        layers="transformer.h",
        embed="transformer.drop",  # token + position embeddings, after dropout
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn="attn",
        attn_norm="ln_1",
        o_proj="attn.c_proj",
        mlp_norm="ln_2",
        down_proj="mlp.c_proj",
        config_keys=GPT2_CONFIG_KEYS,
        conv1d=True,
        qkv_proj="attn.c_attn",
        qkv_concatenated=True,  # c_attn(x).split(d_model, dim=2): queries, keys, values
        up_proj="mlp.c_fc",
    ),
    "gpt2",
)
