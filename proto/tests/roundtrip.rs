//! gpt2c-proto against the wire format: every message round-trips through
//! encode/decode, and a model written by the official `onnx` Python package
//! (`tests/data/reference.onnx`, made by `tests/data/make_reference.py`)
//! decodes field by field as that script wrote it.

use gpt2c_proto::attribute_proto::AttributeType;
use gpt2c_proto::tensor_proto::{DataLocation, DataType};
use gpt2c_proto::tensor_shape_proto::{Dimension, dimension};
use gpt2c_proto::*;

fn dim_param(name: &str) -> Dimension {
    Dimension { value: Some(dimension::Value::DimParam(name.into())), denotation: None }
}

fn dim_value(n: i64) -> Dimension {
    Dimension { value: Some(dimension::Value::DimValue(n)), denotation: Some("DATA_CHANNEL".into()) }
}

fn tensor_type(elem: DataType, dims: Vec<Dimension>) -> TypeProto {
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(elem as i32),
            shape: Some(TensorShapeProto { dim: dims }),
        })),
        denotation: None,
    }
}

/// A model that sets every message type and field kind we declare.
fn everything() -> ModelProto {
    let weights = TensorProto {
        dims: vec![2, 2],
        data_type: Some(DataType::Float as i32),
        name: Some("w".into()),
        raw_data: Some([1.0f32, -2.0, 0.5, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    };
    let external = TensorProto {
        dims: vec![1024],
        data_type: Some(DataType::Float16 as i32),
        name: Some("big".into()),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![entry("location", "model.onnx_data"), entry("offset", "65536"), entry("length", "2048")],
        ..Default::default()
    };
    let typed = TensorProto {
        dims: vec![3],
        data_type: Some(DataType::Int64 as i32),
        int64_data: vec![-1, 0, i64::MAX],
        float_data: vec![],
        segment: Some(tensor_proto::Segment { begin: Some(0), end: Some(3) }),
        metadata_props: vec![entry("k", "v")],
        ..Default::default()
    };
    let subgraph = GraphProto {
        node: vec![NodeProto {
            input: vec!["a".into()],
            output: vec!["b".into()],
            op_type: Some("Identity".into()),
            ..Default::default()
        }],
        name: Some("sub".into()),
        ..Default::default()
    };
    let attrs = vec![
        AttributeProto {
            name: Some("i".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(0),
            ..Default::default()
        },
        AttributeProto {
            name: Some("f".into()),
            r#type: Some(AttributeType::Float as i32),
            f: Some(0.0),
            ..Default::default()
        },
        AttributeProto {
            name: Some("s".into()),
            r#type: Some(AttributeType::String as i32),
            s: Some(b"text".to_vec()),
            ..Default::default()
        },
        AttributeProto {
            name: Some("ints".into()),
            r#type: Some(AttributeType::Ints as i32),
            ints: vec![0, 2, 1, 3],
            ..Default::default()
        },
        AttributeProto {
            name: Some("floats".into()),
            r#type: Some(AttributeType::Floats as i32),
            floats: vec![0.5, -1.0],
            ..Default::default()
        },
        AttributeProto {
            name: Some("strings".into()),
            r#type: Some(AttributeType::Strings as i32),
            strings: vec![b"a".to_vec(), vec![]],
            ..Default::default()
        },
        AttributeProto {
            name: Some("t".into()),
            r#type: Some(AttributeType::Tensor as i32),
            t: Some(typed.clone()),
            ..Default::default()
        },
        AttributeProto {
            name: Some("g".into()),
            r#type: Some(AttributeType::Graph as i32),
            g: Some(subgraph.clone()),
            ..Default::default()
        },
        AttributeProto {
            name: Some("tp".into()),
            r#type: Some(AttributeType::TypeProto as i32),
            tp: Some(tensor_type(DataType::Bool, vec![])),
            ..Default::default()
        },
        AttributeProto {
            name: Some("sparse".into()),
            r#type: Some(AttributeType::SparseTensor as i32),
            sparse_tensor: Some(SparseTensorProto {
                values: Some(weights.clone()),
                indices: Some(typed.clone()),
                dims: vec![10],
            }),
            ..Default::default()
        },
        AttributeProto { name: Some("ref".into()), ref_attr_name: Some("outer".into()), ..Default::default() },
    ];
    let graph = GraphProto {
        node: vec![NodeProto {
            input: vec!["x".into(), "w".into()],
            output: vec!["y".into()],
            name: Some("h.0.attn/MatMul".into()),
            op_type: Some("MatMul".into()),
            domain: Some(String::new()),
            attribute: attrs,
            doc_string: Some("doc".into()),
            ..Default::default()
        }],
        name: Some("g".into()),
        initializer: vec![weights, external, typed],
        input: vec![ValueInfoProto {
            name: Some("x".into()),
            r#type: Some(tensor_type(DataType::Float, vec![dim_param("batch_size"), dim_value(2)])),
            ..Default::default()
        }],
        output: vec![ValueInfoProto {
            name: Some("y".into()),
            r#type: Some(tensor_type(
                DataType::Float,
                vec![dim_param("past_sequence_length + sequence_length"), dim_value(2)],
            )),
            ..Default::default()
        }],
        quantization_annotation: vec![TensorAnnotation {
            tensor_name: Some("w".into()),
            quant_parameter_tensor_names: vec![entry("SCALE_TENSOR", "s")],
        }],
        metadata_props: vec![entry("graph", "meta")],
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(18) }],
        producer_name: Some("gpt2c".into()),
        producer_version: Some("0.1.0".into()),
        domain: Some("ai.gpt2c".into()),
        model_version: Some(1),
        doc_string: Some("round trip".into()),
        graph: Some(graph),
        metadata_props: vec![entry("a", "b")],
        training_info: vec![TrainingInfoProto { initialization: Some(subgraph), ..Default::default() }],
        functions: vec![FunctionProto {
            name: Some("Fn".into()),
            input: vec!["a".into()],
            output: vec!["b".into()],
            domain: Some("test".into()),
            ..Default::default()
        }],
    }
}

#[test]
fn every_message_round_trips() {
    let model = everything();
    let bytes = encode_model(&model);
    let back = decode_model(&bytes).unwrap();
    assert_eq!(back, model);
    assert_eq!(encode_model(&back), bytes, "re-encoding is stable");
}

#[test]
fn zero_valued_attributes_are_still_written() {
    // onnx.checker requires exactly one value field per attribute; proto2
    // presence keeps `i: 0` on the wire.
    let attr = AttributeProto { name: Some("axis".into()), i: Some(0), ..Default::default() };
    let bytes = attr.encode_to_vec();
    assert!(bytes.windows(2).any(|w| w == [0x18, 0x00]), "field 3 (i) = 0 present: {bytes:?}");
}

#[test]
fn decodes_a_model_written_by_the_onnx_package() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/reference.onnx")).unwrap();
    let model = decode_model(&bytes).unwrap();
    assert_eq!(model.ir_version, Some(10));
    assert_eq!(model.producer_name.as_deref(), Some("onnx-python"));
    let opsets: Vec<(String, i64)> =
        model.opset_import.iter().map(|o| (o.domain.clone().unwrap_or_default(), o.version.unwrap())).collect();
    assert_eq!(opsets, vec![("".into(), 18), ("test.domain".into(), 1)]);
    assert_eq!(model.metadata_props, vec![entry("key", "value")]);
    assert_eq!(model.functions[0].name.as_deref(), Some("Fn"));

    let g = model.graph.unwrap();
    assert_eq!(g.doc_string.as_deref(), Some("graph doc"));
    let Some(type_proto::Value::TensorType(t)) = &g.input[0].r#type.as_ref().unwrap().value else { panic!() };
    let dims = &t.shape.as_ref().unwrap().dim;
    assert_eq!(dims[0].value, Some(dimension::Value::DimParam("batch_size".into())));
    assert_eq!(dims[1].value, Some(dimension::Value::DimValue(3)));

    let w = &g.initializer[0];
    assert_eq!((w.name.as_deref(), w.dims.as_slice()), (Some("w"), &[3, 3][..]));
    assert_eq!(data_type(w.data_type.unwrap()).unwrap(), DataType::Float);
    let values: Vec<f32> =
        w.raw_data.as_ref().unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values, (0..9).map(|v| v as f32).collect::<Vec<_>>());
    let ext = &g.initializer[1];
    assert_eq!(ext.data_location, Some(DataLocation::External as i32));
    assert_eq!(ext.external_data[1], entry("offset", "4096"));
    assert_eq!(g.initializer[2].int64_data, vec![-1, 0, 7]);
    assert_eq!(g.sparse_initializer[0].dims, vec![5]);

    let custom = &g.node[1];
    assert_eq!((custom.op_type.as_deref(), custom.domain.as_deref()), (Some("Custom"), Some("test.domain")));
    let attr = |name: &str| custom.attribute.iter().find(|a| a.name.as_deref() == Some(name)).unwrap();
    assert_eq!(attr("f").f, Some(0.5));
    assert_eq!(attr("i").r#type, Some(AttributeType::Int as i32));
    assert_eq!(attr("s").s.as_deref(), Some(&b"text"[..]));
    assert_eq!(attr("ints").ints, vec![1, -2, 3]);
    assert_eq!(attr("floats").floats, vec![0.25, -1.0]);
    assert_eq!(attr("strings").strings, vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(attr("g").g.as_ref().unwrap().node[0].op_type.as_deref(), Some("Identity"));
    assert_eq!(attr("t").t.as_ref().unwrap().dims, vec![2]);

    // And what we decoded encodes back to something that decodes equal.
    let again = decode_model(&encode_model(&decode_model(&bytes).unwrap())).unwrap();
    assert_eq!(again, decode_model(&bytes).unwrap());
}

#[test]
fn unknown_data_types_are_errors() {
    assert_eq!(data_type(7).unwrap(), DataType::Int64);
    assert!(data_type(99).unwrap_err().to_string().contains("unknown tensor element type 99"));
    assert!(decode_model(&[0xff, 0xff, 0xff]).is_err());
}
