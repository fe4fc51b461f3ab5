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
mod guard;
pub mod limits;
mod lookup;
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
    #[error(
        "the model returned a {value} logit (token {token}, row {row}, generation step {step}): the export computes \
         non-finite values, so it is broken or overflows (an fp16 export? try fp32, or `gpt2c verify`); \
         the setting remove_invalid_values replaces them"
    )]
    InvalidLogits { row: usize, step: usize, token: usize, value: f32 },
    #[error("the model returned logits for {got} tokens, but its config.json says vocab_size is {expected}")]
    VocabMismatch { got: usize, expected: usize },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl GenerateError {
    /// The request field this error is about, for programs (the server returns it as OpenAI's
    /// `param`): a generation setting's name, `prompt`, or `None` when the model is at fault.
    pub fn param(&self) -> Option<&str> {
        match self {
            GenerateError::Config { field, .. } => Some(field),
            GenerateError::NoPrompts
            | GenerateError::EmptyPrompt { .. }
            | GenerateError::PromptTooLong { .. }
            | GenerateError::BadToken { .. } => Some("prompt"),
            GenerateError::NoRoom { .. } => Some("max_length"),
            GenerateError::NoPadToken => Some("pad_token_id"),
            GenerateError::StopStringsNeedTokenizer => Some("stop_strings"),
            GenerateError::InvalidLogits { .. } | GenerateError::VocabMismatch { .. } | GenerateError::Runtime(_) => {
                None
            }
        }
    }
}

/// The clock `max_time` is measured on: the system's, or a stand-in in tests.
pub trait Clock {
    fn now(&self) -> Instant;
}

/// [`Instant::now`].
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// What generation needs to know about the model.
#[derive(Clone, Copy, Debug)]
pub struct ModelLimits {
    pub vocab_size: usize,
    pub n_positions: usize,
    /// Bytes of key/value cache per row and cached position, in every buffer set the engine keeps
    /// (0 when unknown: then only rows, logits and tokens count against the limits).
    pub cache_bytes_per_position: u64,
    /// Attention heads (the prompt's attention scores count against the limits).
    pub n_head: usize,
}

impl ModelLimits {
    /// Limits of a model known only by its vocabulary and context.
    pub fn new(vocab_size: usize, n_positions: usize) -> ModelLimits {
        ModelLimits { vocab_size, n_positions, cache_bytes_per_position: 0, n_head: 0 }
    }
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
    pub vocab: usize,
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
    generate_with_clock(session, limits, prompts, config, tokenizer, &SystemClock, on_token)
}

/// [`generate`] with `max_time` measured on `clock`.
pub fn generate_with_clock(
    session: &mut dyn DecoderSession,
    limits: ModelLimits,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    tokenizer: Option<&TextTokenizer>,
    clock: &dyn Clock,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<GenerationOutput, GenerateError> {
    let (plan, notices) = plan(limits, prompts, config, tokenizer, clock)?;
    let mut out = match (plan.mode, plan.config.prompt_lookup_num_tokens) {
        (Mode::Greedy, Some(num)) => {
            lookup::run(session, prompts, &plan, &mut lookup::prompt_lookup(&plan, num), on_token)?
        }
        (Mode::Greedy | Mode::Sample, _) => sample::run(session, prompts, &plan, on_token)?,
        (Mode::BeamSearch | Mode::BeamSample, _) => beam::run(session, prompts, &plan)?,
        (Mode::GroupBeamSearch, _) => group_beam::run(session, prompts, &plan)?,
    };
    out.notices.extend(notices);
    out.seed = matches!(plan.mode, Mode::Sample | Mode::BeamSample).then_some(plan.seed);
    Ok(out)
}

/// The model behind an assistant session: what [`generate_assisted`] checks it against. Open its
/// session with [`RunnerOptions::for_assistant`](crate::RunnerOptions::for_assistant).
pub struct Assistant<'a> {
    pub session: &'a mut dyn DecoderSession,
    pub limits: ModelLimits,
}

/// Greedy search with an assistant model drafting (transformers' `assistant_model`): the
/// assistant proposes `num_assistant_tokens` tokens, `session` verifies them in one pass and
/// keeps those greedy search agrees with, so the ids are `session`'s greedy ones. One prompt; the
/// assistant needs the same vocabulary and a context at least as long as the generation.
pub fn generate_assisted(
    session: &mut dyn DecoderSession,
    assistant: Assistant<'_>,
    limits: ModelLimits,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    tokenizer: Option<&TextTokenizer>,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<GenerationOutput, GenerateError> {
    let (plan, notices) = plan(limits, prompts, config, tokenizer, &SystemClock)?;
    check_assistant(&plan, assistant.limits, prompts.len())?;
    let mut drafter = lookup::Drafter::Assistant {
        session: assistant.session,
        num: config.num_assistant_tokens.unwrap_or(DEFAULT_ASSISTANT_TOKENS),
        heuristic: config.num_assistant_tokens_schedule.as_deref().is_some_and(|s| s != "constant"),
        confidence: config.assistant_confidence_threshold.unwrap_or(DEFAULT_ASSISTANT_CONFIDENCE),
    };
    let mut out = lookup::run(session, prompts, &plan, &mut drafter, on_token)?;
    out.notices.extend(notices);
    Ok(out)
}

/// transformers' defaults for `num_assistant_tokens` and `assistant_confidence_threshold`.
const DEFAULT_ASSISTANT_TOKENS: usize = 20;
const DEFAULT_ASSISTANT_CONFIDENCE: f32 = 0.4;

fn check_assistant(plan: &Plan<'_>, assistant: ModelLimits, prompts: usize) -> Result<(), GenerateError> {
    let refuse = |message: String| Err(GenerateError::Config { field: "assistant_model".into(), message });
    if plan.mode != Mode::Greedy {
        return refuse("an assistant model drafts for greedy search only (do_sample false, num_beams 1)".into());
    }
    if plan.config.prompt_lookup_num_tokens.is_some() {
        return refuse("an assistant model and prompt_lookup_num_tokens exclude each other: choose one drafter".into());
    }
    if prompts != 1 {
        return refuse(format!("assisted generation takes one prompt at a time ({prompts} given)"));
    }
    if assistant.vocab_size != plan.vocab {
        return refuse(format!(
            "the assistant's vocabulary has {} tokens, the model's {}: they must share one tokenizer",
            assistant.vocab_size, plan.vocab
        ));
    }
    if assistant.n_positions < plan.max_length {
        return refuse(format!(
            "the assistant's context is {} positions, shorter than this generation's {} (max_length)",
            assistant.n_positions, plan.max_length
        ));
    }
    Ok(())
}

/// Checks prompts and settings the way [`generate`] will, without running
/// anything; returns the notices generation would give (e.g. a capped length).
pub fn check(
    limits: ModelLimits,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    tokenizer: Option<&TextTokenizer>,
) -> Result<Vec<String>, GenerateError> {
    plan(limits, prompts, config, tokenizer, &SystemClock).map(|(_, notices)| notices)
}

/// Validates everything and fixes lengths, before any compute.
fn plan<'t>(
    limits: ModelLimits,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    tokenizer: Option<&'t TextTokenizer>,
    clock: &'t dyn Clock,
) -> Result<(Plan<'t>, Vec<String>), GenerateError> {
    if limits.vocab_size == 0 {
        return Err(GenerateError::Config {
            field: "vocab_size".into(),
            message: "the model's vocabulary is empty".into(),
        });
    }
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
    if config.prompt_lookup_num_tokens.is_some() && prompts.len() != 1 {
        return Err(GenerateError::Config {
            field: "prompt_lookup_num_tokens".into(),
            message: format!(
                "prompt lookup decoding takes one prompt at a time ({} given), as transformers' assisted generation",
                prompts.len()
            ),
        });
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
        Some(n) => prompt_len.saturating_add(n),
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
    check_footprint(limits, prompts.len(), prompt_len, max_length, config)?;
    let min_length = match config.min_new_tokens {
        Some(n) => n.saturating_add(prompt_len),
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
        // A duration past what the clock can represent saturates: that deadline never comes.
        deadline: config
            .max_time
            .and_then(|s| clock.now().checked_add(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))),
        clock,
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
        vocab: limits.vocab_size,
        pipeline,
        stopping,
        seed,
    };
    Ok((plan, notices))
}

/// Refuses a call whose rows or memory pass [`limits`], before anything is allocated.
fn check_footprint(
    model: ModelLimits,
    prompts: usize,
    prompt_len: usize,
    max_length: usize,
    config: &GenerationConfig,
) -> Result<(), GenerateError> {
    let beams = config.num_beams > 1;
    let per_prompt = if beams { config.num_beams } else { config.num_return_sequences };
    let u = |x: usize| u64::try_from(x).unwrap_or(u64::MAX);
    let rows = u(prompts).saturating_mul(u(per_prompt));
    let shape = limits::Shape {
        rows,
        prefill_rows: if beams { u(prompts) } else { rows },
        prompt_len: u(prompt_len),
        max_length: u(max_length),
        vocab: u(model.vocab_size),
        cache_bytes_per_position: model.cache_bytes_per_position,
        n_head: u(model.n_head),
    };
    // Name the setting that multiplies the rows; with one row per prompt, the prompts or the length.
    let field = match (beams, per_prompt > 1, prompts > 1) {
        (true, _, _) => "num_beams",
        (false, true, _) => "num_return_sequences",
        (false, false, true) => "prompt",
        (false, false, false) => "max_new_tokens",
    };
    limits::check(shape.footprint(), field, limits::byte_limit())
}
