//! Streams a graph to `model.onnx` (and `model.onnx_data`) without holding a
//! serialized copy of the weights in memory.
//!
//! Inline: the `ModelProto` fields are encoded with prost, then the graph is
//! written as a length-delimited field whose initializers are appended one by
//! one, each tensor's bytes copied straight from the checkpoint's memory map.
//! Protobuf readers accept fields in any order, so the result decodes to the
//! same message as a one-shot encode. External: tensors of at least
//! [`EXTERNAL_MIN_BYTES`] go to one data file, aligned so ONNX Runtime can map
//! them, and the model file keeps only their locations.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use gpt2c_proto::{self as pb, Message};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::convert::{ModelMeta, graph_skeleton, model_skeleton};
use crate::ir::Graph;

/// Protobuf messages cannot exceed 2 GiB.
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;
/// Room left for the graph structure when deciding whether weights fit inline.
const STRUCTURE_MARGIN: u64 = 64 << 20;
/// Tensors smaller than this stay inline even with external data (as onnx does).
pub const EXTERNAL_MIN_BYTES: usize = 1024;
/// Large external tensors start on this boundary (ONNX Runtime maps them directly).
const LARGE_ALIGNMENT: u64 = 64 << 10;
const SMALL_ALIGNMENT: u64 = 64;
const LARGE_TENSOR: usize = 1 << 20;

/// Where weights go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExternalData {
    /// External when the model would pass protobuf's 2 GiB limit.
    #[default]
    Auto,
    /// Always in `<model>.onnx_data`.
    Always,
    /// Always inline (fails past 2 GiB).
    Never,
}

crate::named::named_enum!(ExternalData, "external data choice", { Auto => "auto", Always => "always", Never => "never" });

/// What was written.
#[derive(Clone, Debug)]
pub struct Written {
    pub model_path: PathBuf,
    pub model_bytes: u64,
    /// The external data file and its size, when one was written.
    pub data: Option<(PathBuf, u64)>,
}

/// Errors writing a model.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: cannot write: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the weights take {bytes} bytes, past protobuf's 2 GiB limit for one file: use --external-data auto or always"
    )]
    TooLargeInline { bytes: u64 },
}

/// Counts bytes and reports progress.
struct Counting<'a, W: Write> {
    inner: W,
    written: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        (self.progress)(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Name of the external data file for a model file (`model.onnx` → `model.onnx_data`).
pub fn data_file_name(model_file: &str) -> String {
    format!("{model_file}_data")
}

/// Writes `graph` to `model_path`; `progress` receives byte counts as they are written.
pub fn write_model(
    graph: &Graph,
    meta: &ModelMeta,
    model_path: &Path,
    mode: ExternalData,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, WriteError> {
    let external = use_external_data(mode, graph.initializer_bytes() as u64)?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError::Io { path: path.clone(), source }
    };
    if external {
        write_external(graph, meta, model_path, progress)
    } else {
        let file = File::create(model_path).map_err(io_err(model_path))?;
        let mut out = Counting { inner: BufWriter::with_capacity(1 << 20, file), written: 0, progress };
        write_inline(graph, meta, &mut out).map_err(io_err(model_path))?;
        let model_bytes = out.written;
        finish(out.inner).map_err(io_err(model_path))?;
        Ok(Written { model_path: model_path.into(), model_bytes, data: None })
    }
}

/// Whether weights of this size go to an external data file under `mode`.
pub fn use_external_data(mode: ExternalData, weight_bytes: u64) -> Result<bool, WriteError> {
    let fits_inline = weight_bytes <= PROTOBUF_LIMIT - STRUCTURE_MARGIN;
    match mode {
        ExternalData::Always => Ok(true),
        ExternalData::Auto => Ok(!fits_inline),
        ExternalData::Never if fits_inline => Ok(false),
        ExternalData::Never => Err(WriteError::TooLargeInline { bytes: weight_bytes }),
    }
}

/// Serializes `graph` with every tensor inline into memory (tests, small models).
pub fn encode_inline(graph: &Graph, meta: &ModelMeta) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(graph.initializer_bytes() + 4096);
    write_inline(graph, meta, &mut out)?;
    Ok(out)
}

fn finish(w: BufWriter<File>) -> io::Result<()> {
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

fn write_inline(graph: &Graph, meta: &ModelMeta, out: &mut dyn Write) -> io::Result<()> {
    let (graph_proto, headers) = graph_skeleton(graph);
    let model_head = model_skeleton(graph, meta).encode_to_vec();
    let graph_head = graph_proto.encode_to_vec();
    let tensors: Vec<(Vec<u8>, usize)> =
        headers.iter().zip(&graph.initializers).map(|(h, init)| (h.encode_to_vec(), init.tensor.byte_len())).collect();
    let tensor_len = |(header, data): &(Vec<u8>, usize)| {
        header.len() + if *data > 0 { key_len(9) + encoded_len_varint(*data as u64) + data } else { 0 }
    };
    let graph_len = graph_head.len()
        + tensors.iter().map(|t| key_len(5) + encoded_len_varint(tensor_len(t) as u64) + tensor_len(t)).sum::<usize>();

    let mut buf = Vec::with_capacity(32);
    out.write_all(&model_head)?;
    encode_key(7, WireType::LengthDelimited, &mut buf);
    encode_varint(graph_len as u64, &mut buf);
    out.write_all(&buf)?;
    out.write_all(&graph_head)?;
    for (t, init) in tensors.iter().zip(&graph.initializers) {
        buf.clear();
        encode_key(5, WireType::LengthDelimited, &mut buf);
        encode_varint(tensor_len(t) as u64, &mut buf);
        buf.extend_from_slice(&t.0);
        if t.1 > 0 {
            encode_key(9, WireType::LengthDelimited, &mut buf);
            encode_varint(t.1 as u64, &mut buf);
        }
        out.write_all(&buf)?;
        init.tensor.write_to(out)?;
    }
    Ok(())
}

fn write_external(
    graph: &Graph,
    meta: &ModelMeta,
    model_path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, WriteError> {
    let model_file = model_path.file_name().and_then(|n| n.to_str()).unwrap_or("model.onnx");
    let location = data_file_name(model_file);
    let data_path = model_path.with_file_name(&location);
    let data_err = |source| WriteError::Io { path: data_path.clone(), source };
    let (mut graph_proto, mut headers) = graph_skeleton(graph);

    let file = File::create(&data_path).map_err(data_err)?;
    let mut out = Counting { inner: BufWriter::with_capacity(1 << 20, file), written: 0, progress };
    for (header, init) in headers.iter_mut().zip(&graph.initializers) {
        let len = init.tensor.byte_len();
        if len < EXTERNAL_MIN_BYTES {
            let mut raw = Vec::with_capacity(len);
            init.tensor.write_to(&mut raw).map_err(data_err)?;
            header.raw_data = Some(raw);
            continue;
        }
        let align = if len >= LARGE_TENSOR { LARGE_ALIGNMENT } else { SMALL_ALIGNMENT };
        let pad = (align - out.written % align) % align;
        out.write_all(&vec![0u8; pad as usize]).map_err(data_err)?;
        let offset = out.written;
        init.tensor.write_to(&mut out).map_err(data_err)?;
        header.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
        header.external_data = vec![
            pb::entry("location", location.clone()),
            pb::entry("offset", offset.to_string()),
            pb::entry("length", len.to_string()),
        ];
    }
    let data_bytes = out.written;
    finish(out.inner).map_err(data_err)?;

    graph_proto.initializer = headers;
    let mut model = model_skeleton(graph, meta);
    model.graph = Some(graph_proto);
    let bytes = model.encode_to_vec();
    let model_err = |source| WriteError::Io { path: model_path.into(), source };
    let mut file = File::create(model_path).map_err(model_err)?;
    file.write_all(&bytes).map_err(model_err)?;
    file.sync_all().map_err(model_err)?;
    Ok(Written { model_path: model_path.into(), model_bytes: bytes.len() as u64, data: Some((data_path, data_bytes)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_goes_external_only_past_the_protobuf_limit() {
        let small = 500 << 20;
        let large = 3u64 << 30;
        assert!(!use_external_data(ExternalData::Auto, small).unwrap());
        assert!(use_external_data(ExternalData::Auto, large).unwrap());
        assert!(use_external_data(ExternalData::Always, small).unwrap());
        assert!(!use_external_data(ExternalData::Never, small).unwrap());
        let err = use_external_data(ExternalData::Never, large).unwrap_err().to_string();
        assert!(err.contains("2 GiB") && err.contains("--external-data"), "{err}");
        // The margin keeps room for the graph structure below the hard limit.
        assert!(use_external_data(ExternalData::Auto, PROTOBUF_LIMIT - 1).unwrap());
    }
}
