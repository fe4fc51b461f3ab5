//! Editing a model's graph structure without decoding its weights.
//!
//! [`split`] walks the top-level wire format of a serialized `ModelProto`,
//! decodes everything except the graph's initializers, which it keeps as
//! borrowed, still-encoded byte ranges; [`join`] writes a (possibly edited)
//! model back with those ranges copied verbatim. A structural edit of a
//! multi-gigabyte model thus costs one copy of its bytes, not a decode and
//! an encode of every tensor.

use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};

use crate::{GraphProto, ModelProto, ProtoError};

/// A model whose graph holds no initializers, and those initializers, still encoded.
pub struct SplitModel<'a> {
    pub model: ModelProto,
    /// Encoded `TensorProto`s, in file order.
    pub initializers: Vec<&'a [u8]>,
}

/// One field read off the wire.
struct Field<'a> {
    tag: u32,
    wire: WireType,
    /// The field's bytes, key included.
    whole: &'a [u8],
    /// Its payload (for length-delimited fields, without the length).
    payload: &'a [u8],
}

/// Reads one field and advances `buf` past it.
fn next_field<'a>(buf: &mut &'a [u8]) -> Result<Field<'a>, ProtoError> {
    let start: &'a [u8] = buf;
    let (tag, wire) = decode_key(buf)?;
    let payload: &'a [u8] = match wire {
        WireType::LengthDelimited => {
            let len = decode_varint(buf)? as usize;
            if len > buf.len() {
                return Err(ProtoError::Malformed("a length runs past the end of the buffer"));
            }
            let (p, rest) = buf.split_at(len);
            *buf = rest;
            p
        }
        WireType::Varint => {
            let before = *buf;
            decode_varint(buf)?;
            &before[..before.len() - buf.len()]
        }
        WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
            let n = if wire == WireType::SixtyFourBit { 8 } else { 4 };
            if buf.len() < n {
                return Err(ProtoError::Malformed("a fixed-size field is truncated"));
            }
            let (p, rest) = buf.split_at(n);
            *buf = rest;
            p
        }
        _ => return Err(ProtoError::Malformed("unsupported wire type (groups)")),
    };
    let whole = &start[..start.len() - buf.len()];
    Ok(Field { tag, wire, whole, payload })
}

/// Splits a serialized model into its structure and its encoded initializers.
pub fn split(bytes: &[u8]) -> Result<SplitModel<'_>, ProtoError> {
    let mut rest = bytes;
    let mut model_fields = Vec::new();
    let mut graph_fields = Vec::new();
    let mut initializers = Vec::new();
    let mut has_graph = false;
    while !rest.is_empty() {
        let f = next_field(&mut rest)?;
        if f.tag == 7 && f.wire == WireType::LengthDelimited {
            has_graph = true;
            // ModelProto.graph: keep initializers (GraphProto field 5) encoded.
            let mut g = f.payload;
            while !g.is_empty() {
                let gf = next_field(&mut g)?;
                if gf.tag == 5 && gf.wire == WireType::LengthDelimited {
                    initializers.push(gf.payload);
                } else {
                    graph_fields.extend_from_slice(gf.whole);
                }
            }
        } else {
            model_fields.extend_from_slice(f.whole);
        }
    }
    let mut model = ModelProto::decode(model_fields.as_slice())?;
    // A model without a graph keeps none, so that `join` writes back the model that was read.
    model.graph = if has_graph { Some(GraphProto::decode(graph_fields.as_slice())?) } else { None };
    Ok(SplitModel { model, initializers })
}

/// Where an encoded `TensorProto`'s element bytes are: the `raw_data` field's
/// payload as a range of `tensor`, and the tensor's other fields decoded.
pub fn tensor_header(tensor: &[u8]) -> Result<(crate::TensorProto, Option<std::ops::Range<usize>>), ProtoError> {
    let mut rest = tensor;
    let mut other = Vec::new();
    let mut raw = None;
    while !rest.is_empty() {
        let f = next_field(&mut rest)?;
        if f.tag == 9 && f.wire == WireType::LengthDelimited {
            let start = f.payload.as_ptr() as usize - tensor.as_ptr() as usize;
            raw = Some(start..start + f.payload.len());
        } else {
            other.extend_from_slice(f.whole);
        }
    }
    Ok((crate::TensorProto::decode(other.as_slice())?, raw))
}

/// Serializes `model` with `initializers` (encoded `TensorProto`s) appended to its graph.
pub fn join(model: &ModelProto, initializers: &[&[u8]]) -> Vec<u8> {
    let mut head = model.clone();
    let graph = match head.graph.take() {
        Some(graph) => graph,
        None if initializers.is_empty() => return head.encode_to_vec(),
        None => GraphProto::default(),
    };
    let graph_bytes = graph.encode_to_vec();
    let mut init_bytes = Vec::new();
    for t in initializers {
        encode_key(5, WireType::LengthDelimited, &mut init_bytes);
        encode_varint(t.len() as u64, &mut init_bytes);
        init_bytes.extend_from_slice(t);
    }
    let mut out = head.encode_to_vec();
    out.reserve(graph_bytes.len() + init_bytes.len() + 16);
    encode_key(7, WireType::LengthDelimited, &mut out);
    encode_varint((graph_bytes.len() + init_bytes.len()) as u64, &mut out);
    out.extend_from_slice(&graph_bytes);
    out.extend_from_slice(&init_bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeProto, TensorProto};

    #[test]
    fn split_and_join_preserve_the_model() {
        let tensor = |name: &str, n: usize| TensorProto {
            name: Some(name.into()),
            dims: vec![n as i64],
            data_type: Some(1),
            raw_data: Some(vec![7u8; 4 * n]),
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: Some(10),
            producer_name: Some("gpt2c".into()),
            graph: Some(GraphProto {
                node: vec![NodeProto { op_type: Some("Relu".into()), ..Default::default() }],
                initializer: vec![tensor("a", 3), tensor("b", 1000)],
                name: Some("g".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = model.encode_to_vec();
        let split = split(&bytes).unwrap();
        assert_eq!(split.initializers.len(), 2);
        assert!(split.model.graph.as_ref().unwrap().initializer.is_empty());
        assert_eq!(split.model.graph.as_ref().unwrap().node.len(), 1);
        let back = ModelProto::decode(join(&split.model, &split.initializers).as_slice()).unwrap();
        assert_eq!(back, model);
        assert!(super::split(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn a_model_without_a_graph_keeps_none() {
        // Found by fuzzing (fuzz/fuzz_targets/onnx_model.rs): the empty input, a valid empty
        // ModelProto, came back from split and join with an empty graph added.
        for model in [ModelProto::default(), ModelProto { producer_name: Some("x".into()), ..Default::default() }] {
            let bytes = model.encode_to_vec();
            let split = split(&bytes).unwrap();
            assert_eq!(split.model.graph, None);
            assert_eq!(join(&split.model, &split.initializers), bytes);
        }
        // An empty graph is still a graph.
        let model = ModelProto { graph: Some(GraphProto::default()), ..Default::default() };
        let bytes = model.encode_to_vec();
        let split = split(&bytes).unwrap();
        assert_eq!(split.model.graph, Some(GraphProto::default()));
        assert_eq!(ModelProto::decode(join(&split.model, &[]).as_slice()).unwrap(), model);
    }
}
