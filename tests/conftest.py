"""Shared fixtures: tiny random models of every supported architecture, and the real model."""

import copy
import warnings

import pytest
import torch

from interventions.models import TINY_CONFIGS, tiny

ARCHS = {
    "llama-mha": ("llama", 4),
    "llama-gqa": ("llama", 2),
    "qwen2-gqa": ("qwen2", 2),
    "gpt2": ("gpt2", None),
}


@pytest.fixture(params=list(ARCHS))
def arch(request) -> str:
    return request.param


@pytest.fixture
def model(arch):
    model_type, n_kv_heads = ARCHS[arch]
    return tiny(model_type, n_kv_heads=n_kv_heads, n_layers=3)


@pytest.fixture
def llama():
    return tiny("llama", n_kv_heads=2, n_layers=3)


@pytest.fixture(scope="session")
def tiny_models():
    """Returns ``get(model_type)``: the tiny model of that type (2 layers; 2 KV heads where the
    type has grouped-query attention), built once per test session and shared, so a test that
    edits it must put it back exactly (or edit a copy)."""
    built = {}

    def get(model_type: str):
        if model_type not in built:
            grouped = TINY_CONFIGS[model_type].kv_heads_key is not None
            built[model_type] = tiny(model_type, n_kv_heads=2 if grouped else None, n_layers=2)
        return built[model_type]

    return get


@pytest.fixture
def one_thread():
    """One torch thread for the test: on a small shared CPU, two OpenMP threads running many small
    forwards spin against other processes and run ~4x slower than one (measured). Test files
    whose tests all want it say ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, 99, (2, 9), generator=generator)


@pytest.fixture
def offload():
    """Returns a function giving an offloaded copy of a model, as ``device_map`` offloading to
    CPU or disk leaves it: parameters on the meta device, loaded by accelerate's hooks for each
    module's forward."""
    from accelerate import cpu_offload

    def offloaded(model):
        copied = cpu_offload(copy.deepcopy(model), execution_device="cpu")
        assert next(copied.parameters()).is_meta
        return copied

    return offloaded


@pytest.fixture
def lora():
    """Returns a function wrapping a copy of a model in a PEFT LoRA model on the given block
    paths (default: ``o_proj``; GPT-2 ``attn.c_proj``), with random non-zero adapter weights so
    that the adapter changes outputs."""
    from peft import LoraConfig, get_peft_model

    from interventions.adapters import adapter

    def wrapped(model, paths=None):
        table = adapter(model)  # o_proj: the path relative to a block, e.g. "self_attn.o_proj"
        config = LoraConfig(
            r=2,
            target_modules=paths or [table.o_proj],
            fan_in_fan_out=table.conv1d,
            init_lora_weights=False,
        )
        torch.manual_seed(0)
        with warnings.catch_warnings():  # peft asks transformers 5 for a renamed attribute
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(copy.deepcopy(model), config).train(model.training)

    return wrapped


@pytest.fixture(scope="session")
def real_model():
    """(model, tokenizer) of SmolLM2-135M-Instruct, loaded once per test session."""
    from interventions.models import load

    return load()


@pytest.fixture(scope="session")
def claims():
    """The bundled honesty claims (representation tuning and its evaluation)."""
    from interventions.evals import honesty

    return honesty.load_claims()
