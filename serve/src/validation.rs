//! Validation of `POST /v1/completions` bodies: OpenAI's fields, plus every transformers generation option
//! under its own name, checked and turned into a [`GenerationConfig`] before any compute.

use gpt2c_runtime::generate::{self, GenerationConfig, Mode, ModelLimits};
use gpt2c_runtime::{GenerateError, TextTokenizer};
use serde::Deserialize;
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
/// The longest `cache_salt`, in bytes.
pub const MAX_CACHE_SALT: usize = 256;

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
    /// vLLM's `cache_salt`: prompts share cached prefixes only with requests of the same salt
    /// (and the same API key).
    pub cache_salt: Option<String>,
}

impl Completion {
    /// Rows one prompt holds in the batch.
    pub fn rows_per_prompt(&self) -> usize {
        if self.config.num_beams > 1 { self.config.num_beams } else { self.config.num_return_sequences }
    }

    /// Prompt tokens of every prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(|p| p.ids.len()).sum()
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

/// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
fn prompts(v: &Value, ctx: &Context<'_>) -> Result<Vec<Prompt>, ApiError> {
    let ids = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?.iter().map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok())).collect()
    };
    let encode = |text: &str| -> Result<Prompt, ApiError> {
        ctx.tokenizer.encode(text).map(|ids| Prompt { ids }).map_err(|e| ApiError::invalid("prompt", e))
    };
    // The count is checked before any prompt is tokenized: a body of many prompts costs nothing.
    if let Value::Array(items) = v
        && items.len() > MAX_PROMPTS
        && !items.iter().all(Value::is_number)
    {
        return Err(ApiError::invalid("prompt", format!("{} prompts; at most {MAX_PROMPTS} per request", items.len())));
    }
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

/// OpenAI's completion fields, typed (`null` is the same as absent); every other field lands in
/// `rest`, where transformers' generation options are checked by [`GenerationConfig::from_json`].
#[derive(Deserialize)]
struct Body {
    model: Option<String>,
    /// Four shapes, told apart by hand (see [`prompts`]), and tokenized last.
    prompt: Option<Value>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<u64>,
    echo: Option<bool>,
    stop: Option<Stop>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    best_of: Option<u64>,
    logit_bias: Option<Map<String, Value>>,
    #[allow(dead_code)]
    user: Option<String>,
    suffix: Option<String>,
    cache_salt: Option<String>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn into_list(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(list) => list,
        }
    }
}

/// What a field of [`Body`] must be, for messages.
fn shape(field: &str) -> &'static str {
    match field {
        "model" | "user" | "suffix" | "cache_salt" => "a string",
        "max_tokens" | "n" | "logprobs" | "best_of" => "a non-negative integer",
        "temperature" | "presence_penalty" | "frequency_penalty" => "a number",
        "stream" | "echo" | "stream_options.include_usage" => "true or false",
        "stream_options" => "an object with `include_usage`",
        "stop" => "a string or a list of strings",
        "logit_bias" => "an object of token id → bias",
        _ => "of another type",
    }
}

/// The body as [`Body`], or a 400: the body as a whole (not JSON, not an object), or the field at
/// fault.
fn deserialize(body: &[u8]) -> Result<Body, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<Body, _> = serde_path_to_error::deserialize(&mut de);
    let b = parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let message = inner.to_string();
        let message = message.split(" at line ").next().unwrap_or_default();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_body(format!("the body is not valid JSON: {inner}"));
        }
        if path == "." {
            let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            return match value {
                Value::Object(_) => ApiError::bad_body(format!("the body is not a valid request: {message}")),
                other => ApiError::bad_body(format!("the body must be a JSON object, not {}", kind(&other))),
            };
        }
        if message.starts_with("unknown field") {
            return ApiError::invalid(path.clone(), format!("unknown field `{path}` ({message})"));
        }
        let what = shape(&path);
        ApiError::invalid(path.clone(), format!("`{path}` must be {what} ({message})"))
    })?;
    de.end().map_err(|e| ApiError::bad_body(format!("the body is not valid JSON: {e}")))?;
    Ok(b)
}

/// Parses and checks a body: 400 naming the field for anything wrong. Every cheap check comes
/// first; the prompts are tokenized last.
pub fn parse(body: &[u8], ctx: &Context<'_>) -> Result<Completion, ApiError> {
    let b = deserialize(body)?;
    for key in b.rest.keys() {
        if key.is_empty() {
            // A field the error could not name (found by fuzzing: `{"":0}`).
            return Err(ApiError::bad_body("the body has a field with an empty name"));
        }
        if !TRANSFORMERS_FIELDS.contains(&key.as_str()) {
            return Err(ApiError::invalid(
                key.as_str(),
                format!(
                    "unknown field `{key}`: the body takes OpenAI's completion fields and transformers' \
                     generation options"
                ),
            ));
        }
    }
    let mut overrides: Map<String, Value> = b.rest;
    // OpenAI names whose errors a transformers field would otherwise report.
    let mut renamed: Vec<(&str, &str)> = Vec::new();
    match b.model.as_deref() {
        None => return Err(ApiError::invalid("model", "`model` is required")),
        Some(m) if m != ctx.model_name => {
            return Err(ApiError::not_found(
                Some("model"),
                format!("the model `{m}` does not exist; this server serves `{}`", ctx.model_name),
            ));
        }
        Some(_) => {}
    }
    let prompt = b.prompt.ok_or_else(|| ApiError::invalid("prompt", "`prompt` is required"))?;
    if let Some(m) = b.max_tokens {
        let v = json!(m);
        uint("max_tokens", &v, 1, generate::limits::MAX_COUNT as u64)?;
        agree(&overrides, "max_new_tokens", "max_tokens", &v)?;
        overrides.insert("max_new_tokens".into(), v);
        renamed.push(("max_new_tokens", "max_tokens"));
    }
    if let Some(t) = b.temperature {
        if !t.is_finite() || t < 0.0 {
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
            overrides.insert("temperature".into(), json!(t));
        } else {
            overrides.remove("temperature");
        }
    }
    if let Some(n) = b.n {
        let v = json!(n);
        uint("n", &v, 1, generate::limits::MAX_COUNT as u64)?;
        agree(&overrides, "num_return_sequences", "n", &v)?;
        overrides.insert("num_return_sequences".into(), v);
        renamed.push(("num_return_sequences", "n"));
    }
    let stream = b.stream.unwrap_or(false);
    let mut include_usage = false;
    if let Some(o) = b.stream_options {
        if !stream {
            return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed with `stream: true`"));
        }
        include_usage = o.include_usage.unwrap_or(false);
    }
    let logprobs = match b.logprobs {
        Some(k) => Some(uint("logprobs", &json!(k), 0, MAX_LOGPROBS as u64)? as usize),
        None => None,
    };
    let echo = b.echo.unwrap_or(false);
    let mut stop = Vec::new();
    if let Some(given) = b.stop {
        stop = given.into_list();
        if let Some(s) = overrides.get("stop_strings").filter(|s| !s.is_null())
            && stop_list(s).ok().as_ref() != Some(&stop)
        {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "`stop` ({}) and `stop_strings` ({s}) disagree: give one of them, or the same strings",
                    json!(stop)
                ),
            ));
        }
        if !stop.is_empty() {
            overrides.insert("stop_strings".into(), json!(stop));
        }
        renamed.push(("stop_strings", "stop"));
    }
    for (key, value) in [("presence_penalty", b.presence_penalty), ("frequency_penalty", b.frequency_penalty)] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(
                key,
                format!("`{key}` is not implemented here; transformers' `repetition_penalty` is"),
            ));
        }
    }
    if let Some(best) = b.best_of {
        uint("best_of", &json!(best), 1, generate::limits::MAX_COUNT as u64)?;
        if best != b.n.unwrap_or(1) {
            return Err(ApiError::invalid(
                "best_of",
                "`best_of` other than `n` is not implemented; beam search (`num_beams`) returns the best `n`",
            ));
        }
    }
    if let Some(map) = &b.logit_bias {
        let mut bias: Vec<Value> = Vec::with_capacity(map.len());
        for (token, v) in map {
            let id: u32 = token.parse().map_err(|_| {
                ApiError::invalid("logit_bias", format!("`logit_bias` key {token:?} is not a token id"))
            })?;
            let bias_of = number("logit_bias", v)?;
            if !(-100.0..=100.0).contains(&bias_of) {
                return Err(ApiError::invalid("logit_bias", format!("a bias of {bias_of}: must be in [-100, 100]")));
            }
            bias.push(json!([[id], bias_of]));
        }
        if overrides.get("sequence_bias").is_some_and(|s| !s.is_null()) {
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
    if b.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "`suffix` (insertion) is not supported by GPT-2"));
    }
    if let Some(salt) = &b.cache_salt
        && (salt.is_empty() || salt.len() > MAX_CACHE_SALT)
    {
        return Err(ApiError::invalid(
            "cache_salt",
            format!("`cache_salt` must be 1 to {MAX_CACHE_SALT} bytes, not {}", salt.len()),
        ));
    }
    // A batch step feeds one token per row; drafting several for one request is `gpt2c generate`'s.
    for key in ["prompt_lookup_num_tokens", "max_matching_ngram_size"] {
        if overrides.get(key).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(
                key,
                format!("`{key}` (prompt lookup decoding) is not supported by the server; use `gpt2c generate`"),
            ));
        }
    }
    let cache_salt = b.cache_salt;
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
    let rows = if config.num_beams > 1 { config.num_beams } else { config.num_return_sequences };
    if rows > ctx.max_rows {
        let param = if config.num_beams > 1 { "num_beams" } else { "n" };
        return Err(ApiError::invalid(
            param,
            format!("one prompt needs {rows} rows; this server batches at most {} (--max-batch-rows)", ctx.max_rows),
        ));
    }
    let prompts = prompts(&prompt, ctx)?;
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
    let completion = Completion {
        prompts,
        n: config.num_return_sequences,
        config,
        stream,
        include_usage,
        logprobs,
        echo,
        stop,
        cache_salt,
    };
    Ok(completion)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TextTokenizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tokenizer/tokenizer.json");
        TextTokenizer::from_file(&path).unwrap()
    }

    fn parse_with(body: &str, t: &TextTokenizer) -> Result<Completion, ApiError> {
        let defaults = Map::new();
        let ctx = Context {
            model_name: "m",
            defaults: &defaults,
            tokenizer: t,
            limits: ModelLimits { vocab_size: 50257, n_positions: 1024, cache_bytes_per_position: 0, n_head: 12 },
            max_rows: 8,
        };
        parse(body.as_bytes(), &ctx)
    }

    #[test]
    fn typed_fields_name_the_field_at_fault() {
        let t = tokenizer();
        for (body, param) in [
            (r#"{"model": "m", "prompt": "Hi", "max_tokens": "ten"}"#, "max_tokens"),
            (r#"{"model": "m", "prompt": "Hi", "max_tokens": 1.5}"#, "max_tokens"),
            (r#"{"model": "m", "prompt": "Hi", "stream": "yes"}"#, "stream"),
            (r#"{"model": "m", "prompt": "Hi", "stream": true, "stream_options": {"x": 1}}"#, "stream_options.x"),
            (
                r#"{"model": "m", "prompt": "Hi", "stream": true, "stream_options": {"include_usage": 1}}"#,
                "stream_options.include_usage",
            ),
            (r#"{"model": "m", "prompt": "Hi", "stop": 5}"#, "stop"),
            (r#"{"model": "m", "prompt": "Hi", "logit_bias": [1]}"#, "logit_bias"),
            (r#"{"model": 7, "prompt": "Hi"}"#, "model"),
            (r#"{"model": "m", "prompt": "Hi", "cache_salt": ""}"#, "cache_salt"),
            (r#"{"model": "m", "prompt": "Hi", "top_k": -1}"#, "top_k"),
            (r#"{"model": "m", "prompt": "Hi", "wat": 1}"#, "wat"),
        ] {
            let e = parse_with(body, &t).err().unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!(e.status.as_u16(), 400, "{body}: {}", e.message);
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(e.message.contains(param), "{body}: {}", e.message);
        }
        for body in ["{not json", "[1]", r#"{"model": "m", "prompt": "Hi"} trailing"#, "", r#"{"":0}"#] {
            let e = parse_with(body, &t).err().unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, None), "{body}: {}", e.message);
        }
    }

    #[test]
    fn nulls_are_absent_fields_and_openai_names_map_to_transformers() {
        let t = tokenizer();
        let body = r#"{"model": "m", "prompt": ["a", "b"], "max_tokens": 7, "temperature": 0.5, "n": 2, "stop": "x",
            "stream": null, "logprobs": null, "echo": null, "user": "u", "seed": 3, "top_k": 5, "cache_salt": "s"}"#;
        let c = parse_with(body, &t).unwrap();
        assert_eq!((c.prompts.len(), c.n, c.stream, c.logprobs, c.echo), (2, 2, false, None, false));
        assert_eq!(c.config.max_new_tokens, Some(7));
        assert!(c.config.do_sample);
        assert_eq!(c.stop, vec!["x".to_string()]);
        assert_eq!(c.cache_salt.as_deref(), Some("s"));
    }

    #[test]
    fn too_many_prompts_are_refused_before_any_is_tokenized() {
        let t = tokenizer();
        // 65 prompts, one of them not a string: the count is what is reported, not the shape.
        let mut prompts: Vec<Value> = (0..MAX_PROMPTS).map(|i| json!(format!("prompt {i}"))).collect();
        prompts.push(json!(5));
        let body = json!({"model": "m", "prompt": prompts}).to_string();
        let e = parse_with(&body, &t).err().unwrap();
        assert!(e.message.contains("at most 64"), "{}", e.message);
    }
}
