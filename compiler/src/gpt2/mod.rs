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
pub mod fused;
pub(crate) mod linear;
pub mod mlp;
pub mod precision;

pub use linear::single_linear_graph;
pub use precision::{FloatType, Part, Precision, Quantize, Target};

use crate::checkpoint::{Checkpoint, WeightError, Weights};
use crate::ir::{DType, Graph, GraphBuilder, GraphError, ValueId};
use linear::{Ctx, Table, cast_to, in_dtype};

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
    #[error("{0}")]
    Precision(String),
}

/// Choices that shape the graph.
#[derive(Clone, Debug)]
pub struct GraphOptions {
    pub opset: i64,
    pub precision: Precision,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions { opset: DEFAULT_OPSET, precision: Precision::default() }
    }
}

/// Builds `GPT2LMHeadModel` with past key/values.
///
/// The residual stream, LayerNorms, the attention mask and softmax stay in
/// f32 in every format; matmuls and their weights use the compute type
/// (fp16 with `--dtype fp16`) or the chosen quantization.
pub fn build_causal_lm(ckpt: &Checkpoint, options: &GraphOptions) -> Result<Graph, BuildError> {
    if !OPSETS.contains(&options.opset) {
        return Err(BuildError::Opset(options.opset));
    }
    let p = &options.precision;
    p.validate().map_err(BuildError::Precision)?;
    let (min_opset, needs) = p.opset_need();
    if options.opset < min_opset {
        return Err(BuildError::Precision(format!("{needs} needs opset {min_opset} or later, not {}", options.opset)));
    }
    let c = &ckpt.config;
    let w = &ckpt.weights;
    let ctx = Ctx { w, c, p };
    let compute = p.compute();
    let mut b = GraphBuilder::new("gpt2c", options.opset);
    let io = contract::declare_inputs(&mut b, c, p.io())?;

    let mut wte = Table::new("wte", w.body("wte.weight", &[c.vocab_size, c.n_embd])?);
    let h = b.scoped("embeddings", |b| {
        let tokens = b.scoped("wte", |b| wte.embed(b, &ctx, io.input_ids))?;
        let wpe = in_dtype(w.body("wpe.weight", &[c.n_positions, c.n_embd])?, compute, "wpe")?;
        let wpe = b.initializer("wpe.weight", wpe)?;
        let positions = b.scoped("wpe", |b| {
            let rows = b.gather(wpe, io.position_ids, 0)?;
            cast_to(b, rows, DType::F32)
        })?;
        Ok::<_, BuildError>(b.add(tokens, positions)?)
    })?;
    let mask =
        b.scoped("attention_mask", |b| attention::attention_bias(b, io.input_ids, io.attention_mask, DType::F32))?;

    let (h, presents) = if fused::applies(p) {
        fused::blocks(&mut b, &ctx, h, mask, &io.past)?
    } else {
        portable_blocks(&mut b, &ctx, h, mask, &io.past)?
    };
    let logits = b.scoped("lm_head", |b| {
        let h = cast_to(b, h, compute)?;
        // Tied (the default): the head reads wte, stored once.
        let logits = if c.tie_word_embeddings {
            wte.head(b, &ctx, h)?
        } else {
            Table::new("lm_head", w.get("lm_head.weight", &[c.vocab_size, c.n_embd])?).head(b, &ctx, h)?
        };
        Ok::<_, BuildError>(cast_to(b, logits, p.io())?)
    })?;
    contract::declare_outputs(&mut b, c, p.io(), logits, &presents)?;
    Ok(b.finish())
}

/// The transformer blocks in standard operators and the final LayerNorm over the embeddings `h`;
/// returns the final normalized hidden state and each layer's (key, value) cache.
fn portable_blocks(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    mut h: ValueId,
    mask: ValueId,
    past: &[(ValueId, ValueId)],
) -> Result<(ValueId, Vec<(ValueId, ValueId)>), BuildError> {
    let (c, w, compute) = (ctx.c, ctx.w, ctx.p.compute());
    let mut presents = Vec::with_capacity(c.n_layer);
    for (i, &past) in past.iter().enumerate().take(c.n_layer) {
        let (next, present) = b.scoped(&format!("h.{i}"), |b| {
            let prefix = format!("h.{i}");
            let x = layer_norm(b, w, &format!("{prefix}.ln_1"), h, c.n_embd, c.layer_norm_epsilon)?;
            let x = cast_to(b, x, compute)?;
            let (attn, present) =
                b.scoped("attn", |b| attention::self_attention(b, ctx, i, &format!("{prefix}.attn"), x, past, mask))?;
            let attn = cast_to(b, attn, DType::F32)?;
            let h = attention::last_position_marker(b, "residual_rows", h, i + 1 == c.n_layer)?;
            let h = b.add(h, attn)?;
            let x = layer_norm(b, w, &format!("{prefix}.ln_2"), h, c.n_embd, c.layer_norm_epsilon)?;
            let x = cast_to(b, x, compute)?;
            let mlp = b.scoped("mlp", |b| mlp::mlp(b, ctx, &format!("{prefix}.mlp"), x))?;
            let mlp = cast_to(b, mlp, DType::F32)?;
            Ok::<_, BuildError>((b.add(h, mlp)?, present))
        })?;
        h = next;
        presents.push(present);
    }
    let h = layer_norm(b, w, "ln_f", h, c.n_embd, c.layer_norm_epsilon)?;
    Ok((h, presents))
}

/// Adds a body weight (named as inside `GPT2Model`) as an initializer.
pub(crate) fn weight(b: &mut GraphBuilder, w: &Weights, name: &str, shape: &[usize]) -> Result<ValueId, BuildError> {
    let t = w.body(name, shape)?;
    Ok(b.initializer(name, t)?)
}

/// `LayerNorm` with the checkpoint's `{scope}.weight` / `{scope}.bias`, in f32.
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
