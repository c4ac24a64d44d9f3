"""Mixture-of-experts blocks with Llama's attention: the experts are fused 3-D parameters (no
per-expert down_proj module), so ``mlp.out`` is the whole MoE block's output and ``mlp.act``
(the input of a down projection) has no single tensor to be.

DeepSeek-V3 (multi-head latent attention) and Llama 4 mix dense and MoE layers; DeepSeek's
``head_dim`` is the rope dimension, so d_head is read from ``v_head_dim`` (the width of each
head's slice of o_proj's input).
"""

from dataclasses import replace

from interventions.adapters import Adapter, register_adapter
from interventions.adapters.llama import ATTENTION_BIAS, LLAMA_CONFIG_KEYS, LLAMA_PATHS

FUSED_EXPERTS = (
    "its experts are fused 3-D parameters with no down_proj module, so no single tensor is the "
    "input of a down projection; use mlp.in (what the router and experts read) or mlp.out"
)

# The table describes the MoE layers: dense layers of DeepSeek-V3 and Llama 4 have their own
# gate/up/down modules, but one table cannot name both, so their projections are refused too.
MOE = Adapter(
    name="moe",
    **{
        **LLAMA_PATHS,
        "down_proj": "mlp.experts",
        "gate_proj": None,
        "up_proj": None,
        "gate_up_proj": "mlp.experts",
    },
    mlp_out="mlp",
    refused={"mlp.act": FUSED_EXPERTS},
)

# transformers 4.x named Mixtral's MoE block block_sparse_moe
_MIXTRAL_MOE = "mlp|block_sparse_moe"
MIXTRAL = register_adapter(
    replace(
        MOE,
        name="mixtral",
        mlp=_MIXTRAL_MOE,
        mlp_out=_MIXTRAL_MOE,
        down_proj="mlp.experts|block_sparse_moe.experts",
        gate_up_proj="mlp.experts|block_sparse_moe.experts",
    ),
    "mixtral",
)
QWEN2_MOE = register_adapter(replace(MOE, name="qwen2_moe"), "qwen2_moe")
for model_type in ("qwen3_moe", "olmoe"):
    register_adapter(
        replace(MOE, name=model_type, bias_flags={"self_attn.o_proj": ATTENTION_BIAS}), model_type
    )
GPT_OSS = register_adapter(
    replace(
        MOE,
        name="gpt_oss",
        bias_flags={"self_attn.o_proj": ATTENTION_BIAS},
        attention_sinks=True,  # each head's learned sink takes mass the pattern leaves out
    ),
    "gpt_oss",
)
DEEPSEEK_V3 = register_adapter(
    replace(
        MOE,
        name="deepseek_v3",
        config_keys={**LLAMA_CONFIG_KEYS, "d_head": ("v_head_dim",)},
        # latent attention: queries from q_a_proj/q_b_proj, keys and values both from
        # kv_a_proj_with_mqa/kv_b_proj; no module is q_proj, k_proj or v_proj alone
        q_proj=None,
        k_proj=None,
        v_proj=None,
    ),
    "deepseek_v3",
)

# Llama 4's MoE layers run on flattened tokens ([b·t, d]) and its dense layers do not: one table
# cannot give mlp.out a [b, t, d] meaning in both, so the MLP sites are refused.
_FLAT_TOKENS = (
    "its MoE layers compute on flattened tokens [batch*seq, d], so positions would select "
    "features; use resid_mid (the MLP's input stream) and resid_post - resid_mid"
)
LLAMA4_TEXT = register_adapter(
    replace(
        MOE,
        name="llama4_text",
        mlp="feed_forward",
        down_proj="feed_forward.down_proj",
        gate_up_proj="feed_forward.experts",
        mlp_out="feed_forward",
        config_keys={**LLAMA_CONFIG_KEYS, "d_mlp": ("intermediate_size_mlp",)},
        refused={"mlp.act": _FLAT_TOKENS, "mlp.out": _FLAT_TOKENS},
    ),
    "llama4_text",
)
