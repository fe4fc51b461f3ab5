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

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub mod splice;
pub use prost::Message;

/// Element types, as `TensorProto.data_type` and `TypeProto.Tensor.elem_type` carry them.
pub use generated::tensor_proto::DataType;

/// The IR version gpt2c writes (ONNX 1.16 and later read it).
pub const IR_VERSION: i64 = Version::IrVersion as i64;

/// Largest serialized `ModelProto` we decode: protobuf's 2 GiB limit on one message. Larger
/// models keep their weights in external data files, so their `model.onnx` stays small.
pub const MAX_MODEL_BYTES: u64 = i32::MAX as u64;

/// The lowest IR version that may carry `opset` of the default domain (ONNX's version table:
/// opset 23 came with IR 11, 24 with IR 12, ...).
pub fn min_ir_version(opset: i64) -> i64 {
    match opset {
        ..=8 => 3,
        9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        23 => 11,
        24 => 12,
        25..=27 => 13,
        _ => 14,
    }
}

/// Errors from reading protobuf data.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("not a valid ONNX protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("unknown tensor element type {0} (expected one of ONNX's TensorProto.DataType values)")]
    UnknownDataType(i32),
    #[error("not a valid ONNX protobuf: {0}")]
    Malformed(&'static str),
    #[error(
        "{len} bytes is more than protobuf's 2 GiB limit ({MAX_MODEL_BYTES} bytes) on one model; \
         an ONNX model this large must keep its weights in external data files"
    )]
    TooLarge { len: u64 },
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// An error in the model read from `path`.
    #[error("{path}: {source}")]
    InFile { path: PathBuf, source: Box<ProtoError> },
}

fn check_model_len(len: u64) -> Result<(), ProtoError> {
    if len > MAX_MODEL_BYTES { Err(ProtoError::TooLarge { len }) } else { Ok(()) }
}

/// Decodes a serialized `ModelProto` of at most [`MAX_MODEL_BYTES`].
pub fn decode_model(bytes: &[u8]) -> Result<ModelProto, ProtoError> {
    check_model_len(bytes.len() as u64)?;
    Ok(ModelProto::decode(bytes)?)
}

/// Reads and decodes a model file; its size is checked against [`MAX_MODEL_BYTES`] before any of
/// it is read, and every error names the file.
pub fn read_model(path: &Path) -> Result<ModelProto, ProtoError> {
    let read = |source| ProtoError::Read { path: path.into(), source };
    let in_file = |e| ProtoError::InFile { path: path.into(), source: Box::new(e) };
    let file = File::open(path).map_err(read)?;
    let len = file.metadata().map_err(read)?.len();
    check_model_len(len).map_err(in_file)?;
    // One byte more than the limit is read at most, in case the file grew since `metadata`.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_MODEL_BYTES + 1).read_to_end(&mut bytes).map_err(read)?;
    decode_model(&bytes).map_err(in_file)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_over_two_gib_fails_fast() {
        assert!(check_model_len(MAX_MODEL_BYTES).is_ok());
        let e = check_model_len(MAX_MODEL_BYTES + 1).unwrap_err().to_string();
        assert!(e.contains("2147483648 bytes is more than protobuf's 2 GiB limit"), "{e}");
        // A sparse 3 GiB file: refused from its size, without reading (or allocating) it.
        let path = std::env::temp_dir().join(format!("gpt2c-proto-huge-{}.onnx", std::process::id()));
        let file = File::create(&path).unwrap();
        file.set_len(3 << 30).unwrap();
        let e = read_model(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        let e = e.to_string();
        assert!(e.starts_with(&format!("{}: 3221225472 bytes is more than", path.display())), "{e}");
    }

    #[test]
    fn read_model_names_the_file() {
        let missing = std::env::temp_dir().join("gpt2c-proto-no-such-file.onnx");
        let e = read_model(&missing).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: cannot read:", missing.display())), "{e}");
        let path = std::env::temp_dir().join(format!("gpt2c-proto-bad-{}.onnx", std::process::id()));
        std::fs::write(&path, [0xff, 0xff, 0xff]).unwrap();
        let e = read_model(&path).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(e.starts_with(&format!("{}: not a valid ONNX protobuf", path.display())), "{e}");
    }
}
