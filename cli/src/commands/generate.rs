//! `gpt2c generate`: text generation from an export folder, with
//! transformers' generate() options under their own names.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use gpt2c_runtime::ExportedModel;
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_runtime::generate::{Assistant, GenerationConfig, Mode};
use gpt2c_runtime::text::TextGenerator;
use serde_json::{Map, Value, json};

use super::run_args::RunArgs;
use crate::output;

/// Generate text from an export folder, on ONNX Runtime or tract.
///
/// Every decoding option of transformers' generate() is available under its own name in kebab case;
/// options not given take their value from the folder's generation_config.json, then from
/// transformers' defaults (greedy decoding, max_length 20 = 20 new tokens). The same prompt gives
/// the same tokens as transformers' model.generate() wherever the algorithm is deterministic.
///
/// What is printed: with one prompt and greedy decoding or sampling, the prompt and then each new
/// piece of text as soon as it is complete UTF-8. With several prompts or sequences, each sequence
/// is printed when generation ends, under a header. Beam search methods print their returned
/// sequences when the search ends (the best beam can change until then, so nothing is streamed).
/// --json prints one JSON object instead (token ids, text, finish reason, scores per sequence).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    gpt2c generate out/gpt2 --prompt \"Hello, my name is\" --max-new-tokens 30\n  \
    gpt2c generate out/gpt2 --prompt \"The\" --do-sample --top-p 0.9 --temperature 0.7 --seed 1\n  \
    gpt2c generate out/gpt2 --prompt \"The\" --num-beams 4 --num-return-sequences 2 --json")]
pub struct GenerateArgs {
    /// Export folder written by `gpt2c export` (model.onnx, config.json, tokenizer.json, ...).
    pub model: PathBuf,

    /// A prompt; repeat for a batch (prompts of different lengths are left-padded).
    #[arg(long = "prompt", short = 'p')]
    pub prompts: Vec<String>,

    /// A file with one prompt per line (empty lines are skipped).
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunArgs,

    /// Print one JSON object: token ids, text, finish reason and scores per sequence.
    #[arg(long)]
    pub json: bool,

    /// Print no notes or warnings on stderr.
    #[arg(short, long)]
    pub quiet: bool,

    /// Assisted generation (greedy search, one prompt): a smaller export with the same tokenizer
    /// drafts --num-assistant-tokens tokens, this model verifies them in one pass and keeps those
    /// greedy search agrees with, so the output is this model's greedy output.
    #[arg(long, value_name = "DIR")]
    pub assistant_model: Option<PathBuf>,

    #[command(flatten)]
    pub options: GenerationOptions,
}

/// transformers' generation options (each overrides generation_config.json).
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Generation options (transformers' names)")]
pub struct GenerationOptions {
    /// Seed of the sampler; the same seed gives the same tokens (a fresh seed otherwise, printed with --json).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Maximum total length (prompt + new tokens).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Maximum number of new tokens (takes precedence over --max-length).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Minimum total length before EOS may be generated.
    #[arg(long)]
    pub min_length: Option<usize>,
    /// Minimum number of new tokens before EOS may be generated.
    #[arg(long)]
    pub min_new_tokens: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long, allow_negative_numbers = true)]
    pub max_time: Option<f64>,
    /// Stop when this string is generated (repeatable).
    #[arg(long)]
    pub stop_strings: Vec<String>,
    /// Sample instead of choosing the most likely token (`--do-sample` or `--do-sample false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub do_sample: Option<bool>,
    /// Beam search with this many beams.
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// Diverse beam search: split the beams into this many groups (needs --diversity-penalty).
    #[arg(long)]
    pub num_beam_groups: Option<usize>,
    /// Penalty on a group choosing tokens earlier groups chose at the same step.
    #[arg(long, allow_negative_numbers = true)]
    pub diversity_penalty: Option<f32>,
    /// Beam search: exponent of the length in the hypothesis score (> 0 favours longer sequences).
    #[arg(long, allow_negative_numbers = true)]
    pub length_penalty: Option<f32>,
    /// Beam search stopping: `true` (once num_beams hypotheses are done), `false` (heuristic), `never`.
    #[arg(long, value_parser = ["true", "false", "never"])]
    pub early_stopping: Option<String>,
    /// Sequences returned per prompt (≤ num_beams with beam search; sampling draws this many).
    #[arg(long)]
    pub num_return_sequences: Option<usize>,
    /// Sampling temperature (> 0).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Sample among the k most likely tokens (0 disables; default 50).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities add up to p, in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than min_p × the top token's probability.
    #[arg(long, allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Locally typical sampling mass, in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    pub typical_p: Option<f32>,
    /// Drop tokens with probability below this, in [0, 1).
    #[arg(long, allow_negative_numbers = true)]
    pub epsilon_cutoff: Option<f32>,
    /// Eta sampling cutoff, in [0, 1).
    #[arg(long, allow_negative_numbers = true)]
    pub eta_cutoff: Option<f32>,
    /// Divide (or multiply, for negative scores) the scores of tokens already present (> 0; 1 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub repetition_penalty: Option<f32>,
    /// Never repeat an n-gram of this size.
    #[arg(long)]
    pub no_repeat_ngram_size: Option<usize>,
    /// Prompt lookup decoding (greedy search, one prompt): draft up to N tokens that followed an
    /// earlier occurrence of the last n-gram and verify them in one pass with the cache; the output
    /// is greedy search's, faster where the text repeats its context (summaries, code edits, quotes).
    #[arg(long, value_name = "N")]
    pub prompt_lookup_num_tokens: Option<usize>,
    /// Prompt lookup decoding: the longest n-gram matched (default 2).
    #[arg(long, value_name = "N")]
    pub max_matching_ngram_size: Option<usize>,
    /// Assisted generation: tokens the assistant drafts per pass (default 20).
    #[arg(long, value_name = "N")]
    pub num_assistant_tokens: Option<usize>,
    /// Assisted generation: constant, heuristic or heuristic_transient (+2 drafts after a pass that
    /// kept them all, -1 otherwise).
    #[arg(long, value_name = "SCHEDULE")]
    pub num_assistant_tokens_schedule: Option<String>,
    /// Assisted generation: the assistant stops drafting after a token less likely than this (default 0.4).
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub assistant_confidence_threshold: Option<f32>,
    /// Token id sequences that must not be generated, as JSON: `[[1, 2], [3]]`.
    #[arg(long)]
    pub bad_words_ids: Option<String>,
    /// Biases added to tokens completing sequences, as JSON: `[[[12, 7], -5.0], [[3], 2.0]]`.
    #[arg(long)]
    pub sequence_bias: Option<String>,
    /// Token ids that are never generated (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub suppress_tokens: Option<Vec<u32>>,
    /// Token ids that are not generated as the first new token (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub begin_suppress_tokens: Option<Vec<u32>>,
    /// Force this token first when the prompt is one token long.
    #[arg(long)]
    pub forced_bos_token_id: Option<u32>,
    /// Force one of these tokens (comma-separated) when max_length is reached.
    #[arg(long, value_delimiter = ',')]
    pub forced_eos_token_id: Option<Vec<u32>>,
    /// `START,FACTOR`: after START new tokens, raise EOS's score by FACTOR^n.
    #[arg(long)]
    pub exponential_decay_length_penalty: Option<String>,
    /// Replace NaN and infinite scores before choosing.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub remove_invalid_values: Option<bool>,
    /// Log-softmax the processed scores (after every processor).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub renormalize_logits: Option<bool>,
    /// EOS token id(s), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub eos_token_id: Option<Vec<u32>>,
    /// Padding token id (defaults to the first EOS id).
    #[arg(long)]
    pub pad_token_id: Option<u32>,
    /// BOS token id.
    #[arg(long)]
    pub bos_token_id: Option<u32>,
}

impl GenerationOptions {
    /// The options given, as generation_config.json-style overrides.
    pub fn overrides(&self) -> anyhow::Result<Map<String, Value>> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        macro_rules! opt {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field {
                    put(stringify!($field), json!(v));
                }
            )*};
        }
        // JSON has no NaN or infinity (serde_json writes them as null, which reads as "unset"):
        // refuse them here, under the setting's name, rather than drop them.
        for (name, value) in [
            ("max_time", self.max_time),
            ("diversity_penalty", self.diversity_penalty.map(f64::from)),
            ("length_penalty", self.length_penalty.map(f64::from)),
            ("temperature", self.temperature.map(f64::from)),
            ("top_p", self.top_p.map(f64::from)),
            ("min_p", self.min_p.map(f64::from)),
            ("typical_p", self.typical_p.map(f64::from)),
            ("epsilon_cutoff", self.epsilon_cutoff.map(f64::from)),
            ("eta_cutoff", self.eta_cutoff.map(f64::from)),
            ("repetition_penalty", self.repetition_penalty.map(f64::from)),
            ("assistant_confidence_threshold", self.assistant_confidence_threshold.map(f64::from)),
        ] {
            if let Some(v) = value.filter(|v| !v.is_finite()) {
                bail!("generation setting `{name}`: ({v}) must be a finite number");
            }
        }
        opt!(seed, max_length, max_new_tokens, min_length, min_new_tokens, max_time, do_sample, num_beams);
        opt!(num_beam_groups, diversity_penalty, length_penalty, num_return_sequences, temperature, top_k, top_p);
        opt!(min_p, typical_p, epsilon_cutoff, eta_cutoff, repetition_penalty, no_repeat_ngram_size);
        opt!(prompt_lookup_num_tokens, max_matching_ngram_size, num_assistant_tokens);
        opt!(num_assistant_tokens_schedule, assistant_confidence_threshold);
        opt!(suppress_tokens, begin_suppress_tokens, forced_bos_token_id, forced_eos_token_id);
        opt!(remove_invalid_values, renormalize_logits, eos_token_id, pad_token_id, bos_token_id);
        if !self.stop_strings.is_empty() {
            put("stop_strings", json!(self.stop_strings));
        }
        if let Some(e) = &self.early_stopping {
            put("early_stopping", if e == "never" { json!("never") } else { json!(e == "true") });
        }
        for (name, text) in [("bad_words_ids", &self.bad_words_ids), ("sequence_bias", &self.sequence_bias)] {
            if let Some(text) = text {
                let v: Value = serde_json::from_str(text)
                    .with_context(|| format!("--{}: not valid JSON", name.replace('_', "-")))?;
                put(name, v);
            }
        }
        if let Some(text) = &self.exponential_decay_length_penalty {
            let parts: Vec<&str> = text.split(',').map(str::trim).collect();
            let (Some(start), Some(factor), 2) = (
                parts.first().and_then(|s| s.parse::<usize>().ok()),
                parts.get(1).and_then(|s| s.parse::<f32>().ok()),
                parts.len(),
            ) else {
                bail!("--exponential-decay-length-penalty: expected START,FACTOR (e.g. 10,1.05), got {text:?}");
            };
            if !factor.is_finite() {
                bail!(
                    "generation setting `exponential_decay_length_penalty`: the factor ({factor}) must be a finite number"
                );
            }
            put("exponential_decay_length_penalty", json!([start, factor]));
        }
        Ok(m)
    }
}

/// Generation reads the last position only (the LM head skips the others), unless prompt lookup
/// verifies drafted tokens, which reads every position.
pub fn logits_scope(config: &GenerationConfig) -> LogitsScope {
    if config.prompt_lookup_num_tokens.is_some() { LogitsScope::All } else { LogitsScope::Last }
}

fn read_prompts(args: &GenerateArgs) -> anyhow::Result<Vec<String>> {
    let mut prompts = args.prompts.clone();
    if let Some(path) = &args.prompts_file {
        let text = output::read_text(path, "prompts file", 1 << 26)?;
        prompts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    if prompts.is_empty() {
        bail!("no prompt: give --prompt TEXT (repeatable) or --prompts-file FILE");
    }
    Ok(prompts)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    // Everything the command line decides is checked before the model loads.
    let prompts = read_prompts(&args)?;
    let overrides = args.options.overrides()?;
    let choice = args.run.choice();
    args.run.options(LogitsScope::Last, None)?;
    let started = Instant::now();
    let model = ExportedModel::open(&args.model)?;
    let tokenizer = model.tokenizer()?;
    let config = GenerationConfig::from_json(&model.generation_json, &overrides)?;
    let ids =
        prompts.iter().map(|p| tokenizer.encode(p).map_err(anyhow::Error::msg)).collect::<anyhow::Result<Vec<_>>>()?;
    gpt2c_runtime::generate::check(model.config.limits(), &ids, &config, Some(&tokenizer))?;
    let scope = if args.assistant_model.is_some() { LogitsScope::All } else { logits_scope(&config) };
    let options = args.run.options(scope, None)?;
    let mut generator = TextGenerator::from_parts(model, tokenizer, choice, &options)?;
    // The assistant runs on the same backend and reads its last position only.
    let mut assistant = match &args.assistant_model {
        Some(dir) => {
            let model = ExportedModel::open(dir).with_context(|| format!("--assistant-model {}", dir.display()))?;
            let session =
                model.session(generator.backend, &args.run.options(LogitsScope::Last, None)?.for_assistant())?;
            Some((session, model.config.limits()))
        }
        None => None,
    };
    let loaded = started.elapsed();
    let note = |msg: &str| {
        if !args.quiet {
            output::note(msg);
        }
    };
    for n in &generator.notices {
        note(n);
    }

    let mode = config.mode();
    let rows =
        prompts.len() * if matches!(mode, Mode::Greedy | Mode::Sample) { config.num_return_sequences } else { 1 };
    let stream = !args.json && rows == 1 && matches!(mode, Mode::Greedy | Mode::Sample);
    let mut stdout = output::stdout();
    // The streamed prompt is printed with the first new text, so a run refused at its first step
    // prints nothing.
    let mut prompt_printed = false;
    let mut write_error = None;
    let t0 = Instant::now();
    let assistant =
        assistant.as_mut().map(|(session, limits)| Assistant { session: session.as_mut(), limits: *limits });
    let out = generator.generate_ids_with(&ids, &config, assistant, &mut |_, piece| {
        if stream && write_error.is_none() {
            let prompt = if std::mem::replace(&mut prompt_printed, true) { "" } else { prompts[0].as_str() };
            write_error = write!(stdout, "{prompt}{piece}").and_then(|_| stdout.flush()).err();
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if stream && !prompt_printed {
        write!(stdout, "{}", prompts[0])?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    for n in &out.output.notices {
        note(n);
    }
    let new_tokens: usize = out.output.results.iter().map(|r| r.tokens.len()).sum();

    if args.json {
        let sequences: Vec<Value> = out
            .output
            .results
            .iter()
            .zip(out.texts.iter().zip(&out.continuations))
            .map(|(r, (text, continuation))| {
                json!({
                    "prompt": r.prompt,
                    "text": text,
                    "continuation": continuation,
                    "token_ids": r.tokens,
                    "finish_reason": r.finish_reason,
                    "score": r.score,
                    "token_logprobs": r.token_logprobs,
                })
            })
            .collect();
        let doc = json!({
            "backend": generator.description,
            "mode": format!("{mode:?}"),
            "seed": out.output.seed,
            "sequences": sequences,
            "notices": generator.notices.iter().chain(&out.output.notices).collect::<Vec<_>>(),
            "load_seconds": loaded.as_secs_f64(),
            "generate_seconds": seconds,
            "new_tokens": new_tokens,
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else if stream {
        writeln!(stdout)?;
    } else {
        // Beam methods can return fewer sequences for a prompt than asked (the live ones): number
        // each prompt's sequences as they come.
        let many = config.num_return_sequences > 1;
        let mut seen = vec![0usize; prompts.len()];
        for (r, text) in out.output.results.iter().zip(&out.texts) {
            let index = seen.get(r.prompt).copied().unwrap_or(0);
            if let Some(n) = seen.get_mut(r.prompt) {
                *n += 1;
            }
            let label = match (prompts.len(), many) {
                (1, false) => String::new(),
                (_, false) => format!("[prompt {}]\n", r.prompt),
                (_, true) => format!("[prompt {}, sequence {index}]\n", r.prompt),
            };
            writeln!(stdout, "{label}{text}")?;
        }
    }
    if !args.json {
        note(&format!(
            "{new_tokens} new tokens in {seconds:.2} s ({:.1} tokens/s) on {}",
            new_tokens as f64 / seconds.max(1e-9),
            generator.description
        ));
    }
    Ok(())
}
