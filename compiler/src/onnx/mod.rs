//! IR → ONNX: protobuf conversion ([`convert`]) and streaming file output ([`write`]).
//!
//! Output is deterministic: the same graph gives the same bytes (nodes,
//! initializers and attributes are written in the IR's order; nothing depends
//! on time, paths or hash order).

pub mod convert;
pub mod write;

pub use convert::ModelMeta;
pub use write::{ExternalData, WriteError, Written, data_file_name, encode_inline, write_model};
