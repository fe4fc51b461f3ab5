//! What a decoding session needs from an engine: run one step with the key/value cache as the
//! engine's own values, and gather cache rows. Engines (ONNX Runtime's bound buffers, tract's
//! state, host tensors over any runner) implement it; sessions (`crate::session`) keep the
//! bookkeeping of rows and positions over it.

use super::RuntimeError;
use crate::tensor::{ElemType, HostTensor};

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

/// Where row `i` of an assembled cache comes from: row `row` of part `part`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowSource {
    pub part: usize,
    pub row: usize,
}

/// How the rows of one cache line up when their lengths differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Alignment {
    /// Every row ends at the cache's last position; shorter rows are left-padded with positions
    /// their attention mask hides. Any graph works this way: rows that join or leave a batch
    /// rebuild the cache.
    #[default]
    Right,
    /// Every row starts at position 0 and keeps its own length, which the graph reads from the
    /// row's attention mask (its last set position): the new positions of a step land at each
    /// row's own end. Exports with `--kv-cache shared`: rows join and leave a batch without
    /// moving the others.
    Left,
}

/// A cache handed to [`Engine::assemble`]: its tensors, and how many rows and past positions they hold.
pub struct CachePart<V> {
    pub cache: Vec<V>,
    pub rows: usize,
    pub width: usize,
}

/// What a decoding session needs from an engine: run a step with the
/// key/value cache as the engine's own values, and gather cache rows. The
/// cache never leaves the engine: each step's presents are the next step's
/// pasts as they are.
///
/// A cache passed to `step`, `select_rows` or `assemble` is consumed: engines that pool their
/// buffers reuse its memory for the result. An engine may hold several caches at once (a
/// batch and the prefills that will join it); one no longer needed goes back through `release`.
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
    /// [`select_rows`](Engine::select_rows) keeping the row count, where each row's first
    /// `shared` positions already equal those of the row that replaces it (beams of one prompt
    /// share the prompt's): an engine may copy only the later positions, in place.
    fn reorder_rows(
        &mut self,
        cache: &[Self::Value],
        rows: &[usize],
        shared: usize,
    ) -> Result<Vec<Self::Value>, RuntimeError> {
        let _ = shared;
        self.select_rows(cache, rows)
    }
    /// A cache of `sources.len()` rows and `width` past positions made of rows of `parts` (rows
    /// may repeat), aligned as [`alignment`](Engine::alignment) says: right-aligned, a row's last
    /// `min(width, part.width)` positions at the end and zeros before them, which the caller's
    /// attention mask hides; left-aligned, its first `min(width, part.width)` positions at the
    /// start. Joining rows of different lengths into one batch, dropping finished rows, trimming
    /// padding every row shares.
    fn assemble(
        &mut self,
        parts: Vec<CachePart<Self::Value>>,
        sources: &[RowSource],
        width: usize,
    ) -> Result<Vec<Self::Value>, RuntimeError>;
    /// A copy of `cache` (`rows` rows, `width` positions) as host tensors, each
    /// `[rows, heads, width, head_dim]`, layer by layer, key first; the cache stays.
    fn copy_out(&mut self, cache: &[Self::Value], rows: usize, width: usize) -> Result<Vec<HostTensor>, RuntimeError>;
    /// A cache made from host tensors shaped as [`copy_out`](Engine::copy_out) returns them.
    fn copy_in(&mut self, tensors: &[HostTensor]) -> Result<Vec<Self::Value>, RuntimeError>;
    /// Gives back a cache the caller no longer needs.
    fn release(&mut self, _cache: Vec<Self::Value>) {}
    /// `cache` (`rows` rows, `width` positions, every row using all of them) cut to its first
    /// `keep` positions: drafted tokens a speculative step rejected. Through host memory here;
    /// an engine may do it in place.
    fn truncate(
        &mut self,
        cache: Vec<Self::Value>,
        rows: usize,
        width: usize,
        keep: usize,
    ) -> Result<Vec<Self::Value>, RuntimeError> {
        let host = self.copy_out(&cache, rows, width)?;
        self.release(cache);
        let cut = host.iter().map(|t| t.first_positions(keep)).collect::<Option<Vec<_>>>().ok_or_else(|| {
            RuntimeError::Input {
                name: "cache".into(),
                message: format!("cannot keep {keep} of {width} cached positions"),
            }
        })?;
        self.copy_in(&cut)
    }
    /// Whether the graph computes last-position logits only.
    fn last_logits_only(&self) -> bool;
    /// How rows of different lengths share a cache.
    fn alignment(&self) -> Alignment {
        Alignment::Right
    }
    /// Forgets any cache state the engine keeps itself.
    fn reset(&mut self) {}
}

/// `past_key_values.{i}.key/.value` and `present.{i}.key/.value` names, layer by layer, key first.
pub fn cache_names(n_layer: usize) -> (Vec<String>, Vec<String>) {
    let past = (0..n_layer).flat_map(|i| ["key", "value"].map(|kv| format!("past_key_values.{i}.{kv}"))).collect();
    let present = (0..n_layer).flat_map(|i| ["key", "value"].map(|kv| format!("present.{i}.{kv}"))).collect();
    (past, present)
}
