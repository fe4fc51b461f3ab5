//! Export folder layouts for the runtimes people deploy with (`--layout`).
//!
//! - `optimum` (default): `model.onnx` at the top, as optimum's `ORTModelForCausalLM` and
//!   `gpt2c generate` read it.
//! - `genai`: the same plus `genai_config.json` for onnxruntime-genai's generic `decoder` model
//!   type, which reads optimum's input/output names (its legacy `gpt2` type, with one combined
//!   cache tensor per layer, is not needed), with search defaults from `generation_config.json`.
//! - `transformers.js`: the graph where `@huggingface/transformers` looks for it,
//!   `onnx/model{suffix}.onnx` with the suffix of the precision (`` fp32, `_fp16`, `_quantized`
//!   for int8, `_int8` for int8 weights, `_q4` for int4), its external data beside it as
//!   `<file>_data`, and `"transformers.js_config": {"use_external_data_format": true}` added to
//!   config.json when the weights are external. The graph is the same: transformers.js builds the
//!   empty cache from the inputs' metadata (batch axis `batch_size`, fixed heads and head size).

use serde_json::{Map, Value, json};

use crate::checkpoint::Gpt2Config;

/// The graph's file in the default layout.
pub const MODEL_FILE: &str = "model.onnx";

/// Where files go and which runtime configs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `model.onnx` at the top (optimum, ONNX Runtime, gpt2c).
    #[default]
    Optimum,
    /// Also `genai_config.json` for onnxruntime-genai.
    Genai,
    /// `onnx/model{suffix}.onnx` for transformers.js.
    TransformersJs,
}

crate::named::named_enum!(Layout, "layout", {
    Optimum => "optimum",
    Genai => "genai",
    TransformersJs => "transformers.js",
});

impl Layout {
    /// The model file's path inside the export folder.
    pub fn model_path(self, p: &crate::gpt2::Precision) -> String {
        use crate::gpt2::{FloatType, Quantize};
        match self {
            Layout::TransformersJs => {
                let suffix = match (p.quantize, p.dtype) {
                    (Quantize::Int8, _) => "_quantized",
                    (Quantize::Int8Weights, _) => "_int8",
                    (Quantize::Int4, _) => "_q4",
                    (Quantize::None, FloatType::Fp16) => "_fp16",
                    (Quantize::None, _) => "",
                };
                format!("onnx/model{suffix}.onnx")
            }
            _ => MODEL_FILE.to_string(),
        }
    }
}

/// transformers' `GenerationConfig` defaults for the search options onnxruntime-genai takes.
const SEARCH_DEFAULTS: [(&str, Value); 12] = [
    ("do_sample", Value::Bool(false)),
    ("num_beams", Value::Null),
    ("max_length", Value::Null),
    ("min_length", Value::Null),
    ("length_penalty", Value::Null),
    ("early_stopping", Value::Bool(false)),
    ("no_repeat_ngram_size", Value::Null),
    ("repetition_penalty", Value::Null),
    ("temperature", Value::Null),
    ("top_k", Value::Null),
    ("top_p", Value::Null),
    ("num_return_sequences", Value::Null),
];

fn default_number(key: &str) -> Value {
    match key {
        "num_beams" | "num_return_sequences" => json!(1),
        "max_length" => json!(20),
        "min_length" | "no_repeat_ngram_size" => json!(0),
        "top_k" => json!(50),
        _ => json!(1.0),
    }
}

/// `genai_config.json` for an export of `config`, with `generation` (generation_config.json)
/// as the search defaults.
pub fn genai_config(c: &Gpt2Config, generation: &Map<String, Value>, kv_cache: crate::gpt2::KvCache) -> Value {
    let mut search = Map::new();
    for (key, default) in SEARCH_DEFAULTS {
        let value = match generation.get(key) {
            // transformers' early_stopping may be "never": no early stop.
            Some(Value::String(_)) if key == "early_stopping" => Value::Bool(false),
            Some(v) if !v.is_null() => v.clone(),
            _ if default.is_null() => default_number(key),
            _ => default,
        };
        search.insert(key.into(), value);
    }
    // A concatenating graph writes a new present each step; GroupQueryAttention (`--kv-cache
    // shared`) appends into the past buffer when genai binds one buffer as both (genai shares only
    // without beams, and falls back to a growing cache with them).
    let share = kv_cache == crate::gpt2::KvCache::Shared;
    search.insert("past_present_share_buffer".into(), Value::Bool(share));
    let eos = match c.eos_token_ids.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    let pad = c.pad_token_id.or(c.eos_token_ids.first().copied());
    json!({
        "model": {
            "type": "decoder",
            "bos_token_id": c.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "vocab_size": c.vocab_size,
            "context_length": c.n_positions,
            "decoder": {
                "filename": MODEL_FILE,
                "session_options": { "log_id": "onnxruntime-genai", "provider_options": [] },
                "head_size": c.head_dim,
                "hidden_size": c.n_embd,
                "num_attention_heads": c.n_head,
                "num_key_value_heads": c.n_head,
                "num_hidden_layers": c.n_layer,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value"
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"
                }
            }
        },
        "search": Value::Object(search)
    })
}
