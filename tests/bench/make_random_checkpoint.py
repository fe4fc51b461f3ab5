#!/usr/bin/env python3
"""Saves a randomly initialised GPT-2 checkpoint of a standard shape, as transformers initialises it.

    python tests/bench/make_random_checkpoint.py gpt2-small /tmp/gpt2-small [--seed 0] [--tokenizer ../shared/models/gpt2-tokenizer]

Shapes: gpt2-small (124M), gpt2-medium (355M), gpt2-large (774M), gpt2-xl (1.5B). The weights are
saved with save_pretrained (model.safetensors, the LM head tied to wte), with the real GPT-2 tokenizer
files copied beside them when --tokenizer is given. Used for the export and inference benchmarks.
"""
import argparse
import os
import shutil

import torch
from transformers import GPT2Config, GPT2LMHeadModel

SHAPES = {
    "gpt2-small": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "../../../shared/models/gpt2-tokenizer"))
    args = p.parse_args()
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(GPT2Config(**SHAPES[args.shape])).eval()
    model.save_pretrained(args.out)
    if os.path.isdir(args.tokenizer):
        for name in os.listdir(args.tokenizer):
            shutil.copy(os.path.join(args.tokenizer, name), args.out)
    print(f"{args.shape}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {args.out}")


if __name__ == "__main__":
    main()
