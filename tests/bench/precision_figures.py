#!/usr/bin/env python3
"""Precision figures in one run: file size, decode speed and perplexity cost of every export mode.

    python tests/bench/precision_figures.py GPT2_SMALL_CHECKPOINT [--trained ../shared/models/tiny-trained]
        [--gpt2c target/release/gpt2c] [--peers ../shared/bench/peers.py] [--work /tmp/precision]

1. Exports the gpt2-small-shaped checkpoint in each mode (fp32, fp16, int8, int8-weights, int4 for
   ONNX Runtime, int4 portable) and reports model bytes relative to fp32.
2. `gpt2c bench` (128-token prompt, 64 new tokens, greedy, batch 1, 2 threads) for each mode on
   ONNX Runtime and on tract, relative to fp32 on the same backend; then peers.py's CTranslate2 fp32
   and int8 on the same checkpoint.
3. Perplexity of ../shared/models/tiny-trained exported in each mode on its held-out text
   (models/heldout/tiny-trained-heldout.txt, all 54k tokens, windows of 512 every 256), relative to fp32,
   on both backends.
One JSON object per line, then tables.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

MODES = [("fp32", []), ("fp16", ["--dtype", "fp16"]), ("int8", ["--quantize", "int8"]),
         ("int8-weights", ["--quantize", "int8-weights"]), ("int4-ort", ["--quantize", "int4", "--target", "ort"]),
         ("int4-portable", ["--quantize", "int4"])]


def run_json(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(r.stdout)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--trained", default=os.path.join(here, "../../../shared/models/tiny-trained"))
    p.add_argument("--gpt2c", default=os.path.join(here, "../../target/release/gpt2c"))
    p.add_argument("--peers", default=os.path.join(here, "../../../shared/bench/peers.py"))
    p.add_argument("--work", default="/tmp/precision")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-perplexity", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    text = os.path.join(here, "../../models/heldout/tiny-trained-heldout.txt")

    sizes, speed, ppl = {}, {}, {}
    for name, flags in MODES:
        out = os.path.join(args.work, "small-" + name)
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([args.gpt2c, "export", args.checkpoint, "-o", out, "-q", *flags], check=True)
        sizes[name] = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.startswith("model.onnx"))
        print(json.dumps({"mode": name, "model_bytes": sizes[name], "relative": round(sizes[name] / sizes["fp32"], 3)}), flush=True)
        if not args.skip_speed:
            for backend in ("ort", "tract"):
                rep = run_json([args.gpt2c, "bench", out, "--backend", backend, "--threads", str(args.threads),
                                "--repeat", "3", "--json"])
                speed[(name, backend)] = rep
                print(json.dumps({"mode": name, "backend": backend, **{k: rep.get(k) for k in ("prefill_ms", "decode_tok_s", "peak_rss_mib", "error")}}), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    if not args.skip_speed:
        r = subprocess.run([sys.executable, args.peers, args.checkpoint, "--work", args.work, "--only", "ct2,ct2-int8",
                            "--threads", str(args.threads)], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            print(line, flush=True)
            row = json.loads(line)
            if "decode_tok_s" in row:
                speed[(row["peer"], "ctranslate2")] = row

    if not args.skip_perplexity:
        for name, flags in MODES:
            out = os.path.join(args.work, "trained-" + name)
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run([args.gpt2c, "export", args.trained, "-o", out, "-q", *flags], check=True)
            for backend in ("ort", "tract"):
                rep = run_json([args.gpt2c, "perplexity", out, "--text", text, "--backend", backend, "--threads",
                                str(args.threads), "--stride", "256", "--max-length", "512", "--json", "-q"])
                ppl[(name, backend)] = rep
                print(json.dumps({"mode": name, "backend": backend, **{k: rep.get(k) for k in ("perplexity", "predicted_tokens", "error")}}), flush=True)

    print("\n| mode | size vs fp32 | ORT decode tok/s (vs fp32) | tract decode tok/s (vs fp32) | ORT perplexity (vs fp32) | tract perplexity (vs fp32) |")
    print("|---|---|---|---|---|---|")
    for name, _ in MODES:
        cells = [name, f"{sizes[name] / sizes['fp32']:.3f}x"]
        for backend in ("ort", "tract"):
            s, base = speed.get((name, backend), {}), speed.get(("fp32", backend), {})
            cells.append(f"{s['decode_tok_s']} ({s['decode_tok_s'] / base['decode_tok_s']:.2f}x)" if "decode_tok_s" in s and "decode_tok_s" in base else s.get("error", "-"))
        for backend in ("ort", "tract"):
            q, base = ppl.get((name, backend), {}), ppl.get(("fp32", backend), {})
            cells.append(f"{q['perplexity']:.3f} ({100 * (q['perplexity'] / base['perplexity'] - 1):+.3f}%)" if "perplexity" in q and "perplexity" in base else q.get("error", "-"))
        print("| " + " | ".join(cells) + " |")
    for key, row in speed.items():
        if key[1] == "ctranslate2":
            print(f"| {key[0]} (CTranslate2) | | decode {row['decode_tok_s']} tok/s, prefill {row['prefill_ms']} ms | | | |")


if __name__ == "__main__":
    main()
