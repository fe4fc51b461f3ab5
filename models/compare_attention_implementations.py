#!/usr/bin/env python3
"""Shows why gpt2c is compared with transformers' eager attention: the default (SDPA) path of
transformers 4.57 ignores `scale_attn_by_inverse_layer_idx` and `reorder_and_upcast_attn`, which
gpt2c (and eager) follow.

    .venv/bin/python models/compare_attention_implementations.py [CHECKPOINT ...]

Prints, per checkpoint, the largest logit difference between `attn_implementation="eager"` and
`from_pretrained()`'s default on one prompt (default: models/tiny-scaled-attn and models/tiny-default).
"""
import os
import sys

import torch
from transformers import GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    paths = sys.argv[1:] or [os.path.join(HERE, "tiny-scaled-attn"), os.path.join(HERE, "tiny-default")]
    ids = torch.tensor([[5, 17, 99, 3, 250, 8, 41]])
    for path in paths:
        eager = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
        default = GPT2LMHeadModel.from_pretrained(path).eval()
        with torch.no_grad():
            d = (eager(ids).logits - default(ids).logits).abs().max().item()
        c = eager.config
        print(f"{os.path.basename(path)}: default attention {default.config._attn_implementation}, "
              f"scale_attn_by_inverse_layer_idx={c.scale_attn_by_inverse_layer_idx}, "
              f"reorder_and_upcast_attn={c.reorder_and_upcast_attn}: max |eager - default| logit = {d:.3g}")


if __name__ == "__main__":
    main()
