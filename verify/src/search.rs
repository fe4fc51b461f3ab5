//! Exports whose graph generates (`gpt2c export --generation`): the search node's inputs and
//! outputs as ONNX Runtime documents them, and its decoder subgraph checked as a model of its own
//! — its contract (`subgraph_gpt.cc`'s, written out here), shape inference, and numerics against
//! the reference, the cases' inputs and outputs mapped to and from the decoder's form.

use gpt2c_proto::{self as pb, DataType};
use gpt2c_runtime::{HostData, HostTensor};

use super::contract::{Contract, Port, past_key, past_value, present_key, present_value};
use gpt2c_compiler::checkpoint::Gpt2Config;

/// The search operators and their inputs, as ONNX Runtime's documentation gives them.
const OPERATORS: [(&str, &[(&str, DataType)]); 3] = [
    (
        "GreedySearch",
        &[("max_length", DataType::Int32), ("min_length", DataType::Int32), ("repetition_penalty", DataType::Float)],
    ),
    (
        "BeamSearch",
        &[
            ("max_length", DataType::Int32),
            ("min_length", DataType::Int32),
            ("num_beams", DataType::Int32),
            ("num_return_sequences", DataType::Int32),
            ("length_penalty", DataType::Float),
            ("repetition_penalty", DataType::Float),
        ],
    ),
    (
        "Sampling",
        &[
            ("max_length", DataType::Int32),
            ("min_length", DataType::Int32),
            ("repetition_penalty", DataType::Float),
            ("seed", DataType::Int32),
        ],
    ),
];

/// The search node of a model, if its graph is one.
pub fn search_node(graph: &pb::GraphProto) -> Option<&pb::NodeProto> {
    graph.node.iter().find(|n| n.domain() == "com.microsoft" && OPERATORS.iter().any(|(op, _)| *op == n.op_type()))
}

fn port(name: &str, elem: DataType, dims: &[&str]) -> Port {
    Port { name: name.into(), elem, dims: dims.iter().map(|d| d.to_string()).collect() }
}

/// The generation model's contract: int32 `input_ids` and `attention_mask` `[batch_size,
/// sequence_length]`, the operator's scalar inputs `[1]` (none in a Triton repository's model,
/// whose settings are constants), `sequences` (and beam search's `sequences_scores`).
pub fn outer_contract(op: &str, fixed: bool) -> Contract {
    let tokens = ["batch_size", "sequence_length"];
    let mut inputs =
        vec![port("input_ids", DataType::Int32, &tokens), port("attention_mask", DataType::Int32, &tokens)];
    if !fixed {
        let scalars = OPERATORS.iter().find(|(o, _)| *o == op).map_or(&[][..], |(_, s)| s);
        inputs.extend(scalars.iter().map(|&(name, elem)| port(name, elem, &["1"])));
    }
    let outputs = if op == "BeamSearch" {
        vec![
            port("sequences", DataType::Int32, &["batch_size", "num_return_sequences", "max_length"]),
            port("sequences_scores", DataType::Float, &["batch_size", "num_return_sequences"]),
        ]
    } else {
        vec![port("sequences", DataType::Int32, &["batch_size", "max_length"])]
    };
    Contract { inputs, outputs }
}

/// The decoder subgraph's contract for a GPT-2 (`subgraph_gpt.cc`): int32 `input_ids`,
/// `position_ids`, `attention_mask`, then `past_{i}` `[2, batch_size, n_head, past_sequence_length,
/// head_dim]`; `logits` `[batch_size, 1, vocab_size]` (the operators read the last position) and
/// `present_{i}`.
pub fn decoder_contract(c: &Gpt2Config, float: DataType) -> Contract {
    let (heads, dim, vocab) = (c.n_head.to_string(), c.head_dim.to_string(), c.vocab_size.to_string());
    let tokens = ["batch_size", "sequence_length"];
    let mut inputs = vec![
        port("input_ids", DataType::Int32, &tokens),
        port("position_ids", DataType::Int32, &tokens),
        port("attention_mask", DataType::Int32, &["batch_size", "past_sequence_length + sequence_length"]),
    ];
    let cache = |name: String, length: &str| Port {
        name,
        elem: float,
        dims: ["2", "batch_size", &heads, length, &dim].map(String::from).to_vec(),
    };
    inputs.extend((0..c.n_layer).map(|i| cache(format!("past_{i}"), "past_sequence_length")));
    let mut outputs = vec![port("logits", float, &["batch_size", "1", &vocab])];
    outputs.extend((0..c.n_layer).map(|i| cache(format!("present_{i}"), "past_sequence_length + sequence_length")));
    Contract { inputs, outputs }
}

/// The decoder subgraph as a model of its own: its nodes, inputs and outputs, with the outer
/// graph's initializers it reads, the outer model's opsets and metadata.
pub fn decoder_model(model: &pb::ModelProto) -> Option<pb::ModelProto> {
    let graph = model.graph.as_ref()?;
    let node = search_node(graph)?;
    let decoder = node.attribute.iter().find(|a| a.name() == "decoder")?.g.clone()?;
    let read: std::collections::HashSet<String> = decoder.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    let mut standalone = decoder;
    standalone.initializer.extend(graph.initializer.iter().filter(|t| read.contains(t.name())).cloned());
    Some(pb::ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        metadata_props: model.metadata_props.clone(),
        graph: Some(standalone),
        ..Default::default()
    })
}

/// A case's inputs in the decoder's form: int32 ids, positions and mask; each layer's key and
/// value stacked as `past_{i}`.
pub fn to_decoder_inputs(inputs: &[(String, HostTensor)], n_layer: usize) -> Result<Vec<(String, HostTensor)>, String> {
    let get = |name: &str| inputs.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or(format!("no input {name}"));
    let mut out = Vec::with_capacity(3 + n_layer);
    for name in ["input_ids", "position_ids", "attention_mask"] {
        let t = get(name)?;
        let values = t.as_i64().ok_or(format!("{name} is not int64"))?;
        let narrowed: Vec<i32> = values
            .iter()
            .map(|&v| i32::try_from(v).map_err(|_| format!("{name} holds {v}")))
            .collect::<Result<_, _>>()?;
        out.push((name.to_string(), HostTensor::i32(t.shape.clone(), narrowed).ok_or("shape")?));
    }
    for i in 0..n_layer {
        let (k, v) = (get(&past_key(i))?, get(&past_value(i))?);
        out.push((format!("past_{i}"), stack(k, v)?));
    }
    Ok(out)
}

/// `[2, …]`: `a` then `b`, of one shape and float type.
fn stack(a: &HostTensor, b: &HostTensor) -> Result<HostTensor, String> {
    if a.shape != b.shape {
        return Err(format!("key {:?} and value {:?} differ", a.shape, b.shape));
    }
    let shape = [&[2][..], &a.shape].concat();
    let data = match (&a.data, &b.data) {
        (HostData::F32(x), HostData::F32(y)) => HostData::F32([x.as_slice(), y].concat()),
        (HostData::F16(x), HostData::F16(y)) => HostData::F16([x.as_slice(), y].concat()),
        _ => return Err("a cache that is not float".into()),
    };
    Ok(HostTensor { shape, data })
}

/// The decoder's outputs under the plain export's names: `present_{i}` split into
/// `present.{i}.key` / `.value`; `logits` as it is (the last position).
pub fn from_decoder_outputs(outputs: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>, String> {
    let mut out = Vec::with_capacity(outputs.len() * 2);
    for (name, t) in outputs {
        let Some(layer) = name.strip_prefix("present_").and_then(|l| l.parse::<usize>().ok()) else {
            out.push((name, t));
            continue;
        };
        if t.shape.first() != Some(&2) {
            return Err(format!("{name} has shape {:?}, expected [2, …]", t.shape));
        }
        let half = t.shape[1..].iter().product::<usize>();
        let shape = t.shape[1..].to_vec();
        let (k, v) = match &t.data {
            HostData::F32(d) if d.len() == 2 * half => {
                (HostData::F32(d[..half].to_vec()), HostData::F32(d[half..].to_vec()))
            }
            HostData::F16(d) if d.len() == 2 * half => {
                (HostData::F16(d[..half].to_vec()), HostData::F16(d[half..].to_vec()))
            }
            _ => return Err(format!("{name} holds {} values of the wrong type", t.shape.iter().product::<usize>())),
        };
        out.push((present_key(layer), HostTensor { shape: shape.clone(), data: k }));
        out.push((present_value(layer), HostTensor { shape, data: v }));
    }
    Ok(out)
}

/// A reference output list with `logits` cut to each row's last position, as the decoder returns.
pub fn last_position_logits(outputs: Vec<(String, HostTensor)>) -> Vec<(String, HostTensor)> {
    outputs
        .into_iter()
        .map(|(name, t)| {
            if name != "logits" || t.shape.len() != 3 {
                return (name, t);
            }
            let (rows, seq, vocab) = (t.shape[0], t.shape[1], t.shape[2]);
            match t.as_f32() {
                Some(d) if seq > 0 => {
                    let last: Vec<f32> = (0..rows)
                        .flat_map(|r| d[(r * seq + seq - 1) * vocab..(r * seq + seq) * vocab].to_vec())
                        .collect();
                    (name, HostTensor { shape: vec![rows, 1, vocab], data: HostData::F32(last) })
                }
                _ => (name, t),
            }
        })
        .collect()
}
