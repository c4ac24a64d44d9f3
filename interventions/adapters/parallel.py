"""Parallel blocks: attention and the MLP both read the block's input (through one norm or two)
and the block adds both outputs to it, so there is no ``resid_mid``.

GPT-NeoX (and StableLM, in llama.py) are parallel only when the config's
``use_parallel_residual`` says so; sequential otherwise.
"""

from interventions.adapters import Adapter, BiasFlag, register_adapter
from interventions.adapters.gpt2 import GPT2_CONFIG_KEYS
from interventions.adapters.llama import ATTENTION_BIAS, LLAMA_CONFIG_KEYS, LLAMA_PATHS

PHI = register_adapter(
    Adapter(
        name="phi",
        layers="model.layers",
        embed="model.embed_tokens",
        final_norm="model.final_layernorm",
        unembed="lm_head",
        attn="self_attn",
        attn_norm="input_layernorm",
        o_proj="self_attn.dense",
        mlp_norm="input_layernorm",  # one norm feeds both
        down_proj="mlp.fc2",
        config_keys=LLAMA_CONFIG_KEYS,
        parallel=True,
        q_proj="self_attn.q_proj",
        k_proj="self_attn.k_proj",
        v_proj="self_attn.v_proj",
        up_proj="mlp.fc1",
    ),
    "phi",
)

GPT_NEOX = register_adapter(
    Adapter(
        name="gpt_neox",
        layers="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        unembed=None,  # embed_out in 4.x, lm_head in 5.x: the model's output embeddings
        attn="attention",
        attn_norm="input_layernorm",
        o_proj="attention.dense",
        mlp_norm="post_attention_layernorm",
        down_proj="mlp.dense_4h_to_h",
        config_keys=LLAMA_CONFIG_KEYS,
        parallel_flag="use_parallel_residual",
        bias_flags={
            "attention.dense": BiasFlag(
                "attention_bias", ("attention.query_key_value", "attention.dense")
            )
        },
        qkv_proj="attention.query_key_value",
        up_proj="mlp.dense_h_to_4h",
    ),
    "gpt_neox",
)

GPTJ = register_adapter(
    Adapter(
        name="gptj",
        layers="transformer.h",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn="attn",
        attn_norm="ln_1",
        o_proj="attn.out_proj",
        mlp_norm="ln_1",
        down_proj="mlp.fc_out",
        config_keys=GPT2_CONFIG_KEYS,
        parallel=True,
        q_proj="attn.q_proj",
        k_proj="attn.k_proj",
        v_proj="attn.v_proj",
        up_proj="mlp.fc_in",
    ),
    "gptj",
)

# Falcon's default layout (parallel attention, one input norm). It adds the attention output
# into the MLP output in place: captures own their data, so mlp.out stays the MLP's output.
FALCON = register_adapter(
    Adapter(
        name="falcon",
        layers="transformer.h",
        embed="transformer.word_embeddings",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn="self_attention",
        attn_norm="input_layernorm",
        o_proj="self_attention.dense",
        mlp_norm="input_layernorm",
        down_proj="mlp.dense_4h_to_h",
        config_keys={
            **LLAMA_CONFIG_KEYS,
            "n_kv_heads": ("num_kv_heads",),
            "d_mlp": ("ffn_hidden_size",),
        },
        parallel=True,
        qkv_proj="self_attention.query_key_value",
        up_proj="mlp.dense_h_to_4h",
        multi_query_flag="multi_query",
    ),
    "falcon",
)

COHERE = register_adapter(
    Adapter(
        name="cohere",
        **{**LLAMA_PATHS, "mlp_norm": "input_layernorm"},  # one norm feeds both
        parallel=True,
        logits_after=(("multiply", "logit_scale"),),
        bias_flags={"self_attn.o_proj": ATTENTION_BIAS},
    ),
    "cohere",
)
