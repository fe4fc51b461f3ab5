//! The generation driver, shared by every backend: transformers' `generate()`
//! semantics (4.57; group beam search as in 4.56) over a [`DecoderSession`].
//!
//! [`generate`] takes token-id prompts (a batch is left-padded), a
//! [`GenerationConfig`], and a callback that sees tokens as they are chosen
//! (greedy and sampling; beam methods report their sequences when done). It
//! returns `sequences` exactly as transformers returns them (padded prompt +
//! new tokens, padded to a common length) plus a per-sequence summary.

mod beam;
pub mod config;
mod group_beam;
mod math;
pub mod processors;
mod rows;
mod sample;
pub mod sampling;
pub mod stopping;

use std::time::{Duration, Instant};

pub use config::{EarlyStopping, GenerationConfig, Mode, StopStrings as StopStringsConfig, TokenIds};
pub use stopping::FinishReason;

use crate::backend::RuntimeError;
use crate::session::DecoderSession;
use crate::tokenizer::TextTokenizer;
use processors::{Pipeline, PipelineLimits};
use stopping::{StopStrings, Stopping};

/// Errors of a generate() call; all but `Runtime` are found before any compute.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("generation setting `{field}`: {message}")]
    Config { field: String, message: String },
    #[error("no prompt given")]
    NoPrompts,
    #[error("prompt {index} is empty: generation needs at least one token to condition on")]
    EmptyPrompt { index: usize },
    #[error(
        "prompt {index} has {len} tokens, more than the model's context of {limit} positions (n_positions); shorten it"
    )]
    PromptTooLong { index: usize, len: usize, limit: usize },
    #[error("prompt {index}: token id {token} is outside the vocabulary (size {vocab})")]
    BadToken { index: usize, token: u32, vocab: usize },
    #[error(
        "the prompt is {prompt_len} tokens but max_length is {max_length}: nothing can be generated; set max_new_tokens instead"
    )]
    NoRoom { prompt_len: usize, max_length: usize },
    #[error("a batch of prompts needs pad_token_id or eos_token_id to pad with")]
    NoPadToken,
    #[error("stop_strings need the model's tokenizer")]
    StopStringsNeedTokenizer,
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What generation needs to know about the model.
#[derive(Clone, Copy, Debug)]
pub struct ModelLimits {
    pub vocab_size: usize,
    pub n_positions: usize,
}

/// One returned sequence, summarised.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SequenceResult {
    /// Which prompt it continues.
    pub prompt: usize,
    /// New tokens (no prompt, no trailing padding; the EOS token included when generated).
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Beam methods: the hypothesis score (sum of log-probabilities / length^length_penalty).
    pub score: Option<f32>,
    /// Greedy and sampling: each new token's log-probability under the processed distribution.
    pub token_logprobs: Vec<f32>,
}

/// The result of a generate() call.
#[derive(Clone, Debug)]
pub struct GenerationOutput {
    /// As transformers returns them: padded prompt + new tokens, padded to one length.
    pub sequences: Vec<Vec<u32>>,
    /// Length of the (padded) prompt part of each sequence.
    pub prompt_len: usize,
    pub results: Vec<SequenceResult>,
    /// Things the caller should tell the user (e.g. the length was capped at the context).
    pub notices: Vec<String>,
    /// The sampler's seed (sampling modes).
    pub seed: Option<u64>,
}

/// Resolved lengths and tokens of one call.
pub(crate) struct Plan<'t> {
    pub config: GenerationConfig,
    pub mode: Mode,
    pub prompt_len: usize,
    pub max_length: usize,
    pub pad: u32,
    pub eos: Vec<u32>,
    pub pipeline: Pipeline,
    pub stopping: Stopping<'t>,
    pub seed: u64,
}

/// Generates continuations of `prompts` (token ids) with `session`.
///
/// `on_token(sequence, token)` is called for each token chosen for an
/// unfinished sequence in greedy and sampling modes (sequence = prompt index
/// × num_return_sequences + sample index).
pub fn generate(
    session: &mut dyn DecoderSession,
    limits: ModelLimits,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    tokenizer: Option<&TextTokenizer>,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<GenerationOutput, GenerateError> {
    let (plan, notices) = plan(limits, prompts, config, tokenizer)?;
    let mut out = match plan.mode {
        Mode::Greedy | Mode::Sample => sample::run(session, prompts, &plan, on_token)?,
        Mode::BeamSearch | Mode::BeamSample => beam::run(session, prompts, &plan)?,
        Mode::GroupBeamSearch => group_beam::run(session, prompts, &plan)?,
    };
    out.notices.extend(notices);
    out.seed = matches!(plan.mode, Mode::Sample | Mode::BeamSample).then_some(plan.seed);
    Ok(out)
}

/// Checks prompts and settings the way [`generate`] will, without running
/// anything; returns the notices generation would give (e.g. a capped length).
pub fn check(
    limits: ModelLimits,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    tokenizer: Option<&TextTokenizer>,
) -> Result<Vec<String>, GenerateError> {
    plan(limits, prompts, config, tokenizer).map(|(_, notices)| notices)
}

/// Validates everything and fixes lengths, before any compute.
fn plan<'t>(
    limits: ModelLimits,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    tokenizer: Option<&'t TextTokenizer>,
) -> Result<(Plan<'t>, Vec<String>), GenerateError> {
    config.validate(limits.vocab_size)?;
    if prompts.is_empty() {
        return Err(GenerateError::NoPrompts);
    }
    for (index, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(GenerateError::EmptyPrompt { index });
        }
        if p.len() > limits.n_positions {
            return Err(GenerateError::PromptTooLong { index, len: p.len(), limit: limits.n_positions });
        }
        if let Some(&token) = p.iter().find(|&&t| t as usize >= limits.vocab_size) {
            return Err(GenerateError::BadToken { index, token, vocab: limits.vocab_size });
        }
    }
    let eos = config.eos();
    let prompt_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let ragged = prompts.iter().any(|p| p.len() != prompt_len);
    let pad = match config.pad_token_id.or(eos.first().copied()) {
        Some(p) => p,
        None if ragged => return Err(GenerateError::NoPadToken),
        None => 0,
    };

    let mut notices = Vec::new();
    let mut max_length = match config.max_new_tokens {
        Some(n) => prompt_len + n,
        // transformers reads the untouched default of 20 as "20 new tokens", within the context.
        None if !config.max_length_from_caller && config.max_length == 20 => (20 + prompt_len).min(limits.n_positions),
        None => config.max_length,
    };
    if max_length > limits.n_positions {
        notices.push(format!(
            "generation stops at {} tokens in all, the model's context (n_positions); {} were asked for",
            limits.n_positions, max_length
        ));
        max_length = limits.n_positions;
    }
    if prompt_len >= max_length {
        return Err(GenerateError::NoRoom { prompt_len, max_length });
    }
    let min_length = match config.min_new_tokens {
        Some(n) => n + prompt_len,
        None => config.min_length,
    };
    let stop_strings = config.stop_strings();
    let stop_strings = match (stop_strings.is_empty(), tokenizer) {
        (true, _) => None,
        (false, Some(t)) => Some(StopStrings::new(&stop_strings, t)),
        (false, None) => return Err(GenerateError::StopStringsNeedTokenizer),
    };
    let pipeline = Pipeline::new(config, &PipelineLimits { prompt_len, max_length, min_length });
    let stopping = Stopping {
        max_length,
        eos: eos.clone(),
        stop_strings,
        deadline: config.max_time.map(|s| Instant::now() + Duration::from_secs_f64(s)),
    };
    let seed = config.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let plan = Plan {
        config: config.clone(),
        mode: config.mode(),
        prompt_len,
        max_length,
        pad,
        eos,
        pipeline,
        stopping,
        seed,
    };
    Ok((plan, notices))
}
