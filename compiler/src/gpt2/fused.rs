//! The transformer blocks for `--target ort`: ONNX Runtime's fused kernels
//! where they replace several nodes, with the same inputs, outputs and
//! numbers as the portable blocks.
//!
//! Per layer:
//! ```text
//! qkv          = x @ c_attn.weight + c_attn.bias → Split → q, k, v        [B, S, E] each
//! y, K, V      = Attention(q, k, v, mask_bias, past_key, past_value)      (opset 23; K, V are `present`)
//! x₂, h        = SkipLayerNormalization(y @ c_proj.weight, h, ln_2, bias = c_proj.bias)
//! m            = FastGelu(x₂ @ c_fc.weight, bias = c_fc.bias) @ mlp.c_proj.weight
//! x, h         = SkipLayerNormalization(m, h, next ln_1 (or ln_f), bias = mlp.c_proj.bias)
//! ```
//! SkipLayerNormalization adds the residual and a linear's bias and normalizes
//! in one pass, also returning the sum (the next residual); the last one is
//! the final LayerNorm `ln_f`. Activations other than the tanh GELU family add
//! their bias and run as in the portable graph.
//!
//! With `--kv-cache shared` the Attention node is `com.microsoft.GroupQueryAttention` instead,
//! fed each row's length from the attention mask ([`attention::cache_lengths`]) and the same
//! additive mask: it appends the new keys and values into the past buffer when the caller binds
//! one buffer as past and present.
//!
//! Fused blocks need the f32 compute type (the quantized formats keep f32
//! activations too); with `--dtype fp16` the ORT target keeps the portable blocks.

use super::attention::{last_position_marker, query_key_value, score_scale};
use super::linear::{Ctx, conv1d_unbiased};
use super::precision::{Part, Precision, Target};
use super::{BuildError, mlp, weight};
use crate::checkpoint::Activation;
use crate::ir::{DType, GraphBuilder, GraphError, Op, ValueId};

/// Whether `p` gets the fused blocks.
pub fn applies(p: &Precision) -> bool {
    p.target == Target::Ort && p.compute() == DType::F32
}

/// What every layer's attention reads besides its input: the additive mask and, for
/// GroupQueryAttention (`--kv-cache shared`), each row's last position and the mask's width.
#[derive(Clone, Copy)]
pub(crate) struct AttentionInputs {
    pub mask_bias: ValueId,
    pub lengths: Option<(ValueId, ValueId)>,
}

/// The transformer blocks and the final LayerNorm over the embeddings `h`; returns the final
/// normalized hidden state and each layer's (key, value) cache.
pub(crate) fn blocks(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    mut h: ValueId,
    inputs: AttentionInputs,
    past: &[(ValueId, ValueId)],
) -> Result<(ValueId, Vec<(ValueId, ValueId)>), BuildError> {
    let c = ctx.c;
    let mut x = b.scoped("h.0", |b| super::layer_norm(b, ctx.w, "h.0.ln_1", h, c.n_embd, c.layer_norm_epsilon))?;
    let mut presents = Vec::with_capacity(c.n_layer);
    for (i, &past) in past.iter().enumerate().take(c.n_layer) {
        let prefix = format!("h.{i}");
        let (y, bias, present) = b.scoped(&prefix, |b| {
            b.scoped("attn", |b| self_attention(b, ctx, i, &format!("{prefix}.attn"), x, past, inputs))
        })?;
        let h_rows = b.scoped(&prefix, |b| last_position_marker(b, ctx, "residual_rows", h, i + 1 == c.n_layer))?;
        let (x2, h2) = b.scoped(&prefix, |b| skip_layer_norm(b, ctx, &format!("{prefix}.ln_2"), y, h_rows, bias))?;
        let (m, bias) =
            b.scoped(&prefix, |b| b.scoped("mlp", |b| mlp_unbiased(b, ctx, &format!("{prefix}.mlp"), x2)))?;
        // The residual sum and the next layer's ln_1 (the final ln_f after the last layer).
        let (next_scope, next_ln) = if i + 1 < c.n_layer {
            (format!("h.{}", i + 1), format!("h.{}.ln_1", i + 1))
        } else {
            (String::new(), "ln_f".into())
        };
        let (nx, nh) = if next_scope.is_empty() {
            skip_layer_norm(b, ctx, &next_ln, m, h2, bias)?
        } else {
            b.scoped(&next_scope, |b| skip_layer_norm(b, ctx, &next_ln, m, h2, bias))?
        };
        x = nx;
        h = nh;
        presents.push(present);
    }
    Ok((x, presents))
}

/// `LayerNorm(x + residual + bias)` with the checkpoint's `{scope}.weight` / `{scope}.bias`;
/// returns (normalized, sum).
fn skip_layer_norm(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    scope: &str,
    x: ValueId,
    residual: ValueId,
    bias: ValueId,
) -> Result<(ValueId, ValueId), BuildError> {
    let width = ctx.c.n_embd;
    let name = scope.rsplit('.').next().unwrap_or(scope);
    b.scoped(name, |b| {
        let gamma = weight(b, ctx.w, &format!("{scope}.weight"), &[width])?;
        let beta = weight(b, ctx.w, &format!("{scope}.bias"), &[width])?;
        let op = Op::SkipLayerNormalization { epsilon: ctx.c.layer_norm_epsilon };
        let outs = b.node(op, &[x, residual, gamma, beta, bias])?;
        match outs[..] {
            [normed, _, _, sum] => Ok((normed, sum)),
            _ => Err(GraphError { at: scope.into(), message: "SkipLayerNormalization has four outputs".into() }.into()),
        }
    })
}

/// Self-attention through the opset-23 Attention op (GroupQueryAttention with `--kv-cache
/// shared`); returns `c_proj`'s product without its bias, the bias, and the layer's (key, value)
/// cache.
fn self_attention(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    layer: usize,
    scope: &str,
    x: ValueId,
    past: (ValueId, ValueId),
    inputs: AttentionInputs,
) -> Result<(ValueId, ValueId, (ValueId, ValueId)), BuildError> {
    let c = ctx.c;
    let (heads, scale) = (c.n_head as i64, score_scale(c, layer) as f32);
    let last = layer + 1 == c.n_layer;
    let (op, node_inputs) = match inputs.lengths {
        // GroupQueryAttention takes every position's query (its keys come with them), so the last
        // layer's rows are sliced after it.
        Some((seqlens, total)) => {
            let (q, k, v, bias) = query_key_value(b, ctx, layer, scope, x, inputs.mask_bias, false)?;
            (Op::GroupQueryAttention { heads, scale }, vec![q, k, v, past.0, past.1, seqlens, total, bias])
        }
        None => {
            let (q, k, v, bias) = query_key_value(b, ctx, layer, scope, x, inputs.mask_bias, true)?;
            (Op::Attention { heads, scale }, vec![q, k, v, bias, past.0, past.1])
        }
    };
    let marks_context = inputs.lengths.is_some();
    let outs = b.node(op, &node_inputs)?;
    let [y, key, value] = <[ValueId; 3]>::try_from(outs)
        .map_err(|_| GraphError { at: scope.into(), message: "Attention has three outputs".into() })?;
    let y = last_position_marker(b, ctx, "context_rows", y, marks_context && last)?;
    let (out, bias) = conv1d_unbiased(b, ctx, &format!("{scope}.c_proj"), Part::Attn, y, c.n_embd, c.n_embd)?;
    Ok((out, bias, (key, value)))
}

/// The MLP up to its output projection's bias; returns (product, bias).
fn mlp_unbiased(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    scope: &str,
    x: ValueId,
) -> Result<(ValueId, ValueId), BuildError> {
    let c = ctx.c;
    let (hidden, fc_bias) = conv1d_unbiased(b, ctx, &format!("{scope}.c_fc"), Part::Mlp, x, c.n_embd, c.n_inner)?;
    let hidden = b.scoped("act", |b| match c.activation {
        // FastGelu is the tanh approximation: gelu_new, gelu_pytorch_tanh and gelu_fast compute it.
        Activation::GeluTanh | Activation::GeluFast => b.node1(Op::FastGelu, &[hidden, fc_bias]),
        act => {
            let biased = b.add(hidden, fc_bias)?;
            mlp::activation(b, act, biased)
        }
    })?;
    conv1d_unbiased(b, ctx, &format!("{scope}.c_proj"), Part::Mlp, hidden, c.n_inner, c.n_embd)
}
