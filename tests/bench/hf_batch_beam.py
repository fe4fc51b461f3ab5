#!/usr/bin/env python3
"""transformers' PyTorch generate() decode throughput for batch 4 and for 4-beam search, to set next to
`gpt2c bench --batch 4` and `gpt2c bench --num-beams 4` (same prompt ids as peers.py, 64 new tokens,
EOS unable to end early, 2 threads).

    python tests/bench/hf_batch_beam.py CHECKPOINT [--peers ../shared/bench/peers.py]

Step times come from a logits processor that records when each step's scores arrive: prefill is the time
to the first, decode rate the steps after the first per second (× batch for the batch's throughput).
"""
import argparse, importlib.util, json, os, time
import torch
from transformers import GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList


class Clock(LogitsProcessor):
    def __init__(self):
        self.times = []
    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--peers", default=os.path.join(here, "../../../shared/bench/peers.py"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args()
    spec = importlib.util.spec_from_file_location("peers", args.peers)
    peers = importlib.util.module_from_spec(spec); spec.loader.exec_module(peers)
    torch.set_num_threads(args.threads)
    cfg = json.load(open(os.path.join(args.checkpoint, "config.json")))
    ids = peers.prompt_ids(128, cfg["vocab_size"])
    model = GPT2LMHeadModel.from_pretrained(args.checkpoint).eval()
    eos = cfg.get("eos_token_id", 50256)
    for name, batch, beams in (("hf-pytorch-batch4", 4, 1), ("hf-pytorch-beams4", 1, 4)):
        x = torch.tensor([ids] * batch)
        with torch.inference_mode():
            model.generate(x[:, :8], max_new_tokens=4, do_sample=False, num_beams=beams, pad_token_id=eos)
            clock = Clock()
            t0 = time.perf_counter()
            model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, do_sample=False, num_beams=beams, pad_token_id=eos,
                           logits_processor=LogitsProcessorList([clock]))
        t = clock.times
        rate = (len(t) - 1) / (t[-1] - t[0])
        print(json.dumps({"peer": name, "batch": batch, "beams": beams, "prefill_ms": round((t[0] - t0) * 1e3, 1),
                          "decode_steps_s": round(rate, 2), "decode_tok_s_batch": round(rate * batch, 2)}), flush=True)


if __name__ == "__main__":
    main()
