//! Numeric verification: the export, run on a backend, against the eager reference forward for a
//! random prompt, a left-padded batch and (with a cache) a decode step fed the batch's cache.
//!
//! Errors are measured where transformers defines the result: positions whose token is real
//! (padding computes nothing anyone reads). `max_rel_error` is the largest absolute error divided
//! by the reference output's largest magnitude, which stays meaningful where values cross zero.

use gpt2c_runtime::HostTensor;
use serde::Serialize;

use gpt2c_compiler::checkpoint::Gpt2Config;
use gpt2c_compiler::gpt2::Task;

/// Allowed error: an output passes when `max_abs_error <= abs + rel * max|reference|`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    pub abs: f32,
    pub rel: f32,
}

impl Tolerance {
    /// The default for an export's formats (its `gpt2c.quantize` and `gpt2c.dtype` metadata):
    /// fp32 tight; fp16 at half precision's resolution; quantized modes relative to the output's
    /// range, as their error scales with the weights.
    pub fn for_formats(dtype: &str, quantize: &str) -> Tolerance {
        match (quantize, dtype) {
            ("int4", _) => Tolerance { abs: 1e-2, rel: 0.5 },
            ("int8" | "int8-weights", _) => Tolerance { abs: 1e-2, rel: 0.15 },
            (_, "fp16" | "bf16") => Tolerance { abs: 1e-3, rel: 2e-2 },
            _ => Tolerance { abs: 1e-4, rel: 1e-4 },
        }
    }

    pub fn allows(&self, max_abs: f32, scale: f32) -> bool {
        max_abs <= self.abs + self.rel * scale
    }
}

/// One set of inputs and what part of each output is defined.
pub struct Case {
    pub name: &'static str,
    pub inputs: Vec<(String, HostTensor)>,
    /// Token validity per row and total position (`past + sequence`); rows are `batch` or
    /// `batch × choices`.
    mask: Vec<i64>,
    rows: usize,
    total: usize,
    past: usize,
    /// `mc_logits` is [batch, sequence]: transformers' `last`/`first`/`mean` summaries act on the
    /// choices axis of the 4-D hidden state, so each position mixes every choice's token there.
    mc_per_position: bool,
    /// `logits` holds each row's last position only (a search operator's decoder).
    pub logits_last_only: bool,
}

/// Comparison of one output.
#[derive(Clone, Debug, Serialize)]
pub struct OutputError {
    pub output: String,
    pub max_abs_error: f32,
    pub max_rel_error: f32,
    pub passed: bool,
    /// Why it failed, when it did (shape, NaN, missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The workspace's seeded generator: every run checks the same inputs for a seed.
pub use gpt2c_rng::Rng;

/// A token id in `0..n`.
fn below(rng: &mut Rng, n: usize) -> usize {
    rng.below(n.max(1) as u64) as usize
}

fn tensor_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<HostTensor, String> {
    let what = format!("{} int64 values for shape {shape:?}", data.len());
    HostTensor::i64(shape, data).ok_or_else(|| format!("verify built a bad input: {what}"))
}

fn tensor_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<HostTensor, String> {
    let what = format!("{} float values for shape {shape:?}", data.len());
    HostTensor::f32(shape, data).ok_or_else(|| format!("verify built a bad input: {what}"))
}

/// Rows of token ids, left-padded to one width: (ids, mask), row-major.
fn left_pad(rows: &[Vec<i64>], width: usize, pad: i64) -> (Vec<i64>, Vec<i64>) {
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for row in rows {
        let n = row.len().min(width);
        ids.extend(std::iter::repeat_n(pad, width - n).chain(row[row.len() - n..].iter().copied()));
        mask.extend(std::iter::repeat_n(0, width - n).chain(std::iter::repeat_n(1, n)));
    }
    (ids, mask)
}

/// Positions as transformers' generate() numbers a padded batch: `cumsum(mask) - 1`, 1 at pads.
fn positions(mask: &[i64], rows: usize, total: usize, seq: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(rows * seq);
    for r in 0..rows {
        let mut count = 0;
        let row = &mask[r * total..(r + 1) * total];
        for (t, &m) in row.iter().enumerate() {
            count += m;
            if t >= total - seq {
                out.push(if m == 0 { 1 } else { count - 1 });
            }
        }
    }
    out
}

/// The cases for `task`: a prompt, a left-padded batch and, with a cache, a decode step after it
/// (its past inputs are filled from the batch's reference presents by [`decode_case`]).
pub fn cases(c: &Gpt2Config, task: Task, rng: &mut Rng) -> Result<Vec<Case>, String> {
    let vocab = c.vocab_size.max(1);
    let pad = c.pad_token_id.or(c.eos_token_ids.first().copied()).map_or(0, i64::from).clamp(0, vocab as i64 - 1);
    let len = 8.min(c.n_positions.max(2));
    let mut random_row = |n: usize| -> Vec<i64> {
        (0..n).map(|_| below(rng, vocab) as i64).map(|t| if t == pad { (t + 1) % vocab as i64 } else { t }).collect()
    };
    let mut out = Vec::new();
    let fixed_batch = task == Task::TextClassification && c.pad_token_id.is_none();
    let row_sets: Vec<(&'static str, Vec<Vec<i64>>)> = if task == Task::MultipleChoice {
        // [batch 2, choices 2]: one left-padded choice.
        vec![
            ("prompt", vec![random_row(len), random_row(len)]),
            ("padded_batch", {
                let short = len.saturating_sub(3).max(1);
                vec![random_row(len), random_row(len), random_row(len), random_row(short)]
            }),
        ]
    } else {
        let mut sets = vec![("prompt", vec![random_row(len)])];
        if !fixed_batch {
            let mid = len.saturating_sub(3).max(1);
            sets.push(("padded_batch", vec![random_row(len), random_row(mid), random_row(2.min(len))]));
        }
        sets
    };
    let enc_len = 4;
    for (name, rows) in row_sets {
        let (ids, mask) = left_pad(&rows, len, pad);
        let n = rows.len();
        let (lead, batch) = if task == Task::MultipleChoice { (vec![n / 2, 2], n / 2) } else { (vec![n], n) };
        let shape = [lead.clone(), vec![len]].concat();
        let mut inputs = vec![
            ("input_ids".to_string(), tensor_i64(shape.clone(), ids)?),
            ("attention_mask".to_string(), tensor_i64(shape.clone(), mask.clone())?),
        ];
        if task.takes_position_ids() {
            inputs.push(("position_ids".into(), tensor_i64(shape.clone(), positions(&mask, n, len, len))?));
        }
        if task.with_past() {
            for i in 0..c.n_layer {
                for kv in ["key", "value"] {
                    let empty = tensor_f32(vec![batch, c.n_head, 0, c.head_dim], Vec::new())?;
                    inputs.push((format!("past_key_values.{i}.{kv}"), empty));
                }
            }
        }
        if task == Task::MultipleChoice {
            // Each choice's last real token.
            inputs.push(("mc_token_ids".into(), tensor_i64(lead.clone(), vec![len as i64 - 1; n])?));
        }
        if task.cross_attends(c) {
            let mut normal = gpt2c_rng::Normal::new(rng.next_u64());
            let states = (0..batch * enc_len * c.n_embd).map(|_| normal.sample() as f32).collect();
            inputs.push(("encoder_hidden_states".into(), tensor_f32(vec![batch, enc_len, c.n_embd], states)?));
            let mut enc_mask = vec![1; batch * enc_len];
            enc_mask[0] = 0; // one masked encoder state
            inputs.push(("encoder_attention_mask".into(), tensor_i64(vec![batch, enc_len], enc_mask)?));
            if task.with_past() {
                for i in 0..c.n_layer {
                    for kv in ["key", "value"] {
                        let empty = tensor_f32(vec![batch, c.n_head, 0, c.head_dim], Vec::new())?;
                        inputs.push((format!("past_key_values.{i}.encoder.{kv}"), empty));
                    }
                }
            }
        }
        let mc_per_position = task == Task::MultipleChoice
            && c.summary.kind().is_ok_and(|k| k != gpt2c_compiler::checkpoint::SummaryType::ClsIndex);
        out.push(Case { name, inputs, mask, rows: n, total: len, past: 0, mc_per_position, logits_last_only: false });
    }
    Ok(out)
}

/// The decode step after `previous`: one new token per row, fed `previous`'s reference presents.
pub fn decode_case(
    c: &Gpt2Config,
    task: Task,
    previous: &Case,
    presents: &[(String, HostTensor)],
    rng: &mut Rng,
) -> Result<Case, String> {
    let rows = previous.rows;
    let total = previous.total + 1;
    let mut mask = Vec::with_capacity(rows * total);
    for r in 0..rows {
        mask.extend_from_slice(&previous.mask[r * previous.total..(r + 1) * previous.total]);
        mask.push(1);
    }
    let ids = (0..rows).map(|_| below(rng, c.vocab_size) as i64).collect();
    let mut inputs = vec![
        ("input_ids".to_string(), tensor_i64(vec![rows, 1], ids)?),
        ("attention_mask".to_string(), tensor_i64(vec![rows, total], mask.clone())?),
        ("position_ids".to_string(), tensor_i64(vec![rows, 1], positions(&mask, rows, total, 1))?),
    ];
    for (name, t) in presents {
        if let Some(rest) = name.strip_prefix("present.") {
            inputs.push((format!("past_key_values.{rest}"), t.clone()));
        }
    }
    if task.cross_attends(c) {
        // The cross-attention cache carries the encoder: no new states, the same mask.
        let enc_mask = previous.inputs.iter().find(|(n, _)| n == "encoder_attention_mask").map(|(_, t)| t.clone());
        inputs.push(("encoder_hidden_states".into(), tensor_f32(vec![rows, 0, c.n_embd], Vec::new())?));
        if let Some(m) = enc_mask {
            inputs.push(("encoder_attention_mask".into(), m));
        }
    }
    Ok(Case {
        name: "decode_step",
        inputs,
        mask,
        rows,
        total,
        past: previous.total,
        mc_per_position: false,
        logits_last_only: false,
    })
}

impl Case {
    /// Whether element `index` of output `name` is defined (computed from real tokens only).
    fn defined(&self, task: Task, name: &str, shape: &[usize], index: &[usize]) -> bool {
        let real = |row: usize, t: usize| self.mask.get(row * self.total + t).is_none_or(|&m| m == 1);
        if let Some(rest) = name.strip_prefix("present.") {
            // [batch, heads, past + seq, head_dim]; encoder caches hold given states only.
            return rest.contains("encoder") || real(index[0], index[2]);
        }
        if name == "mc_logits" && self.mc_per_position && index.len() >= 2 {
            // Defined where every choice of the row has a real token.
            let choices = self.rows / shape[0].max(1);
            return (0..choices).all(|k| real(index[0] * choices + k, self.past + index[1]));
        }
        if name == "logits" && self.logits_last_only && !index.is_empty() {
            return real(index[0], self.total - 1);
        }
        let pooled = matches!(task, Task::TextClassification) || name == "mc_logits";
        if pooled || index.len() < 2 {
            return true;
        }
        if task == Task::MultipleChoice && shape.len() == 4 {
            return real(index[0] * shape[1] + index[1], self.past + index[2]);
        }
        real(index[0], self.past + index[1])
    }
}

/// Compares `got` with `want` for every output `want` names.
pub fn compare(
    task: Task,
    case: &Case,
    got: &[(String, HostTensor)],
    want: &[(String, HostTensor)],
    tolerance: Tolerance,
) -> Vec<OutputError> {
    want.iter()
        .map(|(name, w)| {
            let fail = |problem: String| OutputError {
                output: name.clone(),
                max_abs_error: f32::INFINITY,
                max_rel_error: f32::INFINITY,
                passed: false,
                problem: Some(problem),
            };
            let Some((_, g)) = got.iter().find(|(n, _)| n == name) else {
                return fail("the export did not return it".into());
            };
            if g.shape != w.shape {
                return fail(format!("shape {:?}, expected {:?}", g.shape, w.shape));
            }
            let (Some(gv), Some(wv)) = (g.to_f32(), w.to_f32()) else {
                return fail("not a float tensor".into());
            };
            let (mut max_abs, mut scale, mut nan) = (0f32, 0f32, false);
            let mut index = vec![0usize; w.shape.len()];
            for (a, b) in gv.iter().zip(wv.iter()) {
                if case.defined(task, name, &w.shape, &index) {
                    let d = (a - b).abs();
                    nan |= d.is_nan();
                    max_abs = max_abs.max(d);
                    scale = scale.max(b.abs());
                }
                for axis in (0..index.len()).rev() {
                    index[axis] += 1;
                    if index[axis] < w.shape[axis] {
                        break;
                    }
                    index[axis] = 0;
                }
            }
            if nan {
                return fail("NaN where the reference is a number".into());
            }
            let rel = if scale > 0.0 { max_abs / scale } else { max_abs };
            OutputError {
                output: name.clone(),
                max_abs_error: max_abs,
                max_rel_error: rel,
                passed: tolerance.allows(max_abs, scale),
                problem: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_positions_follow_generate() {
        let (ids, mask) = left_pad(&[vec![5, 6, 7], vec![8]], 3, 0);
        assert_eq!(ids, [5, 6, 7, 0, 0, 8]);
        assert_eq!(mask, [1, 1, 1, 0, 0, 1]);
        assert_eq!(positions(&mask, 2, 3, 3), [0, 1, 2, 1, 1, 0]);
        assert_eq!(positions(&[1, 1, 1, 0, 1, 1], 2, 3, 1), [2, 1]);
    }

    #[test]
    fn tolerance_scales_with_the_output() {
        let t = Tolerance::for_formats("fp32", "int8");
        assert!(t.allows(1.0, 10.0) && !t.allows(2.0, 10.0));
        assert_eq!(Tolerance::for_formats("fp32", "int8-weights"), t);
        assert_eq!(Tolerance::for_formats("fp32", "none"), Tolerance { abs: 1e-4, rel: 1e-4 });
        assert_eq!(Tolerance::for_formats("fp16", "none"), Tolerance { abs: 1e-3, rel: 2e-2 });
        assert_eq!(Tolerance::for_formats("fp32", "int4").rel, 0.5);
    }
}
