//! Generation inside the graph (`gpt2c export --generation`): one node of ONNX Runtime's
//! `com.microsoft` GreedySearch, BeamSearch or Sampling, whose `decoder` attribute is the GPT-2
//! decoder in the form those operators run ([`GraphForm::SearchDecoder`], built from the same
//! blocks as every export), so a caller of `session.run` gets whole sequences.
//!
//! ```text
//! input_ids, attention_mask (int32), max_length, min_length, … ──► Search(decoder) ──► sequences
//! ```
//!
//! The decoder's weights are initializers of the outer graph (a subgraph reads its outer scope),
//! so external data works as for any export. `max_length` is clamped to `n_positions` in the graph:
//! a longer one never reaches the position table. What the operator fixes at export (attributes:
//! EOS and pad ids, `no_repeat_ngram_size`, beam search's `early_stopping`, sampling's
//! `temperature` and `top_p`) comes from generation_config.json and the export's options; what it
//! cannot do (top-k sampling, several EOS ids, typical-p, …) is refused here, not dropped. For a
//! Triton repository ([`Inputs::Fixed`]) every setting but the ids and mask is a constant.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::{BuildError, GraphForm, GraphOptions, Task, build_causal_lm, contract};
use crate::checkpoint::{Checkpoint, Gpt2Config};
use crate::ir::{AttrValue, DType, Dim, Graph, GraphBuilder, Op, SearchKind, Subgraph, Tensor, ValueId, ValueType};

/// The operator an export runs (`--generation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    Greedy,
    Beam,
    Sampling,
}

crate::named::named_enum!(Generation, "generation", {
    Greedy => "greedy-search",
    Beam => "beam-search",
    Sampling => "sampling",
});

impl Generation {
    pub fn kind(self) -> SearchKind {
        match self {
            Generation::Greedy => SearchKind::Greedy,
            Generation::Beam => SearchKind::Beam,
            Generation::Sampling => SearchKind::Sampling,
        }
    }
}

/// Settings given to the export (`--temperature`, `--top-p`, …); `None`: generation_config.json's
/// value, else transformers' default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchOverrides {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u64>,
    pub no_repeat_ngram_size: Option<u64>,
    pub early_stopping: Option<bool>,
    pub max_new_tokens: Option<u64>,
    pub max_length: Option<u64>,
    pub min_length: Option<u64>,
    pub num_beams: Option<u64>,
    pub num_return_sequences: Option<u64>,
    pub length_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
}

/// Everything the search node needs: its attributes, and the values its scalar inputs default to
/// (the constants of a Triton repository; what `gpt2c generate` feeds when not told otherwise).
#[derive(Clone, Debug, PartialEq)]
pub struct SearchSettings {
    pub generation: Generation,
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    pub no_repeat_ngram_size: i64,
    pub early_stopping: bool,
    pub temperature: f32,
    pub top_p: f32,
    /// New tokens after the prompt; when set, `max_length` is the prompt's length plus these.
    pub max_new_tokens: Option<i64>,
    pub max_length: i64,
    pub min_length: i64,
    pub num_beams: i64,
    pub num_return_sequences: i64,
    pub length_penalty: f32,
    pub repetition_penalty: f32,
    pub seed: i64,
}

/// A setting the search operator cannot take, named.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("--generation {generation}: `{setting}` {message}")]
pub struct SearchError {
    pub generation: Generation,
    pub setting: &'static str,
    pub message: String,
}

/// Settings of generation_config.json no search operator applies, each with the value that means
/// "off" (null, false, an empty list or the number given).
const UNSUPPORTED: [(&str, Option<f64>); 17] = [
    ("typical_p", Some(1.0)),
    ("min_p", None),
    ("epsilon_cutoff", Some(0.0)),
    ("eta_cutoff", Some(0.0)),
    ("diversity_penalty", Some(0.0)),
    ("num_beam_groups", Some(1.0)),
    ("bad_words_ids", None),
    ("force_words_ids", None),
    ("suppress_tokens", None),
    ("begin_suppress_tokens", None),
    ("forced_bos_token_id", None),
    ("forced_eos_token_id", None),
    ("sequence_bias", None),
    ("exponential_decay_length_penalty", None),
    ("renormalize_logits", None),
    ("stop_strings", None),
    ("max_time", None),
];

/// The largest `max_length` the operators accept (`kMaxSequenceLength`: 4096 for beam search,
/// 16384 for the others).
fn operator_max_length(g: Generation) -> i64 {
    if g == Generation::Beam { 4096 } else { 16384 }
}

fn is_off(value: &Value, off: Option<f64>) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(n) => off.is_some() && n.as_f64() == off,
        _ => false,
    }
}

impl SearchSettings {
    /// Resolves the settings of `generation` for a model with `config` and generation_config.json
    /// `generation_config`, the export's `overrides` first; refuses any the operator cannot honour.
    pub fn resolve(
        generation: Generation,
        config: &Gpt2Config,
        generation_config: &Map<String, Value>,
        overrides: &SearchOverrides,
    ) -> Result<SearchSettings, SearchError> {
        let fail = |setting, message: String| SearchError { generation, setting, message };
        let number = |key: &'static str| -> Result<Option<f64>, SearchError> {
            match generation_config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(other) => Err(fail(key, format!("in generation_config.json is {other}, expected a number"))),
            }
        };
        let count = |key: &'static str, given: Option<u64>, default: i64| -> Result<i64, SearchError> {
            let v = match given {
                Some(v) => i64::try_from(v).unwrap_or(i64::MAX),
                None => match number(key)? {
                    Some(x) if x >= 0.0 && x.fract() == 0.0 && x <= i32::MAX as f64 => x as i64,
                    Some(x) => return Err(fail(key, format!("({x}) must be a whole number from 0 to 2^31 − 1"))),
                    None => default,
                },
            };
            if v > i64::from(i32::MAX) {
                return Err(fail(key, format!("({v}) must be at most 2^31 − 1 (the operator's inputs are int32)")));
            }
            Ok(v)
        };
        let float = |key: &'static str, given: Option<f32>, default: f32| -> Result<f32, SearchError> {
            let v = match given {
                Some(v) => v,
                None => number(key)?.map_or(default, |x| x as f32),
            };
            if !v.is_finite() {
                return Err(fail(key, format!("({v}) must be finite")));
            }
            Ok(v)
        };
        for (key, off) in UNSUPPORTED {
            if let Some(v) = generation_config.get(key).filter(|v| !is_off(v, off)) {
                return Err(fail(
                    key,
                    format!("is {v} in generation_config.json; ONNX Runtime's search operators have no such setting"),
                ));
            }
        }
        // EOS: one id (the attribute is an int), from generation_config.json or config.json.
        let eos: Vec<i64> = match generation_config.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
            _ => config.eos_token_ids.iter().map(|&t| i64::from(t)).collect(),
        };
        let eos_token_id = match eos[..] {
            [one] => one,
            [] => -1,
            _ => return Err(fail("eos_token_id", format!("has {} ids ({eos:?}); the operators take one", eos.len()))),
        };
        let pad_token_id = match generation_config.get("pad_token_id").and_then(Value::as_i64) {
            Some(p) => p,
            None => config.pad_token_id.map_or(eos_token_id, i64::from),
        };
        if pad_token_id < 0 {
            return Err(fail("pad_token_id", "is not set and there is no EOS id to pad with".into()));
        }
        let vocab = config.vocab_size as i64;
        for (setting, id) in [("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)] {
            if id >= vocab {
                return Err(fail(setting, format!("({id}) is outside the vocabulary of {vocab} tokens")));
            }
        }
        let early_stopping = match (overrides.early_stopping, generation_config.get("early_stopping")) {
            (Some(e), _) => e,
            (None, None | Some(Value::Null)) => false,
            (None, Some(Value::Bool(b))) => *b,
            (None, Some(other)) => {
                return Err(fail(
                    "early_stopping",
                    format!("is {other}; BeamSearch's early_stopping is true or false (it has no \"never\")"),
                ));
            }
        };
        let max_new_tokens = match overrides.max_new_tokens {
            Some(_) => Some(count("max_new_tokens", overrides.max_new_tokens, 0)?),
            None if overrides.max_length.is_some() => None,
            None => number("max_new_tokens")?.map(|_| count("max_new_tokens", None, 0)).transpose()?,
        };
        let settings = SearchSettings {
            generation,
            eos_token_id,
            pad_token_id,
            no_repeat_ngram_size: count("no_repeat_ngram_size", overrides.no_repeat_ngram_size, 0)?,
            early_stopping,
            temperature: float("temperature", overrides.temperature, 1.0)?,
            top_p: float("top_p", overrides.top_p, 1.0)?,
            max_new_tokens,
            max_length: count("max_length", overrides.max_length, 20)?,
            min_length: count("min_length", overrides.min_length, 0)?,
            num_beams: count("num_beams", overrides.num_beams, 1)?,
            num_return_sequences: count("num_return_sequences", overrides.num_return_sequences, 1)?,
            length_penalty: float("length_penalty", overrides.length_penalty, 1.0)?,
            repetition_penalty: float("repetition_penalty", overrides.repetition_penalty, 1.0)?,
            seed: count("seed", overrides.seed, 0)?,
        };
        if settings.repetition_penalty <= 0.0 {
            return Err(fail("repetition_penalty", format!("({}) must be > 0", settings.repetition_penalty)));
        }
        let max_length = settings.max_new_tokens.unwrap_or(settings.max_length);
        if max_length < 1 || max_length > operator_max_length(generation) {
            let what = if settings.max_new_tokens.is_some() { "max_new_tokens" } else { "max_length" };
            let cap = operator_max_length(generation);
            return Err(fail(what, format!("({max_length}) must be from 1 to {cap}, the operator's limit")));
        }
        match generation {
            Generation::Greedy => {}
            Generation::Beam => {
                if !(1..=128).contains(&settings.num_beams) {
                    return Err(fail("num_beams", format!("({}) must be from 1 to 128", settings.num_beams)));
                }
                if settings.num_return_sequences < 1 || settings.num_return_sequences > settings.num_beams {
                    return Err(fail(
                        "num_return_sequences",
                        format!(
                            "({}) must be from 1 to num_beams ({}): beam search returns at most its beams",
                            settings.num_return_sequences, settings.num_beams
                        ),
                    ));
                }
            }
            Generation::Sampling => {
                let top_k = count("top_k", overrides.top_k, 50)?;
                if top_k > 0 {
                    return Err(fail(
                        "top_k",
                        format!(
                            "({top_k}{}) cannot be honoured: ONNX Runtime's Sampling has no top-k filter; pass --top-k 0 \
                             to sample with temperature and top-p alone",
                            if overrides.top_k.is_none() && generation_config.get("top_k").is_none() {
                                ", transformers' default"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                if settings.temperature <= 0.0 {
                    return Err(fail("temperature", format!("({}) must be > 0 to sample", settings.temperature)));
                }
                if !(settings.top_p > 0.0 && settings.top_p <= 1.0) {
                    return Err(fail("top_p", format!("({}) must be in (0, 1]", settings.top_p)));
                }
            }
        }
        if generation != Generation::Beam && (settings.num_beams > 1 || settings.num_return_sequences > 1) {
            let setting = if settings.num_beams > 1 { "num_beams" } else { "num_return_sequences" };
            return Err(fail(
                setting,
                format!(
                    "is more than 1; {} returns one sequence per prompt (use --generation beam-search)",
                    generation.kind().op_type()
                ),
            ));
        }
        Ok(settings)
    }

    /// The node's attributes as JSON (the `gpt2c.search` metadata runtimes check a call against).
    pub fn fixed_json(&self) -> String {
        serde_json::json!({
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "early_stopping": self.early_stopping,
            "temperature": self.temperature,
            "top_p": self.top_p,
        })
        .to_string()
    }

    /// `generation_config` with what the node fixed written in, so a caller's defaults are ones the
    /// node runs: the search, EOS and pad ids, the attributes, and no top-k for sampling.
    pub fn generation_config(&self, mut generation_config: Map<String, Value>) -> Map<String, Value> {
        let mut set = |k: &str, v: Value| {
            generation_config.insert(k.into(), v);
        };
        set("eos_token_id", self.eos_token_id.into());
        set("pad_token_id", self.pad_token_id.into());
        set("no_repeat_ngram_size", self.no_repeat_ngram_size.into());
        set("do_sample", (self.generation == Generation::Sampling).into());
        match self.generation {
            Generation::Greedy => {}
            Generation::Beam => {
                set("early_stopping", self.early_stopping.into());
                set("num_beams", self.num_beams.into());
                set("num_return_sequences", self.num_return_sequences.into());
            }
            Generation::Sampling => {
                set("temperature", serde_json::json!(self.temperature));
                set("top_p", serde_json::json!(self.top_p));
                set("top_k", 0.into());
            }
        }
        generation_config
    }

    /// The node's attributes, in a fixed order.
    fn attributes(&self) -> Vec<(&'static str, AttrValue)> {
        let mut a = vec![
            ("eos_token_id", AttrValue::Int(self.eos_token_id)),
            ("pad_token_id", AttrValue::Int(self.pad_token_id)),
            ("model_type", AttrValue::Int(0)),
            ("no_repeat_ngram_size", AttrValue::Int(self.no_repeat_ngram_size)),
        ];
        match self.generation {
            Generation::Greedy => {}
            Generation::Beam => a.push(("early_stopping", AttrValue::Int(i64::from(self.early_stopping)))),
            Generation::Sampling => a.extend([
                ("temperature", AttrValue::Float(self.temperature)),
                ("top_p", AttrValue::Float(self.top_p)),
                // Filtered tokens get a very low finite score (never NaN), at least one is kept.
                ("filter_value", AttrValue::Float(-1e20)),
                ("min_tokens_to_keep", AttrValue::Int(1)),
                ("custom", AttrValue::Int(0)),
                ("presence_penalty", AttrValue::Float(0.0)),
            ]),
        }
        a
    }
}

/// Where the search node's scalar inputs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inputs {
    /// Graph inputs under the operator's names (`max_length`, `num_beams`, …), fed per call.
    Fed,
    /// Constants of the graph (from [`SearchSettings`]); the graph takes only `input_ids` and
    /// `attention_mask`, as Triton's dynamic batcher stacks every input along a batch axis.
    Fixed,
}

/// A `[1]` int32 tensor (the operators' scalar inputs).
fn scalar_i32(v: i64) -> Result<Tensor, BuildError> {
    let v = i32::try_from(v).unwrap_or(i32::MAX);
    Tensor::from_bytes(DType::I32, vec![1], v.to_le_bytes().to_vec()).ok_or_else(|| bad_scalar("int32"))
}

/// A `[1]` float tensor.
fn scalar_f32(v: f32) -> Result<Tensor, BuildError> {
    Tensor::from_f32(vec![1], &[v]).ok_or_else(|| bad_scalar("float"))
}

fn bad_scalar(what: &str) -> BuildError {
    crate::ir::GraphError { at: "search".into(), message: format!("a {what} scalar") }.into()
}

/// The search graph of `settings.generation` over the checkpoint's decoder.
pub fn build_search(
    ckpt: &Checkpoint,
    options: &GraphOptions,
    settings: &SearchSettings,
    inputs: Inputs,
) -> Result<Graph, BuildError> {
    let decoder_options =
        GraphOptions { form: GraphForm::SearchDecoder, task: Some(Task::TextGenerationWithPast), ..options.clone() };
    let mut decoder = build_causal_lm(ckpt, &decoder_options)?;
    let weights = decoder.take_initializers();
    let mut b = GraphBuilder::new("gpt2c", options.opset);
    let tokens = ValueType::new(DType::I32, vec![Dim::sym(contract::BATCH), Dim::sym(contract::SEQUENCE)]);
    let input_ids = b.input("input_ids", tokens.clone())?;
    let attention_mask = b.input("attention_mask", tokens)?;
    for (name, init) in weights {
        b.adopt_initializer(&name, init)?;
    }
    let one = vec![Dim::fixed(1)];
    let scalar = |b: &mut GraphBuilder, name: &str, fixed: Result<Tensor, BuildError>| -> Result<ValueId, BuildError> {
        let fixed = fixed?;
        Ok(match inputs {
            Inputs::Fed => b.input(name, ValueType::new(fixed.dtype, one.clone()))?,
            Inputs::Fixed => b.constant(fixed)?,
        })
    };
    let kind = settings.generation.kind();
    let mut node_inputs = Vec::with_capacity(kind.inputs().len());
    for &(name, _) in kind.inputs() {
        let v = match name {
            "input_ids" => input_ids,
            "attention_mask" => attention_mask,
            "max_length" => {
                let requested = match (inputs, settings.max_new_tokens) {
                    // Fixed with max_new_tokens: the prompt's length plus them.
                    (Inputs::Fixed, Some(new)) => b.scoped("max_length", |b| {
                        let shape = b.shape_of(input_ids)?;
                        let index = b.const_i64(&[1])?;
                        let length = b.gather(shape, index, 0)?;
                        let length = b.cast(length, DType::I32)?;
                        let new = b.constant(scalar_i32(new)?)?;
                        Ok::<_, BuildError>(b.add(length, new)?)
                    })?,
                    _ => scalar(&mut b, "max_length", scalar_i32(settings.max_length))?,
                };
                // Never past the position table.
                b.scoped("max_length", |b| {
                    let limit = b.constant(scalar_i32(ckpt.config.n_positions as i64)?)?;
                    Ok::<_, BuildError>(b.node1(Op::Min, &[requested, limit])?)
                })?
            }
            "min_length" => scalar(&mut b, "min_length", scalar_i32(settings.min_length))?,
            "num_beams" => scalar(&mut b, "num_beams", scalar_i32(settings.num_beams))?,
            "num_return_sequences" => {
                scalar(&mut b, "num_return_sequences", scalar_i32(settings.num_return_sequences))?
            }
            "length_penalty" => scalar(&mut b, "length_penalty", scalar_f32(settings.length_penalty))?,
            "repetition_penalty" => scalar(&mut b, "repetition_penalty", scalar_f32(settings.repetition_penalty))?,
            "seed" => scalar(&mut b, "seed", scalar_i32(settings.seed))?,
            other => {
                return Err(
                    crate::ir::GraphError { at: other.into(), message: "an input the search takes".into() }.into()
                );
            }
        };
        node_inputs.push(v);
    }
    let op = Op::Search { kind, decoder: Subgraph(Arc::new(decoder)), attributes: settings.attributes() };
    let outputs = b.node(op, &node_inputs)?;
    let batch = Dim::sym(contract::BATCH);
    let max_length = Dim::sym("max_length");
    match (kind, &outputs[..]) {
        (SearchKind::Beam, &[sequences, scores]) => {
            let returned = Dim::sym("num_return_sequences");
            let ty = ValueType::new(DType::I32, vec![batch.clone(), returned.clone(), max_length]);
            b.output(sequences, "sequences", &ty)?;
            b.output(scores, "sequences_scores", &ValueType::new(DType::F32, vec![batch, returned]))?;
        }
        (_, &[sequences]) => {
            b.output(sequences, "sequences", &ValueType::new(DType::I32, vec![batch, max_length]))?;
        }
        _ => {
            return Err(
                crate::ir::GraphError { at: kind.op_type().into(), message: "unexpected outputs".into() }.into()
            );
        }
    }
    Ok(b.finish())
}
