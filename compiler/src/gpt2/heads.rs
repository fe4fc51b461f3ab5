//! The task heads on top of the final hidden state `h` ([rows, sequence, n_embd], f32), with
//! transformers' semantics (4.57 `modeling_gpt2.py`). Head weights are `nn.Linear` (`[out, in]`),
//! stored transposed once so runtimes read a plain `[in, out]` matrix; they stay f32 whatever the
//! body's precision (they are a few thousand parameters).

use super::BuildError;
use super::linear::Ctx;
use super::mlp;
use crate::checkpoint::SummaryType;
use crate::ir::{DType, Dim, GraphBuilder, GraphError, Op, Tensor, ValueId};

fn graph_error(at: &str, message: impl Into<String>) -> BuildError {
    GraphError { at: at.into(), message: message.into() }.into()
}

/// `x @ weightᵀ (+ bias)` for an `nn.Linear` stored as `{name}.weight` `[n_out, n_in]`.
fn linear(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    name: &str,
    bias: bool,
    x: ValueId,
    n_in: usize,
    n_out: usize,
) -> Result<ValueId, BuildError> {
    let weight = ctx.w.get(&format!("{name}.weight"), &[n_out, n_in])?;
    let values = weight.to_f32_vec().ok_or_else(|| graph_error(name, "weights must be floating point"))?;
    let mut transposed = vec![0f32; values.len()];
    for o in 0..n_out {
        for i in 0..n_in {
            transposed[i * n_out + o] = values[o * n_in + i];
        }
    }
    let t = Tensor::from_f32(vec![n_in, n_out], &transposed).ok_or_else(|| graph_error(name, "bad weight"))?;
    let w = b.initializer(&format!("{name}.weight_transposed"), t)?;
    let y = b.matmul(x, w)?;
    if !bias {
        return Ok(y);
    }
    let bias = b.initializer(&format!("{name}.bias"), ctx.w.get(&format!("{name}.bias"), &[n_out])?)?;
    Ok(b.add(y, bias)?)
}

/// `h[r, index[r]]` for every row `r`: `h` [rows, sequence, width], `index` [rows] (or one
/// position for all rows, 0-D) → [rows, width]. A one-hot row times `h`: exact (ones and zeros
/// times finite values) and free of index arithmetic over symbolic sizes.
fn rows_at(b: &mut GraphBuilder, h: ValueId, index: ValueId, width: usize) -> Result<ValueId, GraphError> {
    let seq = b.dim_of(h, 1)?;
    let (zero, one) = (b.scalar_i64(0)?, b.scalar_i64(1)?);
    let positions = b.range(zero, seq, one)?;
    let index = if b.ty(index).rank() == 0 { b.unsqueeze(index, &[0])? } else { index };
    let column = b.unsqueeze(index, &[-1])?;
    let hit = b.node1(Op::Equal, &[positions, column])?;
    let weights = b.cast(hit, DType::F32)?;
    let weights = b.unsqueeze(weights, &[1])?;
    let picked = b.matmul(weights, h)?;
    b.reshape(picked, &[0, width as i64])
}

/// The label count a head's weight must have, checked against config.json.
fn labels(ctx: &Ctx<'_>) -> usize {
    ctx.c.num_labels
}

/// `GPT2ForSequenceClassification`: `score` (no bias) at each row's last non-pad token: the
/// largest position whose id is not `pad_token_id` (0 when every id is a pad), so left and right
/// padding both work; without `pad_token_id`, the last position (the inputs then take batch 1).
pub(crate) fn sequence_classification(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    ids: ValueId,
    h: ValueId,
) -> Result<ValueId, BuildError> {
    let seq = b.dim_of(ids, 1)?;
    let one = b.scalar_i64(1)?;
    let last = match ctx.c.pad_token_id {
        Some(pad) => {
            let pad = b.scalar_i64(i64::from(pad))?;
            let is_pad = b.node1(Op::Equal, &[ids, pad])?;
            let keep = b.unary(Op::Not, is_pad)?;
            let keep = b.cast(keep, DType::I64)?;
            let zero = b.scalar_i64(0)?;
            let positions = b.range(zero, seq, one)?;
            let kept = b.mul(positions, keep)?;
            b.reduce(true, kept, &[-1], false)?
        }
        None => b.sub(seq, one)?,
    };
    let pooled = rows_at(b, h, last, ctx.c.n_embd)?;
    linear(b, ctx, "score", false, pooled, ctx.c.n_embd, labels(ctx))
}

/// `GPT2ForTokenClassification`: `classifier` on every position.
pub(crate) fn token_classification(b: &mut GraphBuilder, ctx: &Ctx<'_>, h: ValueId) -> Result<ValueId, BuildError> {
    linear(b, ctx, "classifier", true, h, ctx.c.n_embd, labels(ctx))
}

/// `GPT2ForQuestionAnswering`: `qa_outputs` split into (start, end) logits [rows, sequence].
pub(crate) fn question_answering(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    h: ValueId,
) -> Result<(ValueId, ValueId), BuildError> {
    let both = linear(b, ctx, "qa_outputs", true, h, ctx.c.n_embd, 2)?;
    let parts = b.split(both, -1, &[1, 1])?;
    let [start, end] = <[ValueId; 2]>::try_from(parts).map_err(|_| graph_error("qa_outputs", "expected two parts"))?;
    Ok((b.reshape(start, &[0, 0])?, b.reshape(end, &[0, 0])?))
}

/// Width of `multiple_choice_head`'s output: `GPT2DoubleHeadsModel` sets `config.num_labels = 1`
/// before building it, so a projection to labels is to one label whatever config.json says.
pub(crate) fn summary_width(c: &crate::checkpoint::Gpt2Config) -> usize {
    if c.summary.use_proj && c.summary.proj_to_labels { 1 } else { c.n_embd }
}

/// `GPT2DoubleHeadsModel`'s `multiple_choice_head` (`GPT2SequenceSummary`) over `h4`
/// [batch, choices, sequence, n_embd]; returns `mc_logits` and its dims. As in transformers,
/// `last`, `first` and `mean` act on dim 1 of the 4-D hidden state (the choices), `cls_index`
/// gathers each choice's `mc_token_ids` position; the projection's last dim is squeezed when it is 1.
pub(crate) fn multiple_choice(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    h4: ValueId,
    h_rows: ValueId,
    mc_token_ids: ValueId,
) -> Result<(ValueId, Vec<Dim>), BuildError> {
    let c = ctx.c;
    let s = &c.summary;
    let kind = s.kind().map_err(|m| graph_error("multiple_choice_head", m))?;
    let activation = s.activation().map_err(|m| graph_error("multiple_choice_head", m))?;
    let e = c.n_embd;
    let (pooled, mut dims) = match kind {
        SummaryType::ClsIndex => {
            let flat_ids = b.reshape(mc_token_ids, &[-1])?;
            let rows = rows_at(b, h_rows, flat_ids, e)?;
            let shape = b.shape_of(mc_token_ids)?;
            let width = b.const_i64(&[e as i64])?;
            let target = b.concat(&[shape, width], 0)?;
            let pooled = b.node1(Op::Reshape, &[rows, target])?;
            (pooled, vec![Dim::sym(super::contract::BATCH), Dim::sym(super::contract::CHOICES)])
        }
        SummaryType::First | SummaryType::Last => {
            let index = if kind == SummaryType::First {
                b.scalar_i64(0)?
            } else {
                let choices = b.dim_of(h4, 1)?;
                let one = b.scalar_i64(1)?;
                b.sub(choices, one)?
            };
            (b.gather(h4, index, 1)?, vec![Dim::sym(super::contract::BATCH), Dim::sym(super::contract::SEQUENCE)])
        }
        SummaryType::Mean => (
            b.reduce(false, h4, &[1], false)?,
            vec![Dim::sym(super::contract::BATCH), Dim::sym(super::contract::SEQUENCE)],
        ),
    };
    let classes = summary_width(c);
    let mut out =
        if s.use_proj { linear(b, ctx, "multiple_choice_head.summary", true, pooled, e, classes)? } else { pooled };
    if let Some(act) = activation {
        out = mlp::activation(b, act, out)?;
    }
    if classes == 1 {
        let zeros: Vec<i64> = vec![0; dims.len()];
        out = b.reshape(out, &zeros)?;
    } else {
        dims.push(Dim::fixed(classes as i64));
    }
    Ok((out, dims))
}
