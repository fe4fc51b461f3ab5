//! `POST /v1/completions` bodies: OpenAI's fields, plus every transformers generation option
//! under its own name, checked and turned into a [`GenerationConfig`] before any compute.

use gpt2c_runtime::generate::{self, GenerationConfig, Mode, ModelLimits};
use gpt2c_runtime::{GenerateError, TextTokenizer};
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// transformers' generation options the body may carry under their own names.
const TRANSFORMERS_FIELDS: &[&str] = GenerationConfig::FIELDS;

/// OpenAI's default `max_tokens`, used when neither the body nor generation_config.json sets a length.
pub const DEFAULT_MAX_TOKENS: u64 = 16;
/// The most prompts one request may carry.
pub const MAX_PROMPTS: usize = 64;
/// OpenAI's largest `logprobs`.
pub const MAX_LOGPROBS: usize = 5;

/// One prompt, as token ids.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub ids: Vec<u32>,
}

/// A checked completion request.
#[derive(Clone, Debug)]
pub struct Completion {
    pub prompts: Vec<Prompt>,
    pub config: GenerationConfig,
    /// Choices per prompt.
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: Option<usize>,
    pub echo: bool,
    /// Cut from the returned text.
    pub stop: Vec<String>,
}

impl Completion {
    /// Rows one prompt holds in the batch.
    pub fn rows_per_prompt(&self) -> usize {
        if self.config.num_beams > 1 { self.config.num_beams } else { self.config.num_return_sequences }
    }

    /// Whether tokens are known as they are chosen (beam search knows its sequences at the end).
    pub fn streams_tokens(&self) -> bool {
        matches!(self.config.mode(), Mode::Greedy | Mode::Sample)
    }
}

/// What the server knows that parsing needs.
pub struct Context<'a> {
    pub model_name: &'a str,
    pub defaults: &'a Map<String, Value>,
    pub tokenizer: &'a TextTokenizer,
    pub limits: ModelLimits,
    pub max_rows: usize,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected(field: &str, what: &str, v: &Value) -> ApiError {
    ApiError::invalid(field, format!("`{field}` must be {what}, not {}", kind(v)))
}

fn uint(field: &str, v: &Value, min: u64, max: u64) -> Result<u64, ApiError> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(field, format!("`{field}` ({n}) must be between {min} and {max}"))),
        None => Err(expected(field, &format!("an integer between {min} and {max}"), v)),
    }
}

fn number(field: &str, v: &Value) -> Result<f64, ApiError> {
    v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| expected(field, "a number", v))
}

fn boolean(field: &str, v: &Value) -> Result<bool, ApiError> {
    v.as_bool().ok_or_else(|| expected(field, "true or false", v))
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
fn prompts(v: &Value, ctx: &Context<'_>) -> Result<Vec<Prompt>, ApiError> {
    let ids = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?.iter().map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok())).collect()
    };
    let encode = |text: &str| -> Result<Prompt, ApiError> {
        ctx.tokenizer.encode(text).map(|ids| Prompt { ids }).map_err(|e| ApiError::invalid("prompt", e))
    };
    let list: Vec<Prompt> = match v {
        Value::String(s) => vec![encode(s)?],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::invalid("prompt", "`prompt` is an empty list"));
        }
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().map(|s| encode(s.as_str().unwrap_or_default())).collect::<Result<_, _>>()?
        }
        Value::Array(items) if items.iter().all(Value::is_number) => {
            vec![Prompt { ids: ids(v).ok_or_else(|| ApiError::invalid("prompt", "token ids must be integers"))? }]
        }
        Value::Array(items) if items.iter().all(Value::is_array) => items
            .iter()
            .map(|p| ids(p).map(|ids| Prompt { ids }))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::invalid("prompt", "token ids must be integers"))?,
        other => {
            return Err(expected(
                "prompt",
                "a string, a list of strings, a list of token ids or a list of token id lists",
                other,
            ));
        }
    };
    if list.len() > MAX_PROMPTS {
        return Err(ApiError::invalid("prompt", format!("{} prompts; at most {MAX_PROMPTS} per request", list.len())));
    }
    Ok(list)
}

/// `stop`: a string or a list of strings.
fn stop_list(v: &Value) -> Result<Vec<String>, ApiError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::invalid("stop", "`stop` must be a string or a list of strings")),
        other => Err(expected("stop", "a string or a list of strings", other)),
    }
}

/// A transformers field given beside its OpenAI counterpart must agree with it.
fn agree(overrides: &Map<String, Value>, ours: &str, openai: &str, value: &Value) -> Result<(), ApiError> {
    match overrides.get(ours) {
        Some(v) if !v.is_null() && v != value => Err(ApiError::invalid(
            openai,
            format!("`{openai}` ({value}) and `{ours}` ({v}) disagree: give one of them, or the same value"),
        )),
        _ => Ok(()),
    }
}

/// Parses and checks a body: 400 naming the field for anything wrong.
pub fn parse(body: &[u8], ctx: &Context<'_>) -> Result<Completion, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_body(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_body(format!("the body must be a JSON object, not {}", kind(&value))));
    };
    let mut overrides = Map::new();
    for (key, v) in &fields {
        if TRANSFORMERS_FIELDS.contains(&key.as_str()) {
            overrides.insert(key.clone(), v.clone());
        }
    }
    // OpenAI names whose errors a transformers field would otherwise report.
    let mut renamed: Vec<(&str, &str)> = Vec::new();
    let mut prompt_list = None;
    let mut model = None;
    let (mut stream, mut include_usage, mut logprobs, mut echo) = (false, false, None, false);
    let mut stream_options = None;
    let mut stop = Vec::new();
    for (key, v) in &fields {
        match key.as_str() {
            "model" => model = Some(v.as_str().ok_or_else(|| expected("model", "a string", v))?),
            "prompt" => prompt_list = Some(prompts(v, ctx)?),
            "max_tokens" if v.is_null() => {}
            "max_tokens" => {
                let m = uint("max_tokens", v, 1, generate::limits::MAX_COUNT as u64)?;
                agree(&overrides, "max_new_tokens", "max_tokens", v)?;
                overrides.insert("max_new_tokens".into(), json!(m));
                renamed.push(("max_new_tokens", "max_tokens"));
            }
            "temperature" if v.is_null() => {}
            "temperature" => {
                let t = number("temperature", v)?;
                if t < 0.0 {
                    return Err(ApiError::invalid("temperature", format!("`temperature` ({t}) must not be negative")));
                }
                let sample = t > 0.0;
                if let Some(d) = overrides.get("do_sample").and_then(Value::as_bool).filter(|&d| d != sample) {
                    return Err(ApiError::invalid(
                        "temperature",
                        format!(
                            "`temperature` ({t}) and `do_sample` ({d}) disagree: temperature 0 means greedy decoding, \
                             above 0 sampling"
                        ),
                    ));
                }
                overrides.insert("do_sample".into(), json!(sample));
                if sample {
                    overrides.insert("temperature".into(), v.clone());
                } else {
                    overrides.remove("temperature");
                }
            }
            "n" if v.is_null() => {}
            "n" => {
                let n = uint("n", v, 1, generate::limits::MAX_COUNT as u64)?;
                agree(&overrides, "num_return_sequences", "n", v)?;
                overrides.insert("num_return_sequences".into(), json!(n));
                renamed.push(("num_return_sequences", "n"));
            }
            "stream" if v.is_null() => {}
            "stream" => stream = boolean("stream", v)?,
            "stream_options" if v.is_null() => {}
            "stream_options" => stream_options = Some(v),
            "logprobs" if v.is_null() => {}
            "logprobs" => logprobs = Some(uint("logprobs", v, 0, MAX_LOGPROBS as u64)? as usize),
            "echo" if v.is_null() => {}
            "echo" => echo = boolean("echo", v)?,
            "stop" if v.is_null() => {}
            "stop" => {
                stop = stop_list(v)?;
                let given = overrides.get("stop_strings").filter(|s| !s.is_null());
                if let Some(s) = given.filter(|s| stop_list(s).ok().as_ref() != Some(&stop)) {
                    return Err(ApiError::invalid(
                        "stop",
                        format!(
                            "`stop` ({v}) and `stop_strings` ({s}) disagree: give one of them, or the same strings"
                        ),
                    ));
                }
                if !stop.is_empty() {
                    overrides.insert("stop_strings".into(), json!(stop));
                }
                renamed.push(("stop_strings", "stop"));
            }
            "presence_penalty" | "frequency_penalty" if v.is_null() => {}
            "presence_penalty" | "frequency_penalty" => {
                if number(key, v)? != 0.0 {
                    return Err(ApiError::invalid(
                        key.as_str(),
                        format!("`{key}` is not implemented here; transformers' `repetition_penalty` is"),
                    ));
                }
            }
            "best_of" if v.is_null() => {}
            "best_of" => {
                let b = uint("best_of", v, 1, generate::limits::MAX_COUNT as u64)?;
                if Some(b) != fields.get("n").and_then(Value::as_u64).or(Some(1)) {
                    return Err(ApiError::invalid(
                        "best_of",
                        "`best_of` other than `n` is not implemented; beam search (`num_beams`) returns the best `n`",
                    ));
                }
            }
            "logit_bias" if v.is_null() => {}
            "logit_bias" => {
                let map = v.as_object().ok_or_else(|| expected("logit_bias", "an object of token id → bias", v))?;
                let mut bias: Vec<Value> = Vec::with_capacity(map.len());
                for (token, b) in map {
                    let id: u32 = token.parse().map_err(|_| {
                        ApiError::invalid("logit_bias", format!("`logit_bias` key {token:?} is not a token id"))
                    })?;
                    let b = number("logit_bias", b)?;
                    if !(-100.0..=100.0).contains(&b) {
                        return Err(ApiError::invalid("logit_bias", format!("a bias of {b}: must be in [-100, 100]")));
                    }
                    bias.push(json!([[id], b]));
                }
                if fields.get("sequence_bias").is_some_and(|s| !s.is_null()) {
                    return Err(ApiError::invalid(
                        "logit_bias",
                        "`logit_bias` and `sequence_bias` both given: give one of them",
                    ));
                }
                if !bias.is_empty() {
                    overrides.insert("sequence_bias".into(), Value::Array(bias));
                }
                renamed.push(("sequence_bias", "logit_bias"));
            }
            "user" => {
                v.as_str().ok_or_else(|| expected("user", "a string", v))?;
            }
            "suffix" if v.is_null() || v.as_str() == Some("") => {}
            "suffix" => return Err(ApiError::invalid("suffix", "`suffix` (insertion) is not supported by GPT-2")),
            // A batch step feeds one token per row; drafting several for one request is `gpt2c generate`'s.
            "prompt_lookup_num_tokens" | "max_matching_ngram_size" if !v.is_null() => {
                return Err(ApiError::invalid(
                    key,
                    format!("`{key}` (prompt lookup decoding) is not supported by the server; use `gpt2c generate`"),
                ));
            }
            k if TRANSFORMERS_FIELDS.contains(&k) => {}
            other => {
                return Err(ApiError::invalid(
                    other,
                    format!(
                        "unknown field `{other}`: the body takes OpenAI's completion fields and transformers' \
                         generation options"
                    ),
                ));
            }
        }
    }
    match model {
        None => return Err(ApiError::invalid("model", "`model` is required")),
        Some(m) if m != ctx.model_name => {
            return Err(ApiError::not_found(
                Some("model"),
                format!("the model `{m}` does not exist; this server serves `{}`", ctx.model_name),
            ));
        }
        Some(_) => {}
    }
    let prompts = prompt_list.ok_or_else(|| ApiError::invalid("prompt", "`prompt` is required"))?;
    if let Some(o) = stream_options {
        if !stream {
            return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed with `stream: true`"));
        }
        let o = o.as_object().ok_or_else(|| expected("stream_options", "an object", o))?;
        for (k, v) in o {
            match k.as_str() {
                "include_usage" if v.is_null() => {}
                "include_usage" => include_usage = boolean("stream_options.include_usage", v)?,
                other => {
                    return Err(ApiError::invalid(
                        format!("stream_options.{other}"),
                        format!("unknown field `stream_options.{other}`"),
                    ));
                }
            }
        }
    }
    let has_length = |m: &Map<String, Value>| {
        ["max_new_tokens", "max_length"].iter().any(|k| m.get(*k).is_some_and(|v| !v.is_null()))
    };
    if !has_length(&overrides) && !has_length(ctx.defaults) {
        overrides.insert("max_new_tokens".into(), json!(DEFAULT_MAX_TOKENS));
    }
    let rename = |e: GenerateError| -> ApiError {
        let param = e.param().unwrap_or("prompt").to_string();
        let param = renamed.iter().find(|(ours, _)| *ours == param).map_or(param, |(_, openai)| openai.to_string());
        ApiError::invalid(param, e.to_string())
    };
    let config = GenerationConfig::from_json(ctx.defaults, &overrides).map_err(&rename)?;
    if config.num_beams > 1 && logprobs.is_some() {
        return Err(ApiError::invalid("logprobs", "`logprobs` is not available with beam search (`num_beams` > 1)"));
    }
    if stream && logprobs.is_some() {
        return Err(ApiError::invalid("logprobs", "`logprobs` is returned without `stream` only"));
    }
    if echo && logprobs.is_some() {
        return Err(ApiError::invalid(
            "echo",
            "`echo` with `logprobs` (the prompt's log-probabilities) is not supported",
        ));
    }
    for (index, p) in prompts.iter().enumerate() {
        generate::check(ctx.limits, std::slice::from_ref(&p.ids), &config, Some(ctx.tokenizer)).map_err(
            |e| match e {
                GenerateError::EmptyPrompt { .. } => ApiError::invalid("prompt", format!("prompt {index} is empty")),
                GenerateError::PromptTooLong { len, limit, .. } => ApiError::invalid(
                    "prompt",
                    format!("prompt {index} is {len} tokens, more than the model's context of {limit}"),
                ),
                other => rename(other),
            },
        )?;
    }
    let completion =
        Completion { prompts, n: config.num_return_sequences, config, stream, include_usage, logprobs, echo, stop };
    let rows = completion.rows_per_prompt();
    if rows > ctx.max_rows {
        let param = if completion.config.num_beams > 1 { "num_beams" } else { "n" };
        return Err(ApiError::invalid(
            param,
            format!("one prompt needs {rows} rows; this server batches at most {} (--max-batch-rows)", ctx.max_rows),
        ));
    }
    Ok(completion)
}
