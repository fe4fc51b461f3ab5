//! What a decoding session needs from an engine: run one step with the key/value cache as the
//! engine's own values, and gather cache rows. Engines (ONNX Runtime's bound buffers, tract's
//! state, host tensors over any runner) implement it; sessions (`crate::session`) keep the
//! bookkeeping of rows and positions over it.

use super::RuntimeError;
use crate::tensor::ElemType;

/// The sizes of a model's cache and logits, as config.json gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub n_layer: usize,
    pub n_head: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

/// Logits for every position of every row: `rows × positions × vocab`.
#[derive(Clone, Debug)]
pub struct AllLogits {
    pub rows: usize,
    pub positions: usize,
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl AllLogits {
    pub fn at(&self, row: usize, position: usize) -> &[f32] {
        let start = (row * self.positions + position) * self.vocab;
        &self.data[start..start + self.vocab]
    }
}

/// The token inputs of one step, as the graph takes them.
pub struct TokenInputs<'a> {
    pub rows: usize,
    pub seq: usize,
    /// `past + seq`.
    pub total: usize,
    pub input_ids: &'a [i64],
    pub attention_mask: &'a [i64],
    pub position_ids: &'a [i64],
}

/// What a decoding session needs from an engine: run a step with the
/// key/value cache as the engine's own values, and gather cache rows. The
/// cache never leaves the engine: each step's presents are the next step's
/// pasts as they are.
pub trait Engine {
    /// A tensor held by the engine.
    type Value;
    /// Element type of the cache (the graph's past inputs).
    fn cache_type(&self) -> ElemType;
    /// An empty cache tensor of `shape` (its past axis is 0).
    fn empty(&self, shape: &[usize]) -> Result<Self::Value, RuntimeError>;
    /// Runs one step. `cache` holds each layer's key then value; returns the logits (f32,
    /// `[rows, positions, vocab]`) and the presents in the same order.
    fn step(
        &mut self,
        inputs: &TokenInputs<'_>,
        cache: &[Self::Value],
    ) -> Result<(AllLogits, Vec<Self::Value>), RuntimeError>;
    /// The cache whose row `i` is row `rows[i]` of `cache` (rows may repeat): beam reordering.
    fn select_rows(&mut self, cache: &[Self::Value], rows: &[usize]) -> Result<Vec<Self::Value>, RuntimeError>;
    /// Whether the graph computes last-position logits only.
    fn last_logits_only(&self) -> bool;
    /// Forgets any cache state the engine keeps itself.
    fn reset(&mut self) {}
}

/// `past_key_values.{i}.key/.value` and `present.{i}.key/.value` names, layer by layer, key first.
pub fn cache_names(n_layer: usize) -> (Vec<String>, Vec<String>) {
    let past = (0..n_layer).flat_map(|i| ["key", "value"].map(|kv| format!("past_key_values.{i}.{kv}"))).collect();
    let present = (0..n_layer).flat_map(|i| ["key", "value"].map(|kv| format!("present.{i}.{kv}"))).collect();
    (past, present)
}
