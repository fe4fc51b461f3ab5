//! IR → ONNX protobuf messages, without tensor data.
//!
//! Initializers come out as `TensorProto` headers (name, type, dims); the
//! writer adds their bytes, inline or as external data, while streaming.

use gpt2c_proto as pb;

use crate::ir::{AttrValue, Dim, Graph, Value, ValueId};

/// Default-domain opset and model metadata for one model.
#[derive(Clone, Debug)]
pub struct ModelMeta {
    pub doc_string: String,
    /// Extra `metadata_props`, written in this order.
    pub metadata: Vec<(String, String)>,
}

fn value_info(v: &Value) -> pb::ValueInfoProto {
    let dims =
        v.ty.shape
            .iter()
            .map(|d: &Dim| pb::tensor_shape_proto::Dimension {
                value: Some(match d.as_fixed() {
                    Some(n) => pb::tensor_shape_proto::dimension::Value::DimValue(n),
                    None => pb::tensor_shape_proto::dimension::Value::DimParam(d.to_string()),
                }),
                denotation: None,
            })
            .collect();
    pb::ValueInfoProto {
        name: Some(v.name.clone()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(v.ty.dtype.onnx() as i32),
                shape: Some(pb::TensorShapeProto { dim: dims }),
            })),
            denotation: None,
        }),
        doc_string: None,
        metadata_props: Vec::new(),
    }
}

fn attribute(name: &str, value: &AttrValue) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    let mut a = pb::AttributeProto { name: Some(name.to_string()), ..Default::default() };
    match value {
        AttrValue::Int(i) => {
            a.r#type = Some(T::Int as i32);
            a.i = Some(*i);
        }
        AttrValue::Float(f) => {
            a.r#type = Some(T::Float as i32);
            a.f = Some(*f);
        }
        AttrValue::Ints(v) => {
            a.r#type = Some(T::Ints as i32);
            a.ints = v.clone();
        }
        AttrValue::Graph(g) => {
            // A subgraph holds no initializers of its own here: the outer graph has them.
            a.r#type = Some(T::Graph as i32);
            a.g = Some(graph_skeleton(&g.0).0);
        }
    }
    a
}

/// Every operator domain the graph's nodes use, nested graphs' included, sorted.
fn domains(graph: &Graph) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for n in &graph.nodes {
        if !n.op.domain().is_empty() {
            out.push(n.op.domain());
        }
        for (_, attr) in n.op.attributes() {
            if let AttrValue::Graph(g) = attr {
                out.extend(domains(&g.0));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The graph as a `GraphProto` without initializers, plus the initializers'
/// tensor headers in the graph's order.
pub fn graph_skeleton(graph: &Graph) -> (pb::GraphProto, Vec<pb::TensorProto>) {
    let name = |id| graph.value(id).name.clone();
    // Optional outputs nothing reads are left out (an empty name), so the runtime need not make them.
    let read: std::collections::HashSet<ValueId> =
        graph.nodes.iter().flat_map(|n| n.inputs.iter().copied()).chain(graph.outputs.iter().copied()).collect();
    let output_name = |n: &crate::ir::Node, i: usize, id: ValueId| {
        if n.op.optional_outputs().contains(&i) && !read.contains(&id) { String::new() } else { name(id) }
    };
    let nodes = graph
        .nodes
        .iter()
        .map(|n| pb::NodeProto {
            input: match n.op.input_positions() {
                Some(positions) => {
                    let mut names = vec![String::new(); positions.iter().max().map_or(0, |&m| m + 1)];
                    for (&at, &i) in positions.iter().zip(&n.inputs) {
                        names[at] = name(i);
                    }
                    names
                }
                None => n.inputs.iter().map(|&i| name(i)).collect(),
            },
            output: n.outputs.iter().enumerate().map(|(i, &o)| output_name(n, i, o)).collect(),
            name: Some(n.name.clone()),
            op_type: Some(n.op.op_type().to_string()),
            domain: (!n.op.domain().is_empty()).then(|| n.op.domain().to_string()),
            attribute: n.op.attributes().iter().map(|(k, v)| attribute(k, v)).collect(),
            ..Default::default()
        })
        .collect();
    let headers = graph
        .initializers
        .iter()
        .map(|init| pb::TensorProto {
            dims: init.tensor.dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(init.tensor.dtype.onnx() as i32),
            name: Some(name(init.value)),
            ..Default::default()
        })
        .collect();
    let proto = pb::GraphProto {
        node: nodes,
        name: Some(graph.name.clone()),
        input: graph.inputs.iter().map(|&i| value_info(graph.value(i))).collect(),
        output: graph.outputs.iter().map(|&o| value_info(graph.value(o))).collect(),
        ..Default::default()
    };
    (proto, headers)
}

/// The `ModelProto` around a graph, without the graph.
pub fn model_skeleton(graph: &Graph, meta: &ModelMeta) -> pb::ModelProto {
    let mut opset_import = vec![pb::OperatorSetIdProto { domain: Some(String::new()), version: Some(graph.opset) }];
    for d in domains(graph) {
        opset_import.push(pb::OperatorSetIdProto { domain: Some(d.to_string()), version: Some(1) });
    }
    pb::ModelProto {
        // IR 10 unless the opset is newer than IR 10 may carry (opset 23 needs IR 11).
        ir_version: Some(pb::IR_VERSION.max(pb::min_ir_version(graph.opset))),
        opset_import,
        producer_name: Some("gpt2c".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(meta.doc_string.clone()),
        metadata_props: meta.metadata.iter().map(|(k, v)| pb::entry(k.clone(), v.clone())).collect(),
        ..Default::default()
    }
}
