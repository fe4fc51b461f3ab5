#!/usr/bin/env python3
"""Writes tiny-trained-heldout.txt: the held-out split of ../shared/models/tiny-trained's corpus.

tiny-trained was trained by ../shared/models/tiny-trained/train_tiny.py on Vim's documentation and the
licence texts in /usr/share/common-licenses, tokenized with the GPT-2 tokenizer; the last 2% of the
tokens were held out and never trained on. This script rebuilds that corpus the same way (same files,
same order, same cleaning) and writes the held-out 2% as text, so perplexity and quantization accuracy
are measured on in-domain text the model has not seen. (The tail of the corpus is licence text, which
its licences allow to be copied verbatim.)

It also writes reference.json: tiny-trained's perplexity on the text's first 2,048 tokens computed by
transformers (fp32, eager attention) with the sliding windows of transformers' documentation
(max_length 512, stride 256), every predicted token counted once: the reference `gpt2c perplexity`
is tested against.

    .venv/bin/python models/heldout/make_heldout.py [--tokenizer ../shared/models/gpt2-tokenizer]
Needs Debian's vim-runtime (9.0) and base-files, as on the machine that trained the model.
"""
import argparse
import glob
import json
import math
import os
import re

import torch
import transformers
from transformers import GPT2LMHeadModel, GPT2TokenizerFast


def clean(t):
    # Identical to train_tiny.py.
    t = re.sub(r"[*|]\S+[*|]", " ", t)
    t = re.sub(r"[ \t]+", " ", t)
    t = re.sub(r"\n\s*\n+", "\n\n", t)
    return t


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=os.path.join(here, "../../../shared/models/gpt2-tokenizer"))
    p.add_argument("--model", default=os.path.join(here, "../../../shared/models/tiny-trained"))
    args = p.parse_args()
    tok = GPT2TokenizerFast.from_pretrained(args.tokenizer)
    files = sorted(glob.glob("/usr/share/vim/vim9*/doc/*.txt")) + sorted(glob.glob("/usr/share/common-licenses/*"))
    if not files:
        raise SystemExit("Vim's documentation is not installed (apt-get install vim-runtime)")
    text = "\n".join(clean(open(f, errors="ignore").read()) for f in files)
    ids = tok(text)["input_ids"]
    split = int(len(ids) * 0.98)
    held = ids[split:]
    out = tok.decode(held)
    with open(os.path.join(here, "tiny-trained-heldout.txt"), "w") as f:
        f.write(out)
    print(f"corpus {len(ids)} tokens from {len(files)} files; held-out {len(held)} tokens, {len(out)} characters")
    write_reference(args.model, tok, out, os.path.join(here, "reference.json"))


def write_reference(model_dir, tok, text, path, tokens=2048, max_length=512, stride=256):
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = torch.tensor(tok(text)["input_ids"][:tokens])
    total, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(ids), stride):
            end = min(begin + max_length, len(ids))
            window = ids[begin:end]
            logp = torch.log_softmax(model(window[None]).logits[0].double(), dim=-1)
            first_counted = len(window) - (end - prev_end)
            for j in range(len(window) - 1):
                if j + 1 >= first_counted:
                    total -= logp[j, window[j + 1]].item()
                    count += 1
            prev_end = end
            if end == len(ids):
                break
    ref = {"tokens": tokens, "max_length": max_length, "stride": stride, "predicted_tokens": count,
           "mean_nll": total / count, "perplexity": math.exp(total / count),
           "transformers": transformers.__version__, "torch": torch.__version__}
    with open(path, "w") as f:
        json.dump(ref, f, indent=2, sort_keys=True)
        f.write("\n")
    print(ref)


if __name__ == "__main__":
    main()
