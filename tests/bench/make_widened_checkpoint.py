#!/usr/bin/env python3
"""Widens a small trained GPT-2 into gpt2-small's shape while keeping its function.

    python tests/bench/make_widened_checkpoint.py ../shared/models/tiny-trained /tmp/tiny-as-small [--check]

Speed figures that need meaningful outputs at gpt2-small's size (prompt lookup decoding, whose gain
depends on what the model writes) have no trained gpt2-small-shaped checkpoint here. This makes one with
gpt2-small's shapes (768 wide, 12 heads of 64, 12 blocks, MLP 3,072, the 50,257-token tied head; the source's
n_positions is kept) that computes the source model's logits:

- the residual stream holds 6 copies of the source's 128 values, so LayerNorm's mean and variance, and
  with its replicated weights its output, are the source's, copied;
- each matmul reading the stream divides its replicated rows by the copy count; each target head holds two
  copies of a source head (target head j copies source head j % 4), queries scaled by 1/sqrt(2) so
  q.k / sqrt(64) equals the source's q.k / sqrt(32);
- the source's 4 blocks sit at blocks 0, 3, 6 and 9; the other 8 are dense random blocks whose output
  projections are zero, so they compute attention and MLP at full size and add exactly 0 to the stream;
- the final LayerNorm's weight and bias are divided by 6 so the tied head's 768-wide dot products equal
  the source's 128-wide ones.

--check runs both in transformers (eager attention) on a prompt and prints the largest logit difference
and whether the greedy continuations agree. Uses numpy, safetensors and (for --check) torch.
"""
import argparse
import json
import os
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

COPIES = 6
TARGET = dict(n_embd=768, n_head=12, n_layer=12)


def widen(src, config):
    d, heads, layers = config["n_embd"], config["n_head"], config["n_layer"]
    inner = config.get("n_inner") or 4 * d
    if d * COPIES != TARGET["n_embd"] or TARGET["n_layer"] % layers or (TARGET["n_embd"] // TARGET["n_head"]) != 2 * (d // heads):
        raise SystemExit(f"the source must be {TARGET['n_embd'] // COPIES} wide with heads of {TARGET['n_embd'] // TARGET['n_head'] // 2} "
                         f"and a block count dividing {TARGET['n_layer']}; got n_embd={d}, n_head={heads}, n_layer={layers}")
    D, H = TARGET["n_embd"], TARGET["n_head"]
    hd, HD = d // heads, D // H
    res = np.arange(D) % d  # the source dim each stream dim copies
    p = np.arange(D)
    att = (p // HD % heads) * hd + p % HD % hd  # the source q/k/v dim each target head dim copies
    hidden = np.arange(COPIES * inner) % inner
    rng = np.random.default_rng(0)
    out = {
        "transformer.wte.weight": src["transformer.wte.weight"][:, res],
        "transformer.wpe.weight": src["transformer.wpe.weight"][:, res],
        "transformer.ln_f.weight": src["transformer.ln_f.weight"][res] / COPIES,
        "transformer.ln_f.bias": src["transformer.ln_f.bias"][res] / COPIES,
    }
    stride = TARGET["n_layer"] // layers
    for t in range(TARGET["n_layer"]):
        pre = f"transformer.h.{t}."
        if t % stride:
            # A dense random block whose output projections are zero: full work, no contribution.
            out |= {
                pre + "ln_1.weight": np.ones(D, np.float32), pre + "ln_1.bias": np.zeros(D, np.float32),
                pre + "ln_2.weight": np.ones(D, np.float32), pre + "ln_2.bias": np.zeros(D, np.float32),
                pre + "attn.c_attn.weight": rng.normal(0, 0.02, (D, 3 * D)).astype(np.float32),
                pre + "attn.c_attn.bias": np.zeros(3 * D, np.float32),
                pre + "attn.c_proj.weight": np.zeros((D, D), np.float32), pre + "attn.c_proj.bias": np.zeros(D, np.float32),
                pre + "mlp.c_fc.weight": rng.normal(0, 0.02, (D, COPIES * inner)).astype(np.float32),
                pre + "mlp.c_fc.bias": np.zeros(COPIES * inner, np.float32),
                pre + "mlp.c_proj.weight": np.zeros((COPIES * inner, D), np.float32),
                pre + "mlp.c_proj.bias": np.zeros(D, np.float32),
            }
            continue
        s = lambda name: src[f"transformer.h.{t // stride}." + name]  # noqa: E731
        w, b = s("attn.c_attn.weight"), s("attn.c_attn.bias")
        scale = [1 / np.sqrt(2), 1.0, 1.0]  # queries, keys, values
        cols = [w[:, k * d:(k + 1) * d][res][:, att] / COPIES * scale[k] for k in range(3)]
        bias = [b[k * d:(k + 1) * d][att] * scale[k] for k in range(3)]
        out |= {
            pre + "ln_1.weight": s("ln_1.weight")[res], pre + "ln_1.bias": s("ln_1.bias")[res],
            pre + "ln_2.weight": s("ln_2.weight")[res], pre + "ln_2.bias": s("ln_2.bias")[res],
            pre + "attn.c_attn.weight": np.concatenate(cols, axis=1), pre + "attn.c_attn.bias": np.concatenate(bias),
            # Each merged-head value appears COPIES times (3 target heads x 2 copies).
            pre + "attn.c_proj.weight": s("attn.c_proj.weight")[att][:, res] / COPIES,
            pre + "attn.c_proj.bias": s("attn.c_proj.bias")[res],
            pre + "mlp.c_fc.weight": s("mlp.c_fc.weight")[res][:, hidden] / COPIES,
            pre + "mlp.c_fc.bias": s("mlp.c_fc.bias")[hidden],
            pre + "mlp.c_proj.weight": s("mlp.c_proj.weight")[hidden][:, res] / COPIES,
            pre + "mlp.c_proj.bias": s("mlp.c_proj.bias")[res],
        }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def check(src_dir, out_dir):
    import torch
    from transformers import GPT2LMHeadModel

    models = [GPT2LMHeadModel.from_pretrained(p, attn_implementation="eager").eval() for p in (src_dir, out_dir)]
    ids = torch.tensor([[464, 3670, 286, 428, 5964, 318, 284, 787, 257, 1430, 11, 290, 340, 318]])
    with torch.no_grad():
        a, b = (m(ids).logits for m in models)
        greedy = [m.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist() for m in models]
    print(json.dumps({"max_abs_logit_diff": float((a - b).abs().max()), "logit_range": float(a.abs().max()),
                      "greedy_48_agree": greedy[0] == greedy[1]}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    with open(os.path.join(args.checkpoint, "config.json")) as f:
        config = json.load(f)
    tensors = widen(load_file(os.path.join(args.checkpoint, "model.safetensors")), config)
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    config |= TARGET
    config.pop("n_inner", None)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in os.listdir(args.checkpoint):
        path = os.path.join(args.checkpoint, name)
        if name not in ("config.json", "model.safetensors") and not name.endswith(".py") and os.path.isfile(path):
            shutil.copy(path, os.path.join(args.out, name))
    print(f"{sum(v.size for v in tensors.values()) / 1e6:.1f}M parameters -> {args.out}")
    if args.check:
        check(args.checkpoint, args.out)


if __name__ == "__main__":
    main()
