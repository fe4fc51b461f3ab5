#!/usr/bin/env python3
"""What ONNX Runtime's CPU provider makes of an fp16 export: the graph it runs after its optimizations.

    .venv/bin/python tests/bench/fp16_cpu_graph.py EXPORT_DIR [--out /tmp/fp16-optimized.onnx]

Saves the optimized graph (session option optimized_model_filepath, weights beside it) and prints its
operator counts, the element type of every MatMul's weight and the initializers' elements by type. On an x86
CPU (MLAS has fp16 GEMM kernels on ARM64 only) the provider inserts Casts and folds the fp16 weights into
fp32 copies at load, so a decode step streams fp32 bytes: why `--dtype fp16` decodes at fp32's speed there.
"""
import argparse
import collections
import os

import onnx
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export")
    p.add_argument("--out", default="/tmp/fp16-optimized.onnx")
    args = p.parse_args()
    so = ort.SessionOptions()
    so.optimized_model_filepath = args.out
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                os.path.basename(args.out) + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(os.path.join(args.export, "model.onnx"), so, providers=["CPUExecutionProvider"])
    model = onnx.load(args.out, load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    weight_types = collections.Counter()
    for node in graph.node:
        if node.op_type in ("MatMul", "FusedMatMul", "Gemm") and node.input[1] in initializers:
            weight_types[onnx.TensorProto.DataType.Name(initializers[node.input[1]].data_type)] += 1
    elements = collections.Counter()
    for t in graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        elements[onnx.TensorProto.DataType.Name(t.data_type)] += n
    print("operators:", dict(collections.Counter(n.op_type for n in graph.node).most_common(12)))
    print("weights of MatMul nodes, by type:", dict(weight_types))
    print("initializer elements by type:", dict(elements))


if __name__ == "__main__":
    main()
