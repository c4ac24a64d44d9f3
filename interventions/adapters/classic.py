"""Older layouts: OPT and BLOOM.

- OPT adds learned positions outside any module (``embed`` is read at the first block, so it
  has them) and runs its MLP on flattened tokens ``[batch*seq, d]`` with no MLP module, so the
  MLP sites are refused rather than given columns that are not positions.
- BLOOM's attention and MLP add the residual themselves: the attention module returns
  resid_mid, so attention's contribution is read at its dense projection.
"""

from interventions.adapters import Adapter, register_adapter
from interventions.adapters.gpt2 import GPT2_CONFIG_KEYS
from interventions.adapters.llama import LLAMA_CONFIG_KEYS

_OPT_FLAT = (
    "its MLP runs on flattened tokens [batch*seq, d] inside the decoder layer, so positions "
    "would select features; use resid_mid (the MLP's input stream) and resid_post - resid_mid"
)
OPT = register_adapter(
    Adapter(
        name="opt",
        layers="model.decoder.layers",
        embed="model.decoder.embed_tokens",
        final_norm="model.decoder.final_layer_norm",
        unembed="lm_head",
        attn="self_attn",
        attn_norm="self_attn_layer_norm",
        o_proj="self_attn.out_proj",
        mlp_norm="final_layer_norm",
        down_proj="fc2",
        mlp="fc1",
        config_keys={**LLAMA_CONFIG_KEYS, "n_kv_heads": (), "d_head": (), "d_mlp": ("ffn_dim",)},
        refused={"mlp.in": _OPT_FLAT, "mlp.act": _OPT_FLAT, "mlp.out": _OPT_FLAT},
        q_proj="self_attn.q_proj",
        k_proj="self_attn.k_proj",
        v_proj="self_attn.v_proj",
        up_proj="fc1",
    ),
    "opt",
)

BLOOM = register_adapter(
    Adapter(
        name="bloom",
        layers="transformer.h",
        embed="transformer.word_embeddings",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn="self_attention",
        attn_norm="input_layernorm",
        o_proj="self_attention.dense",
        attn_out="self_attention.dense",  # the attention module returns resid_mid itself
        mlp_norm="post_attention_layernorm",
        down_proj="mlp.dense_4h_to_h",
        config_keys={**GPT2_CONFIG_KEYS, "d_model": ("hidden_size",), "d_mlp": ()},
        qkv_proj="self_attention.query_key_value",
        up_proj="mlp.dense_h_to_4h",
    ),
    "bloom",
)
