#!/usr/bin/env python3
"""Where a decode step's time goes, and the machine's memory bandwidth: the decode speed limit.

    python tests/bench/decode_profile.py EXPORT_DIR [--threads 2] [--past 160] [--steps 30] [--batch 1]

1. Bandwidth: ONNX Runtime's MatMul of a [1, 4096] vector by a [4096, 16384] fp32 matrix (256 MiB, far
   larger than the caches), 2 threads: bytes read per second. Decode reads every weight once per token,
   so bytes-of-weights / bandwidth is the time floor of a step.
2. Profile: ONNX Runtime's profiler over --steps decode steps (one new token, --past cached positions) of
   the export (--batch rows at once), time grouped by what the nodes compute: matmuls of the blocks, the LM head, attention,
   LayerNorm, activation, data movement (Concat/Transpose/Reshape/Split/Gather), other.
"""
import argparse, collections, json, os, time
import numpy as np
import onnx, onnxruntime as ort


def bandwidth(threads):
    from onnx import helper, TensorProto as T, numpy_helper
    k, n = 4096, 16384
    w = numpy_helper.from_array(np.random.rand(k, n).astype(np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", T.FLOAT, [1, k])], [helper.make_tensor_value_info("y", T.FLOAT, [1, n])], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]); m.ir_version = 10
    so = ort.SessionOptions(); so.intra_op_num_threads = threads
    s = ort.InferenceSession(m.SerializeToString(), so)
    x = np.random.rand(1, k).astype(np.float32)
    for _ in range(3): s.run(None, {"x": x})
    t = time.perf_counter(); reps = 30
    for _ in range(reps): s.run(None, {"x": x})
    dt = (time.perf_counter() - t) / reps
    return k * n * 4 / dt / 1e9


def category(node):
    name, op = node.get("name", ""), node["args"].get("op_name", "")
    if name.startswith("lm_head") or "lm_head" in name:
        return "LM head"
    if op in ("MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits", "MatMulIntegerToFloat") and ("c_attn" in name or "c_proj" in name or "c_fc" in name):
        return "block matmuls"
    if op in ("MatMul", "FusedMatMul", "Softmax", "Attention", "MultiHeadAttention") or "attn/" in name and op in ("Mul", "Add", "Where"):
        return "attention"
    if op in ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization"):
        return "LayerNorm"
    if op in ("Tanh", "Pow", "Erf", "FastGelu", "Gelu", "BiasGelu", "QuickGelu") or "/act/" in name:
        return "activation"
    if op in ("Concat", "Transpose", "Reshape", "Split", "Gather", "Slice", "Unsqueeze", "Shape", "Cast", "Squeeze"):
        return "data movement"
    return "other (" + op + ")"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export"); p.add_argument("--threads", type=int, default=2)
    p.add_argument("--past", type=int, default=160); p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args()
    bw = bandwidth(a.threads)
    print(json.dumps({"bandwidth_gb_s": round(bw, 1), "threads": a.threads}))
    cfg = json.load(open(os.path.join(a.export, "config.json")))
    L, H, E = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    weights = sum(os.path.getsize(os.path.join(a.export, f)) for f in os.listdir(a.export) if f.startswith("model.onnx"))
    print(json.dumps({"weight_bytes": weights, "floor_ms_per_token": round(weights / bw / 1e6, 2),
                      "limit_tok_s": round(bw * 1e9 / weights, 1)}))
    so = ort.SessionOptions(); so.intra_op_num_threads = a.threads; so.enable_profiling = True
    so.profile_file_prefix = "/tmp/gpt2c-profile"
    s = ort.InferenceSession(os.path.join(a.export, "model.onnx"), so)
    dtype = np.float16 if "16" in s.get_inputs()[3].type else np.float32
    b = a.batch
    feed = {"input_ids": np.full((b, 1), 11, np.int64), "attention_mask": np.ones((b, a.past + 1), np.int64),
            "position_ids": np.full((b, 1), a.past, np.int64)}
    for i in range(L):
        for kv in ("key", "value"):
            feed[f"past_key_values.{i}.{kv}"] = np.random.rand(b, H, a.past, E // H).astype(dtype)
    for _ in range(3): s.run(None, feed)
    t = time.perf_counter()
    for _ in range(a.steps): s.run(None, feed)
    wall = (time.perf_counter() - t) / a.steps * 1000
    trace = json.load(open(s.end_profiling()))
    per = collections.Counter()
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            ev["name"] = ev["name"][: -len("_kernel_time")]
            per[category(ev)] += ev["dur"]
    total_steps = a.steps + 3
    kernels = sum(per.values()) / total_steps / 1000
    print(json.dumps({"step_ms": round(wall, 2), "kernels_ms": round(kernels, 2), "outside_kernels_ms": round(wall - kernels, 2)}))
    for k, v in per.most_common():
        print(json.dumps({"part": k, "ms_per_step": round(v / total_steps / 1000, 3), "share": round(v / sum(per.values()), 3)}))


if __name__ == "__main__":
    main()
