//! The export contract as a specification: for a task and a config, the inputs and outputs an
//! export must declare (names, element types, dimension names), written out here from optimum's
//! conventions rather than taken from the graph builder, so verify catches the builder drifting.

use gpt2c_proto::{self as pb, DataType, tensor_shape_proto::dimension};

use super::structure::{Check, Finding};
use gpt2c_compiler::checkpoint::Gpt2Config;
use gpt2c_compiler::gpt2::Task;

/// One declared input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    pub name: String,
    pub elem: DataType,
    /// Numbers or dimension names (`past_sequence_length + sequence_length`).
    pub dims: Vec<String>,
}

/// What an export of `task` must declare.
#[derive(Clone, Debug)]
pub struct Contract {
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

const BATCH: &str = "batch_size";
const SEQ: &str = "sequence_length";
const PAST: &str = "past_sequence_length";
const TOTAL: &str = "past_sequence_length + sequence_length";
const ENC: &str = "encoder_sequence_length";
const PAST_ENC: &str = "past_encoder_sequence_length";
const ENC_TOTAL: &str = "past_encoder_sequence_length + encoder_sequence_length";

/// `past_key_values.{layer}.key` and the other cache names, spelled here once for verify (the
/// compiler and the runtime spell their own: verify checks them against this).
pub fn past_key(layer: usize) -> String {
    format!("past_key_values.{layer}.key")
}
pub fn past_value(layer: usize) -> String {
    format!("past_key_values.{layer}.value")
}
pub fn past_cross_key(layer: usize) -> String {
    format!("past_key_values.{layer}.encoder.key")
}
pub fn past_cross_value(layer: usize) -> String {
    format!("past_key_values.{layer}.encoder.value")
}
pub fn present_key(layer: usize) -> String {
    format!("present.{layer}.key")
}
pub fn present_value(layer: usize) -> String {
    format!("present.{layer}.value")
}
pub fn present_cross_key(layer: usize) -> String {
    format!("present.{layer}.encoder.key")
}
pub fn present_cross_value(layer: usize) -> String {
    format!("present.{layer}.encoder.value")
}

fn port(name: impl Into<String>, elem: DataType, dims: &[&str]) -> Port {
    Port { name: name.into(), elem, dims: dims.iter().map(|d| d.to_string()).collect() }
}

impl Contract {
    /// The contract of `task` for `config`, with float inputs and outputs of type `float`.
    pub fn new(c: &Gpt2Config, task: Task, float: DataType) -> Contract {
        let (heads, head_dim, width, vocab) =
            (c.n_head.to_string(), c.head_dim.to_string(), c.n_embd.to_string(), c.vocab_size.to_string());
        let labels = c.num_labels.to_string();
        // Without pad_token_id, transformers' sequence classification takes one row at a time.
        let batch = if task == Task::TextClassification && c.pad_token_id.is_none() { "1" } else { BATCH };
        let mc = task == Task::MultipleChoice;
        let lead: Vec<&str> = if mc { vec![batch, "num_choices"] } else { vec![batch] };
        let past = task.with_past();
        let tokens = [lead.as_slice(), &[SEQ]].concat();
        // The mask spans the cache too.
        let mask = [lead.as_slice(), &[if past { TOTAL } else { SEQ }]].concat();
        let mut inputs =
            vec![port("input_ids", DataType::Int64, &tokens), port("attention_mask", DataType::Int64, &mask)];
        if task.takes_position_ids() {
            inputs.push(port("position_ids", DataType::Int64, &tokens));
        }
        let cache = |length: &str| [batch, heads.as_str(), length, head_dim.as_str()].map(String::from);
        type Names = (fn(usize) -> String, fn(usize) -> String);
        let cache_ports = |(key, value): Names, length: &str| -> Vec<Port> {
            (0..c.n_layer)
                .flat_map(|i| [key(i), value(i)].map(|name| Port { name, elem: float, dims: cache(length).to_vec() }))
                .collect()
        };
        if past {
            inputs.extend(cache_ports((past_key, past_value), PAST));
        }
        if mc {
            inputs.push(port("mc_token_ids", DataType::Int64, &[batch, "num_choices"]));
        }
        let cross = task.cross_attends(c);
        if cross {
            inputs.push(port("encoder_hidden_states", float, &[batch, ENC, &width]));
            inputs.push(port("encoder_attention_mask", DataType::Int64, &[batch, if past { ENC_TOTAL } else { ENC }]));
            if past {
                inputs.extend(cache_ports((past_cross_key, past_cross_value), PAST_ENC));
            }
        }
        let mut outputs = match task {
            Task::TextGeneration | Task::TextGenerationWithPast => vec![port("logits", float, &[batch, SEQ, &vocab])],
            Task::FeatureExtraction | Task::FeatureExtractionWithPast => {
                vec![port("last_hidden_state", float, &[batch, SEQ, &width])]
            }
            Task::TextClassification => vec![port("logits", float, &[batch, &labels])],
            Task::TokenClassification => vec![port("logits", float, &[batch, SEQ, &labels])],
            Task::QuestionAnswering => {
                vec![port("start_logits", float, &[batch, SEQ]), port("end_logits", float, &[batch, SEQ])]
            }
            Task::MultipleChoice => vec![
                port("logits", float, &[batch, "num_choices", SEQ, &vocab]),
                Port { name: "mc_logits".into(), elem: float, dims: mc_logits_dims(c, batch) },
            ],
        };
        if past {
            outputs.extend(cache_ports((present_key, present_value), TOTAL));
            if cross {
                outputs.extend(cache_ports((present_cross_key, present_cross_value), ENC_TOTAL));
            }
        }
        Contract { inputs, outputs }
    }
}

/// `mc_logits` of transformers' `GPT2SequenceSummary`: `cls_index` pools each choice, while
/// `last`, `first` and `mean` act on dim 1 of the 4-D hidden state (the choices), leaving the
/// sequence; the projection's width is squeezed when it is 1. `GPT2DoubleHeadsModel` sets
/// `num_labels = 1` before building the summary, so a projection to labels is to one.
fn mc_logits_dims(c: &Gpt2Config, batch: &str) -> Vec<String> {
    let s = &c.summary;
    let second = if s.type_name == "cls_index" { "num_choices" } else { SEQ };
    let classes = if s.use_proj && s.proj_to_labels { 1 } else { c.n_embd };
    let mut dims = vec![batch.to_string(), second.to_string()];
    if classes != 1 {
        dims.push(classes.to_string());
    }
    dims
}

/// A declared value's element type and dims, as the contract spells them.
pub fn declared(v: &pb::ValueInfoProto) -> Option<(i32, Vec<String>)> {
    let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return None;
    };
    let dims = t
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(dimension::Value::DimValue(n)) => n.to_string(),
            Some(dimension::Value::DimParam(p)) => p.clone(),
            None => "?".into(),
        })
        .collect();
    Some((t.elem_type.unwrap_or(0), dims))
}

fn type_name(elem: i32) -> String {
    pb::data_type(elem).map_or(format!("type {elem}"), |d| format!("{d:?}").to_lowercase())
}

/// A dimension with its sum's terms in one order: `b + a` and `a + b` are the same dimension.
fn normalize(dim: &str) -> String {
    let mut terms: Vec<&str> = dim.split('+').map(str::trim).collect();
    terms.sort_unstable();
    terms.join(" + ")
}

/// Compares the graph's declared inputs and outputs with `contract` (by name: runtimes bind by name,
/// and optimum declares the cache before the mask).
pub fn check(graph: &pb::GraphProto, contract: &Contract) -> Vec<Finding> {
    let mut out = Vec::new();
    for (kind, declared_ports, wanted) in
        [("input", &graph.input, &contract.inputs), ("output", &graph.output, &contract.outputs)]
    {
        let mut f = |m: String| out.push(Finding { check: Check::Contract, message: m });
        for want in wanted.iter() {
            let Some(have) = declared_ports.iter().find(|v| v.name() == want.name) else {
                let names: Vec<&str> = declared_ports.iter().map(|v| v.name()).collect();
                f(format!("{kind} \"{}\" is missing (the graph declares {})", want.name, names.join(", ")));
                continue;
            };
            let Some((elem, dims)) = declared(have) else {
                f(format!("{kind} \"{}\" declares no tensor type and shape", want.name));
                continue;
            };
            if elem != want.elem as i32 {
                f(format!(
                    "{kind} \"{}\" is {} but the contract says {}",
                    want.name,
                    type_name(elem),
                    type_name(want.elem as i32)
                ));
            }
            if dims.iter().map(|d| normalize(d)).ne(want.dims.iter().map(|d| normalize(d))) {
                f(format!(
                    "{kind} \"{}\" has dims [{}], expected [{}]",
                    want.name,
                    dims.join(", "),
                    want.dims.join(", ")
                ));
            }
        }
        for have in declared_ports.iter().filter(|v| !wanted.iter().any(|w| w.name == v.name())) {
            f(format!("{kind} \"{}\" is not part of the contract", have.name()));
        }
    }
    out
}
