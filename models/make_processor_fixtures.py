#!/usr/bin/env python3
"""Records transformers' logits processors and warpers on fixed scores, for the processors the
generation fixtures cannot pin down (sampling warpers choose at random; forced BOS and invalid-value
removal need inputs a model does not give).

    .venv/bin/python models/make_processor_fixtures.py

Writes models/processors/processors.json: per case the gpt2c generation settings that build the
same processor (`settings`), the row's token ids so far (`input_ids`), the scores before
(`scores`) and after (`processed`) transformers' processor. Non-finite floats are written as the
strings "nan", "inf" and "-inf".
"""
import json
import math
import os

import torch
import transformers
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    ForcedBOSTokenLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    TypicalLogitsWarper,
)

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 48


def encode(values):
    out = []
    for v in values:
        if math.isnan(v):
            out.append("nan")
        elif math.isinf(v):
            out.append("inf" if v > 0 else "-inf")
        else:
            out.append(v)
    return out


def scores(seed, scale=1.0, masked=5):
    """Spread logits on a 1/8 grid (so ties occur) with a few tokens already masked to -inf."""
    g = torch.Generator().manual_seed(seed)
    x = torch.round(torch.randn(VOCAB, generator=g) * scale * 8) / 8
    for i in torch.randperm(VOCAB, generator=g)[:masked]:
        x[i] = -math.inf
    return x


def case(name, settings, processor, input_ids, x):
    ids = torch.tensor([input_ids])
    out = processor(ids, x.clone().unsqueeze(0))[0]
    kept = int(torch.isfinite(out).sum())
    return {"name": name, "settings": settings, "input_ids": input_ids, "scores": encode(x.tolist()),
            "processed": encode(out.tolist()), "kept": kept}


def main():
    cases = []
    ids = [3, 1, 4, 1, 5]
    # Warpers: sampling settings with nothing else on (top_k 0). With beams, gpt2c keeps
    # min_tokens_to_keep = 1 + number of EOS ids (2 with one EOS), as transformers does.
    for mass, seed in [(0.9, 1), (0.5, 2), (0.2, 3)]:
        cases.append(case(f"typical_p_{mass}", {"do_sample": True, "top_k": 0, "typical_p": mass},
                          TypicalLogitsWarper(mass=mass, min_tokens_to_keep=1), ids, scores(seed)))
    cases.append(case("typical_p_min_keep_2", {"do_sample": True, "top_k": 0, "typical_p": 0.05, "num_beams": 2,
                                                "eos_token_id": 0},
                      TypicalLogitsWarper(mass=0.05, min_tokens_to_keep=2), ids, scores(4)))
    for eps, seed in [(0.02, 5), (0.1, 6)]:
        cases.append(case(f"epsilon_cutoff_{eps}", {"do_sample": True, "top_k": 0, "epsilon_cutoff": eps},
                          EpsilonLogitsWarper(epsilon=eps, min_tokens_to_keep=1), ids, scores(seed)))
    cases.append(case("epsilon_cutoff_min_keep_2", {"do_sample": True, "top_k": 0, "epsilon_cutoff": 0.6,
                                                     "num_beams": 2, "eos_token_id": 0},
                      EpsilonLogitsWarper(epsilon=0.6, min_tokens_to_keep=2), ids, scores(7)))
    for eps, seed in [(0.05, 8), (0.3, 9)]:
        cases.append(case(f"eta_cutoff_{eps}", {"do_sample": True, "top_k": 0, "eta_cutoff": eps},
                          EtaLogitsWarper(epsilon=eps, min_tokens_to_keep=1, device="cpu"), ids, scores(seed)))
    cases.append(case("eta_cutoff_min_keep_2", {"do_sample": True, "top_k": 0, "eta_cutoff": 0.9, "num_beams": 2,
                                                 "eos_token_id": 0},
                      EtaLogitsWarper(epsilon=0.9, min_tokens_to_keep=2, device="cpu"), ids, scores(10, scale=6.0)))
    # Forced BOS: only when the row holds one token.
    for row in ([7], [7, 2]):
        cases.append(case(f"forced_bos_len_{len(row)}", {"forced_bos_token_id": 11},
                          ForcedBOSTokenLogitsProcessor(bos_token_id=11), row, scores(11)))
    # Invalid values: NaN becomes 0, +inf the largest float, -inf the lowest.
    x = scores(12, masked=3)
    x[2], x[9], x[20] = math.nan, math.inf, math.nan
    cases.append(case("remove_invalid_values", {"remove_invalid_values": True}, InfNanRemoveLogitsProcessor(), ids, x))
    for c in cases:
        assert 0 < c["kept"], c["name"]
    # Every warper case must remove something and keep something, or it proves nothing.
    for c in cases:
        if "cutoff" in c["name"] or "typical" in c["name"]:
            assert c["kept"] < VOCAB - 5, f"{c['name']} removes nothing"
    path = os.path.join(HERE, "processors", "processors.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "vocab": VOCAB,
                   "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"{len(cases)} cases -> {path}")


if __name__ == "__main__":
    main()
