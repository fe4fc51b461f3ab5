//! The export contract: names, element types and dimension names of the
//! graph's inputs and outputs, matching optimum's `text-generation-with-past`
//! export (which transformers.js and onnxruntime-genai's decoder type read).
//!
//! | name | type | shape |
//! |---|---|---|
//! | `input_ids` | int64 | `[batch_size, sequence_length]` |
//! | `attention_mask` | int64 | `[batch_size, past_sequence_length + sequence_length]` |
//! | `position_ids` | int64 | `[batch_size, sequence_length]` |
//! | `past_key_values.{i}.key` / `.value` | float | `[batch_size, n_head, past_sequence_length, head_dim]` |
//! | `logits` (out) | float | `[batch_size, sequence_length, vocab_size]` |
//! | `present.{i}.key` / `.value` (out) | float | `[batch_size, n_head, past_sequence_length + sequence_length, head_dim]` |

use crate::checkpoint::Gpt2Config;
use crate::ir::{DType, Dim, GraphBuilder, GraphError, ValueId, ValueType};

pub const BATCH: &str = "batch_size";
pub const SEQUENCE: &str = "sequence_length";
pub const PAST: &str = "past_sequence_length";

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
    pub position_ids: ValueId,
    /// Per layer: (past key, past value).
    pub past: Vec<(ValueId, ValueId)>,
}

/// Declares the contract's inputs.
pub fn declare_inputs(b: &mut GraphBuilder, c: &Gpt2Config, dtype: DType) -> Result<Inputs, GraphError> {
    let tokens = ValueType::new(DType::I64, vec![Dim::sym(BATCH), Dim::sym(SEQUENCE)]);
    let input_ids = b.input("input_ids", tokens.clone())?;
    let attention_mask =
        b.input("attention_mask", ValueType::new(DType::I64, vec![Dim::sym(BATCH), total_length()]))?;
    let position_ids = b.input("position_ids", tokens)?;
    let past = (0..c.n_layer)
        .map(|i| {
            let ty = cache_type(c, dtype, Dim::sym(PAST));
            Ok((b.input(&past_key(i), ty.clone())?, b.input(&past_value(i), ty)?))
        })
        .collect::<Result<_, GraphError>>()?;
    Ok(Inputs { input_ids, attention_mask, position_ids, past })
}

/// Declares the contract's outputs: `logits`, then every layer's present key and value.
pub fn declare_outputs(
    b: &mut GraphBuilder,
    c: &Gpt2Config,
    dtype: DType,
    logits: ValueId,
    presents: &[(ValueId, ValueId)],
) -> Result<(), GraphError> {
    let logits_ty = ValueType::new(dtype, vec![Dim::sym(BATCH), Dim::sym(SEQUENCE), Dim::fixed(c.vocab_size as i64)]);
    b.output(logits, "logits", &logits_ty)?;
    for (i, &(k, v)) in presents.iter().enumerate() {
        let ty = cache_type(c, dtype, total_length());
        b.output(k, &present_key(i), &ty)?;
        b.output(v, &present_value(i), &ty)?;
    }
    Ok(())
}
