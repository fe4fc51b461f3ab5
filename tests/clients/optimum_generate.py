#!/usr/bin/env python3
"""Greedy generation with optimum's ORTModelForCausalLM over a gpt2c export folder.

    python tests/clients/optimum_generate.py EXPORT_DIR CASES_JSON

CASES_JSON: a JSON list of {"prompt": [ids], "max_new_tokens": n}. Prints a JSON list of the generated
sequences (prompt included) as token ids.
"""
import json
import sys

import torch
from optimum.onnxruntime import ORTModelForCausalLM


def main():
    model = ORTModelForCausalLM.from_pretrained(sys.argv[1])
    eos = model.config.eos_token_id
    out = []
    for case in json.load(open(sys.argv[2])):
        ids = torch.tensor([case["prompt"]])
        seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=case["max_new_tokens"],
                             do_sample=False, pad_token_id=eos)
        out.append(seq[0].tolist())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
