//! Decoding sessions: a graph plus the key/value cache it feeds itself.
//!
//! The generation driver talks to a [`DecoderSession`]: run new tokens for
//! every row of the batch, get each row's last-position logits, and select or
//! reorder cache rows (expanding a prompt into beams, following the beams
//! search keeps). [`KvSession`] implements it over any [`GraphRunner`], so ONNX
//! Runtime and tract share one cache discipline.

pub use crate::backend::engine::{AllLogits, CachePart, CacheShape, Engine, RowSource, TokenInputs, cache_names};
use crate::backend::{GraphRunner, RuntimeError};
use crate::tensor::{ElemType, HostTensor};

/// One forward step's inputs for `rows` rows of `seq` new tokens each.
pub struct StepInput<'a> {
    pub rows: usize,
    pub seq: usize,
    /// `rows × seq` token ids.
    pub input_ids: &'a [i64],
    /// `rows × (past + seq)`: 1 for real tokens, 0 for padding.
    pub attention_mask: &'a [i64],
    /// `rows × seq`.
    pub position_ids: &'a [i64],
}

/// Logits for the last position of each row.
#[derive(Clone, Debug)]
pub struct Logits {
    pub rows: usize,
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.vocab..(r + 1) * self.vocab]
    }
}

/// Each row's last-position logits of a step's.
pub fn last_positions(all: &AllLogits) -> Logits {
    let mut data = Vec::with_capacity(all.rows * all.vocab);
    if let Some(last) = all.positions.checked_sub(1) {
        for r in 0..all.rows {
            data.extend_from_slice(all.at(r, last));
        }
    }
    Logits { rows: all.rows, vocab: all.vocab, data }
}

/// A graph with its own key/value cache.
pub trait DecoderSession {
    /// Runs new tokens for every row and appends them to the cache; returns last-position logits.
    fn forward(&mut self, step: &StepInput<'_>) -> Result<Logits, RuntimeError>;
    /// As `forward`, returning the logits of every new position (scoring, perplexity).
    fn forward_all(&mut self, step: &StepInput<'_>) -> Result<AllLogits, RuntimeError>;
    /// Rebuilds the cache from existing rows: new row `i` is old row `rows[i]` (rows may repeat).
    fn select_rows(&mut self, rows: &[usize]) -> Result<(), RuntimeError>;
    /// [`select_rows`](DecoderSession::select_rows) for rows whose first `shared` cached
    /// positions equal those of the row that replaces them (beams of one prompt share the
    /// prompt's), so a session may copy only the later ones.
    fn reorder_rows(&mut self, rows: &[usize], shared: usize) -> Result<(), RuntimeError> {
        let _ = shared;
        self.select_rows(rows)
    }
    /// Cached positions per row.
    fn past_len(&self) -> usize;
    /// Drops the cache.
    fn reset(&mut self);
    /// Keeps the first `len` cached positions (speculative decoding drops the drafted tokens it
    /// rejected). Sessions that cannot say so.
    fn truncate(&mut self, len: usize) -> Result<(), RuntimeError> {
        Err(input_error("cache", format!("this session cannot drop cached positions (to {len})")))
    }
    /// Whether [`forward_all`](DecoderSession::forward_all) returns every new position's logits
    /// (sessions opened with `LogitsScope::All`).
    fn all_logits(&self) -> bool {
        false
    }
}

/// `inner`, with each forward pass's last-position logits shown to `on_forward` as it returns:
/// for recording what a model produced, or timing its steps.
pub struct Observed<'a> {
    pub inner: &'a mut dyn DecoderSession,
    pub on_forward: &'a mut dyn FnMut(&Logits),
}

impl DecoderSession for Observed<'_> {
    fn forward(&mut self, step: &StepInput<'_>) -> Result<Logits, RuntimeError> {
        let logits = self.inner.forward(step)?;
        (self.on_forward)(&logits);
        Ok(logits)
    }
    /// Also shown to `on_forward`, as the last position's logits.
    fn forward_all(&mut self, step: &StepInput<'_>) -> Result<AllLogits, RuntimeError> {
        let all = self.inner.forward_all(step)?;
        (self.on_forward)(&last_positions(&all));
        Ok(all)
    }
    fn select_rows(&mut self, rows: &[usize]) -> Result<(), RuntimeError> {
        self.inner.select_rows(rows)
    }
    fn reorder_rows(&mut self, rows: &[usize], shared: usize) -> Result<(), RuntimeError> {
        self.inner.reorder_rows(rows, shared)
    }
    fn past_len(&self) -> usize {
        self.inner.past_len()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn truncate(&mut self, len: usize) -> Result<(), RuntimeError> {
        self.inner.truncate(len)
    }
    fn all_logits(&self) -> bool {
        self.inner.all_logits()
    }
}

/// A [`DecoderSession`] over any [`Engine`]: the bookkeeping of rows and
/// past length, shared by every backend.
pub struct CachedSession<E: Engine> {
    engine: E,
    n_layer: usize,
    n_head: usize,
    head_dim: usize,
    /// Each layer's key then value; empty before the first step.
    cache: Vec<E::Value>,
    rows: usize,
    past: usize,
}

impl<E: Engine> CachedSession<E> {
    pub fn new(engine: E, shape: &CacheShape) -> Self {
        CachedSession {
            engine,
            n_layer: shape.n_layer,
            n_head: shape.n_head,
            head_dim: shape.head_dim,
            cache: Vec::new(),
            rows: 0,
            past: 0,
        }
    }

    fn run_step(&mut self, step: &StepInput<'_>) -> Result<AllLogits, RuntimeError> {
        let (rows, seq) = (step.rows, step.seq);
        if self.cache.is_empty() {
            let shape = [rows, self.n_head, 0, self.head_dim];
            self.cache = (0..2 * self.n_layer).map(|_| self.engine.empty(&shape)).collect::<Result<_, _>>()?;
            self.rows = rows;
            self.past = 0;
        }
        if rows != self.rows {
            return Err(input_error("input_ids", format!("{rows} rows but the cache holds {}", self.rows)));
        }
        let total = self.past + seq;
        let check = |name: &str, data: &[i64], len: usize| {
            if data.len() == len {
                Ok(())
            } else {
                Err(input_error(name, format!("{} values, expected {len}", data.len())))
            }
        };
        check("input_ids", step.input_ids, rows * seq)?;
        check("attention_mask", step.attention_mask, rows * total)?;
        check("position_ids", step.position_ids, rows * seq)?;
        let inputs = TokenInputs {
            rows,
            seq,
            total,
            input_ids: step.input_ids,
            attention_mask: step.attention_mask,
            position_ids: step.position_ids,
        };
        let (logits, presents) = self.engine.step(&inputs, &self.cache)?;
        let positions = if self.engine.last_logits_only() { 1 } else { seq };
        if logits.rows != rows || logits.positions != positions {
            return Err(input_error(
                "logits",
                format!("[{}, {}, vocab], expected [{rows}, {positions}, vocab]", logits.rows, logits.positions),
            ));
        }
        if presents.len() != 2 * self.n_layer {
            return Err(input_error(
                "present",
                format!("{} present tensors, expected {}", presents.len(), 2 * self.n_layer),
            ));
        }
        self.cache = presents;
        self.past = total;
        Ok(logits)
    }
}

fn input_error(name: &str, message: String) -> RuntimeError {
    RuntimeError::Input { name: name.into(), message }
}

impl<E: Engine> DecoderSession for CachedSession<E> {
    fn forward(&mut self, step: &StepInput<'_>) -> Result<Logits, RuntimeError> {
        Ok(last_positions(&self.run_step(step)?))
    }

    fn forward_all(&mut self, step: &StepInput<'_>) -> Result<AllLogits, RuntimeError> {
        if self.engine.last_logits_only() && step.seq > 1 {
            return Err(input_error(
                "logits",
                "this session computes last-position logits only (LogitsScope::Last)".into(),
            ));
        }
        self.run_step(step)
    }

    fn select_rows(&mut self, rows: &[usize]) -> Result<(), RuntimeError> {
        let identity = rows.len() == self.rows && rows.iter().enumerate().all(|(i, &r)| i == r);
        if self.cache.is_empty() || identity {
            return Ok(());
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(input_error("cache", format!("row {r} out of range ({} rows)", self.rows)));
        }
        self.cache = self.engine.select_rows(&self.cache, rows)?;
        self.rows = rows.len();
        Ok(())
    }

    fn reorder_rows(&mut self, rows: &[usize], shared: usize) -> Result<(), RuntimeError> {
        let identity = rows.len() == self.rows && rows.iter().enumerate().all(|(i, &r)| i == r);
        if self.cache.is_empty() || identity {
            return Ok(());
        }
        if rows.len() != self.rows {
            return self.select_rows(rows);
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(input_error("cache", format!("row {r} out of range ({} rows)", self.rows)));
        }
        self.cache = self.engine.reorder_rows(&self.cache, rows, shared.min(self.past))?;
        Ok(())
    }

    fn past_len(&self) -> usize {
        self.past
    }

    fn reset(&mut self) {
        self.cache.clear();
        self.rows = 0;
        self.past = 0;
        self.engine.reset();
    }

    fn truncate(&mut self, len: usize) -> Result<(), RuntimeError> {
        if len > self.past {
            return Err(input_error("cache", format!("cannot keep {len} positions: {} are cached", self.past)));
        }
        if len == self.past || self.cache.is_empty() {
            return Ok(());
        }
        let cache = std::mem::take(&mut self.cache);
        match self.engine.truncate(cache, self.rows, self.past, len) {
            Ok(cache) => {
                self.cache = cache;
                self.past = len;
                Ok(())
            }
            Err(e) => {
                // The cache went with the failed call: start over rather than run on a stale length.
                self.rows = 0;
                self.past = 0;
                Err(e)
            }
        }
    }

    fn all_logits(&self) -> bool {
        !self.engine.last_logits_only()
    }
}

/// The engine behind any [`GraphRunner`]: the cache as host tensors, copied in and out each step.
/// Backends with their own session type avoid those copies; this serves every other runner.
pub struct HostEngine {
    runner: Box<dyn GraphRunner>,
    past_names: Vec<String>,
    present_names: Vec<String>,
    cache_type: ElemType,
}

impl HostEngine {
    pub fn new(runner: Box<dyn GraphRunner>, shape: &CacheShape) -> Self {
        let (past_names, present_names) = cache_names(shape.n_layer);
        let cache_type = past_names.first().and_then(|k| runner.input_type(k)).unwrap_or(ElemType::F32);
        HostEngine { runner, past_names, present_names, cache_type }
    }
}

impl Engine for HostEngine {
    type Value = HostTensor;

    fn cache_type(&self) -> ElemType {
        self.cache_type
    }

    fn empty(&self, shape: &[usize]) -> Result<HostTensor, RuntimeError> {
        Ok(HostTensor::empty(shape.to_vec(), self.cache_type))
    }

    fn step(
        &mut self,
        t: &TokenInputs<'_>,
        cache: &[HostTensor],
    ) -> Result<(AllLogits, Vec<HostTensor>), RuntimeError> {
        let tensor = |name: &str, shape: Vec<usize>, data: &[i64]| {
            HostTensor::i64(shape, data.to_vec()).ok_or_else(|| input_error(name, "shape mismatch".into()))
        };
        let ids = tensor("input_ids", vec![t.rows, t.seq], t.input_ids)?;
        let mask = tensor("attention_mask", vec![t.rows, t.total], t.attention_mask)?;
        let positions = tensor("position_ids", vec![t.rows, t.seq], t.position_ids)?;
        let mut inputs: Vec<(&str, &HostTensor)> =
            vec![("input_ids", &ids), ("attention_mask", &mask), ("position_ids", &positions)];
        inputs.extend(self.past_names.iter().map(String::as_str).zip(cache));
        let mut outputs = self.runner.run(&inputs)?;
        let mut take = |name: &str| {
            outputs
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| outputs.swap_remove(i).1)
                .ok_or_else(|| input_error(name, "missing from the model's outputs".into()))
        };
        let logits = take("logits")?;
        let presents = self.present_names.iter().map(|n| take(n)).collect::<Result<Vec<_>, _>>()?;
        Ok((host_logits(&logits)?, presents))
    }

    fn select_rows(&mut self, cache: &[HostTensor], rows: &[usize]) -> Result<Vec<HostTensor>, RuntimeError> {
        cache
            .iter()
            .map(|v| {
                v.gather_rows(rows).ok_or_else(|| input_error("cache", format!("a row in {rows:?} is out of range")))
            })
            .collect()
    }

    fn assemble(
        &mut self,
        parts: Vec<CachePart<HostTensor>>,
        sources: &[RowSource],
        width: usize,
    ) -> Result<Vec<HostTensor>, RuntimeError> {
        crate::backend::assemble::assemble_parts(&parts, sources, width, |t| Ok(std::borrow::Cow::Borrowed(t)))
    }

    fn copy_out(&mut self, cache: &[HostTensor], _rows: usize, _width: usize) -> Result<Vec<HostTensor>, RuntimeError> {
        Ok(cache.to_vec())
    }

    fn copy_in(&mut self, tensors: &[HostTensor]) -> Result<Vec<HostTensor>, RuntimeError> {
        Ok(tensors.to_vec())
    }

    fn last_logits_only(&self) -> bool {
        self.runner.last_logits_only()
    }
}

/// A host logits tensor `[rows, positions, vocab]` as f32 [`AllLogits`].
pub fn host_logits(t: &HostTensor) -> Result<AllLogits, RuntimeError> {
    let [rows, positions, vocab] = t.shape[..] else {
        return Err(input_error("logits", format!("expected rank 3, got shape {:?}", t.shape)));
    };
    let data = t.to_f32().ok_or_else(|| input_error("logits", "expected float logits".into()))?.into_owned();
    Ok(AllLogits { rows, positions, vocab, data })
}

/// The generic session over a [`GraphRunner`].
pub type KvSession = CachedSession<HostEngine>;

impl KvSession {
    /// A session over `runner` with host-side cache copies.
    pub fn over(runner: Box<dyn GraphRunner>, shape: &CacheShape) -> KvSession {
        CachedSession::new(HostEngine::new(runner, shape), shape)
    }
}
