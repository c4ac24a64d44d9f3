"""Blocks with norms after attention and the MLP: what each adds to the residual stream is the
post-norm's output, not o_proj's / down_proj's.

- Sandwich (Gemma 2 / 3, GLM-4): a norm before and after each of attention and the MLP.
- Post-norm only (OLMo 2 / 3, EXAONE 4): no norm before, so attention and the MLP read the
  residual stream itself; ``attn.in`` / ``mlp.in`` are what they take.
"""

from interventions.adapters import Adapter, register_adapter
from interventions.adapters.llama import ATTENTION_BIAS, FUSED_GATE_UP, LLAMA_PATHS

_GEMMA_SANDWICH = {
    **LLAMA_PATHS,
    "attn_out": "post_attention_layernorm",
    "mlp_norm": "pre_feedforward_layernorm",
    "mlp_out": "post_feedforward_layernorm",
    "bias_flags": {"self_attn.o_proj": ATTENTION_BIAS},
    "logits_after": (("softcap", "final_logit_softcapping"),),
}
GEMMA2 = register_adapter(Adapter(name="gemma2", **_GEMMA_SANDWICH), "gemma2")
GEMMA3 = register_adapter(Adapter(name="gemma3_text", **_GEMMA_SANDWICH), "gemma3_text")

# GLM-4's attention_bias leaves o_proj without one: no flag reaches a baked projection
GLM4 = register_adapter(
    Adapter(
        name="glm4",
        **{**LLAMA_PATHS, **FUSED_GATE_UP},
        attn_out="post_self_attn_layernorm",
        mlp_out="post_mlp_layernorm",
    ),
    "glm4",
)

_POST_NORM_ONLY = {
    **LLAMA_PATHS,
    "attn_norm": None,
    "attn_out": "post_attention_layernorm",
    "mlp_norm": None,
    "mlp_out": "post_feedforward_layernorm",
}
for model_type in ("olmo2", "olmo3"):
    register_adapter(
        Adapter(
            name=model_type, bias_flags={"self_attn.o_proj": ATTENTION_BIAS}, **_POST_NORM_ONLY
        ),
        model_type,
    )
EXAONE4 = register_adapter(Adapter(name="exaone4", **_POST_NORM_ONLY), "exaone4")
