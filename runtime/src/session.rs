//! Decoding sessions: a graph plus the key/value cache it feeds itself.
//!
//! The generation driver talks to a [`DecoderSession`]: run new tokens for
//! every row of the batch, get each row's last-position logits, and select or
//! reorder cache rows (expanding a prompt into beams, following the beams
//! search keeps). [`KvSession`] implements it over any [`GraphRunner`], so ONNX
//! Runtime and tract share one cache discipline.

use crate::backend::{GraphRunner, RuntimeError};
use crate::model::ModelConfig;
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

/// A graph with its own key/value cache.
pub trait DecoderSession {
    /// Runs new tokens for every row and appends them to the cache; returns last-position logits.
    fn forward(&mut self, step: &StepInput<'_>) -> Result<Logits, RuntimeError>;
    /// As `forward`, returning the logits of every new position (scoring, perplexity).
    fn forward_all(&mut self, step: &StepInput<'_>) -> Result<AllLogits, RuntimeError>;
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
    /// Element type of the cache (the graph's past inputs).
    cache_type: ElemType,
    rows: usize,
    past: usize,
}

impl KvSession {
    pub fn new(runner: Box<dyn GraphRunner>, config: &ModelConfig) -> KvSession {
        let names: Vec<(String, String)> = (0..config.n_layer)
            .map(|i| (format!("past_key_values.{i}.key"), format!("past_key_values.{i}.value")))
            .collect();
        let cache_type = names.first().and_then(|(k, _)| runner.input_type(k)).unwrap_or(ElemType::F32);
        KvSession {
            cache_type,
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
        let empty = HostTensor::empty(vec![rows, self.n_head, 0, self.head_dim], self.cache_type);
        (0..self.n_layer).map(|_| (empty.clone(), empty.clone())).collect()
    }

    /// Runs a step; returns the raw logits `[rows, seq, vocab]` as f32.
    fn run_step(&mut self, step: &StepInput<'_>) -> Result<AllLogits, RuntimeError> {
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
        let positions = if self.runner.last_logits_only() { 1 } else { seq };
        if logits.shape != [rows, positions, vocab] {
            return Err(input_error(
                "logits",
                format!("shape {:?}, expected [{rows}, {positions}, vocab]", logits.shape),
            ));
        }
        let data = logits.to_f32().ok_or_else(|| input_error("logits", "expected float logits".into()))?.into_owned();
        let mut cache = Vec::with_capacity(self.n_layer);
        for layer in 0..self.n_layer {
            match (presents[2 * layer].take(), presents[2 * layer + 1].take()) {
                (Some(k), Some(v)) => cache.push((k, v)),
                _ => return Err(input_error("present", format!("layer {layer}'s present key/value missing"))),
            }
        }
        self.cache = cache;
        self.past = total;
        Ok(AllLogits { rows, positions, vocab, data })
    }
}

fn input_error(name: &str, message: String) -> RuntimeError {
    RuntimeError::Input { name: name.into(), message }
}

/// Gathers rows of a `[rows, ...]` cache tensor.
fn gather_rows(t: &HostTensor, rows: &[usize]) -> Result<HostTensor, RuntimeError> {
    t.gather_rows(rows).ok_or_else(|| input_error("cache", format!("a row in {rows:?} is out of range")))
}

impl DecoderSession for KvSession {
    fn forward(&mut self, step: &StepInput<'_>) -> Result<Logits, RuntimeError> {
        let all = self.run_step(step)?;
        let mut last = Vec::with_capacity(all.rows * all.vocab);
        for r in 0..all.rows {
            last.extend_from_slice(all.at(r, all.positions - 1));
        }
        Ok(Logits { rows: all.rows, vocab: all.vocab, data: last })
    }

    fn forward_all(&mut self, step: &StepInput<'_>) -> Result<AllLogits, RuntimeError> {
        if self.runner.last_logits_only() && step.seq > 1 {
            return Err(input_error(
                "logits",
                "this session computes last-position logits only (LogitsScope::Last)".into(),
            ));
        }
        self.run_step(step)
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
