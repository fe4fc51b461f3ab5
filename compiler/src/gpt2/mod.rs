//! The GPT-2 causal-LM graph with past key/values, built from checkpoint weights.
//!
//! Mirrors `GPT2LMHeadModel` in transformers' `modeling_gpt2.py`: token and
//! position embeddings, `n_layer` blocks (ln_1 → attention → residual, ln_2 →
//! MLP → residual), the final LayerNorm and the LM head tied to `wte` (or a
//! separate `lm_head.weight` when the config unties them). Inputs and outputs
//! follow the export contract in [`contract`]: optimum's names, dtypes and
//! dimension names, one graph for prefill (past length 0) and decode.

pub mod attention;
pub mod contract;
pub mod mlp;

use crate::checkpoint::{Checkpoint, WeightError, Weights};
use crate::ir::{DType, Graph, GraphBuilder, GraphError, ValueId};

/// Opsets the graph can be emitted in.
pub const OPSETS: std::ops::RangeInclusive<i64> = 14..=23;
/// The default opset.
pub const DEFAULT_OPSET: i64 = 18;

/// Errors building the graph.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("opset {0} is not supported: choose one in {min}..={max}", min = OPSETS.start(), max = OPSETS.end())]
    Opset(i64),
}

/// Choices that shape the graph.
#[derive(Clone, Debug)]
pub struct GraphOptions {
    pub opset: i64,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions { opset: DEFAULT_OPSET }
    }
}

/// Builds `GPT2LMHeadModel` with past key/values.
pub fn build_causal_lm(ckpt: &Checkpoint, options: &GraphOptions) -> Result<Graph, BuildError> {
    if !OPSETS.contains(&options.opset) {
        return Err(BuildError::Opset(options.opset));
    }
    let c = &ckpt.config;
    let w = &ckpt.weights;
    let dtype = DType::F32;
    let mut b = GraphBuilder::new("gpt2c", options.opset);
    let io = contract::declare_inputs(&mut b, c, dtype)?;

    let (mut h, wte) = b.scoped("embeddings", |b| {
        let wte = weight(b, w, "wte.weight", &[c.vocab_size, c.n_embd])?;
        let wpe = weight(b, w, "wpe.weight", &[c.n_positions, c.n_embd])?;
        let tokens = b.scoped("wte", |b| b.gather(wte, io.input_ids, 0))?;
        let positions = b.scoped("wpe", |b| b.gather(wpe, io.position_ids, 0))?;
        Ok::<_, BuildError>((b.add(tokens, positions)?, wte))
    })?;
    let mask = b.scoped("attention_mask", |b| attention::attention_bias(b, io.input_ids, io.attention_mask, dtype))?;

    let mut presents = Vec::with_capacity(c.n_layer);
    for i in 0..c.n_layer {
        let (next, present) = b.scoped(&format!("h.{i}"), |b| {
            let prefix = format!("h.{i}");
            let x = layer_norm(b, w, &format!("{prefix}.ln_1"), h, c.n_embd, c.layer_norm_epsilon)?;
            let (attn, present) = b.scoped("attn", |b| {
                attention::self_attention(b, w, c, i, &format!("{prefix}.attn"), x, io.past[i], mask)
            })?;
            let h = b.add(h, attn)?;
            let x = layer_norm(b, w, &format!("{prefix}.ln_2"), h, c.n_embd, c.layer_norm_epsilon)?;
            let mlp = b.scoped("mlp", |b| mlp::mlp(b, w, c, &format!("{prefix}.mlp"), x))?;
            Ok::<_, BuildError>((b.add(h, mlp)?, present))
        })?;
        h = next;
        presents.push(present);
    }
    let h = layer_norm(&mut b, w, "ln_f", h, c.n_embd, c.layer_norm_epsilon)?;
    let logits = b.scoped("lm_head", |b| {
        // Tied (the default): the graph holds wte once and reads it transposed.
        let head = if c.tie_word_embeddings {
            wte
        } else {
            let t = w.get("lm_head.weight", &[c.vocab_size, c.n_embd])?;
            b.initializer("lm_head.weight", t)?
        };
        let head_t = b.transpose(head, &[1, 0])?;
        Ok::<_, BuildError>(b.matmul(h, head_t)?)
    })?;
    contract::declare_outputs(&mut b, c, dtype, logits, &presents)?;
    Ok(b.finish())
}

/// Adds a body weight (named as inside `GPT2Model`) as an initializer.
pub(crate) fn weight(b: &mut GraphBuilder, w: &Weights, name: &str, shape: &[usize]) -> Result<ValueId, BuildError> {
    let t = w.body(name, shape)?;
    Ok(b.initializer(name, t)?)
}

/// `LayerNorm` with the checkpoint's `{scope}.weight` / `{scope}.bias`.
pub(crate) fn layer_norm(
    b: &mut GraphBuilder,
    w: &Weights,
    scope: &str,
    x: ValueId,
    width: usize,
    eps: f32,
) -> Result<ValueId, BuildError> {
    let name = scope.rsplit('.').next().unwrap_or(scope);
    b.scoped(name, |b| {
        let g = weight(b, w, &format!("{scope}.weight"), &[width])?;
        let beta = weight(b, w, &format!("{scope}.bias"), &[width])?;
        Ok(b.layer_norm(x, g, beta, eps)?)
    })
}

/// GPT-2's `Conv1D`: `x @ W + b` with `W` stored as [in, out].
pub(crate) fn conv1d(
    b: &mut GraphBuilder,
    w: &Weights,
    scope: &str,
    x: ValueId,
    n_in: usize,
    n_out: usize,
) -> Result<ValueId, BuildError> {
    let name = scope.rsplit('.').next().unwrap_or(scope);
    b.scoped(name, |b| {
        let weight_v = weight(b, w, &format!("{scope}.weight"), &[n_in, n_out])?;
        let bias = weight(b, w, &format!("{scope}.bias"), &[n_out])?;
        let y = b.matmul(x, weight_v)?;
        Ok(b.add(y, bias)?)
    })
}
