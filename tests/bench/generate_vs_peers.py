#!/usr/bin/env python3
"""Prefill and decode speed: `gpt2c bench` next to the peer tools, in one run, on one checkpoint.

    python tests/bench/generate_vs_peers.py CHECKPOINT [--gpt2c target/release/gpt2c] [--work /tmp/gen-bench]
        [--peers ../shared/bench/peers.py] [--only hf,optimum,ort,ct2,ct2-int8] [--threads 2] [--beams]
        [--extra '--target ort' --extra '--quantize int8' ...] [--hf-batch-beam]

Exports CHECKPOINT with gpt2c, then runs, with the same 128-token prompt (peers.py's fixed pseudo-random
ids), 64 new tokens, greedy decoding, EOS unable to end early and 2 threads:
  gpt2c bench on ONNX Runtime and on tract, batch 1 and batch 4 (and 4 beams when --beams), for the
  default export, then for each --extra export variant on ONNX Runtime (batch 1),
  with --hf-batch-beam, transformers' generate() at batch 4 and with 4 beams (hf_batch_beam.py),
  then peers.py: transformers PyTorch, optimum + ORTModelForCausalLM, a bare ONNX Runtime loop over
  optimum's export, CTranslate2 fp32 and int8.
Prints one JSON object per line, then a table; the first generated tokens are printed by every tool so
agreement on greedy ids can be checked at this size.
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--gpt2c", default=os.path.join(here, "../../target/release/gpt2c"))
    p.add_argument("--work", default="/tmp/gen-bench")
    p.add_argument("--peers", default=os.path.join(here, "../../../shared/bench/peers.py"))
    p.add_argument("--only", default="hf,optimum,ort,ct2,ct2-int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--beams", action="store_true", help="also measure 4-beam search")
    p.add_argument("--extra", action="append", default=[],
                   help="`gpt2c export` flags of a further variant, e.g. '--quantize int8' (repeatable)")
    p.add_argument("--hf-batch-beam", action="store_true", help="also run hf_batch_beam.py")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)

    spec = importlib.util.spec_from_file_location("peers", args.peers)
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    cfg = json.load(open(os.path.join(args.checkpoint, "config.json")))
    ids = peers.prompt_ids(args.prompt_tokens, cfg["vocab_size"])
    ids_path = os.path.join(args.work, "prompt_ids.json")
    json.dump(ids, open(ids_path, "w"))

    rows = []
    variants = [("gpt2c", [])] + [("gpt2c" + e.replace(" ", "").replace("--", "-"), e.split()) for e in args.extra]
    for name, flags in variants:
        out = os.path.join(args.work, name)
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([args.gpt2c, "export", args.checkpoint, "-o", out, "-q", *flags], check=True)
        for backend in ("ort", "tract") if not flags else ("ort",):
            settings = ([(1, 1), (4, 1)] + ([(1, 4)] if args.beams else [])) if not flags else [(1, 1)]
            for batch, beams in settings:
                r = subprocess.run([args.gpt2c, "bench", out, "--backend", backend, "--threads", str(args.threads),
                                    "--batch", str(batch), "--num-beams", str(beams), "--prompt-ids", ids_path,
                                    "--new-tokens", str(args.new_tokens), "--repeat", str(args.repeat), "--json"],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit(f"gpt2c bench failed:\n{r.stderr}")
                rep = json.loads(r.stdout)
                row = dict(peer=f"{name}-{backend}", batch=batch, beams=beams, prefill_ms=rep["prefill_ms"],
                           decode_tok_s=rep["decode_tok_s"], decode_tok_s_batch=rep["decode_tok_s_batch"],
                           peak_rss_mib=rep["peak_rss_mib"], tokens=rep["tokens"])
                print(json.dumps(row), flush=True)
                rows.append(row)

    r = subprocess.run([sys.executable, args.peers, args.checkpoint, "--work", args.work, "--only", args.only,
                        "--threads", str(args.threads), "--prompt-tokens", str(args.prompt_tokens),
                        "--new-tokens", str(args.new_tokens)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("peers.py failed:\n" + r.stderr[-3000:])
    for line in r.stdout.splitlines():
        row = json.loads(line)
        print(json.dumps(row), flush=True)
        if "decode_tok_s" in row:
            rows.append(dict(row, batch=1, beams=1))
    if args.hf_batch_beam:
        r = subprocess.run([sys.executable, os.path.join(here, "hf_batch_beam.py"), args.checkpoint, "--peers", args.peers,
                            "--threads", str(args.threads), "--new-tokens", str(args.new_tokens)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("hf_batch_beam.py failed:\n" + r.stderr[-3000:])
        for line in r.stdout.splitlines():
            row = json.loads(line)
            print(json.dumps(row), flush=True)
            rows.append(dict(row, decode_tok_s=row["decode_steps_s"]))

    print("\n| tool | batch | beams | prefill ms | decode tok/s (per sequence) | decode tok/s (batch) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['peer']} | {row['batch']} | {row['beams']} | {row['prefill_ms']} | {row['decode_tok_s']} | "
              f"{row.get('decode_tok_s_batch', row['decode_tok_s'])} |")


if __name__ == "__main__":
    main()
