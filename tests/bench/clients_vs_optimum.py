#!/usr/bin/env python3
"""Greedy decode speed of each ecosystem client on a gpt2c export versus on optimum's export of the same
checkpoint (same client, same machine, one run).

    python tests/bench/clients_vs_optimum.py CHECKPOINT OPTIMUM_EXPORT [--gpt2c target/release/gpt2c]
        [--work /tmp/clients-bench] [--prompt-tokens 128] [--new-tokens 64]

OPTIMUM_EXPORT: `optimum-cli export onnx --task text-generation-with-past` of CHECKPOINT (peers.py
--only optimum-export makes one). Clients: optimum's ORTModelForCausalLM, onnxruntime-genai (genai_config.json written for both
folders: optimum's names are the ones the generic decoder type reads) and transformers.js (each
model.onnx placed in onnx/). Decode tokens/s = (new tokens - 1) / (time after the first token); the
first token's time is measured by a one-token run. Threads: each client's default. Prints JSON lines.
"""
import argparse, json, os, shutil, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))


def genai_rate(folder, ids, new):
    import onnxruntime_genai as og
    model = og.Model(folder)
    def run(n):
        p = og.GeneratorParams(model)
        p.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
        g = og.Generator(model, p)
        t = time.perf_counter()
        g.append_tokens(ids)
        while not g.is_done():
            g.generate_next_token()
        return time.perf_counter() - t, list(g.get_sequence(0))[len(ids):]
    run(4)
    first = min(run(1)[0] for _ in range(3))
    total, tokens = min((run(new) for _ in range(3)), key=lambda r: r[0])
    return (new - 1) / (total - first), [int(t) for t in tokens[:8]]


def optimum_rate(folder, ids, new):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    model = ORTModelForCausalLM.from_pretrained(folder)
    x = torch.tensor([ids])
    def run(n):
        t = time.perf_counter()
        seq = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
        return time.perf_counter() - t, seq[0, len(ids):].tolist()
    run(4)
    first = min(run(1)[0] for _ in range(3))
    total, tokens = min((run(new) for _ in range(3)), key=lambda r: r[0])
    return (new - 1) / (total - first), tokens[:8]


def tjs_rate(models, name, ids, new):
    script = os.path.join(HERE, "..", "clients", "transformersjs_generate.mjs")
    cases = os.path.join(models, name + ".json")
    def run(n):
        json.dump([{"prompt": ids, "max_new_tokens": n}] * 3, open(cases, "w"))
        t = time.perf_counter()
        out = subprocess.run(["node", script, models, name, cases, "fp32"], capture_output=True, text=True,
                             cwd=os.path.join(HERE, "..", "clients"))
        if out.returncode != 0:
            sys.exit(out.stderr)
        return time.perf_counter() - t, json.loads(out.stdout)[0][len(ids):]
    # Three generations per process: the process start and model load cancel in the difference.
    t1, _ = run(1)
    tn, tokens = run(new)
    return 3 * (new - 1) / (tn - t1), tokens[:8]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("optimum_export")
    p.add_argument("--gpt2c", default=os.path.join(HERE, "../../target/release/gpt2c"))
    p.add_argument("--work", default="/tmp/clients-bench")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    a = p.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    cfg = json.load(open(os.path.join(a.checkpoint, "config.json")))
    ids = [(i * 7919 + 13) % (cfg["vocab_size"] - 1) for i in range(a.prompt_tokens)]
    g = os.path.join(a.work, "gpt2c-genai")
    subprocess.run([a.gpt2c, "export", a.checkpoint, "-o", g, "-q", "--layout", "genai"], check=True)
    for name, folder in (("gpt2c", g), ("optimum", a.optimum_export)):
        rate, first = optimum_rate(folder, ids, a.new_tokens)
        print(json.dumps({"client": "optimum ORTModelForCausalLM", "export": name, "decode_tok_s": round(rate, 2), "first_tokens": first}), flush=True)
    o = os.path.join(a.work, "optimum-genai")
    shutil.copytree(a.optimum_export, o)
    shutil.copy(os.path.join(g, "genai_config.json"), o)
    for name, folder in (("gpt2c", g), ("optimum", o)):
        rate, first = genai_rate(folder, ids, a.new_tokens)
        print(json.dumps({"client": "onnxruntime-genai", "export": name, "decode_tok_s": round(rate, 2), "first_tokens": first}), flush=True)
    models = os.path.join(a.work, "tjs")
    subprocess.run([a.gpt2c, "export", a.checkpoint, "-o", os.path.join(models, "gpt2c"), "-q", "--layout", "transformers.js"], check=True)
    os.makedirs(os.path.join(models, "optimum", "onnx"))
    for f in os.listdir(a.optimum_export):
        dest = os.path.join(models, "optimum", "onnx" if f.startswith("model.onnx") else "", f)
        os.link(os.path.join(a.optimum_export, f), dest)
    for name in ("gpt2c", "optimum"):
        rate, first = tjs_rate(models, name, ids, a.new_tokens)
        print(json.dumps({"client": "transformers.js", "export": name, "decode_tok_s": round(rate, 2), "first_tokens": first}), flush=True)


if __name__ == "__main__":
    main()
