//! The ONNX protobuf schema as `prost` types.
//!
//! `proto/onnx.proto` is written for gpt2c from the ONNX specification and is
//! wire-compatible with ONNX IR version 10; `build.rs` compiles it with `protox`,
//! so no system `protoc` is needed. This crate adds only what every user of the
//! types needs: the IR version we write, checked conversions between the
//! `data_type` integers and [`DataType`], and encode/decode entry points.

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use generated::*;

pub mod splice;
pub use prost::Message;

/// Element types, as `TensorProto.data_type` and `TypeProto.Tensor.elem_type` carry them.
pub use generated::tensor_proto::DataType;

/// The IR version gpt2c writes (ONNX 1.16 and later read it).
pub const IR_VERSION: i64 = Version::IrVersion as i64;

/// Errors from reading protobuf data.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("not a valid ONNX protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("unknown tensor element type {0} (expected one of ONNX's TensorProto.DataType values)")]
    UnknownDataType(i32),
    #[error("not a valid ONNX protobuf: {0}")]
    Malformed(&'static str),
}

/// Decodes a serialized `ModelProto`.
pub fn decode_model(bytes: &[u8]) -> Result<ModelProto, ProtoError> {
    Ok(ModelProto::decode(bytes)?)
}

/// Serializes a `ModelProto`.
pub fn encode_model(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Converts a raw `data_type` integer into a [`DataType`], rejecting unknown values.
pub fn data_type(raw: i32) -> Result<DataType, ProtoError> {
    DataType::try_from(raw).map_err(|_| ProtoError::UnknownDataType(raw))
}

/// Size in bytes of one element, for the fixed-size numeric types.
/// `None` for strings, sub-byte types and `UNDEFINED`.
pub fn element_size(dtype: DataType) -> Option<usize> {
    use DataType as D;
    match dtype {
        D::Float | D::Int32 | D::Uint32 => Some(4),
        D::Double | D::Int64 | D::Uint64 | D::Complex64 => Some(8),
        D::Complex128 => Some(16),
        D::Float16 | D::Bfloat16 | D::Int16 | D::Uint16 => Some(2),
        D::Uint8 | D::Int8 | D::Bool => Some(1),
        D::Float8e4m3fn | D::Float8e4m3fnuz | D::Float8e5m2 | D::Float8e5m2fnuz => Some(1),
        D::Undefined | D::String | D::Uint4 | D::Int4 | D::Float4e2m1 => None,
    }
}

/// A `StringStringEntryProto` from a key and a value.
pub fn entry(key: impl Into<String>, value: impl Into<String>) -> StringStringEntryProto {
    StringStringEntryProto { key: Some(key.into()), value: Some(value.into()) }
}
