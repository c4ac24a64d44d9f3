"""The resid_pre patching sweep against TransformerLens's ``get_act_patch_resid_pre``.

    pytest benchmarks/test_patching.py -s -p no:cacheprovider
    (TransformerLens 4.x and nnsight importable: ``pip install transformer-lens nnsight``;
    skipped without TransformerLens, the nnsight column left out without nnsight)

Every (layer, position) of ``resid_pre`` on SmolLM2-135M for the Eiffel Tower / Colosseum pair,
metric logit(" Paris") - logit(" Rome") at the last token:

- ``ours``: ``iv.patching`` (the cells batched, ``BATCH`` patched rows per forward);
- ``loop``: one patch per forward through ``iv.intervene`` (what batching saves);
- ``transformer_lens``: ``patching.get_act_patch_resid_pre`` on a ``TransformerBridge`` booted
  from a copy of the same HF model (no weight processing: the same numbers);
- ``nnsight``: the loop nnsight's tutorials write, one ``trace`` per (layer, position) that sets
  the layer's input at that position to the clean value (``TransformersModel`` around a copy).

TransformerLens forces eager attention; ours runs on a copy switched to eager too, so the maps
are compared (within 1e-4) before any time is. Each is timed once (CPU time of the process,
one torch thread: a map takes tens of seconds) and the ratios go to ``benchmark.extra_info``.
"""

import copy
import time

import pytest
import torch

import interventions as iv
from interventions import lm

CLEAN = "The Eiffel Tower is in the city of"
CORRUPTED = "The Colosseum is in the city of"
BATCH = 32
pytestmark = pytest.mark.real


class _SetOne(iv.Intervention):
    def __init__(self, value, position):
        super().__init__()
        self.value, self.position = value, position

    def forward(self, x):
        y = x.clone()
        y[:, self.position] = self.value
        return y


def _cpu_seconds(fn):
    start = time.process_time()
    with torch.no_grad():
        out = fn()
    return out, time.process_time() - start


def _eager(model):
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    return model


def test_patching_sweep_against_transformer_lens(benchmark, bench_model):
    bridge_module = pytest.importorskip("transformer_lens.model_bridge")
    tl_patching = pytest.importorskip("transformer_lens.patching")
    model, tokenizer = bench_model
    ours_model = _eager(model)
    clean = tokenizer(CLEAN, return_tensors="pt").input_ids
    corrupted = tokenizer(CORRUPTED, return_tensors="pt").input_ids
    paris, rome = lm.first_token(tokenizer, " Paris"), lm.first_token(tokenizer, " Rome")

    def ours():
        return iv.patching(
            ours_model, clean, corrupted, answers=(paris, rome), batch_size=BATCH, progress=False
        ).values

    def loop():
        n_layers = iv.geometry(ours_model).n_layers
        sites = [f"layers.{i}.resid_pre" for i in range(n_layers)]
        with iv.capture(ours_model, sites) as cache:
            ours_model(input_ids=clean)
        out = torch.empty(n_layers, clean.shape[1])
        for i, site in enumerate(sites):
            for j in range(clean.shape[1]):
                with iv.intervene(ours_model, {site: _SetOne(cache[site][0, j], j)}):
                    logits = ours_model(input_ids=corrupted).logits
                out[i, j] = logits[0, -1, paris] - logits[0, -1, rome]
        return out

    bridge = bridge_module.TransformerBridge.boot_transformers(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        hf_model=copy.deepcopy(model),
        tokenizer=tokenizer,
        device="cpu",
    )

    def transformer_lens():
        _, clean_cache = bridge.run_with_cache(clean)
        return tl_patching.get_act_patch_resid_pre(
            bridge,
            corrupted,
            clean_cache,
            lambda logits: logits[0, -1, paris] - logits[0, -1, rome],
        )

    ours_map, ours_s = _cpu_seconds(ours)
    tl_map, tl_s = _cpu_seconds(transformer_lens)
    loop_map, loop_s = _cpu_seconds(loop)
    torch.testing.assert_close(ours_map, tl_map.float().cpu(), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_map, loop_map, atol=1e-4, rtol=0)
    peers = {}
    nnsight_loop = _nnsight_loop(ours_model, tokenizer, clean, corrupted, (paris, rome))
    if nnsight_loop is not None:
        nnsight_map, nnsight_s = _cpu_seconds(nnsight_loop)
        torch.testing.assert_close(ours_map, nnsight_map, atol=1e-4, rtol=0)
        peers = {"nnsight_s": nnsight_s, "ours_over_nnsight": ours_s / nnsight_s}
    default_map, default_s = _cpu_seconds(
        lambda: iv.patching(model, clean, corrupted, answers=(paris, rome), progress=False).values
    )
    benchmark.pedantic(ours, rounds=1, iterations=1)  # listed in pytest-benchmark's table
    info = {
        "cells": ours_map.numel(),
        "ours_s": ours_s,
        "ours_sdpa_s": default_s,
        "loop_s": loop_s,
        "transformer_lens_s": tl_s,
        "ours_over_transformer_lens": ours_s / tl_s,
        "ours_over_loop": ours_s / loop_s,
        **peers,
        "max_abs_difference_vs_transformer_lens": float((ours_map - tl_map.float()).abs().max()),
    }
    benchmark.extra_info.update(info)
    print("\n" + "\n".join(f"{k}: {v:.4g}" for k, v in info.items()))
    assert default_map.shape == ours_map.shape


def _nnsight_loop(model, tokenizer, clean, corrupted, answers):
    """nnsight's patching loop over a copy of ``model``, or None when nnsight is not installed."""
    try:
        from nnsight.modeling.transformers import TransformersModel
    except ImportError:
        return None
    wrapped = TransformersModel(copy.deepcopy(model), tokenizer=tokenizer)
    layers = wrapped.model.layers
    paris, rome = answers

    # nnsight runs the body of a trace from its source: plain loops, no comprehensions.
    def run():
        n_layers, n_positions = len(layers), clean.shape[1]
        saved = []
        with wrapped.trace(clean):
            for i in range(n_layers):
                saved.append(layers[i].input.save())
        out = torch.empty(n_layers, n_positions)
        for i in range(n_layers):
            for j in range(n_positions):
                with wrapped.trace(corrupted):
                    layers[i].input[:, j] = saved[i][:, j]
                    logits = wrapped.lm_head.output.save()
                out[i, j] = logits[0, -1, paris] - logits[0, -1, rome]
        return out

    return run
