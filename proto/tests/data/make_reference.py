#!/usr/bin/env python3
"""Writes reference.onnx with the `onnx` Python package, for gpt2c-proto's wire-compatibility test.

It uses every message and most field kinds the schema declares (attributes of each type, a subgraph,
external-data entries, symbolic dims, metadata, sparse initializers, functions), so decoding it with
our prost types checks field numbers and encodings against the official implementation.
Run: .venv/bin/python proto/tests/data/make_reference.py   (written with onnx 1.23.2)
"""
import os
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

here = os.path.dirname(os.path.abspath(__file__))

x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", 3])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch_size", 3])
w = numpy_helper.from_array(np.arange(9, dtype=np.float32).reshape(3, 3), name="w")
ext = TensorProto()
ext.name, ext.data_type = "ext", TensorProto.FLOAT
ext.dims.extend([2])
ext.data_location = TensorProto.EXTERNAL
for k, v in (("location", "weights.bin"), ("offset", "4096"), ("length", "8")):
    entry = ext.external_data.add()
    entry.key, entry.value = k, v
ids = helper.make_tensor("ids", TensorProto.INT64, [3], vals=[-1, 0, 7])
sparse = helper.make_sparse_tensor(
    helper.make_tensor("sv", TensorProto.FLOAT, [2], [1.5, -2.0]),
    helper.make_tensor("si", TensorProto.INT64, [2], [0, 4]), [5])

then_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then",
                               [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm", domain="", doc_string="doc")
attrs = helper.make_node(
    "Custom", ["x"], ["z"], name="attrs", domain="test.domain",
    f=0.5, i=0, s=b"text", ints=[1, -2, 3], floats=[0.25, -1.0], strings=[b"a", b"b"],
    t=numpy_helper.from_array(np.array([1, 2], dtype=np.int64)), g=then_graph)
graph = helper.make_graph([node, attrs], "g", [x], [y], initializer=[w, ext, ids],
                          sparse_initializer=[sparse], doc_string="graph doc")
fn = helper.make_function("test.domain", "Fn", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                          [helper.make_opsetid("", 18)])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("test.domain", 1)],
                          producer_name="onnx-python", functions=[fn])
model.ir_version = 10
helper.set_model_props(model, {"key": "value"})
with open(os.path.join(here, "reference.onnx"), "wb") as f:
    f.write(model.SerializeToString())
print(onnx.__version__)
