//! Reads `.safetensors` files through a memory map, trusting nothing in them.
//!
//! Format: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`name → {dtype, shape, data_offsets: [begin, end]}` plus an optional
//! `__metadata__` object of strings), then the data region; offsets are
//! relative to the start of the data region. Every size is checked against
//! the file before anything is read or allocated: a header that claims more
//! than the file holds, offsets past its end, or a byte count that disagrees
//! with the shape each get an error that names the file and the tensor.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::ir::SharedBytes;

/// Largest header we accept (the reference implementation's limit is 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Element types a safetensors file can declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    Other(&'static str),
}

impl StDtype {
    fn parse(s: &str) -> Option<StDtype> {
        Some(match s {
            "F64" => StDtype::F64,
            "F32" => StDtype::F32,
            "F16" => StDtype::F16,
            "BF16" => StDtype::BF16,
            "I64" => StDtype::I64,
            "I32" => StDtype::I32,
            "I16" => StDtype::I16,
            "I8" => StDtype::I8,
            "U8" => StDtype::U8,
            "BOOL" => StDtype::Bool,
            "U64" => StDtype::Other("U64"),
            "U32" => StDtype::Other("U32"),
            "U16" => StDtype::Other("U16"),
            "F8_E4M3" => StDtype::Other("F8_E4M3"),
            "F8_E5M2" => StDtype::Other("F8_E5M2"),
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            StDtype::F64 | StDtype::I64 | StDtype::Other("U64") => 8,
            StDtype::F32 | StDtype::I32 | StDtype::Other("U32") => 4,
            StDtype::F16 | StDtype::BF16 | StDtype::I16 | StDtype::Other("U16") => 2,
            _ => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StDtype::F64 => "F64",
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
            StDtype::I64 => "I64",
            StDtype::I32 => "I32",
            StDtype::I16 => "I16",
            StDtype::I8 => "I8",
            StDtype::U8 => "U8",
            StDtype::Bool => "BOOL",
            StDtype::Other(s) => s,
        }
    }
}

/// Errors reading a safetensors file; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: truncated: the file is {len} bytes, too short for the 8-byte header length")]
    TooShort { path: PathBuf, len: u64 },
    #[error(
        "{path}: corrupt or truncated: the header claims {header} bytes but only {available} bytes follow the length prefix"
    )]
    HeaderPastEnd { path: PathBuf, header: u64, available: u64 },
    #[error("{path}: the header claims {header} bytes, more than the {MAX_HEADER_BYTES}-byte limit")]
    HeaderTooLarge { path: PathBuf, header: u64 },
    #[error("{path}: the header is not valid JSON: {message}")]
    HeaderJson { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor { path: PathBuf, name: String, message: String },
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// One tensor's header entry, validated.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    /// Absolute byte range within the file.
    pub range: std::ops::Range<usize>,
}

/// A memory-mapped (or in-memory), validated safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Arc<dyn AsRef<[u8]> + Send + Sync>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SafetensorsFile({}, {} tensors)", self.path.display(), self.tensors.len())
    }
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile, SafetensorsError> {
        let io = |source| SafetensorsError::Io { path: path.into(), source };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            return Err(SafetensorsError::TooShort { path: path.into(), len });
        }
        // SAFETY: the map is read-only; like every tool that maps model weights, we rely on
        // the file not being truncated by another process while we read it.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let tensors = parse_header(path, &map)?;
        Ok(SafetensorsFile { path: path.into(), map: Arc::new(map), tensors })
    }

    /// A whole file's bytes already in memory (tests, fuzzing), validated as [`open`](Self::open)
    /// validates a file; `path` is only used in messages.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<SafetensorsFile, SafetensorsError> {
        let tensors = parse_header(path, &bytes)?;
        Ok(SafetensorsFile { path: path.into(), map: Arc::new(bytes), tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The bytes of a tensor, shared with the map.
    pub fn bytes(&self, info: &TensorInfo) -> Option<SharedBytes> {
        SharedBytes::new(self.map.clone(), info.range.clone())
    }
}

/// The header's top-level object, read entry by entry: `__metadata__` is skipped unread and
/// every other value goes straight into a [`RawEntry`]. The name of an entry that fails to
/// deserialize is left in `failed`, so that the error can name the tensor.
struct Entries<'a> {
    failed: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for Entries<'_> {
    type Value = Vec<(String, RawEntry)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = Vec<(String, RawEntry)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object mapping tensor names to {dtype, shape, data_offsets}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if name == "__metadata__" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match map.next_value::<RawEntry>() {
                Ok(entry) => entries.push((name, entry)),
                Err(e) => {
                    *self.failed = Some(name);
                    return Err(e);
                }
            }
        }
        Ok(entries)
    }
}

/// A shape for messages, cut short: a corrupt header can hold millions of dims.
fn short_shape(shape: &[u64]) -> String {
    match shape {
        s if s.len() <= 8 => format!("{s:?}"),
        s => format!("{:?}… ({} dims)", &s[..8], s.len()),
    }
}

/// Validates the header of a whole file held in `bytes`.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, TensorInfo>, SafetensorsError> {
    let len = bytes.len() as u64;
    let Some(prefix) = bytes.first_chunk::<8>() else {
        return Err(SafetensorsError::TooShort { path: path.into(), len });
    };
    let header = u64::from_le_bytes(*prefix);
    if header > MAX_HEADER_BYTES {
        return Err(SafetensorsError::HeaderTooLarge { path: path.into(), header });
    }
    if header > len - 8 {
        return Err(SafetensorsError::HeaderPastEnd { path: path.into(), header, available: len - 8 });
    }
    let data_start = 8 + header as usize;
    let json = &bytes[8..data_start];
    let data_len = len - data_start as u64;
    // Entries are read straight into `RawEntry`s: a `serde_json::Value` tree would cost about
    // 16 times the header's size (32 bytes per `1,` in a shape), 1.6 GB for a 100 MB header.
    let mut failed_entry = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    let entries = Entries { failed: &mut failed_entry }.deserialize(&mut de).and_then(|e| de.end().map(|()| e));
    let entries = entries.map_err(|e| match failed_entry.take() {
        // A JSON syntax error inside an entry is still a JSON error; a well-formed entry of the
        // wrong form is that tensor's error.
        Some(name) if e.classify() == serde_json::error::Category::Data => SafetensorsError::Tensor {
            path: path.into(),
            name,
            message: format!("malformed header entry ({e}); expected {{dtype, shape, data_offsets}}"),
        },
        _ => SafetensorsError::HeaderJson { path: path.into(), message: e.to_string() },
    })?;
    let mut tensors = BTreeMap::new();
    for (name, entry) in entries {
        let bad = |message: String| SafetensorsError::Tensor { path: path.into(), name: name.clone(), message };
        let dtype = StDtype::parse(&entry.dtype).ok_or_else(|| bad(format!("unknown dtype {:?}", entry.dtype)))?;
        let [begin, end] = entry.data_offsets;
        if begin > end {
            return Err(bad(format!("data_offsets [{begin}, {end}] run backwards")));
        }
        if end > data_len {
            return Err(bad(format!(
                "data_offsets [{begin}, {end}] point past the end of the data ({data_len} bytes): \
                 the file is truncated or its header is corrupt"
            )));
        }
        // ONNX dims are i64: a larger one cannot be written, even in a tensor of no elements.
        if let Some(d) = entry.shape.iter().find(|&&d| d > i64::MAX as u64) {
            return Err(bad(format!("shape {} has dimension {d}, more than 2^63 - 1", short_shape(&entry.shape))));
        }
        let numel = entry.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let expected = numel.and_then(|n| n.checked_mul(dtype.size() as u64));
        if expected != Some(end - begin) {
            return Err(bad(format!(
                "shape {} of {} needs {} bytes but data_offsets [{begin}, {end}] hold {}",
                short_shape(&entry.shape),
                dtype.name(),
                expected.map_or("more than 2^64".to_string(), |e| e.to_string()),
                end - begin
            )));
        }
        // Both conversions are in range: end <= data_len <= the mapped length.
        let range = data_start + begin as usize..data_start + end as usize;
        let shape = entry.shape.iter().map(|&d| d as usize).collect();
        tensors.insert(name, TensorInfo { dtype, shape, range });
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn err(bytes: &[u8]) -> String {
        parse_header(Path::new("w.safetensors"), bytes).unwrap_err().to_string()
    }

    #[test]
    fn valid_file_parses() {
        let bytes = file(
            r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[],"data_offsets":[8,10]}}"#,
            &[0; 10],
        );
        let t = parse_header(Path::new("w"), &bytes).unwrap();
        assert_eq!(t["a"].shape, vec![2]);
        assert_eq!(t["b"].dtype, StDtype::F16);
        assert_eq!(t["b"].range.len(), 2);
    }

    #[test]
    fn lying_headers_are_rejected() {
        assert!(err(&[1, 2, 3]).contains("too short"));
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(err(&huge).contains("limit"));
        let mut claims = 1000u64.to_le_bytes().to_vec();
        claims.extend_from_slice(b"{}");
        assert!(err(&claims).contains("claims 1000 bytes"));
        let past = file(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8]);
        assert!(err(&past).contains("point past the end"), "{}", err(&past));
        let wrong = file(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]);
        assert!(err(&wrong).contains("needs 12 bytes"));
        let overflow = file(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, &[0; 8]);
        assert!(err(&overflow).contains("more than 2^64"));
        let backwards = file(r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#, &[0; 8]);
        assert!(err(&backwards).contains("backwards"));
        assert!(err(&file("not json", &[])).contains("not valid JSON"));
        assert!(err(&file(r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#, &[0])).contains("unknown dtype"));
        assert!(err(&file(r#"{"a":{"shape":[1]}}"#, &[0])).contains("malformed header entry"));
    }

    #[test]
    fn header_claiming_terabytes_fails_fast() {
        // A 10-byte file whose prefix claims a 1 TiB header: refused before anything is read or
        // allocated, naming the limit.
        let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let e = parse_header(Path::new("w.safetensors"), &bytes).unwrap_err();
        assert!(matches!(e, SafetensorsError::HeaderTooLarge { header, .. } if header == 1 << 40), "{e}");
        let e = e.to_string();
        assert!(
            e.starts_with("w.safetensors: ") && e.contains("claims 1099511627776 bytes") && e.contains("limit"),
            "{e}"
        );
    }

    #[test]
    fn header_longer_than_the_file_fails_fast() {
        // Under the limit, but longer than the 2 bytes that follow the prefix.
        let mut bytes = (64u64 << 20).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let e = err(&bytes);
        assert!(e.contains("claims 67108864 bytes but only 2 bytes follow"), "{e}");
        // Exactly at the end is fine; one past is not.
        assert!(parse_header(Path::new("w"), &file("{}", &[])).unwrap().is_empty());
        let mut one_past = file("{}", &[]);
        one_past[0] = 3;
        assert!(err(&one_past).contains("claims 3 bytes but only 2"), "{}", err(&one_past));
    }

    #[test]
    fn offsets_and_shape_products_are_overflow_checked() {
        let e =
            err(&file(&format!(r#"{{"a":{{"dtype":"U8","shape":[8],"data_offsets":[0,{}]}}}}"#, u64::MAX), &[0; 8]));
        assert!(e.contains("tensor `a`") && e.contains("point past the end"), "{e}");
        let m = u64::MAX;
        let e = err(&file(&format!(r#"{{"a":{{"dtype":"U8","shape":[0],"data_offsets":[{m},{m}]}}}}"#), &[0; 8]));
        assert!(e.contains("point past the end"), "{e}");
        // The element count fits in u64 but its byte count does not.
        let e = err(&file(r#"{"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}}"#, &[0; 8]));
        assert!(e.contains("more than 2^64"), "{e}");
        let e = err(&file(&format!(r#"{{"a":{{"dtype":"U8","shape":{:?},"data_offsets":[0,0]}}}}"#, [1; 1000]), &[]));
        assert!(e.contains("shape [1, 1, 1, 1, 1, 1, 1, 1]… (1000 dims) of U8 needs 1 bytes"), "{e}");
        // A zero anywhere makes the product zero, however large the rest; a dim past i64 is refused.
        let h = r#"{"a":{"dtype":"F32","shape":[9223372036854775807,0],"data_offsets":[0,0]}}"#;
        let t = parse_header(Path::new("w"), &file(h, &[])).unwrap();
        assert_eq!(t["a"].range, 8 + h.len()..8 + h.len());
        let e = err(&file(r#"{"a":{"dtype":"F32","shape":[9223372036854775808,0],"data_offsets":[0,0]}}"#, &[]));
        assert!(e.contains("dimension 9223372036854775808, more than 2^63 - 1"), "{e}");
    }

    #[test]
    fn entries_are_named_and_metadata_skipped() {
        let e = err(&file(r#"{"__metadata__":{"k":[1,{"x":null}]},"b":{"dtype":"F32","shape":"2"}}"#, &[]));
        assert!(e.contains("tensor `b`: malformed header entry"), "{e}");
        // Broken JSON inside an entry is a JSON error, not that entry's.
        assert!(err(&file(r#"{"b":{"dtype":"F32","#, &[])).contains("not valid JSON"));
        assert!(err(&file(r#"{} trailing"#, &[])).contains("not valid JSON"));
        assert!(err(&file(r#"[1]"#, &[])).contains("not valid JSON"));
    }

    #[test]
    fn in_memory_files_hand_out_each_tensor() {
        let bytes = file(
            r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"I16","shape":[1],"data_offsets":[2,4]}}"#,
            &[1, 2, 3, 4],
        );
        let f = SafetensorsFile::from_bytes(Path::new("w"), bytes).unwrap();
        let b = f.bytes(&f.tensors()["b"]).unwrap();
        assert_eq!(b.as_slice(), &[3, 4]);
        assert_eq!(f.bytes(&f.tensors()["a"]).unwrap().as_slice(), &[1, 2]);
    }
}
