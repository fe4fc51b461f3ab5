#!/usr/bin/env python3
"""Decode speed of every precision × tool in one table, each row against its memory-bandwidth limit.

    .venv/bin/python tests/bench/speed_table.py CHECKPOINT [--gpt2c target/release/gpt2c] [--llama-dir /tmp/llama]
        [--work /tmp/speed-table] [--threads 2] [--repeat 3] [--only gpt2c-ort,gpt2c-tract,llama.cpp,ctranslate2,optimum,pytorch]
        [--precisions fp32,fp16,int8,int4] [--forms portable,shared,...] [--peers ../shared/bench/peers.py]
        [--peers-python .venv/bin/python] [--json FILE]

Same workload everywhere: a 128-token prompt, 64 new tokens, greedy, batch 1, --threads threads.
Rows (exports, GGUF files and peer conversions are cached in --work and reused):
  gpt2c ORT / tract: `gpt2c bench --repeat R` (median run) of `gpt2c export` forms: fp32 portable, ort-fused
    (--target ort --opset 23) and shared (--target ort --kv-cache shared), fp16 (--dtype fp16), int8 (MatMulInteger),
    int8-weights (DequantizeLinear + float MatMul), int8-ort and int8-shared, int4-ort (MatMulNBits, --opset 23),
    int4-portable (blocked DequantizeLinear, --opset 21) and int4-shared; tract runs where it can, other rows print
    n/a with gpt2c's error. Exports are cached in --work: remove them after changing the compiler.
  llama.cpp: GGUF f32 / f16 / q8_0 / q4_0 (../shared/bench/llamacpp.sh), llama-bench -p 128 -n 64 -pg 128,64 -r R.
    Prefill is the p128 test; decode is 64 / (t(pg128,64) - t(p128)), so it decodes at the same positions as the
    others (llama-bench's tg64 starts from an empty context: it is given in the note).
  CTranslate2 (float32, int8), optimum (ORTModelForCausalLM, and a bare ONNX Runtime loop over optimum's export),
    PyTorch (transformers eager): ../shared/bench/peers.py, one measured run each, run with --peers-python (it needs
    torch, transformers, optimum, ctranslate2). Precisions peers.py does not run print n/a.
Bandwidth limit of a row: B / (W + KV) tokens/s, where B is decode_profile.py's streaming bandwidth (an ONNX Runtime
fp32 [1,4096]x[4096,16384] MatMul at --threads, best of 3 at the start; the end's figure is printed as a check),
W the bytes of weights one decode step reads, KV the key/value cache read at position prompt + new/2 = 160:
2 × layers × n_embd × 160 × bytes per element (4; llama.cpp's f16 cache 2). W counts every stored weight once in
full, except a table that is only gathered (the position table, an untied token table), which counts one row;
GPT-2's token table is tied to the LM head, which reads all of it. Per tool: gpt2c and optimum from model.onnx's
initializers (a table whose only consumers are Gather nodes is gather-only); llama.cpp from the GGUF's tensors
(token_embd is the LM head when there is no output.weight; q4_0 stores it as Q6_K); CTranslate2 from model.bin's
size (the tied head is stored once) less the fp32 position table plus a row; PyTorch from model.safetensors.
Fraction = decode tok/s / limit. One JSON object per measurement as it goes, then the markdown table.
"""
import argparse, collections, importlib.util, json, os, struct, subprocess, sys

import onnx

PRECISIONS = ["fp32", "fp16", "int8", "int4"]
TOOLS = ["gpt2c-ort", "gpt2c-tract", "llama.cpp", "ctranslate2", "optimum", "pytorch"]
SHARED = ["--target", "ort", "--kv-cache", "shared", "--opset", "23"]
GPT2C_FORMS = {"fp32": [("portable", []), ("ort-fused", ["--target", "ort", "--opset", "23"]), ("shared", SHARED)],
               "fp16": [("portable", ["--dtype", "fp16"])],
               "int8": [("int8", ["--quantize", "int8"]), ("int8-weights", ["--quantize", "int8-weights"]),
                        ("int8-ort", ["--quantize", "int8", "--target", "ort", "--opset", "23"]),
                        ("int8-shared", ["--quantize", "int8", *SHARED])],
               "int4": [("int4-ort", ["--quantize", "int4", "--target", "ort", "--opset", "23"]),
                        ("int4-portable", ["--quantize", "int4", "--opset", "21"]),
                        ("int4-shared", ["--quantize", "int4", *SHARED])]}
LLAMA_TYPES = {"fp32": "f32", "fp16": "f16", "int8": "q8_0", "int4": "q4_0"}
# (precision, tool, form, peers.py --only name, the "peer" it reports)
PEERS = [("fp32", "ctranslate2", "float32", "ct2", "ct2-float32"), ("int8", "ctranslate2", "int8", "ct2-int8", "ct2-int8"),
         ("fp32", "optimum", "ORTModelForCausalLM", "optimum", "optimum-ort"),
         ("fp32", "optimum", "bare ORT loop on its export", "ort", "ort-loop"),
         ("fp32", "pytorch", "transformers eager", "hf", "hf-pytorch")]


def run(cmd, timeout, env=None):
    """(stdout, None) or (None, a one-line reason): one failing row must not end the script."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if r.returncode != 0:
        lines = [l.strip() for l in (r.stderr + r.stdout).splitlines() if l.strip()]
        return None, (lines[-1] if lines else f"exit {r.returncode}")[:200]
    return r.stdout, None


def load(name, path):
    sys.dont_write_bytecode = True  # no __pycache__ left in the tree
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def onnx_weight_bytes(path):
    """Initializer bytes a decode step reads: all in full, a gather-only table one row."""
    m = onnx.load(path, load_external_data=False)
    inits, users = {}, collections.defaultdict(set)
    def walk(g):
        inits.update((t.name, t) for t in g.initializer)
        for n in g.node:
            for i in n.input:
                users[i].add(n.op_type)
            for a in n.attribute:  # If/Loop/Scan bodies
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(sub)
    walk(m.graph)
    total = 0
    for name, t in inits.items():
        ext = {e.key: e.value for e in t.external_data}
        if "length" in ext:
            size = int(ext["length"])
        elif t.raw_data:
            size = len(t.raw_data)
        else:  # typed fields (small constants) or external data without a length
            n = 1
            for d in t.dims:
                n *= d
            bits = 4 if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) else \
                8 * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            size = n * bits // 8
        if users[name] == {"Gather"} and len(t.dims) == 2:
            size //= t.dims[0]
        total += size
    return total


def safetensors_weight_bytes(ckpt):
    """PyTorch reads the checkpoint's tensors: wpe one row, wte in full (tied LM head) unless lm_head is stored."""
    with open(os.path.join(ckpt, "model.safetensors"), "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    header.pop("__metadata__", None)
    tied = not any(k.endswith("lm_head.weight") for k in header)
    total = 0
    for k, v in header.items():
        size = v["data_offsets"][1] - v["data_offsets"][0]
        if k.endswith("wpe.weight") or (k.endswith("wte.weight") and not tied):
            size //= v["shape"][0]
        elif k.endswith((".attn.bias", ".attn.masked_bias")):  # old causal-mask buffers, not weights
            size = 0
        total += size
    return total


def gguf_weight_bytes(path, llama_dir):
    sys.path.insert(0, os.path.join(llama_dir, "gguf-py"))
    from gguf import GGUFReader  # numpy only; shipped beside llama.cpp's converter
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    total = 0
    for name, t in tensors.items():
        size = int(t.n_bytes)
        if name == "position_embd.weight" or (name == "token_embd.weight" and "output.weight" in tensors):
            size //= int(t.shape[-1])  # ggml shapes are [n_embd, rows]
        total += size
    return total


def ct2_weight_bytes(model_dir, cfg):
    wpe = cfg["n_positions"] * cfg["n_embd"] * 4  # CTranslate2 keeps the position table fp32, even in int8
    return os.path.getsize(os.path.join(model_dir, "model.bin")) - wpe + cfg["n_embd"] * 4


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, "../.."))
    venv = os.path.join(root, ".venv/bin/python")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--gpt2c", default=os.path.join(root, "target/release/gpt2c"))
    p.add_argument("--llama-dir", default="/tmp/llama")
    p.add_argument("--work", default="/tmp/speed-table")
    p.add_argument("--peers", default=os.path.join(root, "../shared/bench/peers.py"))
    p.add_argument("--peers-python", default=venv if os.path.exists(venv) else sys.executable)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--timeout", type=int, default=1200, help="seconds allowed to one export, conversion or run")
    p.add_argument("--only", default=",".join(TOOLS))
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--forms", help="gpt2c export forms to run (default: all), e.g. portable,shared,int8-shared")
    p.add_argument("--json", help="also write every row and the bandwidth to this file")
    a = p.parse_args()
    tools, precisions = a.only.split(","), a.precisions.split(",")
    for x in set(tools) - set(TOOLS) | set(precisions) - set(PRECISIONS):
        sys.exit(f"unknown tool or precision {x}")
    os.makedirs(a.work, exist_ok=True)
    cfg = json.load(open(os.path.join(a.checkpoint, "config.json")))
    position = a.prompt_tokens + a.new_tokens // 2  # the mean position of the decoded tokens
    kv_per_elem = 2 * cfg["n_layer"] * cfg["n_embd"] * position
    peers = load("peers", a.peers)
    ids_path = os.path.join(a.work, "prompt_ids.json")
    json.dump(peers.prompt_ids(a.prompt_tokens, cfg["vocab_size"]), open(ids_path, "w"))

    bandwidth = load("decode_profile", os.path.join(here, "decode_profile.py")).bandwidth
    bw = max(bandwidth(a.threads) for _ in range(3))  # the best of 3: a busy machine only lowers it
    print(json.dumps({"bandwidth_gb_s": round(bw, 2), "threads": a.threads, "kv_position": position}), flush=True)
    rows = []

    def add(precision, tool, form, prefill_ms=None, decode_tok_s=None, weights=None, kv_elem=4, note="", error=None):
        row = dict(precision=precision, tool=tool, form=form, prefill_ms=prefill_ms, decode_tok_s=decode_tok_s,
                   weights_bytes=weights, kv_bytes=kv_per_elem * kv_elem if weights else None, note=note, error=error)
        if weights and decode_tok_s:
            row["limit_tok_s"] = round(bw * 1e9 / (weights + row["kv_bytes"]), 2)
            row["fraction"] = round(decode_tok_s / row["limit_tok_s"], 3)
        print(json.dumps(row), flush=True)
        rows.append(row)

    for prec in precisions:
        # gpt2c: each export form on each backend
        for form, flags in GPT2C_FORMS[prec] if {"gpt2c-ort", "gpt2c-tract"} & set(tools) else []:
            if a.forms and form not in a.forms.split(","):
                continue
            out = os.path.join(a.work, f"gpt2c-{prec}-{form}")
            err = None
            if not os.path.exists(os.path.join(out, "model.onnx")):
                _, err = run([a.gpt2c, "export", a.checkpoint, "-o", out, "-q", "--force", *flags], a.timeout)
            weights = None if err else onnx_weight_bytes(os.path.join(out, "model.onnx"))
            for backend in ("ort", "tract"):
                if f"gpt2c-{backend}" not in tools:
                    continue
                if err:
                    add(prec, f"gpt2c-{backend}", form, error="export failed: " + err)
                    continue
                stdout, berr = run([a.gpt2c, "bench", out, "--backend", backend, "--threads", str(a.threads),
                                    "--prompt-ids", ids_path, "--new-tokens", str(a.new_tokens),
                                    "--repeat", str(a.repeat), "--json"], a.timeout)
                if berr:
                    add(prec, f"gpt2c-{backend}", form, weights=weights, error=berr)
                    continue
                rep = json.loads(stdout)
                add(prec, f"gpt2c-{backend}", form, rep["prefill_ms"], rep["decode_tok_s"], weights,
                    note=f"peak RSS {rep['peak_rss_mib']:.0f} MiB")

        # llama.cpp: convert (cached), then llama-bench's p, tg and pg tests in one call
        if "llama.cpp" in tools:
            kind = LLAMA_TYPES[prec]
            gguf = os.path.join(a.work, f"llama-{kind}.gguf")
            err = None
            if not os.path.exists(gguf):
                _, err = run(["bash", os.path.join(os.path.dirname(a.peers), "llamacpp.sh"), "gguf", a.llama_dir,
                              a.checkpoint, gguf, kind], a.timeout, dict(os.environ, PYTHON=a.peers_python))
            if err:
                add(prec, "llama.cpp", kind, error="conversion failed: " + err)
            else:
                P, N = a.prompt_tokens, a.new_tokens
                stdout, err = run([os.path.join(a.llama_dir, "bin/llama-bench"), "-m", gguf, "-t", str(a.threads),
                                   "-p", str(P), "-n", str(N), "-pg", f"{P},{N}", "-r", str(a.repeat), "-o", "json"],
                                  a.timeout, dict(os.environ, LD_LIBRARY_PATH=os.path.join(a.llama_dir, "bin")))
                weights = gguf_weight_bytes(gguf, a.llama_dir)
                tests = {(t["n_prompt"], t["n_gen"]): t for t in json.loads(stdout)} if not err else {}
                if not {(P, 0), (0, N), (P, N)} <= set(tests) or tests[(P, N)]["avg_ns"] <= tests[(P, 0)]["avg_ns"]:
                    add(prec, "llama.cpp", kind, weights=weights, error=err or "llama-bench: pg test not longer than p")
                else:
                    t_p, t_pg = tests[(P, 0)]["avg_ns"] / 1e9, tests[(P, N)]["avg_ns"] / 1e9
                    tg = tests[(0, N)]
                    kv_elem = 2 if tg["type_k"] == "f16" else 4
                    add(prec, "llama.cpp", kind, round(t_p * 1e3, 1), round(N / (t_pg - t_p), 2), weights, kv_elem,
                        note=f"tg{N} from empty context {tg['avg_ts']:.2f} tok/s; {tg['type_k']} KV cache")

        # peers.py, one peer per process so that one missing package only costs its own row
        for pprec, tool, form, only, name in PEERS:
            if pprec != prec or tool not in tools:
                continue
            stdout, err = run([a.peers_python, a.peers, a.checkpoint, "--work", a.work, "--only", only,
                               "--threads", str(a.threads), "--prompt-tokens", str(a.prompt_tokens),
                               "--new-tokens", str(a.new_tokens)], a.timeout)
            reps = [json.loads(l) for l in (stdout or "").splitlines() if l.startswith("{")]
            rep = next((r for r in reps if r.get("peer") == name), None)
            if err or not rep:
                add(prec, tool, form, error=err or f"peers.py printed no {name} row")
                continue
            if tool == "pytorch":
                weights = safetensors_weight_bytes(a.checkpoint)
            elif tool == "optimum":
                weights = onnx_weight_bytes(os.path.join(a.work, "optimum/model.onnx"))
            else:
                weights = ct2_weight_bytes(os.path.join(a.work, "ct2-" + form), cfg)
            add(prec, tool, form, rep["prefill_ms"], rep["decode_tok_s"], weights, note="one measured run")

        # the grid's empty cells: say why
        for tool in tools:
            if not any(r["precision"] == prec and r["tool"] == tool for r in rows):
                add(prec, tool, "-", error="not run: peers.py measures this tool at " +
                    " and ".join(sorted({p for p, t, *_ in PEERS if t == tool}, key=PRECISIONS.index)) + " only")

    bw_end = max(bandwidth(a.threads) for _ in range(3))
    print(json.dumps({"bandwidth_gb_s_at_end": round(bw_end, 2)}), flush=True)
    if a.json:
        json.dump({"bandwidth_gb_s": bw, "bandwidth_gb_s_at_end": bw_end, "threads": a.threads, "rows": rows},
                  open(a.json, "w"), indent=1)

    def cell(v, fmt="{}"):
        return "" if v is None else fmt.format(v)
    print(f"\nBandwidth {bw:.2f} GB/s at the start, {bw_end:.2f} at the end ({a.threads} threads); "
          f"KV cache read at position {position}; limit = bandwidth / (weights + KV).\n")
    print("| precision | tool | form | prefill ms | decode tok/s | weights MB read/token | limit tok/s | fraction of limit | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    order = lambda r: (PRECISIONS.index(r["precision"]), TOOLS.index(r["tool"]))
    for r in sorted(rows, key=order):
        mb = f"{r['weights_bytes'] / 1e6:.1f} (+{r['kv_bytes'] / 1e6:.1f} KV)" if r["weights_bytes"] else ""
        note = f"n/a ({r['error']})" if r["error"] else r["note"]
        print(f"| {r['precision']} | {r['tool']} | {r['form']} | {cell(r['prefill_ms'])} | {cell(r['decode_tok_s'])} | "
              f"{mb} | {cell(r.get('limit_tok_s'))} | {cell(r.get('fraction'), '{:.0%}')} | {note.replace('|', '/')} |")


if __name__ == "__main__":
    main()
