//! `config.json` of a GPT-2 checkpoint: the raw form with transformers' defaults,
//! and the validated [`Gpt2Config`] the compiler builds from.
//!
//! [`RawGpt2Config`] mirrors `transformers.GPT2Config` (4.57) field by field,
//! including its defaults and its aliases (`hidden_size` for `n_embd`, ...).
//! [`Gpt2Config::from_raw`] checks the invariants a graph needs and says which
//! field is wrong and what was expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

/// Errors in `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: expected a JSON object at the top level")]
    NotAnObject { path: PathBuf },
    #[error("{path}: field `{field}`: {message}")]
    Field { path: PathBuf, field: String, message: String },
    #[error("{path}: `{a}` = {va} contradicts its alias `{b}` = {vb}")]
    Contradiction { path: PathBuf, a: String, va: String, b: String, vb: String },
}

/// transformers' `attribute_map` for GPT-2: alias → canonical name.
const ALIASES: [(&str, &str); 4] = [
    ("hidden_size", "n_embd"),
    ("max_position_embeddings", "n_positions"),
    ("num_attention_heads", "n_head"),
    ("num_hidden_layers", "n_layer"),
];

/// `eos_token_id` may be one id or a list of them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

/// config.json as transformers reads it, with `GPT2Config`'s defaults.
#[derive(Clone, Debug, Deserialize)]
pub struct RawGpt2Config {
    #[serde(default = "d_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d_n_positions")]
    pub n_positions: i64,
    #[serde(default = "d_n_embd")]
    pub n_embd: i64,
    #[serde(default = "d_n_layer")]
    pub n_layer: i64,
    #[serde(default = "d_n_head")]
    pub n_head: i64,
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "d_activation")]
    pub activation_function: String,
    #[serde(default = "d_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "d_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "d_dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "d_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_summary_type")]
    pub summary_type: String,
    #[serde(default = "d_true")]
    pub summary_use_proj: bool,
    #[serde(default)]
    pub summary_activation: Option<String>,
    #[serde(default = "d_true")]
    pub summary_proj_to_labels: bool,
    #[serde(default = "d_dropout")]
    pub summary_first_dropout: f64,
    #[serde(default = "d_true")]
    pub scale_attn_weights: bool,
    #[serde(default = "d_true")]
    pub use_cache: bool,
    #[serde(default = "d_token")]
    pub bos_token_id: Option<i64>,
    #[serde(default = "d_eos")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub num_labels: Option<i64>,
}

fn d_vocab_size() -> i64 {
    50257
}
fn d_n_positions() -> i64 {
    1024
}
fn d_n_embd() -> i64 {
    768
}
fn d_n_layer() -> i64 {
    12
}
fn d_n_head() -> i64 {
    12
}
fn d_activation() -> String {
    "gelu_new".into()
}
fn d_dropout() -> f64 {
    0.1
}
fn d_layer_norm_epsilon() -> f64 {
    1e-5
}
fn d_initializer_range() -> f64 {
    0.02
}
fn d_summary_type() -> String {
    "cls_index".into()
}
fn d_true() -> bool {
    true
}
fn d_token() -> Option<i64> {
    Some(50256)
}
fn d_eos() -> Option<TokenIds> {
    Some(TokenIds::One(50256))
}

/// The MLP activations transformers' `ACT2FN` offers that a GPT-2 config can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_accurate`: the tanh approximation.
    GeluTanh,
    /// `gelu`, `gelu_python`: the exact erf form.
    Gelu,
    /// `gelu_fast`: `0.5x(1 + tanh(0.7978845608x(1 + 0.044715x²)))`.
    GeluFast,
    /// `gelu_10`: exact gelu clipped to [-10, 10].
    Gelu10,
    /// `quick_gelu`: `x·sigmoid(1.702x)`.
    QuickGelu,
    Relu,
    /// `relu2`: `relu(x)²`.
    Relu2,
    Relu6,
    /// `silu` and `swish`.
    Silu,
    Tanh,
    Sigmoid,
    /// `leaky_relu` with PyTorch's default slope 0.01.
    LeakyRelu,
    /// `mish`: `x·tanh(softplus(x))`.
    Mish,
    /// `linear`: the identity.
    Linear,
}

impl Activation {
    /// Every name accepted in `activation_function`.
    pub const NAMES: [&'static str; 18] = [
        "gelu_new",
        "gelu_pytorch_tanh",
        "gelu_accurate",
        "gelu",
        "gelu_python",
        "gelu_fast",
        "gelu_10",
        "quick_gelu",
        "relu",
        "relu2",
        "relu6",
        "silu",
        "swish",
        "tanh",
        "sigmoid",
        "leaky_relu",
        "mish",
        "linear",
    ];

    pub fn from_name(name: &str) -> Option<Activation> {
        Some(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_accurate" => Activation::GeluTanh,
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_fast" => Activation::GeluFast,
            "gelu_10" => Activation::Gelu10,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "relu2" => Activation::Relu2,
            "relu6" => Activation::Relu6,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "leaky_relu" => Activation::LeakyRelu,
            "mish" => Activation::Mish,
            "linear" => Activation::Linear,
            _ => return None,
        })
    }
}

/// A checked GPT-2 configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// `head_dim = n_embd / n_head`.
    pub head_dim: usize,
    /// MLP width: `n_inner`, or `4 * n_embd` when unset.
    pub n_inner: usize,
    pub activation: Activation,
    pub activation_name: String,
    pub layer_norm_epsilon: f32,
    pub scale_attn_weights: bool,
    pub scale_attn_by_inverse_layer_idx: bool,
    pub reorder_and_upcast_attn: bool,
    pub add_cross_attention: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub architectures: Vec<String>,
    /// Labels of classification heads: `len(id2label)`, else `num_labels`, else transformers' 2.
    pub num_labels: usize,
    /// Standard deviation of transformers' weight initialisation (`--random-init`).
    pub initializer_range: f64,
    /// The double-heads model's sequence summary.
    pub summary: Summary,
}

/// How `SequenceSummary` (GPT2DoubleHeadsModel's multiple-choice head) pools a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummaryType {
    Last,
    First,
    Mean,
    /// At the token given by `mc_token_ids`.
    ClsIndex,
}

/// `summary_*` fields of config.json, as written: only the multiple-choice head reads them, so
/// they are checked when that head is built ([`Summary::kind`], [`Summary::activation`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub type_name: String,
    pub use_proj: bool,
    /// Project to `num_labels` classes (else to `n_embd`).
    pub proj_to_labels: bool,
    pub activation_name: Option<String>,
}

impl Summary {
    pub fn kind(&self) -> Result<SummaryType, String> {
        Ok(match self.type_name.as_str() {
            "last" => SummaryType::Last,
            "first" => SummaryType::First,
            "mean" => SummaryType::Mean,
            "cls_index" => SummaryType::ClsIndex,
            other => {
                return Err(format!(
                    "config.json: field `summary_type`: {other:?} is not supported; expected last, first, mean or \
                     cls_index (transformers does not implement \"attn\")"
                ));
            }
        })
    }

    /// `summary_activation` (none or empty = identity).
    pub fn activation(&self) -> Result<Option<Activation>, String> {
        match self.activation_name.as_deref() {
            None | Some("") => Ok(None),
            Some(name) => Activation::from_name(name).map(Some).ok_or_else(|| {
                format!(
                    "config.json: field `summary_activation`: unknown activation {name:?}; expected one of: {}",
                    Activation::NAMES.join(", ")
                )
            }),
        }
    }
}

impl Gpt2Config {
    /// Reads and validates `config.json`.
    pub fn load(path: &Path) -> Result<(Gpt2Config, Map<String, Value>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Gpt2Config::parse(path, &text)
    }

    /// Parses config text; `path` is only used in messages. Returns the config and the raw JSON object.
    pub fn parse(path: &Path, text: &str) -> Result<(Gpt2Config, Map<String, Value>), ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|source| ConfigError::Json { path: path.into(), source })?;
        let Value::Object(original) = value else {
            return Err(ConfigError::NotAnObject { path: path.into() });
        };
        let mut map = original.clone();
        for (alias, canonical) in ALIASES {
            if let Some(v) = map.remove(alias) {
                match map.get(canonical) {
                    Some(c) if c != &v => {
                        return Err(ConfigError::Contradiction {
                            path: path.into(),
                            a: canonical.into(),
                            va: c.to_string(),
                            b: alias.into(),
                            vb: v.to_string(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        map.insert(canonical.to_string(), v);
                    }
                }
            }
        }
        let raw = RawGpt2Config::deserialize(Value::Object(map)).map_err(|e| {
            // serde names the field in its message ("invalid type: ... for field `n_head`" is not
            // guaranteed), so find the offending field by checking each one on its own.
            let field = first_bad_field(&original).unwrap_or_else(|| "?".into());
            ConfigError::Field { path: path.into(), field, message: e.to_string() }
        })?;
        Ok((Gpt2Config::from_raw(path, &raw)?, original))
    }

    /// Validates a raw config.
    pub fn from_raw(path: &Path, raw: &RawGpt2Config) -> Result<Gpt2Config, ConfigError> {
        let field =
            |field: &str, message: String| ConfigError::Field { path: path.into(), field: field.into(), message };
        let positive = |name: &str, v: i64| -> Result<usize, ConfigError> {
            match u64::try_from(v) {
                Ok(n) if n > MAX_DIM => {
                    Err(field(name, format!("{v} is too large; expected at most 2^40 ({MAX_DIM})")))
                }
                Ok(n) if n > 0 => usize::try_from(n).map_err(|_| {
                    field(name, format!("{v} is too large for this platform's {}-bit sizes", usize::BITS))
                }),
                _ => Err(field(name, format!("must be a positive integer, found {v}"))),
            }
        };
        let vocab_size = positive("vocab_size", raw.vocab_size)?;
        let n_positions = positive("n_positions", raw.n_positions)?;
        let n_embd = positive("n_embd", raw.n_embd)?;
        let n_layer = positive("n_layer", raw.n_layer)?;
        let n_head = positive("n_head", raw.n_head)?;
        if n_embd % n_head != 0 {
            return Err(field(
                "n_embd",
                format!("must be divisible by n_head ({n_head}) to split into attention heads, found {n_embd}"),
            ));
        }
        let n_inner = match raw.n_inner {
            Some(v) => positive("n_inner", v)?,
            None => 4 * n_embd,
        };
        let num_labels = match (&raw.id2label, raw.num_labels) {
            (Some(labels), _) if !labels.is_empty() => labels.len(),
            (_, Some(n)) => positive("num_labels", n)?,
            _ => 2,
        };
        check_sizes(path, vocab_size, n_positions, n_embd, n_layer, n_inner, num_labels)?;
        let activation = Activation::from_name(&raw.activation_function).ok_or_else(|| {
            field(
                "activation_function",
                format!(
                    "unknown activation {:?}; expected one of: {}",
                    raw.activation_function,
                    Activation::NAMES.join(", ")
                ),
            )
        })?;
        let eps = raw.layer_norm_epsilon;
        if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
            return Err(field("layer_norm_epsilon", format!("must be a small positive number, found {eps}")));
        }
        if let Some(t) = raw.model_type.as_deref().filter(|t| *t != "gpt2") {
            return Err(field(
                "model_type",
                format!("is {t:?}; gpt2c compiles GPT-2 checkpoints (model_type \"gpt2\")"),
            ));
        }
        let token = |name: &str, id: i64| -> Result<u32, ConfigError> {
            u32::try_from(id).ok().filter(|&t| (t as usize) < vocab_size).ok_or_else(|| {
                field(name, format!("token id {id} is outside the vocabulary (vocab_size {vocab_size})"))
            })
        };
        let bos_token_id = raw.bos_token_id.map(|t| token("bos_token_id", t)).transpose()?;
        let pad_token_id = raw.pad_token_id.map(|t| token("pad_token_id", t)).transpose()?;
        let eos_token_ids = match &raw.eos_token_id {
            None => Vec::new(),
            Some(TokenIds::One(t)) => vec![token("eos_token_id", *t)?],
            Some(TokenIds::Many(ts)) => ts.iter().map(|t| token("eos_token_id", *t)).collect::<Result<_, _>>()?,
        };
        if !(raw.initializer_range.is_finite() && raw.initializer_range >= 0.0) {
            return Err(field(
                "initializer_range",
                format!("must be a non-negative number, found {}", raw.initializer_range),
            ));
        }
        let summary = Summary {
            type_name: raw.summary_type.clone(),
            use_proj: raw.summary_use_proj,
            proj_to_labels: raw.summary_proj_to_labels,
            activation_name: raw.summary_activation.clone(),
        };
        Ok(Gpt2Config {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            head_dim: n_embd / n_head,
            n_inner,
            activation,
            activation_name: raw.activation_function.clone(),
            layer_norm_epsilon: eps as f32,
            scale_attn_weights: raw.scale_attn_weights,
            scale_attn_by_inverse_layer_idx: raw.scale_attn_by_inverse_layer_idx,
            reorder_and_upcast_attn: raw.reorder_and_upcast_attn,
            add_cross_attention: raw.add_cross_attention,
            tie_word_embeddings: raw.tie_word_embeddings,
            bos_token_id,
            eos_token_ids,
            pad_token_id,
            architectures: raw.architectures.clone().unwrap_or_default(),
            num_labels,
            summary,
            initializer_range: raw.initializer_range,
        })
    }
}

/// Largest size accepted for any one dimension (`vocab_size`, `n_embd`, ...).
pub const MAX_DIM: u64 = 1 << 40;

/// Largest element count of a tensor, or of the whole model: its bytes in the widest element
/// type (8) must fit the i64 sizes and offsets of ONNX, and usize arithmetic.
pub const MAX_ELEMENTS: u64 = i64::MAX as u64 / 8;

/// Checks that the tensors the config implies, and the model as a whole, have element counts
/// that `usize`/`i64` arithmetic can hold, naming the field that makes one too large.
fn check_sizes(
    path: &Path,
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_inner: usize,
    num_labels: usize,
) -> Result<(), ConfigError> {
    let [v, p, e, l, i, c] = [vocab_size, n_positions, n_embd, n_layer, n_inner, num_labels].map(|n| n as u64);
    let elements = |field: &str, what: &str, factors: &[u64]| -> Result<u64, ConfigError> {
        factors.iter().try_fold(1u64, |acc, &f| acc.checked_mul(f)).filter(|&n| n <= MAX_ELEMENTS).ok_or_else(|| {
            let values: Vec<String> = factors.iter().map(u64::to_string).collect();
            ConfigError::Field {
                path: path.into(),
                field: field.into(),
                message: format!(
                    "{what} ({}) has more than 2^60 elements; expected a size whose bytes fit in 64 bits",
                    values.join(" × ")
                ),
            }
        })
    };
    let wte = elements("vocab_size", "the token embedding, vocab_size × n_embd", &[v, e])?;
    let wpe = elements("n_positions", "the position embedding, n_positions × n_embd", &[p, e])?;
    let c_attn = elements("n_embd", "the attention projection, n_embd × 3·n_embd", &[e, 3 * e])?;
    let c_fc = elements("n_inner", "the MLP projection, n_embd × n_inner", &[e, i])?;
    let head = elements("num_labels", "the classification head, num_labels × n_embd", &[c, e])?;
    elements("n_layer", "the key/value cache, 2 × n_layer × n_positions × n_embd", &[2, l, p, e])?;
    // Per layer: c_attn, c_proj (e × e), c_fc and its transpose, biases and LayerNorms (< 16·e + i);
    // the unchecked terms are below c_attn and c_fc, already checked.
    let layer = [c_attn, e * e, 2 * c_fc, 16 * e + i].iter().try_fold(0u64, |acc, &n| acc.checked_add(n));
    let layers = layer.and_then(|n| n.checked_mul(l));
    let total =
        [Some(wte), Some(wte), Some(wpe), Some(head), layers].into_iter().try_fold(0u64, |acc, n| acc.checked_add(n?));
    if total.is_none_or(|n| n > MAX_ELEMENTS) {
        return Err(ConfigError::Field {
            path: path.into(),
            field: "n_layer".into(),
            message: format!(
                "{l} layers of n_embd {e} and n_inner {i} (with vocab_size {v}) make a model of more than 2^60 \
                 parameters; expected one whose bytes fit in 64 bits"
            ),
        });
    }
    Ok(())
}

/// Finds the first field whose value alone fails to deserialize, for error messages.
fn first_bad_field(map: &Map<String, Value>) -> Option<String> {
    map.iter().find_map(|(k, v)| {
        let canonical = ALIASES.iter().find(|(a, _)| a == k).map_or(k.as_str(), |(_, c)| c);
        let single = Value::Object(Map::from_iter([(canonical.to_string(), v.clone())]));
        RawGpt2Config::deserialize(single).is_err().then(|| k.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Gpt2Config, ConfigError> {
        Gpt2Config::parse(Path::new("config.json"), text).map(|(c, _)| c)
    }

    #[test]
    fn empty_object_gives_transformers_defaults() {
        let c = parse("{}").unwrap();
        assert_eq!((c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head), (50257, 1024, 768, 12, 12));
        assert_eq!((c.head_dim, c.n_inner), (64, 3072));
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(c.layer_norm_epsilon, 1e-5);
        assert!(c.scale_attn_weights && !c.scale_attn_by_inverse_layer_idx && !c.reorder_and_upcast_attn);
        assert_eq!((c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id), (Some(50256), vec![50256], None));
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn aliases_and_contradictions() {
        let c = parse(r#"{"hidden_size": 64, "num_attention_heads": 4, "n_layer": 2}"#).unwrap();
        assert_eq!((c.n_embd, c.n_head, c.n_layer), (64, 4, 2));
        assert!(parse(r#"{"n_embd": 64, "hidden_size": 64, "n_head": 4}"#).is_ok());
        let e = parse(r#"{"n_embd": 64, "hidden_size": 32}"#).unwrap_err().to_string();
        assert!(e.contains("`n_embd` = 64 contradicts its alias `hidden_size` = 32"), "{e}");
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (r#"{"n_embd": 30, "n_head": 4}"#, "n_embd", "divisible by n_head"),
            (r#"{"activation_function": "swiglu"}"#, "activation_function", "unknown activation \"swiglu\""),
            (r#"{"n_head": "four"}"#, "n_head", "invalid type"),
            (r#"{"n_layer": 0}"#, "n_layer", "positive integer"),
            (r#"{"eos_token_id": 60000}"#, "eos_token_id", "outside the vocabulary"),
            (r#"{"model_type": "llama"}"#, "model_type", "GPT-2"),
            (r#"{"layer_norm_epsilon": -1}"#, "layer_norm_epsilon", "small positive"),
            (r#"{"n_inner": -5}"#, "n_inner", "positive"),
        ];
        for (text, field, needle) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("field `{field}`")) && e.contains(needle), "{text}: {e}");
        }
        assert!(parse("[1, 2]").unwrap_err().to_string().contains("JSON object"));
        assert!(parse("{").unwrap_err().to_string().contains("not valid JSON"));
    }

    #[test]
    fn eos_lists_and_null_tokens() {
        let c = parse(r#"{"eos_token_id": [5, 7], "bos_token_id": null, "pad_token_id": 3}"#).unwrap();
        assert_eq!((c.eos_token_ids, c.bos_token_id, c.pad_token_id), (vec![5, 7], None, Some(3)));
    }

    #[test]
    fn sizes_that_overflow_are_rejected_with_the_field_named() {
        let big = 1u64 << 40;
        let cases = [
            (
                format!(r#"{{"vocab_size": {big}, "n_embd": 2097152, "n_head": 1}}"#),
                "vocab_size",
                "vocab_size × n_embd (1099511627776 × 2097152) has more than 2^60 elements",
            ),
            (
                format!(r#"{{"n_positions": {big}, "n_embd": 1048576, "n_head": 1, "vocab_size": 2}}"#),
                "n_positions",
                "n_positions × n_embd",
            ),
            (r#"{"n_embd": 2147483648, "n_head": 1, "vocab_size": 2, "n_positions": 1}"#.into(), "n_embd", "3·n_embd"),
            (
                format!(r#"{{"n_inner": {big}, "n_embd": 1048576, "n_head": 1, "vocab_size": 2, "n_positions": 1}}"#),
                "n_inner",
                "n_embd × n_inner",
            ),
            (
                format!(r#"{{"num_labels": {big}, "n_embd": 1048576, "n_head": 1}}"#),
                "num_labels",
                "num_labels × n_embd",
            ),
            (
                format!(r#"{{"n_layer": {big}, "n_positions": 1048576, "n_embd": 1024, "n_head": 1}}"#),
                "n_layer",
                "key/value cache",
            ),
            (
                format!(r#"{{"n_layer": {big}, "n_positions": 1, "n_embd": 65536, "n_head": 1}}"#),
                "n_layer",
                "2^60 parameters",
            ),
            (format!(r#"{{"n_layer": {}}}"#, big + 1), "n_layer", "1099511627777 is too large; expected at most 2^40"),
            (format!(r#"{{"vocab_size": {}}}"#, i64::MAX), "vocab_size", "too large"),
        ];
        for (text, field, needle) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(&format!("field `{field}`")) && e.contains(needle), "{text}: {e}");
        }
        // Beyond i64: serde's error, still naming the field.
        let e = parse(r#"{"n_embd": 18446744073709551616}"#).unwrap_err().to_string();
        assert!(e.contains("field `n_embd`"), "{e}");
        // gpt2-xl, the largest GPT-2, is well inside the limits.
        assert!(parse(r#"{"n_embd": 1600, "n_layer": 48, "n_head": 25}"#).is_ok());
    }

    #[test]
    fn every_listed_activation_parses() {
        for name in Activation::NAMES {
            assert!(Activation::from_name(name).is_some(), "{name}");
        }
    }
}
