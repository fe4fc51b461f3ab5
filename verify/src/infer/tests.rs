use super::*;

fn dim_proto(d: &str) -> pb::tensor_shape_proto::Dimension {
    let value = match d.parse::<i64>() {
        Ok(n) => DimProto::DimValue(n),
        Err(_) => DimProto::DimParam(d.to_string()),
    };
    pb::tensor_shape_proto::Dimension { value: Some(value), denotation: None }
}

fn vi(name: &str, elem: i32, dims: &[&str]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(pb::TensorShapeProto { dim: dims.iter().map(|d| dim_proto(d)).collect() }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(format!("/{op}")),
        op_type: Some(op.into()),
        attribute: attrs,
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn i64_init(name: &str, dims: &[i64], values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(INT64),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn f32_init(name: &str, dims: &[i64]) -> pb::TensorProto {
    pb::TensorProto { name: Some(name.into()), dims: dims.to_vec(), data_type: Some(FLOAT), ..Default::default() }
}

fn dims_of(map: &HashMap<String, ValueShape>, name: &str) -> String {
    dims_text(map.get(name).and_then(|v| v.dims.as_deref()))
}

#[test]
fn dim_params_parse_and_print_as_linear_expressions() {
    let d = SymDim::from_dim_param("sequence_length + past_sequence_length");
    assert_eq!(d, SymDim::param("past_sequence_length").add(&SymDim::param("sequence_length")));
    assert_eq!(d.to_string(), "past_sequence_length + sequence_length");
    let e = SymDim::from_dim_param("2*n - 1");
    assert_eq!(e.to_string(), "2*n - 1");
    assert_eq!(SymDim::from_dim_param(&e.to_string()), e);
    assert_eq!(SymDim::from_dim_param("seq-len").to_string(), "seq-len");
    assert_eq!(SymDim::from_dim_param("-a + b").to_string(), "-a + b");
    assert_eq!(SymDim::from_dim_param("a b").to_string(), "a b");
    assert_eq!(d.sub(&SymDim::param("sequence_length")), SymDim::param("past_sequence_length"));
    assert_eq!(SymDim::param("x").sub(&SymDim::param("x")), SymDim::Known(0));
    assert_eq!(SymDim::Known(i64::MAX).add(&SymDim::Known(1)), SymDim::Unknown);
    assert_eq!(SymDim::Unknown.to_string(), "?");
}

#[test]
fn mismatching_declared_output_dim_reports_the_node() {
    let graph = pb::GraphProto {
        input: vec![vi("x", FLOAT, &["batch_size", "4"])],
        initializer: vec![f32_init("w", &[4, 8])],
        node: vec![node("MatMul", &["x", "w"], &["y"], vec![])],
        output: vec![vi("y", FLOAT, &["batch_size", "16"])],
        ..Default::default()
    };
    let err = infer_graph(&graph).unwrap_err();
    assert_eq!(err.node_index, 0);
    assert_eq!(err.value, "y");
    assert_eq!(
        err.to_string(),
        "node 0 \"/MatMul\" (MatMul): output \"y\" inferred [batch_size, 8] but declared [batch_size, 16]"
    );
    // A symbolic declared dim must match too.
    let mut graph = graph;
    graph.output = vec![vi("y", FLOAT, &["sequence_length", "8"])];
    assert!(infer_graph(&graph).unwrap_err().message.contains("declared [sequence_length, 8]"));
    graph.output = vec![vi("y", DataType::Float16 as i32, &["batch_size", "8"])];
    assert!(infer_graph(&graph).unwrap_err().message.contains("inferred float but declared float16"));
}

#[test]
fn matmul_with_incompatible_inner_dims() {
    let graph = pb::GraphProto {
        input: vec![vi("x", FLOAT, &["b", "32"])],
        initializer: vec![f32_init("w", &[64, 8])],
        node: vec![node("MatMul", &["x", "w"], &["y"], vec![])],
        ..Default::default()
    };
    let err = infer_graph(&graph).unwrap_err();
    assert_eq!(err.to_string(), "node 0 \"/MatMul\" (MatMul): inner dimensions differ: 32 vs 64");
}

#[test]
fn input_never_produced() {
    let graph = pb::GraphProto {
        input: vec![vi("x", FLOAT, &["2"])],
        node: vec![node("Relu", &["x"], &["a"], vec![]), node("Add", &["a", "ghost"], &["b"], vec![])],
        ..Default::default()
    };
    let err = infer_graph(&graph).unwrap_err();
    assert_eq!((err.node_index, err.op_type.as_str(), err.value.as_str()), (1, "Add", "ghost"));
    assert!(err.to_string().contains("input \"ghost\" is never produced"), "{err}");
    // Optional inputs left empty are fine.
    let graph = pb::GraphProto {
        input: vec![vi("x", FLOAT, &["2"])],
        node: vec![node("Clip", &["x", "", ""], &["y"], vec![])],
        ..Default::default()
    };
    assert!(infer_graph(&graph).is_ok());
}

#[test]
fn concat_on_the_past_axis_is_symbolic() {
    let graph = pb::GraphProto {
        input: vec![
            vi("past", FLOAT, &["batch_size", "4", "past_sequence_length", "8"]),
            vi("new", FLOAT, &["batch_size", "4", "sequence_length", "8"]),
        ],
        node: vec![node("Concat", &["past", "new"], &["present"], vec![int_attr("axis", -2)])],
        output: vec![vi("present", FLOAT, &["batch_size", "4", "sequence_length + past_sequence_length", "8"])],
        ..Default::default()
    };
    let map = infer_graph(&graph).unwrap();
    assert_eq!(dims_of(&map, "present"), "[batch_size, 4, past_sequence_length + sequence_length, 8]");
    // Mismatched non-axis dims are refused.
    let mut bad = graph.clone();
    bad.input[1] = vi("new", FLOAT, &["batch_size", "4", "sequence_length", "16"]);
    assert!(infer_graph(&bad).unwrap_err().message.contains("inputs differ in dimension 3: 8 vs 16"));
}

#[test]
fn shape_gather_range_values_propagate() {
    // positions = Range(total - seq, total, 1): length `sequence_length`.
    let graph = pb::GraphProto {
        input: vec![
            vi("ids", INT64, &["batch_size", "sequence_length"]),
            vi("mask", INT64, &["batch_size", "past_sequence_length + sequence_length"]),
        ],
        initializer: vec![i64_init("one_idx", &[], &[1]), i64_init("one", &[], &[1])],
        node: vec![
            node("Shape", &["mask"], &["ms"], vec![]),
            node("Gather", &["ms", "one_idx"], &["total"], vec![int_attr("axis", 0)]),
            node("Shape", &["ids"], &["is"], vec![]),
            node("Gather", &["is", "one_idx"], &["seq"], vec![]),
            node("Sub", &["total", "seq"], &["past"], vec![]),
            node("Range", &["past", "total", "one"], &["pos"], vec![]),
            node("Range", &["one", "seq", "one"], &["tail"], vec![]),
        ],
        output: vec![vi("pos", INT64, &["sequence_length"])],
        ..Default::default()
    };
    let map = infer_graph(&graph).unwrap();
    assert_eq!(dims_of(&map, "pos"), "[sequence_length]");
    assert_eq!(dims_of(&map, "tail"), "[sequence_length - 1]");
    assert_eq!(dims_of(&map, "total"), "[]");
    // Known limits give a known length, max(ceil((limit - start) / delta), 0).
    let graph = pb::GraphProto {
        initializer: vec![i64_init("s", &[], &[10]), i64_init("l", &[], &[1]), i64_init("d", &[], &[-4])],
        node: vec![node("Range", &["s", "l", "d"], &["r"], vec![]), node("Range", &["l", "s", "d"], &["e"], vec![])],
        ..Default::default()
    };
    let map = infer_graph(&graph).unwrap();
    assert_eq!((dims_of(&map, "r"), dims_of(&map, "e")), ("[3]".into(), "[0]".into()));
}

#[test]
fn reshape_with_zero_and_minus_one() {
    let graph = pb::GraphProto {
        input: vec![vi("x", FLOAT, &["batch_size", "sequence_length", "32"])],
        initializer: vec![
            i64_init("split_heads", &[4], &[0, 0, 4, -1]),
            i64_init("merge", &[3], &[0, 0, -1]),
            i64_init("flat", &[2], &[-1, 8]),
            i64_init("bad", &[3], &[0, 0, 5]),
        ],
        node: vec![
            node("Reshape", &["x", "split_heads"], &["h"], vec![]),
            node("Reshape", &["h", "merge"], &["m"], vec![]),
            node("Reshape", &["x", "flat"], &["f"], vec![]),
        ],
        output: vec![vi("m", FLOAT, &["batch_size", "sequence_length", "32"])],
        ..Default::default()
    };
    let map = infer_graph(&graph).unwrap();
    assert_eq!(dims_of(&map, "h"), "[batch_size, sequence_length, 4, 8]");
    assert_eq!(dims_of(&map, "m"), "[batch_size, sequence_length, 32]");
    assert_eq!(dims_of(&map, "f"), "[?, 8]");
    let mut bad = graph.clone();
    bad.node = vec![node("Reshape", &["x", "bad"], &["y"], vec![])];
    bad.output.clear();
    let mut known = bad.clone();
    known.input = vec![vi("x", FLOAT, &["2", "3", "32"])];
    assert!(infer_graph(&known).unwrap_err().message.contains("cannot reshape"));
    // allowzero keeps a literal 0.
    let graph = pb::GraphProto {
        input: vec![vi("x", FLOAT, &["0", "4"])],
        initializer: vec![i64_init("s", &[2], &[0, 4])],
        node: vec![node("Reshape", &["x", "s"], &["y"], vec![int_attr("allowzero", 1)])],
        ..Default::default()
    };
    assert_eq!(dims_of(&infer_graph(&graph).unwrap(), "y"), "[0, 4]");
}

fn ints_attr(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

#[test]
fn slice_split_squeeze_transpose_follow_the_spec() {
    let graph = pb::GraphProto {
        input: vec![vi("x", FLOAT, &["batch_size", "sequence_length", "10"])],
        initializer: vec![
            i64_init("from1", &[1], &[1]),
            i64_init("to_end", &[1], &[i64::MAX]),
            i64_init("last", &[1], &[-1]),
            i64_init("ax1", &[1], &[1]),
            i64_init("ax2", &[1], &[2]),
            i64_init("s8", &[1], &[8]),
            i64_init("e1", &[1], &[1]),
            i64_init("m3", &[1], &[-3]),
            i64_init("axes", &[2], &[-1, 0]),
            i64_init("neg", &[4], &[-5, 1, 1, 1]),
        ],
        node: vec![
            node("Slice", &["x", "from1", "to_end", "ax1"], &["tail"], vec![]),
            node("Slice", &["x", "last", "to_end", "ax1"], &["last_row"], vec![]),
            node("Slice", &["x", "s8", "e1", "ax2", "m3"], &["back"], vec![]),
            node("Split", &["x"], &["p0", "p1", "p2"], vec![int_attr("axis", 2), int_attr("num_outputs", 3)]),
            node("Unsqueeze", &["x", "axes"], &["u"], vec![]),
            node("Squeeze", &["last_row", "ax1"], &["sq"], vec![]),
            node("Transpose", &["x"], &["t"], vec![ints_attr("perm", &[2, 0, 1])]),
        ],
        ..Default::default()
    };
    let map = infer_graph(&graph).unwrap();
    assert_eq!(dims_of(&map, "tail"), "[batch_size, sequence_length - 1, 10]");
    assert_eq!(dims_of(&map, "last_row"), "[batch_size, 1, 10]");
    assert_eq!(dims_of(&map, "back"), "[batch_size, sequence_length, 3]");
    assert_eq!(
        (dims_of(&map, "p0"), dims_of(&map, "p2")),
        ("[batch_size, sequence_length, 4]".into(), "[batch_size, sequence_length, 2]".into())
    );
    assert_eq!(dims_of(&map, "u"), "[1, batch_size, sequence_length, 10, 1]");
    assert_eq!(dims_of(&map, "sq"), "[batch_size, 10]");
    assert_eq!(dims_of(&map, "t"), "[10, batch_size, sequence_length]");
    let mut bad = graph.clone();
    bad.node = vec![node("Squeeze", &["x", "ax2"], &["y"], vec![])];
    assert!(infer_graph(&bad).unwrap_err().message.contains("cannot squeeze axis 2 of size 10"));
    bad.node = vec![node("Split", &["x"], &["a", "b", "c"], vec![int_attr("axis", 2)])];
    assert!(infer_graph(&bad).unwrap_err().message.contains("does not split into 3 equal parts"));
    bad.node = vec![node("Expand", &["x", "last"], &["y"], vec![])];
    assert!(infer_graph(&bad).unwrap_err().message.contains("dimensions 10 and -1 do not broadcast"));
    bad.node = vec![node("Expand", &["x", "neg"], &["y"], vec![])];
    assert!(infer_graph(&bad).unwrap_err().message.contains("negative dimension: [-5, batch_size"));
}

#[test]
fn type_checks_and_unsupported_ops() {
    let graph = pb::GraphProto {
        input: vec![vi("x", FLOAT, &["2", "3"]), vi("i", FLOAT, &["2"])],
        node: vec![node("Gather", &["x", "i"], &["y"], vec![])],
        ..Default::default()
    };
    assert!(infer_graph(&graph).unwrap_err().message.contains("indices must be int32 or int64"));
    let graph = pb::GraphProto {
        input: vec![vi("c", FLOAT, &["2"]), vi("x", FLOAT, &["2"])],
        node: vec![node("Where", &["c", "x", "x"], &["y"], vec![])],
        ..Default::default()
    };
    assert!(infer_graph(&graph).unwrap_err().message.contains("condition must be bool"));
    let graph = pb::GraphProto {
        input: vec![vi("x", FLOAT, &["2"])],
        node: vec![node("Frobnicate", &["x"], &["y"], vec![])],
        ..Default::default()
    };
    assert!(infer_graph(&graph).unwrap_err().message.contains("operator unknown to gpt2c verify"));
    let graph = pb::GraphProto { output: vec![vi("nothing", FLOAT, &["2"])], ..Default::default() };
    assert!(infer_graph(&graph).unwrap_err().to_string().starts_with("graph: output \"nothing\""));
}

#[test]
fn hostile_graphs_do_not_blow_up() {
    // Gather of a value by itself doubles the rank each time: capped, not allocated.
    let mut nodes = vec![node("Cast", &["x"], &["v0"], vec![int_attr("to", INT64.into())])];
    for i in 0..40 {
        let (a, b) = (format!("v{i}"), format!("v{}", i + 1));
        nodes.push(node("Gather", &[&a, &a], &[&b], vec![]));
    }
    let graph = pb::GraphProto { input: vec![vi("x", FLOAT, &["2", "2", "2"])], node: nodes, ..Default::default() };
    assert!(infer_graph(&graph).is_ok());
    // A huge declared Range or ConstantOfShape is a dim, not an allocation.
    let graph = pb::GraphProto {
        initializer: vec![i64_init("z", &[], &[0]), i64_init("big", &[], &[i64::MAX]), i64_init("one", &[], &[1])],
        node: vec![
            node("Range", &["z", "big", "one"], &["r"], vec![]),
            node("Shape", &["r"], &["s"], vec![]),
            node("ConstantOfShape", &["s"], &["c"], vec![]),
            node("Reshape", &["c", "s"], &["d"], vec![]),
        ],
        ..Default::default()
    };
    let map = infer_graph(&graph).unwrap();
    assert_eq!(dims_of(&map, "d"), format!("[{}]", i64::MAX));
}
