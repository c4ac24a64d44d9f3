"""The one greedy generation of the tests: a fixed number of new tokens under a plan, with the
logits of every step (so cached and recomputed decoding can be compared exactly)."""

import torch

import interventions as iv

NEW = 6  # generated tokens: prompt 9 + 6 > the tiny models' sliding windows (8)


def generate(model, prompt, plan, *, use_cache: bool, new: int = NEW):
    """``(sequences, logits [batch, new, vocab])`` of greedy decoding under ``plan``."""
    with iv.intervene(model, plan):
        out = model.generate(
            prompt,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            use_cache=use_cache,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    return out.sequences, torch.stack(out.logits, dim=1)
