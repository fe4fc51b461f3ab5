//! Decoding sessions: a graph plus the key/value cache it feeds itself.
//!
//! The generation driver talks to a [`DecoderSession`]: run new tokens for
//! every row of the batch, get each row's last-position logits, and select or
//! reorder cache rows (expanding a prompt into beams, following the beams
//! search keeps). [`KvSession`] implements it over any [`GraphRunner`], so ONNX
//! Runtime and tract share one cache discipline.

use crate::backend::{GraphRunner, RuntimeError};
use crate::model::ModelConfig;
use crate::tensor::{HostData, HostTensor};

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

/// A graph with its own key/value cache.
pub trait DecoderSession {
    /// Runs new tokens for every row and appends them to the cache; returns last-position logits.
    fn forward(&mut self, step: &StepInput<'_>) -> Result<Logits, RuntimeError>;
    /// Rebuilds the cache from existing rows: new row `i` is old row `rows[i]` (rows may repeat).
    fn select_rows(&mut self, rows: &[usize]) -> Result<(), RuntimeError>;
    /// Cached positions per row.
    fn past_len(&self) -> usize;
    /// Drops the cache.
    fn reset(&mut self);
}

/// A cache of host tensors around a [`GraphRunner`].
pub struct KvSession {
    runner: Box<dyn GraphRunner>,
    n_layer: usize,
    n_head: usize,
    head_dim: usize,
    /// `past_key_values.{i}.key/.value` names, in layer order.
    names: Vec<(String, String)>,
    /// Per layer (key, value), each `[rows, n_head, past, head_dim]`; empty before the first step.
    cache: Vec<(HostTensor, HostTensor)>,
    rows: usize,
    past: usize,
}

impl KvSession {
    pub fn new(runner: Box<dyn GraphRunner>, config: &ModelConfig) -> KvSession {
        let names = (0..config.n_layer)
            .map(|i| (format!("past_key_values.{i}.key"), format!("past_key_values.{i}.value")))
            .collect();
        KvSession {
            runner,
            n_layer: config.n_layer,
            n_head: config.n_head,
            head_dim: config.head_dim(),
            names,
            cache: Vec::new(),
            rows: 0,
            past: 0,
        }
    }

    fn empty_cache(&self, rows: usize) -> Vec<(HostTensor, HostTensor)> {
        let empty = HostTensor { shape: vec![rows, self.n_head, 0, self.head_dim], data: HostData::F32(Vec::new()) };
        (0..self.n_layer).map(|_| (empty.clone(), empty.clone())).collect()
    }
}

fn input_error(name: &str, message: String) -> RuntimeError {
    RuntimeError::Input { name: name.into(), message }
}

/// Gathers rows of a `[rows, ...]` tensor.
fn gather_rows(t: &HostTensor, rows: &[usize]) -> Result<HostTensor, RuntimeError> {
    let data = t.as_f32().ok_or_else(|| input_error("cache", "expected float cache".into()))?;
    let old_rows = t.shape.first().copied().unwrap_or(0);
    let per_row = data.len().checked_div(old_rows).unwrap_or(0);
    let mut out = Vec::with_capacity(per_row * rows.len());
    for &r in rows {
        if r >= old_rows {
            return Err(input_error("cache", format!("row {r} out of range ({old_rows} rows)")));
        }
        out.extend_from_slice(&data[r * per_row..(r + 1) * per_row]);
    }
    let mut shape = t.shape.clone();
    shape[0] = rows.len();
    Ok(HostTensor { shape, data: HostData::F32(out) })
}

impl DecoderSession for KvSession {
    fn forward(&mut self, step: &StepInput<'_>) -> Result<Logits, RuntimeError> {
        let (rows, seq) = (step.rows, step.seq);
        if self.cache.is_empty() {
            self.cache = self.empty_cache(rows);
            self.rows = rows;
            self.past = 0;
        }
        if rows != self.rows {
            return Err(input_error("input_ids", format!("{rows} rows but the cache holds {}", self.rows)));
        }
        let total = self.past + seq;
        let tensor = |name: &str, shape: Vec<usize>, data: &[i64]| {
            HostTensor::i64(shape.clone(), data.to_vec())
                .ok_or_else(|| input_error(name, format!("{} values do not fill shape {shape:?}", data.len())))
        };
        let ids = tensor("input_ids", vec![rows, seq], step.input_ids)?;
        let mask = tensor("attention_mask", vec![rows, total], step.attention_mask)?;
        let positions = tensor("position_ids", vec![rows, seq], step.position_ids)?;
        let mut inputs: Vec<(&str, &HostTensor)> =
            vec![("input_ids", &ids), ("attention_mask", &mask), ("position_ids", &positions)];
        for ((k_name, v_name), (k, v)) in self.names.iter().zip(&self.cache) {
            inputs.push((k_name, k));
            inputs.push((v_name, v));
        }
        let outputs = self.runner.run(&inputs)?;
        let mut logits = None;
        let mut presents: Vec<Option<HostTensor>> = vec![None; 2 * self.n_layer];
        for (name, value) in outputs {
            if name == "logits" {
                logits = Some(value);
            } else if let Some(rest) = name.strip_prefix("present.") {
                let (layer, kind) = rest.split_once('.').unwrap_or((rest, ""));
                let slot = layer
                    .parse::<usize>()
                    .ok()
                    .filter(|&l| l < self.n_layer)
                    .map(|l| 2 * l + (kind == "value") as usize);
                if let Some(slot) = slot {
                    presents[slot] = Some(value);
                }
            }
        }
        let logits = logits.ok_or_else(|| input_error("logits", "the model has no `logits` output".into()))?;
        let vocab = *logits.shape.last().unwrap_or(&0);
        let data = logits.as_f32().ok_or_else(|| input_error("logits", "expected float logits".into()))?;
        if logits.shape != [rows, seq, vocab] {
            return Err(input_error("logits", format!("shape {:?}, expected [{rows}, {seq}, vocab]", logits.shape)));
        }
        let mut last = Vec::with_capacity(rows * vocab);
        for r in 0..rows {
            let start = (r * seq + seq - 1) * vocab;
            last.extend_from_slice(&data[start..start + vocab]);
        }
        let mut cache = Vec::with_capacity(self.n_layer);
        for layer in 0..self.n_layer {
            let k = presents[2 * layer].take();
            let v = presents[2 * layer + 1].take();
            match (k, v) {
                (Some(k), Some(v)) => cache.push((k, v)),
                _ => return Err(input_error("present", format!("layer {layer}'s present key/value missing"))),
            }
        }
        self.cache = cache;
        self.past = total;
        Ok(Logits { rows, vocab, data: last })
    }

    fn select_rows(&mut self, rows: &[usize]) -> Result<(), RuntimeError> {
        if self.cache.is_empty() {
            return Ok(());
        }
        let identity = rows.len() == self.rows && rows.iter().enumerate().all(|(i, &r)| i == r);
        if !identity {
            self.cache = self
                .cache
                .iter()
                .map(|(k, v)| Ok((gather_rows(k, rows)?, gather_rows(v, rows)?)))
                .collect::<Result<_, RuntimeError>>()?;
            self.rows = rows.len();
        }
        Ok(())
    }

    fn past_len(&self) -> usize {
        self.past
    }

    fn reset(&mut self) {
        self.cache.clear();
        self.rows = 0;
        self.past = 0;
    }
}
