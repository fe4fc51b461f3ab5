//! The export contract: names, element types and dimension names of the
//! graph's inputs and outputs, matching optimum's `text-generation-with-past`
//! export (which transformers.js and onnxruntime-genai's decoder type read).
//! Other tasks ([`Task`]) keep the names and drop or change what they must:
//! without a cache there are no past/present tensors and `attention_mask` is
//! `[batch_size, sequence_length]`; tasks without `position_ids` number
//! positions from 0; `multiple-choice` takes `[batch_size, num_choices,
//! sequence_length]` ids and mask and `mc_token_ids` `[batch_size, num_choices]`.
//!
//! | name | type | shape |
//! |---|---|---|
//! | `input_ids` | int64 | `[batch_size, sequence_length]` |
//! | `attention_mask` | int64 | `[batch_size, past_sequence_length + sequence_length]` |
//! | `position_ids` | int64 | `[batch_size, sequence_length]` |
//! | `past_key_values.{i}.key` / `.value` | float | `[batch_size, n_head, past_sequence_length, head_dim]` |
//! | `logits` (out) | float | `[batch_size, sequence_length, vocab_size]` |
//! | `present.{i}.key` / `.value` (out) | float | `[batch_size, n_head, past_sequence_length + sequence_length, head_dim]` |

use super::task::Task;
use crate::checkpoint::Gpt2Config;
use crate::ir::{DType, Dim, GraphBuilder, GraphError, ValueId, ValueType};

pub const BATCH: &str = "batch_size";
pub const SEQUENCE: &str = "sequence_length";
pub const PAST: &str = "past_sequence_length";
pub const CHOICES: &str = "num_choices";
pub const ENCODER: &str = "encoder_sequence_length";
pub const PAST_ENCODER: &str = "past_encoder_sequence_length";

pub fn past_cross_key(i: usize) -> String {
    format!("past_key_values.{i}.encoder.key")
}
pub fn past_cross_value(i: usize) -> String {
    format!("past_key_values.{i}.encoder.value")
}
pub fn present_cross_key(i: usize) -> String {
    format!("present.{i}.encoder.key")
}
pub fn present_cross_value(i: usize) -> String {
    format!("present.{i}.encoder.value")
}

pub fn past_key(i: usize) -> String {
    format!("past_key_values.{i}.key")
}
pub fn past_value(i: usize) -> String {
    format!("past_key_values.{i}.value")
}
pub fn present_key(i: usize) -> String {
    format!("present.{i}.key")
}
pub fn present_value(i: usize) -> String {
    format!("present.{i}.value")
}

/// `past_sequence_length + sequence_length`.
pub fn total_length() -> Dim {
    Dim::sym(PAST).add(&Dim::sym(SEQUENCE))
}

fn cache_type(c: &Gpt2Config, dtype: DType, length: Dim) -> ValueType {
    ValueType::new(dtype, vec![Dim::sym(BATCH), Dim::fixed(c.n_head as i64), length, Dim::fixed(c.head_dim as i64)])
}

/// The graph inputs, as wired.
pub struct Inputs {
    pub input_ids: ValueId,
    pub attention_mask: ValueId,
    /// Absent for tasks that number positions from 0.
    pub position_ids: Option<ValueId>,
    /// Per layer: (past key, past value); empty without a cache.
    pub past: Vec<(ValueId, ValueId)>,
    /// `multiple-choice` only.
    pub mc_token_ids: Option<ValueId>,
    /// Models with cross-attention: the encoder's states, their mask and (with a cache) each
    /// layer's cached cross-attention key and value.
    pub encoder: Option<EncoderInputs>,
}

/// The cross-attention inputs.
pub struct EncoderInputs {
    /// `encoder_hidden_states` `[batch_size, encoder_sequence_length, n_embd]`.
    pub states: ValueId,
    /// `encoder_attention_mask` `[batch_size, past_encoder_sequence_length + encoder_sequence_length]`.
    pub mask: ValueId,
    pub past: Vec<(ValueId, ValueId)>,
}

/// The batch dimension of `task`'s inputs: 1 for text classification without `pad_token_id`
/// (transformers refuses larger batches then: it cannot find each row's last token).
pub fn batch_dim(c: &Gpt2Config, task: Task) -> Dim {
    if task == Task::TextClassification && c.pad_token_id.is_none() { Dim::fixed(1) } else { Dim::sym(BATCH) }
}

/// Declares `task`'s inputs.
pub fn declare_inputs(b: &mut GraphBuilder, c: &Gpt2Config, dtype: DType, task: Task) -> Result<Inputs, GraphError> {
    let batch = batch_dim(c, task);
    let lead = if task == Task::MultipleChoice { vec![batch.clone(), Dim::sym(CHOICES)] } else { vec![batch.clone()] };
    let tokens = ValueType::new(DType::I64, [lead.clone(), vec![Dim::sym(SEQUENCE)]].concat());
    let input_ids = b.input("input_ids", tokens.clone())?;
    let mask_len = if task.with_past() { total_length() } else { Dim::sym(SEQUENCE) };
    let attention_mask =
        b.input("attention_mask", ValueType::new(DType::I64, [lead.clone(), vec![mask_len]].concat()))?;
    let position_ids = if task.takes_position_ids() { Some(b.input("position_ids", tokens)?) } else { None };
    let past = if task.with_past() {
        (0..c.n_layer)
            .map(|i| {
                let ty = cache_type(c, dtype, Dim::sym(PAST));
                Ok((b.input(&past_key(i), ty.clone())?, b.input(&past_value(i), ty)?))
            })
            .collect::<Result<_, GraphError>>()?
    } else {
        Vec::new()
    };
    let mc_token_ids = if task == Task::MultipleChoice {
        Some(b.input("mc_token_ids", ValueType::new(DType::I64, lead))?)
    } else {
        None
    };
    let encoder = if task.cross_attends(c) {
        let width = Dim::fixed(c.n_embd as i64);
        let states =
            b.input("encoder_hidden_states", ValueType::new(dtype, vec![batch.clone(), Dim::sym(ENCODER), width]))?;
        let total = if task.with_past() { Dim::sym(PAST_ENCODER).add(&Dim::sym(ENCODER)) } else { Dim::sym(ENCODER) };
        let mask = b.input("encoder_attention_mask", ValueType::new(DType::I64, vec![batch, total]))?;
        let past = if task.with_past() {
            (0..c.n_layer)
                .map(|i| {
                    let ty = cache_type(c, dtype, Dim::sym(PAST_ENCODER));
                    Ok((b.input(&past_cross_key(i), ty.clone())?, b.input(&past_cross_value(i), ty)?))
                })
                .collect::<Result<_, GraphError>>()?
        } else {
            Vec::new()
        };
        Some(EncoderInputs { states, mask, past })
    } else {
        None
    };
    Ok(Inputs { input_ids, attention_mask, position_ids, past, mc_token_ids, encoder })
}

/// Declares a task output `name` with its dims (the element type is the graph's float I/O type).
pub fn declare_output(
    b: &mut GraphBuilder,
    v: ValueId,
    name: &str,
    dtype: DType,
    dims: Vec<Dim>,
) -> Result<(), GraphError> {
    b.output(v, name, &ValueType::new(dtype, dims))
}

/// Declares every layer's cross-attention present key and value.
pub fn declare_cross_presents(
    b: &mut GraphBuilder,
    c: &Gpt2Config,
    dtype: DType,
    presents: &[(ValueId, ValueId)],
) -> Result<(), GraphError> {
    for (i, &(k, v)) in presents.iter().enumerate() {
        let ty = cache_type(c, dtype, Dim::sym(PAST_ENCODER).add(&Dim::sym(ENCODER)));
        b.output(k, &present_cross_key(i), &ty)?;
        b.output(v, &present_cross_value(i), &ty)?;
    }
    Ok(())
}

/// Declares every layer's present key and value.
pub fn declare_presents(
    b: &mut GraphBuilder,
    c: &Gpt2Config,
    dtype: DType,
    presents: &[(ValueId, ValueId)],
) -> Result<(), GraphError> {
    for (i, &(k, v)) in presents.iter().enumerate() {
        let ty = cache_type(c, dtype, total_length());
        b.output(k, &present_key(i), &ty)?;
        b.output(v, &present_value(i), &ty)?;
    }
    Ok(())
}

/// The names ONNX Runtime's search operators give a GPT-2 decoder's cache (`subgraph_gpt.cc`).
pub fn search_past(i: usize) -> String {
    format!("past_{i}")
}
pub fn search_present(i: usize) -> String {
    format!("present_{i}")
}

/// `[2, batch_size, n_head, length, head_dim]`: key and value of one layer stacked.
fn search_cache_type(c: &Gpt2Config, dtype: DType, length: Dim) -> ValueType {
    let shape =
        vec![Dim::fixed(2), Dim::sym(BATCH), Dim::fixed(c.n_head as i64), length, Dim::fixed(c.head_dim as i64)];
    ValueType::new(dtype, shape)
}

/// The inputs of the decoder subgraph ONNX Runtime's GreedySearch, BeamSearch and Sampling run
/// (`subgraph_gpt.cc`): `input_ids`, `position_ids` `[batch_size, sequence_length]` and
/// `attention_mask` `[batch_size, past_sequence_length + sequence_length]`, all int32, then
/// `past_{i}` `[2, batch_size, n_head, past_sequence_length, head_dim]` per layer (key, value). The
/// returned ids, positions and mask are int64 and the cache split into keys and values, as the
/// rest of the graph takes them.
pub fn declare_search_decoder_inputs(b: &mut GraphBuilder, c: &Gpt2Config, dtype: DType) -> Result<Inputs, GraphError> {
    let tokens = ValueType::new(DType::I32, vec![Dim::sym(BATCH), Dim::sym(SEQUENCE)]);
    let input_ids = b.input("input_ids", tokens.clone())?;
    let position_ids = b.input("position_ids", tokens)?;
    let attention_mask =
        b.input("attention_mask", ValueType::new(DType::I32, vec![Dim::sym(BATCH), total_length()]))?;
    let mut past = Vec::with_capacity(c.n_layer);
    for i in 0..c.n_layer {
        let stacked = b.input(&search_past(i), search_cache_type(c, dtype, Dim::sym(PAST)))?;
        let halves = b.scoped(&format!("past_{i}"), |b| {
            let sizes = b.const_i64(&[1, 1])?;
            let halves = b.node(crate::ir::Op::Split { axis: 0, outputs: 2 }, &[stacked, sizes])?;
            let axes = b.const_i64(&[0])?;
            halves.iter().map(|&h| b.node1(crate::ir::Op::Squeeze, &[h, axes])).collect::<Result<Vec<_>, _>>()
        })?;
        match halves[..] {
            [k, v] => past.push((k, v)),
            _ => return Err(GraphError { at: search_past(i), message: "a cache splits into key and value".into() }),
        }
    }
    let input_ids = b.cast(input_ids, DType::I64)?;
    let position_ids = Some(b.cast(position_ids, DType::I64)?);
    let attention_mask = b.cast(attention_mask, DType::I64)?;
    Ok(Inputs { input_ids, attention_mask, position_ids, past, mc_token_ids: None, encoder: None })
}

/// The decoder subgraph's outputs: `logits` `[batch_size, 1, vocab_size]` (the operators read the
/// last position only) and `present_{i}` `[2, batch_size, n_head, past_sequence_length +
/// sequence_length, head_dim]`.
pub fn declare_search_decoder_outputs(
    b: &mut GraphBuilder,
    c: &Gpt2Config,
    dtype: DType,
    logits: ValueId,
    presents: &[(ValueId, ValueId)],
) -> Result<(), GraphError> {
    let vocab = Dim::fixed(c.vocab_size as i64);
    b.output(logits, "logits", &ValueType::new(dtype, vec![Dim::sym(BATCH), Dim::fixed(1), vocab]))?;
    for (i, &(k, v)) in presents.iter().enumerate() {
        let stacked = b.scoped(&format!("present_{i}"), |b| {
            let k = b.unsqueeze(k, &[0])?;
            let v = b.unsqueeze(v, &[0])?;
            b.concat(&[k, v], 0)
        })?;
        b.output(stacked, &search_present(i), &search_cache_type(c, dtype, total_length()))?;
    }
    Ok(())
}
