//! Graph specializations the runtime applies to gpt2c exports when loading them.
//!
//! The export's `logits` cover every position ([batch, sequence, vocab]), as
//! the contract and perplexity need. Generation reads only the last position,
//! and over a prompt the LM head is the largest single cost (sequence × n_embd
//! × vocab multiply-adds). [`last_position_logits`] inserts a Slice of the
//! final LayerNorm's last position before the LM head, so `logits` becomes
//! [batch, 1, vocab]; nothing else changes. The rewritten model holds only
//! the graph: each weight becomes an external-data reference to where its
//! bytes already are in the original `model.onnx` (or `model.onnx_data`), so
//! loading it costs what loading the original costs, and no weight is copied.

use gpt2c_proto::splice::{join, split, tensor_header};
use gpt2c_proto::{self as pb, tensor_shape_proto::dimension};

/// Name of the Slice node and its output.
const SLICE: &str = "ln_f/LastPosition";

fn i64_tensor(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: vec![values.len() as i64],
        data_type: Some(pb::DataType::Int64 as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// The `gpt2c.precision` metadata of a gpt2c export, read from the head of the
/// file (gpt2c writes the model's metadata before its graph).
pub fn gpt2c_precision(path: &std::path::Path) -> Option<String> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path).ok()?.take(1 << 20).read_to_end(&mut head).ok()?;
    let mut buf = head.as_slice();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        let len = match wire {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
                continue;
            }
            WireType::LengthDelimited => decode_varint(&mut buf).ok()? as usize,
            _ => return None,
        };
        if tag == 7 || len > buf.len() {
            return None; // the graph comes after the metadata in gpt2c's files
        }
        let (payload, rest) = buf.split_at(len);
        buf = rest;
        if tag == 14 {
            let entry = <pb::StringStringEntryProto as prost::Message>::decode(payload).ok()?;
            if entry.key.as_deref() == Some("gpt2c.precision") {
                return entry.value;
            }
        }
    }
    None
}

/// Weights at least this large are referenced in place rather than copied.
const IN_PLACE_MIN_BYTES: usize = 4096;

/// `model_file` (its serialized `bytes`) with last-position logits, weights
/// referenced in place, or `None` when it is not a gpt2c export of the
/// expected shape (then it is loaded as it is).
pub fn last_position_logits(bytes: &[u8], model_file: &str) -> Option<Vec<u8>> {
    let parts = split(bytes).ok()?;
    let mut model = parts.model;
    if model.producer_name.as_deref() != Some("gpt2c") {
        return None;
    }
    let graph = model.graph.as_mut()?;
    // The final LayerNorm: the last node of the `ln_f` scope.
    let ln = graph.node.iter().rposition(|n| n.name.as_deref().is_some_and(|s| s.starts_with("ln_f/")))?;
    let hidden = graph.node[ln].output.first()?.clone();
    let sliced = format!("{SLICE}_output");
    for node in graph.node.iter_mut().skip(ln + 1) {
        for input in node.input.iter_mut() {
            if *input == hidden {
                *input = sliced.clone();
            }
        }
    }
    let consts =
        [("ln_f/LastPosition.starts", -1i64), ("ln_f/LastPosition.ends", i64::MAX), ("ln_f/LastPosition.axes", 1)];
    let node = pb::NodeProto {
        input: std::iter::once(hidden).chain(consts.iter().map(|(n, _)| n.to_string())).collect(),
        output: vec![sliced],
        name: Some(SLICE.into()),
        op_type: Some("Slice".into()),
        ..Default::default()
    };
    graph.node.insert(ln + 1, node);
    let extra: Vec<Vec<u8>> =
        consts.iter().map(|(n, v)| prost::Message::encode_to_vec(&i64_tensor(n, &[*v]))).collect();
    let logits = graph.output.iter_mut().find(|o| o.name.as_deref() == Some("logits"))?;
    let tensor = match logits.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(pb::type_proto::Value::TensorType(t)) => Some(t),
        _ => None,
    };
    if let Some(d) = tensor.and_then(|t| t.shape.as_mut()).and_then(|s| s.dim.get_mut(1)) {
        d.value = Some(dimension::Value::DimValue(1));
    }
    // Large inline tensors become references into the original file, at their own offsets.
    let mut rewritten: Vec<Vec<u8>> = Vec::with_capacity(parts.initializers.len());
    let mut keep: Vec<&[u8]> = Vec::with_capacity(parts.initializers.len() + extra.len());
    for tensor in &parts.initializers {
        let (mut header, raw) = tensor_header(tensor).ok()?;
        match raw {
            Some(range) if range.len() >= IN_PLACE_MIN_BYTES => {
                let offset = tensor.as_ptr() as usize - bytes.as_ptr() as usize + range.start;
                header.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
                header.external_data = vec![
                    pb::entry("location", model_file),
                    pb::entry("offset", offset.to_string()),
                    pb::entry("length", range.len().to_string()),
                ];
                rewritten.push(prost::Message::encode_to_vec(&header));
            }
            _ => keep.push(tensor),
        }
    }
    keep.extend(rewritten.iter().map(Vec::as_slice));
    keep.extend(extra.iter().map(Vec::as_slice));
    Some(join(&model, &keep))
}
