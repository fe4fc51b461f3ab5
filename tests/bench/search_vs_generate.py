#!/usr/bin/env python3
"""Decode speed of generation inside the graph (`gpt2c export --generation`) beside gpt2c's own driver and
ONNX Runtime's convert_generation.py, in one run.

    python tests/bench/search_vs_generate.py CHECKPOINT [--gpt2c target/release/gpt2c] [--threads 2]
        [--prompt-tokens 128] [--new-tokens 64] [--repeat 3] [--workdir DIR] [--json FILE]
        [--transformers-path DIR]   # an older transformers for convert_generation.py (see below)

CHECKPOINT: a GPT-2 folder (tests/bench/make_random_checkpoint.py gpt2-small DIR makes one). Rows:
- gpt2c generate (greedy; 4 beams): `gpt2c bench` on the default export, ONNX Runtime, --threads.
- in-graph GreedySearch / BeamSearch (4 beams): the `--generation greedy-search|beam-search` export run with
  ONNX Runtime's Python API as a deployment calls it (session.run; intra-op threads = --threads).
- convert_generation.py GreedySearch / BeamSearch: ONNX Runtime's own tool (onnxruntime.transformers), which
  exports the checkpoint with PyTorch first; reported as unavailable (with its error) when it cannot run here.
Each in-graph call runs the prompt and --new-tokens tokens (min_length forces them); a call with one new token
gives the prefill time, and decode tokens/s = (new tokens - 1) / (full call - prefill call), medians of --repeat.
Beam rows report search steps per second (one step extends every beam by one token).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort


def median_seconds(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def in_graph(model_path, beams, args, prompt, pad):
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    s = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}

    def call(new):
        total = len(prompt) + new
        feed = {"input_ids": np.array([prompt], np.int32), "attention_mask": np.ones((1, len(prompt)), np.int32),
                "max_length": np.array([total], np.int32), "min_length": np.array([total], np.int32),
                "repetition_penalty": np.array([1.0], np.float32), "num_beams": np.array([beams], np.int32),
                "num_return_sequences": np.array([1], np.int32), "length_penalty": np.array([1.0], np.float32)}
        return lambda: s.run(None, {k: v for k, v in feed.items() if k in names})

    prefill = median_seconds(call(1), args.repeat)
    full = median_seconds(call(args.new_tokens), args.repeat)
    return {"prefill_ms": round(prefill * 1000, 1), "decode_per_s": round((args.new_tokens - 1) / (full - prefill), 2)}


def gpt2c_bench(gpt2c, export, beams, args):
    cmd = [gpt2c, "bench", export, "--backend", "ort", "--threads", str(args.threads), "--prompt-tokens",
           str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--repeat", str(args.repeat), "--json"]
    if beams > 1:
        cmd += ["--num-beams", str(beams)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    # Per sequence: with beams, one token per beam per step, so this is steps per second.
    return {"prefill_ms": round(out["prefill_ms"], 1), "decode_per_s": round(out["decode_tok_s"], 2)}


# ONNX Runtime's tool run with GPT-2's SDPA attention switched off: it traces at opset 11, which has no
# scaled_dot_product_attention. Its GPT-2 wrapper passes the cache as stacked tuples, which transformers
# 4.57 no longer takes, so an older transformers goes first on PYTHONPATH (--transformers-path).
CONVERT = """
import runpy, sys
import transformers.models.gpt2.modeling_gpt2 as m
m.GPT2PreTrainedModel._supports_sdpa = False
sys.argv = ["convert_generation"] + sys.argv[1:]
runpy.run_module("onnxruntime.transformers.convert_generation", run_name="__main__")
"""


def convert_generation(checkpoint, workdir, beams, transformers_path):
    """ONNX Runtime's own tool: exports with PyTorch, then wraps the search; returns a model path or raises."""
    out = os.path.join(workdir, f"convert_generation_{'beam' if beams > 1 else 'greedy'}.onnx")
    if os.path.exists(out):
        return out
    cmd = [sys.executable, "-c", CONVERT, "-m", checkpoint, "--model_type", "gpt2", "--output", out,
           "--cache_dir", os.path.join(workdir, "cache"), "--num_beams", str(beams), "--num_return_sequences", "1",
           "--disable_parity"]
    env = dict(os.environ)
    if transformers_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [transformers_path, env.get("PYTHONPATH")]))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=1800, env=env)
    if not os.path.exists(out):
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(" | ".join(tail) or f"exit {r.returncode}")
    # The tool saves with the installed onnx package's IR version, which may be newer than ONNX Runtime
    # reads (its own test of the file then fails): the graph itself needs no newer IR.
    import onnx
    model = onnx.load(out)
    if model.ir_version > 10:
        model.ir_version = 10
        onnx.save(model, out)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--gpt2c", default=os.path.join(os.path.dirname(__file__), "../../target/release/gpt2c"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir")
    p.add_argument("--json")
    p.add_argument("--transformers-path", help="a folder with an older transformers for convert_generation.py "
                   "(pip install --target DIR --no-deps transformers==4.44.2 tokenizers==0.19.1)")
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="search-bench-")
    os.makedirs(work, exist_ok=True)
    print("$ python " + " ".join(sys.argv))
    exports = {}
    for name, extra in (("plain", []), ("greedy", ["--generation", "greedy-search"]),
                        ("beam", ["--generation", "beam-search"])):
        exports[name] = os.path.join(work, name)
        if not os.path.exists(os.path.join(exports[name], "model.onnx")):
            subprocess.run([args.gpt2c, "export", args.checkpoint, "-o", exports[name], "-q", "--force"] + extra,
                           check=True)
    config = json.load(open(os.path.join(args.checkpoint, "config.json")))
    rng = np.random.default_rng(0)
    pad = config.get("eos_token_id", 50256)
    prompt = [int(t) for t in rng.integers(0, config["vocab_size"] - 1, args.prompt_tokens) if t != pad]
    rows = []
    rows.append(("gpt2c generate, greedy", gpt2c_bench(args.gpt2c, exports["plain"], 1, args)))
    rows.append(("gpt2c generate, 4 beams", gpt2c_bench(args.gpt2c, exports["plain"], 4, args)))
    rows.append(("in-graph GreedySearch (gpt2c export)", in_graph(os.path.join(exports["greedy"], "model.onnx"), 1, args, prompt, pad)))
    rows.append(("in-graph BeamSearch, 4 beams (gpt2c export)", in_graph(os.path.join(exports["beam"], "model.onnx"), 4, args, prompt, pad)))
    for beams, label in ((1, "GreedySearch"), (4, "BeamSearch, 4 beams")):
        try:
            model = convert_generation(args.checkpoint, work, beams, args.transformers_path)
            rows.append((f"convert_generation.py {label}", in_graph(model, beams, args, prompt, pad)))
        except Exception as e:  # reported, not hidden
            rows.append((f"convert_generation.py {label}", {"unavailable": str(e)[:300]}))
    for label, r in rows:
        print(json.dumps({"row": label, **r}))
    print(f"\n{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, {args.threads} threads, batch 1\n")
    print("| | prefill ms | decode tokens/s (beams: steps/s) |\n|---|---|---|")
    for label, r in rows:
        if "unavailable" in r:
            print(f"| {label} | unavailable: {r['unavailable']} | |")
        else:
            print(f"| {label} | {r['prefill_ms']} | {r['decode_per_s']} |")
    if args.json:
        json.dump([{"row": l, **r} for l, r in rows], open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
