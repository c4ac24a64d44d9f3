"""Shared fixtures: tiny random models of every supported architecture, and the real model."""

import copy

import pytest
import torch

from interventions.models import tiny

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


@pytest.fixture(scope="session")
def real_model():
    """(model, tokenizer) of SmolLM2-135M-Instruct, loaded once per test session."""
    from interventions.models import load

    return load()
