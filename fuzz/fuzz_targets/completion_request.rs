//! The body of `POST /v1/completions`, the server's most exposed parser: arbitrary bytes through
//! `gpt2c_serve::validation::parse`, the function the route calls, with GPT-2's real tokenizer
//! (`models/tokenizer/tokenizer.json`) and sizes (vocabulary 50257, context 1024, 12 layers and
//! heads, `n_embd` 768) and 32 rows per batch.
//!
//! Input: the raw body. Its first byte also picks `generation_config.json`, the defaults the body
//! overrides: odd (`{`, `\t`, `\r`) none; even (a leading space or newline) GPT-2's token ids plus
//! `max_length` 50, `do_sample` true and `top_k` 50 (a length and sampling the body did not ask for).
//!
//! The invariant: accepted with 1 to `MAX_PROMPTS` prompts, each non-empty, within the context and
//! the vocabulary, `n` ≥ 1, 1 to `max_rows` rows per prompt, `logprobs` at most `MAX_LOGPROBS` and a
//! `cache_salt` of 1 to `MAX_CACHE_SALT` bytes; or refused with 400, 404 or 413, a message and,
//! when a field is named, a non-empty name. Never a panic.
#![no_main]

use std::sync::LazyLock;

use gpt2c_runtime::TextTokenizer;
use gpt2c_runtime::generate::ModelLimits;
use gpt2c_runtime::model::ModelConfig;
use gpt2c_serve::validation::{self, Context, MAX_CACHE_SALT, MAX_LOGPROBS, MAX_PROMPTS};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const MODEL_NAME: &str = "gpt2";
const MAX_ROWS: usize = 32;

struct Fixture {
    tokenizer: TextTokenizer,
    limits: ModelLimits,
    no_defaults: Map<String, Value>,
    gpt2_defaults: Map<String, Value>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tokenizer/tokenizer.json");
    let tokenizer = TextTokenizer::from_file(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    // GPT-2 small's config.json sizes; `limits()` is what the server holds requests to.
    let config: ModelConfig = serde_json::from_value(
        json!({"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}),
    )
    .expect("GPT-2's config");
    let object = |v: Value| match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    Fixture {
        tokenizer,
        limits: config.limits(),
        no_defaults: Map::new(),
        gpt2_defaults: object(json!({
            "bos_token_id": 50256,
            "eos_token_id": 50256,
            "max_length": 50,
            "do_sample": true,
            "top_k": 50,
        })),
    }
});

fuzz_target!(|body: &[u8]| {
    let f = &*FIXTURE;
    let defaults = match body.first() {
        Some(b) if b % 2 == 0 => &f.gpt2_defaults,
        _ => &f.no_defaults,
    };
    let ctx =
        Context { model_name: MODEL_NAME, defaults, tokenizer: &f.tokenizer, limits: f.limits, max_rows: MAX_ROWS };
    let (vocab, context) = (f.limits.vocab_size, f.limits.n_positions);
    let body_text = String::from_utf8_lossy(body);
    match validation::parse(body, &ctx) {
        Ok(c) => {
            let check = |ok: bool, what: &str| {
                assert!(ok, "accepted, but {what}\nbody: {body_text}\ndefaults: {defaults:?}\nparsed: {c:?}");
            };
            check((1..=MAX_PROMPTS).contains(&c.prompts.len()), "not 1 to MAX_PROMPTS prompts");
            for p in &c.prompts {
                check(!p.ids.is_empty(), "a prompt is empty");
                check(p.ids.len() <= context, "a prompt is longer than the context");
                check(p.ids.iter().all(|&t| (t as usize) < vocab), "a token id is outside the vocabulary");
            }
            check(c.n >= 1, "n is 0");
            check((1..=MAX_ROWS).contains(&c.rows_per_prompt()), "rows per prompt not in 1..=max_rows");
            check(c.logprobs.is_none_or(|l| l <= MAX_LOGPROBS), "logprobs over MAX_LOGPROBS");
            check(
                c.cache_salt.as_ref().is_none_or(|s| (1..=MAX_CACHE_SALT).contains(&s.len())),
                "cache_salt not 1 to MAX_CACHE_SALT bytes",
            );
        }
        Err(e) => {
            let check = |ok: bool, what: &str| {
                assert!(ok, "refused, but {what}\nbody: {body_text}\ndefaults: {defaults:?}\nerror: {e:?}");
            };
            check(matches!(e.status.as_u16(), 400 | 404 | 413), "the status is not 400, 404 or 413");
            check(!e.message.is_empty(), "the message is empty");
            check(e.param.as_ref().is_none_or(|p| !p.is_empty()), "the param is an empty string");
        }
    }
});
