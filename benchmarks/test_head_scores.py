"""Throughput of ``head_scores.score`` against a plain forward of the same batches.

``pytest benchmarks/test_head_scores.py --benchmark-only`` (options in ``conftest.py``).

Operations, each on the tiny random Llama and on SmolLM2-135M, over the same right-padded
batches (tiny: 4 batches of 8 random 24-word prompts; real: the first 16 prompts of the bundled
commonsense set, 2 batches of 8):

- ``forward``: the bare model with its default attention (sdpa), ``logits_to_keep=1`` (the
  scorer computes no logits at all: it ends each forward after the last layer): the denominator;
- ``forward-eager``: the same with eager attention, the floor for anything that reads attention
  probabilities (``S_ent`` and ``S_task`` need them);
- ``score``: ``head_scores.score`` (captures ``attn.heads`` and ``attn.pattern`` at every layer,
  streaming reducers, tokenization and batching included).

``extra_info`` holds the token count: tokens/s = tokens / mean time; the ratio of two rows of a
group is the throughput ratio.
"""

import random
from contextlib import contextmanager

import pytest
import torch

from interventions import text
from interventions.recipes import head_scores

OPS = ("forward", "forward-eager", "score")
BATCH = 8


def _prompts(spec) -> list[head_scores.Prompt]:
    if spec.name == "real":
        return head_scores.load_records(head_scores.BUNDLED_DATA)[: 2 * BATCH]
    rng = random.Random(0)  # the tiny tokenizer knows the words t0 .. t98
    return [
        head_scores.Prompt(" ".join(f"t{rng.randrange(3, 99)}" for _ in range(24)))
        for _ in range(4 * BATCH)
    ]


@contextmanager
def _eager(model):
    saved = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        yield
    finally:
        model.config._attn_implementation = saved


@pytest.mark.parametrize("model_name", ["tiny", "real"])
@pytest.mark.parametrize("op", OPS)
def test_head_scores_throughput(op, model_name, specs, timer, benchmark) -> None:
    spec = specs[model_name]
    model, tokenizer = spec.model, spec.tokenizer
    prompts = _prompts(spec)
    rows = [head_scores.prompt_tokens(tokenizer, p).ids for p in prompts]
    pad = text.pad_id(tokenizer)
    batches = [
        text.pad(rows[i : i + BATCH], pad, "right").to(spec.device)
        for i in range(0, len(rows), BATCH)
    ]
    tokens = sum(len(r) for r in rows)

    def forward() -> None:
        for b in batches:
            model(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                use_cache=False,
                logits_to_keep=1,
            )

    def forward_eager() -> None:
        with _eager(model):
            forward()

    def score() -> head_scores.HeadScores:
        return head_scores.score(model, tokenizer, prompts, BATCH, progress=False)

    table = score()  # checked once, outside the timing
    assert table.stats["batches"] == len(batches) and table.stats["tokens"] == tokens
    benchmark.group = f"{model_name} head_scores"
    benchmark.extra_info.update(model=model_name, op=op, tokens=tokens, batches=len(batches))
    fn = {"forward": forward, "forward-eager": forward_eager, "score": score}[op]
    with torch.no_grad():
        timer(spec, fn, "forward")
    if benchmark.stats is not None:
        mean = benchmark.stats.stats.mean
        benchmark.extra_info["tokens_per_second"] = tokens / mean
