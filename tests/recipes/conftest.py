"""Fixtures for the recipes' failure tests: a full snapshot of a model's state, and a way to
interrupt a forward (Ctrl-C) in the middle of a recipe."""

from collections.abc import Callable

import pytest
import torch
from torch import nn

import interventions as iv

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def model_state(model: nn.Module) -> dict:
    """Everything a recipe might leave changed: values, gradients and requires_grad of every
    parameter, buffers, each module's train/eval mode and hooks, and the config."""
    return {
        "parameters": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: p.grad is None for n, p in model.named_parameters()},
        "tensor_hooks": {n: len(p._backward_hooks or {}) for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: {d: len(getattr(m, d)) for d in HOOK_DICTS} for n, m in model.named_modules()},
        "config": model.config.to_dict(),
        "attention": getattr(model.config, "_attn_implementation", None),
    }


def assert_same_state(model: nn.Module, before: dict) -> None:
    now = model_state(model)
    changed = [
        n for n, v in before["parameters"].items() if not torch.equal(v, now["parameters"][n])
    ]
    assert not changed, f"parameters changed: {changed}"
    assert now["parameters"].keys() == before["parameters"].keys()
    changed = [n for n, v in before["buffers"].items() if not torch.equal(v, now["buffers"][n])]
    assert not changed, f"buffers changed: {changed}"
    for key in (
        "grads",
        "tensor_hooks",
        "requires_grad",
        "training",
        "hooks",
        "config",
        "attention",
    ):
        assert now[key] == before[key], f"{key} changed"


@pytest.fixture
def untouched() -> Callable[[nn.Module], Callable[[], None]]:
    """``check = untouched(model)`` records the model's whole state (and asserts it holds no
    hooks); ``check()`` asserts it is exactly that state again."""

    def record(model: nn.Module) -> Callable[[], None]:
        before = model_state(model)
        assert not any(any(n.values()) for n in before["hooks"].values()), "hooks already on"
        return lambda: assert_same_state(model, before)

    return record


@pytest.fixture
def interrupt(monkeypatch) -> Callable[..., list[bool]]:
    """``interrupt(model, layer, when)``: block ``layer``'s forward raises KeyboardInterrupt
    (as Ctrl-C would) on the first call for which ``when(number of the call)`` is true, with
    every hook of the recipe attached. Returns one bool per call seen (did it raise there?), to
    check that it fired where it should."""

    def patch(model: nn.Module, layer: int, when: Callable[[int], bool]) -> list[bool]:
        block = iv.adapter(model).blocks(model)[layer]
        forward = block.forward
        calls: list[bool] = []

        def interrupted(*args, **kwargs):
            calls.append(when(len(calls) + 1))
            if calls[-1]:
                raise KeyboardInterrupt
            return forward(*args, **kwargs)

        monkeypatch.setattr(block, "forward", interrupted)
        return calls

    return patch
