"""Blocks with norms after attention and the MLP: what each adds to the residual stream is the
post-norm's output, not o_proj's / down_proj's.

- Sandwich (Gemma 2 / 3, GLM-4): a norm before and after each of attention and the MLP.
- Post-norm only (OLMo 2 / 3, EXAONE 4): no norm before, so attention and the MLP read the
  residual stream itself; ``attn.in`` / ``mlp.in`` are what they take.
"""

from interventions.adapters import Adapter, register_adapter
from interventions.adapters.llama import ATTENTION_BIAS, LLAMA_CONFIG_KEYS

_COMMON = dict(
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    unembed="lm_head",
    attn="self_attn",
    o_proj="self_attn.o_proj",
    down_proj="mlp.down_proj",
    config_keys=LLAMA_CONFIG_KEYS,
)

_GEMMA_SANDWICH = dict(
    attn_norm="input_layernorm",
    attn_out="post_attention_layernorm",
    mlp_norm="pre_feedforward_layernorm",
    mlp_out="post_feedforward_layernorm",
    bias_flags={"self_attn.o_proj": ATTENTION_BIAS},
    logits_at_output=True,  # Gemma 2 soft-caps the logits after lm_head
    **_COMMON,
)
GEMMA2 = register_adapter(Adapter(name="gemma2", **_GEMMA_SANDWICH), "gemma2")
GEMMA3 = register_adapter(Adapter(name="gemma3_text", **_GEMMA_SANDWICH), "gemma3_text")

# GLM-4's attention_bias leaves o_proj without one: no flag reaches a baked projection
GLM4 = register_adapter(
    Adapter(
        name="glm4",
        attn_norm="input_layernorm",
        attn_out="post_self_attn_layernorm",
        mlp_norm="post_attention_layernorm",
        mlp_out="post_mlp_layernorm",
        **_COMMON,
    ),
    "glm4",
)

_POST_NORM_ONLY = dict(
    attn_norm=None,
    attn_out="post_attention_layernorm",
    mlp_norm=None,
    mlp_out="post_feedforward_layernorm",
    **_COMMON,
)
for model_type in ("olmo2", "olmo3"):
    register_adapter(
        Adapter(
            name=model_type, bias_flags={"self_attn.o_proj": ATTENTION_BIAS}, **_POST_NORM_ONLY
        ),
        model_type,
    )
EXAONE4 = register_adapter(Adapter(name="exaone4", **_POST_NORM_ONLY), "exaone4")
