//! Graph specializations the runtime applies to gpt2c exports when loading them.
//!
//! - last-position logits (generation), for every engine;
//! - a pre-transposed LM head table, for tract (which otherwise repacks the
//!   transposed constant on every run: 71 of 108 ms of a gpt2-small decode step).
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

/// A gpt2c export's weight quantization (`none`, `int8`, `int8-weights`, `int4`): its
/// `gpt2c.quantize` metadata, or for files written before that key, what `gpt2c.precision` says.
pub fn gpt2c_quantize(path: &std::path::Path) -> Option<String> {
    if let Some(q) = gpt2c_metadata(path, "gpt2c.quantize") {
        return Some(q);
    }
    let described = gpt2c_metadata(path, "gpt2c.precision")?;
    Some(quantize_from_description(&described).into())
}

/// The quantization a `gpt2c.precision` description (`int8 weights`, `int4 (MatMulNBits)`, …) names.
pub fn quantize_from_description(described: &str) -> &'static str {
    if described.starts_with("int8 weights") {
        "int8-weights"
    } else if described.starts_with("int8") {
        "int8"
    } else if described.starts_with("int4") {
        "int4"
    } else {
        "none"
    }
}

/// The `gpt2c.dtype` metadata of a gpt2c export (`fp32`, `fp16`).
pub fn gpt2c_dtype(path: &std::path::Path) -> Option<String> {
    gpt2c_metadata(path, "gpt2c.dtype")
}

/// The `gpt2c.kv_cache` metadata of a gpt2c export (`concat`, `shared`; files written before the
/// key concatenate).
pub fn gpt2c_kv_cache(path: &std::path::Path) -> Option<String> {
    gpt2c_metadata(path, "gpt2c.kv_cache")
}

/// The `gpt2c.task` metadata of a gpt2c export (optimum's task name).
pub fn gpt2c_task(path: &std::path::Path) -> Option<String> {
    gpt2c_metadata(path, "gpt2c.task")
}

/// A `metadata_props` entry of a gpt2c export (see [`gpt2c_metadata`]).
pub fn gpt2c_metadata_value(path: &std::path::Path, key: &str) -> Option<String> {
    gpt2c_metadata(path, key)
}

/// A `metadata_props` entry of a gpt2c export, read from the head of the file (gpt2c writes the
/// model's metadata before its graph).
fn gpt2c_metadata(path: &std::path::Path, key: &str) -> Option<String> {
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
            if entry.key.as_deref() == Some(key) {
                return entry.value;
            }
        }
    }
    None
}

/// Weights at least this large are referenced in place rather than copied.
const IN_PLACE_MIN_BYTES: usize = 4096;

/// The edits to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    /// `logits` for the last position only.
    pub last_position_logits: bool,
    /// Store the LM head's transposed table instead of transposing at run time
    /// (tract repacks a transposed constant on every run; a plain one it packs once).
    pub pretransposed_head: bool,
}

/// `model_file` (its serialized `bytes`) with `edits` applied and weights
/// referenced in place, or `None` when nothing applies (not a gpt2c export, or
/// no edit requested): then it is loaded as it is.
pub fn specialize(bytes: &[u8], model_file: &str, edits: Edits) -> Option<Vec<u8>> {
    if edits == Edits::default() {
        return None;
    }
    let parts = split(bytes).ok()?;
    let mut model = parts.model;
    if model.producer_name.as_deref() != Some("gpt2c") {
        return None;
    }
    let graph = model.graph.as_mut()?;
    let mut extra: Vec<Vec<u8>> = Vec::new();
    let mut dropped: Option<String> = None;
    if edits.last_position_logits {
        extra.extend(slice_last_position(graph)?);
    }
    let transposed = if edits.pretransposed_head { transposed_head(graph, &parts.initializers) } else { None };
    if let Some((name, tensor)) = transposed {
        extra.push(prost::Message::encode_to_vec(&tensor));
        // The original table goes only if nothing else reads it (untied heads).
        dropped = Some(name).filter(|n| !graph.node.iter().any(|node| node.input.contains(n)));
    }
    // Large inline tensors become references into the original file, at their own offsets.
    let mut rewritten: Vec<Vec<u8>> = Vec::with_capacity(parts.initializers.len());
    let mut keep: Vec<&[u8]> = Vec::with_capacity(parts.initializers.len() + extra.len());
    for tensor in &parts.initializers {
        let (mut header, raw) = tensor_header(tensor).ok()?;
        if dropped.is_some() && header.name == dropped {
            continue;
        }
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

/// Identity nodes gpt2c places in the last layer where only the last position reaches the logits
/// (node names end in `.{marker}/Identity`), with the axis of positions in each; the compiler's
/// `gpt2::attention::LAST_POSITION_MARKERS`.
pub const LAST_POSITION_MARKERS: [(&str, i64); 4] =
    [("query_rows", 1), ("mask_rows", 2), ("residual_rows", 1), ("context_rows", 1)];

/// Turns the last layer's position markers into Slices of the last position, so that the last
/// layer computes attention output, MLP and residual for one position (its keys and values, the
/// `present` outputs, still cover every position). Returns the axes constants it needs; exports
/// without markers are left as they are.
fn slice_marked_rows(graph: &mut pb::GraphProto) -> Vec<Vec<u8>> {
    let mut axes_used = Vec::new();
    for node in graph.node.iter_mut() {
        let Some(name) = node.name.as_deref() else { continue };
        let Some(&(_, axis)) = LAST_POSITION_MARKERS
            .iter()
            .find(|(marker, _)| name.ends_with(&format!(".{marker}/Identity")) && node.op_type() == "Identity")
        else {
            continue;
        };
        let axes = format!("{SLICE}.axes{axis}");
        node.op_type = Some("Slice".into());
        node.input.extend([format!("{SLICE}.starts"), format!("{SLICE}.ends"), axes.clone()]);
        if !axes_used.contains(&axis) {
            axes_used.push(axis);
        }
    }
    axes_used.iter().map(|&a| prost::Message::encode_to_vec(&i64_tensor(&format!("{SLICE}.axes{a}"), &[a]))).collect()
}

/// Inserts a Slice of the final LayerNorm's last position before the LM head
/// (and slices the last layer's marked rows); returns the constants it needs, encoded.
fn slice_last_position(graph: &mut pb::GraphProto) -> Option<Vec<Vec<u8>>> {
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
        [(format!("{SLICE}.starts"), -1i64), (format!("{SLICE}.ends"), i64::MAX), (format!("{SLICE}.axes"), 1)];
    let node = pb::NodeProto {
        input: std::iter::once(hidden).chain(consts.iter().map(|(n, _)| n.to_string())).collect(),
        output: vec![sliced],
        name: Some(SLICE.into()),
        op_type: Some("Slice".into()),
        ..Default::default()
    };
    graph.node.insert(ln + 1, node);
    let logits = graph.output.iter_mut().find(|o| o.name.as_deref() == Some("logits"))?;
    let tensor = match logits.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(pb::type_proto::Value::TensorType(t)) => Some(t),
        _ => None,
    };
    if let Some(d) = tensor.and_then(|t| t.shape.as_mut()).and_then(|s| s.dim.get_mut(1)) {
        d.value = Some(dimension::Value::DimValue(1));
    }
    let mut encoded: Vec<Vec<u8>> =
        consts.iter().map(|(n, v)| prost::Message::encode_to_vec(&i64_tensor(n, &[*v]))).collect();
    encoded.extend(slice_marked_rows(graph));
    Some(encoded)
}

/// Replaces the LM head's `Transpose(table)` by a transposed copy of the
/// table; returns the table's name and the new initializer.
fn transposed_head(graph: &mut pb::GraphProto, initializers: &[&[u8]]) -> Option<(String, pb::TensorProto)> {
    let at = graph.node.iter().position(|n| {
        n.name.as_deref().is_some_and(|s| s.starts_with("lm_head/")) && n.op_type.as_deref() == Some("Transpose")
    })?;
    let table = graph.node[at].input.first()?.clone();
    let output = graph.node[at].output.first()?.clone();
    let encoded = initializers.iter().find_map(|t| {
        let (header, raw) = tensor_header(t).ok()?;
        (header.name.as_deref() == Some(table.as_str())).then_some((header, raw?, *t))
    })?;
    let (header, range, bytes) = encoded;
    let (rows, cols) = match header.dims[..] {
        [r, c] => (usize::try_from(r).ok()?, usize::try_from(c).ok()?),
        _ => return None,
    };
    let size = match pb::data_type(header.data_type?).ok()? {
        pb::DataType::Float => 4,
        pb::DataType::Float16 => 2,
        _ => return None,
    };
    let data = bytes.get(range)?;
    // Dims come from the file: a product that wraps could match a short table.
    if rows.checked_mul(cols).and_then(|n| n.checked_mul(size)) != Some(data.len()) {
        return None;
    }
    let mut out = vec![0u8; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
            out[to..to + size].copy_from_slice(&data[from..from + size]);
        }
    }
    let name = format!("{table}.transposed");
    graph.node.remove(at);
    for node in graph.node.iter_mut() {
        for input in node.input.iter_mut() {
            if *input == output {
                *input = name.clone();
            }
        }
    }
    let tensor = pb::TensorProto {
        name: Some(name),
        dims: vec![cols as i64, rows as i64],
        data_type: header.data_type,
        raw_data: Some(out),
        ..Default::default()
    };
    Some((table, tensor))
}

#[cfg(test)]
mod tests {
    #[test]
    fn files_without_the_quantize_key_read_it_from_their_description() {
        for (described, quantize) in [
            ("fp32", "none"),
            ("fp16", "none"),
            ("int8 (dynamic)", "int8"),
            ("int8 weights", "int8-weights"),
            ("int8 weights, skipping lm_head", "int8-weights"),
            ("int4 (MatMulNBits)", "int4"),
        ] {
            assert_eq!(super::quantize_from_description(described), quantize, "{described}");
        }
    }

    use super::*;

    fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
        pb::NodeProto {
            name: Some(name.into()),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// A gpt2c-shaped graph whose LM head transposes `table`.
    fn model(table: pb::TensorProto) -> Vec<u8> {
        let graph = pb::GraphProto {
            node: vec![
                node("ln_f/LayerNormalization", "LayerNormalization", &["x"], &["h"]),
                node("lm_head/Transpose", "Transpose", &["wte"], &["t"]),
                node("lm_head/MatMul", "MatMul", &["h", "t"], &["logits"]),
            ],
            initializer: vec![table],
            output: vec![pb::ValueInfoProto { name: Some("logits".into()), ..Default::default() }],
            ..Default::default()
        };
        let model = pb::ModelProto {
            ir_version: Some(10),
            producer_name: Some("gpt2c".into()),
            graph: Some(graph),
            ..Default::default()
        };
        pb::encode_model(&model)
    }

    fn table(dims: Vec<i64>, raw: Vec<u8>) -> pb::TensorProto {
        pb::TensorProto {
            name: Some("wte".into()),
            dims,
            data_type: Some(pb::DataType::Float as i32),
            raw_data: Some(raw),
            ..Default::default()
        }
    }

    const BOTH: Edits = Edits { last_position_logits: true, pretransposed_head: true };

    #[test]
    fn transposes_the_head_table() {
        let raw: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = specialize(&model(table(vec![2, 3], raw)), "model.onnx", BOTH).unwrap();
        let graph = pb::decode_model(&out).unwrap().graph.unwrap();
        let t = graph.initializer.iter().find(|t| t.name() == "wte.transposed").unwrap();
        let values: Vec<f32> = t.raw_data().chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!((t.dims.as_slice(), values), (&[3i64, 2][..], vec![1., 4., 2., 5., 3., 6.]));
    }

    #[test]
    fn head_dims_whose_product_wraps_are_left_alone() {
        // fuzz/regressions/onnx_model/transposed-head-size-wraps.onnx: [2^62, 1] f32 is 2^64 bytes,
        // 0 once wrapped, which an empty table "matched"; the copy loop then indexed past it.
        let out = specialize(&model(table(vec![1 << 62, 1], Vec::new())), "model.onnx", BOTH).unwrap();
        let graph = pb::decode_model(&out).unwrap().graph.unwrap();
        assert!(graph.initializer.iter().all(|t| t.name() != "wte.transposed"));
        assert!(graph.node.iter().any(|n| n.name() == "lm_head/Transpose"));
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/regressions/onnx_model/transposed-head-size-wraps.onnx");
        let regression = std::fs::read(path).unwrap();
        assert!(specialize(&regression, "model.onnx", BOTH).is_some());
    }
}
