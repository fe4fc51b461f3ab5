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
//! - `triton`: a Triton Inference Server model repository: `<name>/config.pbtxt` (platform
//!   `onnxruntime_onnx`, every input and output with Triton's data type and its dims after the
//!   batch axis, `max_batch_size`, `dynamic_batching`, one CPU instance) and `<name>/1/model.onnx`,
//!   with config.json, generation_config.json and the tokenizer files in `<name>/` for clients.
//!   Triton stacks every input of the requests it batches along the batch axis and keeps no state
//!   between requests, so the repository holds a model without a cache: the in-graph search of
//!   `--generation` (its settings constants of the graph), or without it a stateless task.

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
    /// `<name>/config.pbtxt` and `<name>/1/model.onnx`: a Triton model repository.
    Triton,
}

crate::named::named_enum!(Layout, "layout", {
    Optimum => "optimum",
    Genai => "genai",
    TransformersJs => "transformers.js",
    Triton => "triton",
});

impl Layout {
    /// The folder (inside the export folder) that holds config.json and the tokenizer: `<name>/`
    /// for a Triton repository, the top otherwise.
    pub fn side_folder(self, triton_name: &str) -> String {
        match self {
            Layout::Triton => format!("{triton_name}/"),
            _ => String::new(),
        }
    }

    /// The model file's path inside the export folder (`triton_name` names a Triton model).
    pub fn model_path_in(self, p: &crate::gpt2::Precision, triton_name: &str) -> String {
        match self {
            Layout::Triton => format!("{triton_name}/1/{MODEL_FILE}"),
            other => other.model_path(p),
        }
    }

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

/// A Triton model name: letters, digits, `-`, `_` and `.`, not starting with a dot.
pub fn valid_triton_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Triton's name of an element type.
fn triton_type(d: crate::ir::DType) -> &'static str {
    use crate::ir::DType;
    match d {
        DType::F32 => "TYPE_FP32",
        DType::F16 => "TYPE_FP16",
        DType::BF16 => "TYPE_BF16",
        DType::F64 => "TYPE_FP64",
        DType::I64 => "TYPE_INT64",
        DType::I32 => "TYPE_INT32",
        DType::I8 => "TYPE_INT8",
        DType::U8 => "TYPE_UINT8",
        DType::Bool => "TYPE_BOOL",
        DType::I4 => "TYPE_INVALID",
    }
}

/// `config.pbtxt` of a Triton model repository for `graph` (whose inputs and outputs all lead
/// with the batch axis): the platform, `max_batch_size`, every input and output with its data type
/// and dims after the batch axis (-1 where the graph names a dim), one CPU instance and the dynamic
/// batcher (requests whose inputs have the same dims batch together). `what` goes in a comment.
pub fn triton_config(name: &str, graph: &crate::ir::Graph, max_batch_size: u32, what: &str) -> String {
    let tensors = |ids: &[crate::ir::ValueId]| -> String {
        ids.iter()
            .map(|&id| {
                let v = graph.value(id);
                let dims: Vec<String> =
                    v.ty.shape
                        .iter()
                        .skip(1)
                        .map(|d| d.as_fixed().map_or("-1".to_string(), |n| n.to_string()))
                        .collect();
                format!(
                    "  {{\n    name: \"{}\"\n    data_type: {}\n    dims: [ {} ]\n  }}",
                    v.name,
                    triton_type(v.ty.dtype),
                    dims.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join(",\n")
    };
    format!(
        "# {what}, compiled by gpt2c.\n\
         # Triton batches requests whose inputs have the same dims (pad prompts to one length to batch them).\n\
         name: \"{name}\"\n\
         platform: \"onnxruntime_onnx\"\n\
         max_batch_size: {max_batch_size}\n\
         input [\n{}\n]\n\
         output [\n{}\n]\n\
         instance_group [\n  {{\n    count: 1\n    kind: KIND_CPU\n  }}\n]\n\
         dynamic_batching {{ }}\n",
        tensors(&graph.inputs),
        tensors(&graph.outputs)
    )
}
