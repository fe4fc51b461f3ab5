//! Weight sources and checked weight lookups.
//!
//! A [`WeightSource`] lists tensors and hands out their bytes without copying:
//! [`SafetensorsWeights`] over one file or a sharded checkpoint, and
//! [`InMemoryWeights`] for tests. [`Weights`] resolves GPT-2's names (with or
//! without the `transformer.` prefix) and checks dtype and shape on every
//! lookup, naming the tensor, the file, what was expected and what was found.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::safetensors::{SafetensorsError, SafetensorsFile, StDtype};
use crate::ir::{DType, Encoding, SharedBytes, Tensor, TensorData};

/// Errors finding or checking weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error("{path}: {message}")]
    Index { path: PathBuf, message: String },
    #[error("tensor `{name}` is missing from {origin}{hint}")]
    Missing { name: String, origin: String, hint: String },
    #[error("tensor `{name}` in {origin} has shape {found:?}, expected {expected:?}")]
    Shape { name: String, origin: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor `{name}` in {origin} has dtype {found}, expected F32, F16 or BF16")]
    DType { name: String, origin: String, found: &'static str },
}

/// A set of named tensors.
pub trait WeightSource: Send + Sync {
    /// All tensor names, sorted.
    fn names(&self) -> Vec<String>;
    /// Element type and shape of a tensor.
    fn info(&self, name: &str) -> Option<(StDtype, Vec<usize>)>;
    /// The tensor's bytes (little-endian, row-major).
    fn bytes(&self, name: &str) -> Option<SharedBytes>;
    /// Where a tensor lives, for messages (a file path).
    fn origin(&self, name: &str) -> String;
}

/// Weights in one safetensors file or a sharded set.
pub struct SafetensorsWeights {
    files: Vec<SafetensorsFile>,
    /// Tensor name → index into `files`.
    index: BTreeMap<String, usize>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl SafetensorsWeights {
    /// One `model.safetensors`.
    pub fn single(path: &Path) -> Result<Self, WeightError> {
        let file = SafetensorsFile::open(path)?;
        let index = file.tensors().keys().map(|k| (k.clone(), 0)).collect();
        Ok(SafetensorsWeights { files: vec![file], index })
    }

    /// A sharded checkpoint described by `model.safetensors.index.json`.
    pub fn sharded(index_path: &Path) -> Result<Self, WeightError> {
        let bad = |message: String| WeightError::Index { path: index_path.into(), message };
        let text = std::fs::read_to_string(index_path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let parsed: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| bad(format!("expected {{\"weight_map\": {{name: file}}}}: {e}")))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<&String> = parsed.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut files = Vec::with_capacity(shard_names.len());
        let mut shard_of = BTreeMap::new();
        for shard in shard_names {
            let rel = Path::new(shard);
            if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(bad(format!("shard path {shard:?} leaves the model folder")));
            }
            shard_of.insert(shard.clone(), files.len());
            files.push(SafetensorsFile::open(&dir.join(rel))?);
        }
        let mut index = BTreeMap::new();
        for (name, shard) in &parsed.weight_map {
            let i = shard_of[shard];
            if !files[i].tensors().contains_key(name) {
                return Err(bad(format!("maps `{name}` to {shard}, which does not contain it")));
            }
            index.insert(name.clone(), i);
        }
        Ok(SafetensorsWeights { files, index })
    }

    fn file(&self, name: &str) -> Option<&SafetensorsFile> {
        self.index.get(name).and_then(|&i| self.files.get(i))
    }
}

impl WeightSource for SafetensorsWeights {
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn info(&self, name: &str) -> Option<(StDtype, Vec<usize>)> {
        let t = self.file(name)?.tensors().get(name)?;
        Some((t.dtype, t.shape.clone()))
    }

    fn bytes(&self, name: &str) -> Option<SharedBytes> {
        let file = self.file(name)?;
        file.bytes(file.tensors().get(name)?)
    }

    fn origin(&self, name: &str) -> String {
        match self.file(name).or(self.files.first()) {
            Some(f) if self.files.len() == 1 || self.index.contains_key(name) => f.path().display().to_string(),
            _ => format!("the {} checkpoint shards", self.files.len()),
        }
    }
}

/// Weights held in memory (tests, generated models).
#[derive(Default)]
pub struct InMemoryWeights {
    tensors: BTreeMap<String, (StDtype, Vec<usize>, SharedBytes)>,
}

impl InMemoryWeights {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an f32 tensor.
    pub fn insert_f32(&mut self, name: &str, shape: &[usize], values: &[f32]) {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.insert_raw(name, StDtype::F32, shape, bytes);
    }

    /// Adds a tensor from raw little-endian bytes.
    pub fn insert_raw(&mut self, name: &str, dtype: StDtype, shape: &[usize], bytes: Vec<u8>) {
        self.tensors.insert(name.to_string(), (dtype, shape.to_vec(), SharedBytes::from_vec(bytes)));
    }

    pub fn remove(&mut self, name: &str) {
        self.tensors.remove(name);
    }
}

impl WeightSource for InMemoryWeights {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn info(&self, name: &str) -> Option<(StDtype, Vec<usize>)> {
        self.tensors.get(name).map(|(d, s, _)| (*d, s.clone()))
    }
    fn bytes(&self, name: &str) -> Option<SharedBytes> {
        self.tensors.get(name).map(|(_, _, b)| b.clone())
    }
    fn origin(&self, _name: &str) -> String {
        "the in-memory weights".into()
    }
}

/// Checked access to a GPT-2 checkpoint's tensors.
pub struct Weights {
    source: Arc<dyn WeightSource>,
    /// `"transformer."` when the checkpoint was saved from a head model, else empty.
    prefix: &'static str,
}

impl Weights {
    pub fn new(source: Arc<dyn WeightSource>) -> Self {
        let names = source.names();
        let prefix = if names.iter().any(|n| n.starts_with("transformer.")) { "transformer." } else { "" };
        Weights { source, prefix }
    }

    pub fn source(&self) -> &dyn WeightSource {
        &*self.source
    }

    /// The stored name of a body tensor (`h.0.ln_1.weight` → `transformer.h.0.ln_1.weight`).
    pub fn body_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether a head tensor (stored without prefix, e.g. `lm_head.weight`) exists.
    pub fn has(&self, stored_name: &str) -> bool {
        self.source.info(stored_name).is_some()
    }

    /// A body tensor (named as inside `GPT2Model`), checked against `shape`, as f32.
    pub fn body(&self, name: &str, shape: &[usize]) -> Result<Tensor, WeightError> {
        self.get(&self.body_name(name), shape)
    }

    /// A tensor by its stored name, checked against `shape`, as f32.
    pub fn get(&self, stored: &str, shape: &[usize]) -> Result<Tensor, WeightError> {
        let origin = || self.source.origin(stored);
        let Some((dtype, found)) = self.source.info(stored) else {
            return Err(WeightError::Missing { name: stored.into(), origin: origin(), hint: self.hint(stored) });
        };
        if found != shape {
            return Err(WeightError::Shape { name: stored.into(), origin: origin(), expected: shape.to_vec(), found });
        }
        let encoding = match dtype {
            StDtype::F32 => Encoding::Raw,
            StDtype::F16 => Encoding::F16AsF32,
            StDtype::BF16 => Encoding::Bf16AsF32,
            other => {
                return Err(WeightError::DType { name: stored.into(), origin: origin(), found: other.name() });
            }
        };
        let bytes = self.source.bytes(stored).ok_or_else(|| WeightError::Missing {
            name: stored.into(),
            origin: origin(),
            hint: String::new(),
        })?;
        Ok(Tensor { dtype: DType::F32, dims: shape.to_vec(), data: TensorData::Shared { bytes, encoding } })
    }

    /// Suggests a near name ("did you mean") when a lookup fails.
    fn hint(&self, wanted: &str) -> String {
        let tail = wanted.rsplit_once("h.").map_or(wanted, |(_, t)| t);
        let similar: Vec<String> = self
            .source
            .names()
            .into_iter()
            .filter(|n| n.ends_with(tail) || tail.ends_with(n.as_str()))
            .take(3)
            .collect();
        if similar.is_empty() { String::new() } else { format!(" (similar names present: {})", similar.join(", ")) }
    }
}
