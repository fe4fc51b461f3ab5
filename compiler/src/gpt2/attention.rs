//! GPT-2 self-attention with a key/value cache, and the additive attention mask.
//!
//! Per layer (`GPT2Attention` in transformers):
//! ```text
//! q, k, v  = split(x @ c_attn.weight + c_attn.bias)        each [B, S, E] → [B, H, S, D]
//! K, V     = concat(past_key, k), concat(past_value, v)    [B, H, P+S, D], also the `present` outputs
//! scores   = (q · scale) @ Kᵀ + mask_bias                  [B, H, S, P+S]
//! out      = softmax(scores) @ V → [B, S, E] → c_proj
//! ```
//! `scale` is `1/sqrt(D)` when `scale_attn_weights`, further divided by
//! `layer_idx + 1` when `scale_attn_by_inverse_layer_idx`; applying it to `q`
//! instead of the scores is the same product, on S×D instead of S×T numbers.
//! `reorder_and_upcast_attn` computes the scaled product in f32 (in fp32
//! graphs that is what happens anyway). The mask and the softmax always run
//! in f32; with `--dtype fp16` the matmuls around them run in fp16.

use super::BuildError;
use super::linear::{Ctx, cast_to, conv1d};
use super::precision::Part;
use crate::ir::{DType, GraphBuilder, GraphError, ValueId};

/// The additive mask shared by every layer: 0 where a query may attend to a
/// key, the dtype's lowest finite value elsewhere (as transformers' eager
/// attention does). A query at cache slot `P + s` sees keys at slots `≤ P + s`
/// whose `attention_mask` is 1. Shape `[batch_size, 1, sequence_length, past_sequence_length + sequence_length]`.
pub fn attention_bias(
    b: &mut GraphBuilder,
    input_ids: ValueId,
    attention_mask: ValueId,
    dtype: DType,
) -> Result<ValueId, GraphError> {
    let total = b.dim_of(attention_mask, 1)?;
    let seq = b.dim_of(input_ids, 1)?;
    let past = b.sub(total, seq)?;
    let zero = b.scalar_i64(0)?;
    let one = b.scalar_i64(1)?;
    // Keys at slots k may be seen by the query at slot q when k < q + 1.
    let q_slots = b.range(past, total, one)?;
    let q_limit = b.add(q_slots, one)?;
    let q_limit = b.unsqueeze(q_limit, &[1])?;
    let k_slots = b.range(zero, total, one)?;
    let causal = b.less(k_slots, q_limit)?;
    let keep = b.cast(attention_mask, DType::Bool)?;
    let keep = b.unsqueeze(keep, &[1, 2])?;
    let allowed = b.and(causal, keep)?;
    let open = b.scalar_f(dtype, 0.0)?;
    let lowest = match dtype {
        DType::F16 => half::f16::MIN.to_f32(),
        DType::BF16 => half::bf16::MIN.to_f32(),
        _ => f32::MIN,
    };
    let closed = b.scalar_f(dtype, lowest)?;
    b.where_(allowed, open, closed)
}

/// Marks where generation needs only the last position, as an Identity node in scope `marker`
/// (a [`LAST_POSITION_MARKERS`] name). In the last layer only the last position's output reaches the
/// logits, so the runtime can slice there when it specializes the graph for generation: the query
/// rows, their mask rows and the residual rows. Other layers keep every position (the next layer's
/// keys and values need them).
/// With `ctx.last_position_only` (a search operator's decoder) the slice is made here instead.
pub(crate) fn last_position_marker(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    marker: &str,
    x: ValueId,
    is_last_layer: bool,
) -> Result<ValueId, GraphError> {
    if !is_last_layer {
        return Ok(x);
    }
    if !ctx.last_position_only {
        return b.scoped(marker, |b| b.identity(x));
    }
    let axis = LAST_POSITION_MARKERS.iter().find(|(m, _)| *m == marker).map_or(1, |&(_, a)| a);
    b.scoped(marker, |b| last_position(b, x, axis))
}

/// `x`'s last position along `axis` (kept as a dim of 1).
pub(crate) fn last_position(b: &mut GraphBuilder, x: ValueId, axis: i64) -> Result<ValueId, GraphError> {
    let starts = b.const_i64(&[-1])?;
    let ends = b.const_i64(&[i64::MAX])?;
    let axes = b.const_i64(&[axis])?;
    b.node1(crate::ir::Op::Slice, &[x, starts, ends, axes])
}

/// The marker scopes and the axis of the positions in each marked value. Blocks whose attention
/// takes every position's query (GroupQueryAttention) mark its output rows (`context_rows`)
/// instead of the query and mask rows.
pub const LAST_POSITION_MARKERS: [(&str, i64); 4] =
    [("query_rows", 1), ("mask_rows", 2), ("residual_rows", 1), ("context_rows", 1)];

/// What ONNX Runtime's GroupQueryAttention reads of the attention mask: each row's last position
/// whose mask is set (`seqlens_k`, int32 `[batch]`: the row's keys are positions 0 to it) and the
/// mask's width (`total_sequence_length`, an int32 scalar). Taking the last set position rather
/// than the count of set positions (onnxruntime-genai's `ReduceSum - 1`) keeps left padding
/// right: its zeros come first, so the last position is the row's last token either way, and the
/// additive mask hides the padding as in every other graph.
pub fn cache_lengths(b: &mut GraphBuilder, attention_mask: ValueId) -> Result<(ValueId, ValueId), GraphError> {
    let total = b.dim_of(attention_mask, 1)?;
    let (zero, one) = (b.scalar_i64(0)?, b.scalar_i64(1)?);
    let slots = b.range(zero, total, one)?;
    let set = b.cast(attention_mask, DType::Bool)?;
    let set = b.cast(set, DType::I64)?;
    let marked = b.mul(set, slots)?;
    let last = b.reduce(true, marked, &[1], false)?;
    Ok((b.cast(last, DType::I32)?, b.cast(total, DType::I32)?))
}

/// The factor on `q · kᵀ` in layer `layer` (0-based).
pub(crate) fn score_scale(c: &crate::checkpoint::Gpt2Config, layer: usize) -> f64 {
    let mut scale = 1.0f64;
    if c.scale_attn_weights {
        scale /= (c.head_dim as f64).sqrt();
    }
    if c.scale_attn_by_inverse_layer_idx {
        scale /= (layer + 1) as f64;
    }
    scale
}

/// One layer's self-attention on `x` (compute type). Returns the block output
/// (compute type) and the (key, value) cache in the type of `past`.
pub(crate) fn self_attention(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    layer: usize,
    scope: &str,
    x: ValueId,
    past: Option<(ValueId, ValueId)>,
    mask_bias: ValueId,
) -> Result<(ValueId, (ValueId, ValueId)), BuildError> {
    let c = ctx.c;
    let (q, k, v, mask_bias) = query_key_value(b, ctx, layer, scope, x, mask_bias, true)?;
    let q = split_heads(b, c, q)?;
    let (k, v) = (split_heads(b, c, k)?, split_heads(b, c, v)?);
    let (key, value, present) = with_cache(b, ctx, k, v, past)?;
    let context = attend(b, ctx, layer, q, key, value, mask_bias)?;
    let out = conv1d(b, ctx, &format!("{scope}.c_proj"), Part::Attn, context, c.n_embd, c.n_embd)?;
    Ok((out, present))
}

/// `c_attn` split into `[B, S, E]` query, key and value, with the last layer's query and mask
/// rows marked for the generation specialization when `mark_rows`; returns (q, k, v, mask bias).
pub(crate) fn query_key_value(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    layer: usize,
    scope: &str,
    x: ValueId,
    mask_bias: ValueId,
    mark_rows: bool,
) -> Result<(ValueId, ValueId, ValueId, ValueId), BuildError> {
    let c = ctx.c;
    let e = c.n_embd as i64;
    let qkv = conv1d(b, ctx, &format!("{scope}.c_attn"), Part::Attn, x, c.n_embd, 3 * c.n_embd)?;
    let parts = b.split(qkv, -1, &[e, e, e])?;
    let [q, k, v] = <[ValueId; 3]>::try_from(parts)
        .map_err(|_| GraphError { at: scope.into(), message: "c_attn split did not give q, k, v".into() })?;
    let last = mark_rows && layer + 1 == c.n_layer;
    let q = last_position_marker(b, ctx, "query_rows", q, last)?;
    let mask_bias = last_position_marker(b, ctx, "mask_rows", mask_bias, last)?;
    Ok((q, k, v, mask_bias))
}

/// `[B, S, E]` → `[B, H, S, D]`.
fn split_heads(b: &mut GraphBuilder, c: &crate::checkpoint::Gpt2Config, t: ValueId) -> Result<ValueId, GraphError> {
    let t = b.reshape(t, &[0, 0, c.n_head as i64, c.head_dim as i64])?;
    b.transpose(t, &[0, 2, 1, 3])
}

/// Keys and values with the cached ones in front (`past` in the graph's I/O type); returns them
/// and the `present` outputs.
#[allow(clippy::type_complexity)]
fn with_cache(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    k: ValueId,
    v: ValueId,
    past: Option<(ValueId, ValueId)>,
) -> Result<(ValueId, ValueId, (ValueId, ValueId)), GraphError> {
    let dtype = b.ty(k).dtype;
    let io = past.map_or(ctx.p.io(), |(k, _)| b.ty(k).dtype);
    let (key, value) = match past {
        Some((past_k, past_v)) => {
            let past_k = cast_to(b, past_k, dtype)?;
            let past_v = cast_to(b, past_v, dtype)?;
            (b.concat(&[past_k, k], 2)?, b.concat(&[past_v, v], 2)?)
        }
        None => (k, v),
    };
    let present = (cast_to(b, key, io)?, cast_to(b, value, io)?);
    Ok((key, value, present))
}

/// Scaled dot-product attention of `q` over `key`/`value` (all `[B, H, ·, D]`) with an additive
/// f32 mask; returns the heads merged back, `[B, S, E]`.
fn attend(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    layer: usize,
    q: ValueId,
    key: ValueId,
    value: ValueId,
    mask_bias: ValueId,
) -> Result<ValueId, GraphError> {
    let c = ctx.c;
    let dtype = b.ty(q).dtype;
    let scale = score_scale(c, layer);
    // reorder_and_upcast_attn: the scaled product is computed in f32 whatever the compute type.
    let score_type = if c.reorder_and_upcast_attn { DType::F32 } else { dtype };
    let q = cast_to(b, q, score_type)?;
    let key_s = cast_to(b, key, score_type)?;
    let q = if scale != 1.0 {
        let s = b.scalar_f(score_type, scale as f32)?;
        b.mul(q, s)?
    } else {
        q
    };
    let key_t = b.transpose(key_s, &[0, 1, 3, 2])?;
    let scores = b.matmul(q, key_t)?;
    // The mask and softmax run in f32: GPT-2's mask constant overflows fp16.
    let scores = cast_to(b, scores, DType::F32)?;
    let scores = b.add(scores, mask_bias)?;
    let probs = b.softmax(scores, -1)?;
    let probs = cast_to(b, probs, dtype)?;
    let context = b.matmul(probs, value)?;
    let context = b.transpose(context, &[0, 2, 1, 3])?;
    b.reshape(context, &[0, 0, c.n_embd as i64])
}

/// The additive mask of cross-attention: 0 where `encoder_attention_mask` is 1, the lowest f32
/// elsewhere (transformers' `invert_attention_mask`); `[batch, 1, 1, encoder positions]`.
pub fn encoder_attention_bias(b: &mut GraphBuilder, encoder_mask: ValueId) -> Result<ValueId, GraphError> {
    let keep = b.cast(encoder_mask, DType::Bool)?;
    let keep = b.unsqueeze(keep, &[1, 2])?;
    let open = b.scalar_f(DType::F32, 0.0)?;
    let closed = b.scalar_f(DType::F32, f32::MIN)?;
    b.where_(keep, open, closed)
}

/// One layer's cross-attention (`crossattention` with `add_cross_attention`): queries from `x`
/// (`q_attn`), keys and values from the encoder states (`c_attn`, 2·E wide) after any cached ones,
/// no causal mask. With a cache, the first step passes the encoder states and an empty cache; later
/// steps pass empty encoder states and the cache (the `present` of the first step): the keys and
/// values are computed once.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cross_attention(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    layer: usize,
    scope: &str,
    x: ValueId,
    encoder_states: ValueId,
    past: Option<(ValueId, ValueId)>,
    mask_bias: ValueId,
) -> Result<(ValueId, (ValueId, ValueId)), BuildError> {
    let c = ctx.c;
    let e = c.n_embd as i64;
    let q = conv1d(b, ctx, &format!("{scope}.q_attn"), Part::Attn, x, c.n_embd, c.n_embd)?;
    let encoder_states = cast_to(b, encoder_states, b.ty(x).dtype)?;
    let kv = conv1d(b, ctx, &format!("{scope}.c_attn"), Part::Attn, encoder_states, c.n_embd, 2 * c.n_embd)?;
    let parts = b.split(kv, -1, &[e, e])?;
    let [k, v] = <[ValueId; 2]>::try_from(parts)
        .map_err(|_| GraphError { at: scope.into(), message: "c_attn split did not give k, v".into() })?;
    let q = split_heads(b, c, q)?;
    let (k, v) = (split_heads(b, c, k)?, split_heads(b, c, v)?);
    let (key, value, present) = with_cache(b, ctx, k, v, past)?;
    let context = attend(b, ctx, layer, q, key, value, mask_bias)?;
    let out = conv1d(b, ctx, &format!("{scope}.c_proj"), Part::Attn, context, c.n_embd, c.n_embd)?;
    Ok((out, present))
}
