"""Adapters: one data table per architecture, the only place that knows module paths.

``iv.adapter(model)`` picks the table registered for ``model.config.model_type``;
``iv.register_adapter(table, "my_model_type")`` adds one. Adding an architecture whose blocks
look like Llama's is a copy of the Llama table with other paths.
"""

import sys
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn


@dataclass(frozen=True)
class BiasFlag:
    """A config flag that switches several biases together (Llama's ``attention_bias``)."""

    config_attr: str
    modules: tuple[str, ...]  # paths relative to a block, all created together


@dataclass(frozen=True)
class Geometry:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    d_vocab: int


@dataclass(frozen=True)
class Adapter:
    """Module paths of one architecture, as data. Block paths are relative to one block.

    The defaults describe a pre-norm sequential block (Llama): attention reads the output of
    ``attn_norm``, adds ``o_proj``'s output to the residual, the MLP reads the output of
    ``mlp_norm`` and adds ``down_proj``'s output. Other blocks say where they differ:

    - ``attn_out`` / ``mlp_out``: the module whose output is what attention / the MLP adds to
      the residual stream, when it is not ``o_proj`` / ``down_proj`` (a post-norm of sandwich
      blocks such as Gemma 2's ``post_attention_layernorm``; the whole MoE block, whose experts
      have no down_proj module).
    - ``attn_norm`` / ``mlp_norm`` None: no module outputs the input of attention / the MLP (a
      post-norm-only block such as OLMo 2); ``attn.in`` / ``mlp.in`` are read where ``attn`` /
      ``mlp`` take it.
    - ``parallel``: attention and the MLP both read the block's input and their outputs are
      added together (GPT-NeoX, GPT-J, Phi); there is no ``resid_mid``. ``parallel_flag``: the
      config attribute that makes them so (GPT-NeoX's and StableLM's
      ``use_parallel_residual``).
    - ``refused``: site kind -> why it has no honest meaning here and what to use instead;
      attaching there raises NotImplementedError with that text.
    - ``attention_sinks``: attention rows hold mass on learned sinks that the returned pattern
      leaves out, so its rows sum to less than 1.
    - ``logits_after``: what the model does to the logits after ``unembed``, in order, as
      ``(operation, config attribute)`` pairs: ``"softcap"`` (``tanh(x / c) * c``, Gemma 2),
      ``"multiply"`` (Cohere's ``logit_scale``), ``"divide"`` (Granite's ``logits_scaling``); an
      attribute that is None skips its step. Where there are any (``logits_at_output``), the
      ``logits`` site is read from the causal LM's output. ``unembed`` None: the
      model's ``get_output_embeddings()`` (its name changed between releases).

    ``embed`` is read where the first block takes it: what the blocks receive, with positions,
    embedding scales and multipliers that some models add outside any module.

    Weights (``iv.parameters``) also need the attention's input projections ``q_proj`` /
    ``k_proj`` / ``v_proj`` and the MLP's ``gate_proj`` / ``up_proj``; None where the module does
    not exist alone: ``qkv_proj`` / ``gate_up_proj`` then name the fused module that computes
    them together (GPT-2's ``attn.c_attn``, Phi-3's ``mlp.gate_up_proj``, fused MoE experts). An
    MLP with ``up_proj`` and neither ``gate_proj`` nor ``gate_up_proj`` is not gated.
    """

    name: str
    layers: str  # the list of blocks, from the causal LM
    embed: str  # the token embedding (the `embed` site is read at the first block's input)
    final_norm: str
    unembed: str | None
    attn: str  # attention module: output (attn_out, weights, ...)
    attn_norm: str | None  # output is `attn.in` (None: the input of `attn`)
    o_proj: str  # input is `attn.heads`
    mlp_norm: str | None  # output is `mlp.in` (None: the input of `mlp`)
    down_proj: str  # input is `mlp.act`
    config_keys: dict[str, tuple[str, ...]]  # geometry field -> config attributes, first found
    conv1d: bool = False  # weights stored [in, out] (GPT-2's Conv1D)
    bias_flags: dict[str, BiasFlag] = field(default_factory=dict)  # keyed by o_proj/down_proj
    mlp: str = "mlp"  # the MLP module
    attn_out: str | None = None  # output is `attn.out` (None: o_proj)
    mlp_out: str | None = None  # output is `mlp.out` (None: down_proj)
    parallel: bool = False
    parallel_flag: str | None = None  # a config flag that makes the blocks parallel
    refused: dict[str, str] = field(default_factory=dict)
    attention_sinks: bool = False
    logits_after: tuple[tuple[str, str], ...] = ()  # (operation, config attribute), in order
    q_proj: str | None = None  # attention's input projections (None: fused or absent)
    k_proj: str | None = None
    v_proj: str | None = None
    qkv_proj: str | None = None  # one module computing queries, keys and values together
    # qkv_proj's output is [queries | keys | values] along its features (GPT-2, Phi-3), each
    # [(heads d_head)]: the attn.q / attn.k / attn.v sites read slices of it. False: another
    # layout (interleaved per head) or one not verified, and those sites are refused.
    qkv_concatenated: bool = False
    gate_proj: str | None = None  # the MLP's input projections (None: fused or absent)
    up_proj: str | None = None
    gate_up_proj: str | None = None  # one module (or fused experts) computing gate and up
    # a config flag that, set, means one KV head whatever n_kv_heads' keys read (Falcon-7B's
    # multi_query: its num_kv_heads defaults to the query heads) unless the config's
    # `new_decoder_architecture` says the keys are right
    multi_query_flag: str | None = None

    @property
    def attn_out_path(self) -> str:
        return self.o_proj if self.attn_out is None else self.attn_out

    @property
    def mlp_out_path(self) -> str:
        return self.down_proj if self.mlp_out is None else self.mlp_out

    @property
    def logits_at_output(self) -> bool:
        """The model changes its logits after ``unembed``: read them from its output."""
        return bool(self.logits_after)

    def is_parallel(self, config) -> bool:
        return self.parallel or bool(self.parallel_flag and getattr(config, self.parallel_flag))

    def refuse(self, kind: str, config=None) -> None:
        """Raise NotImplementedError if ``kind`` has no honest meaning in this architecture
        (with ``config``: in this configuration of it)."""
        reason = self.refused.get(kind)
        is_parallel = self.parallel if config is None else self.is_parallel(config)
        if reason is None and kind == "resid_mid" and is_parallel:
            reason = (
                "its blocks are parallel: attention and the MLP both read resid_pre, so no "
                "residual stream exists between them; use resid_pre, attn.out or mlp.out"
            )
        if reason is None and kind in _PROJECTIONS:
            reason = self._projection_refusal(kind)
        if reason is not None:
            raise NotImplementedError(f"{kind} on {self.name}: {reason}")

    def _projection_refusal(self, kind: str) -> str | None:
        """Why ``attn.q`` / ``attn.k`` / ``attn.v`` has no module output here (None: it has)."""
        if getattr(self, _PROJECTIONS[kind]) is not None:
            return None
        if self.qkv_proj is not None and self.qkv_concatenated:
            return None
        instead = "use attn.in (what the projections read) or attn.heads"
        if self.qkv_proj is None:
            return (
                f"no module computes {kind} alone (latent attention computes keys and values "
                f"together from a compressed projection); {instead}"
            )
        return (
            f"queries, keys and values come from one fused module, {self.qkv_proj}, whose "
            "output interleaves them per head in a layout this adapter does not verify, so "
            f"no slice of it is known to be {kind}; {instead}, or read the fused output "
            f"itself with the module site 'module:{self.layers}.{{i}}.{self.qkv_proj}:output'"
        )

    def geometry(self, config) -> Geometry:
        # Plain config attributes are read from __dict__: a transformers config's
        # __getattribute__ costs ~1 µs per read, and every `with iv.capture(...)` reads these.
        stored = vars(config)
        values = {}
        for name, keys in self.config_keys.items():
            values[name] = None
            for key in keys:
                value = stored[key] if key in stored else getattr(config, key, None)
                if value is not None:
                    values[name] = value
                    break
        if values.get("n_kv_heads") is None:
            values["n_kv_heads"] = values["n_heads"]
        flag = self.multi_query_flag
        new_layout = getattr(config, "new_decoder_architecture", False)
        if flag and getattr(config, flag, False) and not new_layout:
            values["n_kv_heads"] = 1
        if values.get("d_head") is None:
            values["d_head"] = values["d_model"] // values["n_heads"]
        if values.get("d_mlp") is None:
            values["d_mlp"] = 4 * values["d_model"]
        missing = [k for k in Geometry.__dataclass_fields__ if values.get(k) is None]
        if missing:
            raise ValueError(
                f"adapter {self.name!r} could not read {missing} from the config "
                f"({type(config).__name__}); fix its config_keys"
            )
        return Geometry(**{k: int(values[k]) for k in Geometry.__dataclass_fields__})

    def check_geometry(self, model: nn.Module, geometry: Geometry) -> None:
        """Refuse a head geometry that does not split the output projection's input."""
        o_proj = self.block_module(model, 0, self.o_proj)
        width = getattr(o_proj, "in_features", None)
        stored = o_proj._parameters.get("weight")
        if width is None and stored is not None:  # shapes are known also on the meta device
            width = stored.shape[0 if self.conv1d else 1]
        if width is not None and width != geometry.n_heads * geometry.d_head:
            raise ValueError(
                f"{self.name}: {self.o_proj} takes {width} features, but the config gives "
                f"{geometry.n_heads} heads x d_head {geometry.d_head} = "
                f"{geometry.n_heads * geometry.d_head}; fix the adapter's config_keys (d_head "
                "is the value head dimension)"
            )

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.submodule(causal_lm(model), self.layers)

    def block_module(self, model: nn.Module, layer: int, path: str) -> nn.Module:
        return self.submodule(self.blocks(model)[layer], path)

    @staticmethod
    def submodule(root: nn.Module, path: str) -> nn.Module:
        """``root.get_submodule(path)`` at a fifth of its cost ("" is ``root``).

        ``"mlp|block_sparse_moe"``: the first of several paths that exists, for a module that
        transformers renamed between releases (newest name first)."""
        if "|" in path:
            for alternative in path.split("|"):
                try:
                    return Adapter.submodule(root, alternative)
                except AttributeError:
                    continue
            raise AttributeError(f"{type(root).__name__} has none of the modules {path!r}")
        module = root
        for name in _path_parts(path):
            # a child module straight from _modules: getattr goes through the slow
            # nn.Module.__getattr__ for every child
            children = getattr(module, "_modules", None)
            child = None if children is None else children.get(name)
            module = child if child is not None else getattr(module, name)
        if not isinstance(module, nn.Module):
            raise AttributeError(f"{path!r} of {type(root).__name__} is not a module")
        return module

    def module(self, model: nn.Module, path: str) -> nn.Module:
        return self.submodule(causal_lm(model), path)

    def weight(self, module: nn.Module) -> torch.Tensor:
        """The weight of a projection in [out, in] orientation (a view, never a copy).

        Raises where that weight is not what the projection computes with (a PEFT adapter wraps
        the projection) or is not in memory (offloaded by accelerate)."""
        if "weight" not in module._parameters and "base_layer" not in module._modules:
            fused = [n for n, p in module.named_parameters(recurse=False) if p.ndim == 3]
            raise NotImplementedError(
                f"{type(module).__name__} in {self.name} has no weight matrix"
                + (f" (its experts are fused 3-D parameters: {', '.join(fused)})" if fused else "")
                + ": no single projection to read or edit; use iv.intervene at a site instead"
            )
        if "weight" not in module._parameters:
            kind = f"{type(module).__module__}.{type(module).__qualname__}"
            raise ValueError(
                f"this projection is a {kind} wrapping the original (a PEFT adapter such as LoRA "
                "adds a branch of its own), so its base weight is not the map it computes and "
                "cannot be read or edited alone: merge the adapter first "
                "(model = model.merge_and_unload()); capture and intervene work on the wrapped "
                "model as it is"
            )
        require_in_memory(f"the weight of this {type(module).__name__}", module.weight)
        return module.weight.T if self.conv1d else module.weight

    def to_storage(self, weight_out_in: torch.Tensor) -> torch.Tensor:
        """Turn an [out, in] weight back into the orientation the module stores."""
        return weight_out_in.T.contiguous() if self.conv1d else weight_out_in.contiguous()

    def from_storage(self, stored: torch.Tensor) -> torch.Tensor:
        """A weight as the module stores it, seen in [out, in] orientation."""
        return stored.T if self.conv1d else stored


_PROJECTIONS = {"attn.q": "q_proj", "attn.k": "k_proj", "attn.v": "v_proj"}


def causal_lm(model: nn.Module) -> nn.Module:
    """The causal LM itself: a PEFT model (LoRA, prefix tuning, ...) wraps it and hands it out
    through ``get_base_model()``, ``torch.compile(model)`` wraps it as ``_orig_mod``; any other
    model is returned as it is.

    Module paths, parameter names and the model-level hooks all refer to the causal LM, whose own
    ``__call__`` runs for every forward of the wrapper and of ``generate``.
    """
    if _is_compiled_wrapper(model):
        model = model._orig_mod
    get_base_model = getattr(type(model), "get_base_model", None)  # the class: no __getattr__
    return model if get_base_model is None else get_base_model(model)


def _is_compiled_wrapper(model: nn.Module) -> bool:
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # loaded by any torch.compile
    wrapper = getattr(eval_frame, "OptimizedModule", None)
    return wrapper is not None and isinstance(model, wrapper)


def require_in_memory(name: str, tensor: torch.Tensor) -> None:
    """Refuse a tensor whose values are not in memory (an accelerate-offloaded parameter).

    With ``device_map`` offloading to CPU or disk (or ``accelerate.cpu_offload``), parameters sit
    on the meta device and are loaded only for the forward of their module: hooks see real
    activations, but reading such a weight would fail deep inside torch, and writing one would
    silently do nothing.
    """
    if tensor.is_meta:
        raise RuntimeError(
            f"{name} is offloaded (accelerate keeps it on the meta device and loads it only "
            "for its forward), so it cannot be read or edited; capture and intervene work on "
            "such a model, but weight edits need the weights in memory: load the model without "
            "offloading (a device_map of GPUs and 'cpu' only, or none)"
        )


@lru_cache(maxsize=256)
def _path_parts(path: str) -> tuple[str, ...]:
    return tuple(path.split(".")) if path else ()


_REGISTRY: dict[str, Adapter] = {}


def register_adapter(table: Adapter, *model_types: str) -> Adapter:
    """Register ``table`` for each ``config.model_type`` given (default: ``table.name``)."""
    for model_type in model_types or (table.name,):
        _REGISTRY[model_type] = table
    return table


def adapter(model: nn.Module) -> Adapter:
    """The adapter of a HuggingFace causal LM, chosen by ``model.config.model_type``."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        cls = type(causal_lm(model))
        model_type = _model_type_of_class(cls.__name__, cls.__module__) or model_type
    if model_type not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise NotImplementedError(
            f"no adapter for model_type {model_type!r} ({type(model).__name__}); supported: "
            f"{known}. Register one with iv.register_adapter(iv.Adapter(...), {model_type!r}) "
            "giving its module paths (see docs/sites.md, 'Adding an architecture')."
        )
    table = _REGISTRY[model_type]
    try:
        table.blocks(model)
    except AttributeError as error:
        raise NotImplementedError(
            f"{type(model).__name__} has no module {table.layers!r}: interventions expects the "
            f"causal LM (e.g. AutoModelForCausalLM), not the bare base model"
        ) from error
    return table


@lru_cache(maxsize=64)
def _model_type_of_class(class_name: str, module: str) -> str | None:
    """The registered model type whose causal-LM class is ``class_name``, preferring the one the
    class is defined for (InternLM3 and remote-code models build a LlamaForCausalLM under a
    model type of their own)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    known = [
        model_type
        for model_type, name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()
        if name == class_name and model_type in _REGISTRY
    ]
    defining = [t for t in known if f".{t}." in f"{module}."]
    return (defining or known or [None])[0]


def geometry(model: nn.Module) -> Geometry:
    return adapter(model).geometry(model.config)


from interventions.adapters import (  # noqa: E402,F401  (registers the tables)
    classic,
    gpt2,
    llama,
    moe,
    parallel,
    sandwich,
)
