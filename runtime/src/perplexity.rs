//! Sliding-window perplexity, computed as transformers' documentation
//! ("Perplexity of fixed-length models") computes it.
//!
//! Windows of `max_length` tokens start every `stride` tokens; each window is
//! scored from an empty cache, and only its last `end - previous_end` tokens
//! count (the earlier ones are context), so every token after the first is
//! predicted exactly once, with up to `max_length - stride` tokens of context.
//! Perplexity is `exp(total negative log-likelihood / predicted tokens)`.

use crate::backend::RuntimeError;
use crate::session::{DecoderSession, StepInput};

/// Result of a perplexity run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Mean negative log-likelihood per predicted token (nats).
    pub mean_nll: f64,
    /// Tokens predicted (and counted).
    pub predicted: usize,
    pub windows: usize,
    pub max_length: usize,
    pub stride: usize,
}

/// Errors in perplexity settings.
#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error("the text has {0} tokens; perplexity needs at least 2")]
    TooShort(usize),
    #[error("--max-length must be between 2 and the model's context ({0})")]
    MaxLength(usize),
    #[error("--stride must be between 1 and --max-length ({0})")]
    Stride(usize),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// `-log softmax(logits)[target]`, in f64.
fn nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    lse - logits.get(target).copied().unwrap_or(f32::NEG_INFINITY) as f64
}

/// Perplexity of `ids` under the session's model. `progress(done, total)` reports windows.
pub fn perplexity(
    session: &mut dyn DecoderSession,
    ids: &[u32],
    max_length: usize,
    stride: usize,
    n_positions: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity, PerplexityError> {
    if ids.len() < 2 {
        return Err(PerplexityError::TooShort(ids.len()));
    }
    if !(2..=n_positions).contains(&max_length) {
        return Err(PerplexityError::MaxLength(n_positions));
    }
    if !(1..=max_length).contains(&stride) {
        return Err(PerplexityError::Stride(max_length));
    }
    let total_windows = ids.len().saturating_sub(max_length).div_ceil(stride) + 1;
    let (mut total, mut predicted, mut windows, mut prev_end) = (0f64, 0usize, 0usize, 0usize);
    let mut begin = 0;
    while begin < ids.len() {
        let end = (begin + max_length).min(ids.len());
        let window = &ids[begin..end];
        let len = window.len();
        let counted = end - prev_end;
        session.reset();
        let input: Vec<i64> = window.iter().map(|&t| i64::from(t)).collect();
        let mask = vec![1i64; len];
        let positions: Vec<i64> = (0..len as i64).collect();
        let logits = session.forward_all(&StepInput {
            rows: 1,
            seq: len,
            input_ids: &input,
            attention_mask: &mask,
            position_ids: &positions,
        })?;
        // Position j predicts token j + 1; only the last `counted` tokens are scored.
        for j in 0..len - 1 {
            if j + 1 >= len - counted.min(len) {
                total += nll(logits.at(0, j), window[j + 1] as usize);
                predicted += 1;
            }
        }
        windows += 1;
        progress(windows, total_windows);
        prev_end = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    session.reset();
    let mean_nll = total / predicted.max(1) as f64;
    Ok(Perplexity { perplexity: mean_nll.exp(), mean_nll, predicted, windows, max_length, stride })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_of_a_uniform_row_is_log_vocab() {
        let logits = [0.0f32; 8];
        assert!((nll(&logits, 3) - 8f64.ln()).abs() < 1e-12);
        assert!((nll(&[10.0, 0.0], 0) - (1.0 + (-10f64).exp()).ln()).abs() < 1e-12);
    }
}
