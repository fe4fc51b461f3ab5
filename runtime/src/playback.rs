//! A stand-in [`DecoderSession`] for tests, benchmarks and fuzzing: it runs
//! no model and plays back logits it was given, so the generation driver can
//! be driven with any scores a broken export could produce (NaN, ±inf, ties,
//! rows all equal) without loading anything.

use crate::backend::RuntimeError;
use crate::session::{AllLogits, DecoderSession, Logits, StepInput};

/// Plays back `values` cyclically: each forward pass returns, for every row, the next `vocab`
/// values (wrapping around), and keeps row and position bookkeeping as a real session does.
#[derive(Clone, Debug)]
pub struct PlaybackSession {
    vocab: usize,
    values: Vec<f32>,
    cursor: usize,
    rows: usize,
    past: usize,
    /// Forward passes run since the last reset.
    pub steps: usize,
}

impl PlaybackSession {
    /// A session over a vocabulary of `vocab` tokens (at least 1) whose logits cycle through
    /// `values` (an empty list plays zeros).
    pub fn new(vocab: usize, values: Vec<f32>) -> PlaybackSession {
        let values = if values.is_empty() { vec![0.0] } else { values };
        PlaybackSession { vocab: vocab.max(1), values, cursor: 0, rows: 0, past: 0, steps: 0 }
    }

    fn next_rows(&mut self, rows: usize, positions: usize) -> Vec<f32> {
        let n = rows * positions * self.vocab;
        let mut data = Vec::with_capacity(n);
        while data.len() < n {
            let take = (n - data.len()).min(self.values.len() - self.cursor);
            data.extend_from_slice(&self.values[self.cursor..self.cursor + take]);
            self.cursor = (self.cursor + take) % self.values.len();
        }
        data
    }

    fn advance(&mut self, step: &StepInput<'_>) -> Result<(), RuntimeError> {
        if self.past > 0 && step.rows != self.rows {
            return Err(RuntimeError::Input {
                name: "input_ids".into(),
                message: format!("{} rows but the cache holds {}", step.rows, self.rows),
            });
        }
        if step.input_ids.len() != step.rows * step.seq
            || step.position_ids.len() != step.rows * step.seq
            || step.attention_mask.len() != step.rows * (self.past + step.seq)
        {
            return Err(RuntimeError::Input { name: "input_ids".into(), message: "inconsistent step inputs".into() });
        }
        self.rows = step.rows;
        self.past += step.seq;
        self.steps += 1;
        Ok(())
    }
}

impl DecoderSession for PlaybackSession {
    fn forward(&mut self, step: &StepInput<'_>) -> Result<Logits, RuntimeError> {
        self.advance(step)?;
        Ok(Logits { rows: step.rows, vocab: self.vocab, data: self.next_rows(step.rows, 1) })
    }

    fn forward_all(&mut self, step: &StepInput<'_>) -> Result<AllLogits, RuntimeError> {
        self.advance(step)?;
        let data = self.next_rows(step.rows, step.seq);
        Ok(AllLogits { rows: step.rows, positions: step.seq, vocab: self.vocab, data })
    }

    fn select_rows(&mut self, rows: &[usize]) -> Result<(), RuntimeError> {
        if let Some(&r) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(RuntimeError::Input {
                name: "cache".into(),
                message: format!("row {r} out of range ({} rows)", self.rows),
            });
        }
        self.rows = rows.len();
        Ok(())
    }

    fn past_len(&self) -> usize {
        self.past
    }

    fn reset(&mut self) {
        self.rows = 0;
        self.past = 0;
        self.steps = 0;
    }
}

/// How one case of [`generation_invariant`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The settings were not a JSON object: nothing to check.
    NotSettings,
    /// Refused before or during generation, naming the field (`prompt`, a setting) or `export`
    /// (non-finite logits).
    Refused(String),
    /// Generated this many sequences.
    Generated(usize),
}

/// The driver's contract on any input, for the fuzz target `generate_settings` and the property
/// test: the settings in `settings` (generation_config.json form) over a model of `vocab` tokens
/// and `n_positions` positions whose logits cycle through `values` either are refused with an
/// error that names a field, or generate within their length bound: every sequence inside the
/// context, at most `max_new_tokens` new tokens when given, every token inside the vocabulary,
/// between 1 and `num_return_sequences` sequences per prompt, at most one forward pass per
/// position, and a finite score for every beam hypothesis. `Err` describes a violation.
pub fn generation_invariant(
    settings: &str,
    vocab: usize,
    n_positions: usize,
    prompts: &[Vec<u32>],
    values: Vec<f32>,
) -> Result<Outcome, String> {
    use crate::generate::{GenerateError, GenerationConfig, ModelLimits, generate};
    let Ok(serde_json::Value::Object(overrides)) = serde_json::from_str::<serde_json::Value>(settings) else {
        return Ok(Outcome::NotSettings);
    };
    let refused = |e: GenerateError| match (e.param(), &e) {
        (Some(field), _) => Ok(Outcome::Refused(field.to_string())),
        (None, GenerateError::InvalidLogits { .. }) => Ok(Outcome::Refused("export".into())),
        (None, _) => Err(format!("an error that names no field: {e}")),
    };
    let config = match GenerationConfig::from_json(&serde_json::Map::new(), &overrides) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    // A gpt2-small-sized cache (12 layers × key and value × 768 × f32 × 2 buffer sets) per
    // position, so the memory limit is reached at the row counts real models reach it.
    let limits =
        ModelLimits { vocab_size: vocab, n_positions, cache_bytes_per_position: 12 * 2 * 768 * 4 * 2, n_head: 12 };
    let mut session = PlaybackSession::new(vocab, values);
    let out = match generate(&mut session, limits, prompts, &config, None, &mut |_, _| {}) {
        Ok(out) => out,
        Err(e) => return refused(e),
    };
    let prompt_len = out.prompt_len;
    if out.sequences.len() != out.results.len() {
        return Err(format!("{} sequences but {} results", out.sequences.len(), out.results.len()));
    }
    let max_new = config.max_new_tokens.unwrap_or(usize::MAX);
    for (s, r) in out.sequences.iter().zip(&out.results) {
        if s.len() > n_positions || s.len() < prompt_len {
            return Err(format!("a sequence of {} tokens (prompt {prompt_len}, context {n_positions})", s.len()));
        }
        if r.tokens.len() > max_new || r.tokens.len() > n_positions.saturating_sub(prompt_len) {
            return Err(format!("{} new tokens (max_new_tokens {max_new})", r.tokens.len()));
        }
        if s.iter().chain(&r.tokens).any(|&t| t as usize >= vocab) {
            return Err("a token outside the vocabulary".into());
        }
        if r.score.is_some_and(|x| !x.is_finite()) {
            return Err(format!("a returned hypothesis with score {:?}", r.score));
        }
    }
    let per_prompt = if config.num_beams > 1 {
        config.num_return_sequences.min(config.num_beams)
    } else {
        config.num_return_sequences
    };
    for p in 0..prompts.len() {
        let n = out.results.iter().filter(|r| r.prompt == p).count();
        if n == 0 || n > per_prompt {
            return Err(format!("prompt {p} returned {n} sequences (asked for {per_prompt})"));
        }
    }
    if session.steps > n_positions.saturating_sub(prompt_len) + 1 {
        return Err(format!("{} forward passes for {} free positions", session.steps, n_positions - prompt_len));
    }
    Ok(Outcome::Generated(out.results.len()))
}
