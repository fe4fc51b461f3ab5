//! GPT-2's weight-carrying layers lowered per numeric format: the Conv1D
//! linears (`x @ W + b`, W stored [in, out]), the token embedding table and
//! the LM head that reads it transposed.
//!
//! | format | matmul |
//! |---|---|
//! | fp32 / fp16 | `MatMul(x, W)` in the compute type |
//! | int8 | `DynamicQuantizeLinear(x)` → `MatMulInteger(x_q, W_q, x_zp, 128)` → `Cast` → `Mul(x_scale · w_scale)` (ONNX Runtime fuses this into DynamicQuantizeMatMul) |
//! | int8-weights | `DequantizeLinear(W_q, w_scale, axis=1)` → `MatMul` |
//! | int4, target ort | `com.microsoft.MatMulNBits(x, W_q4, scales)`, blocks of 32 along K; `accuracy_level` 4 (activations quantized to int8 per block at run time) unless `--int4-activations float` |
//! | int4, portable | `DequantizeLinear(W_int4, scales, axis=0, block_size=32)` → `MatMul` (opset 21) |
//!
//! Quantized embeddings keep the table once, as int8 `[n_embd, vocab]` with
//! one scale and zero point per token (Gather of columns, then (q - zero
//! point) × scale); the tied LM head reads that table as its `[K, N]` weight
//! (a per-column zero point for MatMulInteger), with
//! the int8 dynamic matmul (int8, portable int4) or a dequantized MatMul (int8-weights). int4
//! with `--target ort` gives the head a 4-bit `MatMulNBits` of its own over the table's rows.
//!
//! Weights that feed `MatMulInteger` are stored as uint8 (the int8 value + 128,
//! zero point + 128): the same numbers, but ONNX Runtime's x86 kernels for
//! uint8 × int8 without VNNI (AVX2, AVX-512 BW) add pairs of products in
//! saturating 16-bit lanes (`vpmaddubsw`), which overflow for 8-bit weights
//! (255 × 127 × 2 > 32767) and wreck the logits; uint8 × uint8 widens to 16 bits
//! first and is exact on every CPU.

use super::BuildError;
use super::precision::{Part, Precision, Quantize, Target};
use crate::checkpoint::{Gpt2Config, Weights};
use crate::ir::{DType, GraphBuilder, GraphError, Op, Tensor, ValueId};
use crate::quant;

/// What lowering needs: weights, config and the numeric formats.
pub(crate) struct Ctx<'a> {
    pub w: &'a Weights,
    pub c: &'a Gpt2Config,
    pub p: &'a Precision,
    /// Compute the last layer's rows and the logits for the last position only (a search
    /// operator's decoder reads nothing else).
    pub last_position_only: bool,
}

fn values(t: &Tensor, name: &str) -> Result<Vec<f32>, BuildError> {
    t.to_f32_vec()
        .ok_or_else(|| GraphError { at: name.into(), message: "weights must be floating point".into() }.into())
}

fn built(t: Option<Tensor>, name: &str) -> Result<Tensor, BuildError> {
    t.ok_or_else(|| GraphError { at: name.into(), message: "tensor data does not match its shape".into() }.into())
}

/// `t` in the float type `dtype` (f32 weights pass through without a copy).
pub(crate) fn in_dtype(t: Tensor, dtype: DType, name: &str) -> Result<Tensor, BuildError> {
    match dtype {
        DType::F16 => built(Tensor::f16_from_f32(t.dims.clone(), &values(&t, name)?), name),
        _ => Ok(t),
    }
}

/// Casts `x` to `dtype` unless it already is.
pub(crate) fn cast_to(b: &mut GraphBuilder, x: ValueId, dtype: DType) -> Result<ValueId, GraphError> {
    if b.ty(x).dtype == dtype { Ok(x) } else { b.cast(x, dtype) }
}

/// GPT-2's `Conv1D` named `scope` (`h.0.attn.c_attn`): `x @ weight + bias`.
pub(crate) fn conv1d(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    scope: &str,
    part: Part,
    x: ValueId,
    n_in: usize,
    n_out: usize,
) -> Result<ValueId, BuildError> {
    let leaf = scope.rsplit('.').next().unwrap_or(scope);
    b.scoped(leaf, |b| {
        let (y, bias) = conv1d_parts(b, ctx, scope, part, x, n_in, n_out)?;
        Ok(b.add(y, bias)?)
    })
}

/// GPT-2's `Conv1D` named `scope` as `(x @ weight, bias)`, for fused ops that add the bias themselves.
pub(crate) fn conv1d_unbiased(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    scope: &str,
    part: Part,
    x: ValueId,
    n_in: usize,
    n_out: usize,
) -> Result<(ValueId, ValueId), BuildError> {
    let leaf = scope.rsplit('.').next().unwrap_or(scope);
    b.scoped(leaf, |b| conv1d_parts(b, ctx, scope, part, x, n_in, n_out))
}

fn conv1d_parts(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    scope: &str,
    part: Part,
    x: ValueId,
    n_in: usize,
    n_out: usize,
) -> Result<(ValueId, ValueId), BuildError> {
    let weight = ctx.w.body(&format!("{scope}.weight"), &[n_in, n_out])?;
    let bias = ctx.w.body(&format!("{scope}.bias"), &[n_out])?;
    let y = matmul_weight(b, ctx, scope, part, x, weight, n_in, n_out)?;
    let bias = b.initializer(&format!("{scope}.bias"), in_dtype(bias, b.ty(y).dtype, scope)?)?;
    Ok((y, bias))
}

/// `x @ W` for a `[k, n]` weight named `{name}.weight`, in `part`'s format.
#[allow(clippy::too_many_arguments)]
fn matmul_weight(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    name: &str,
    part: Part,
    x: ValueId,
    weight: Tensor,
    k: usize,
    n: usize,
) -> Result<ValueId, BuildError> {
    match ctx.p.quant_for(part) {
        Quantize::None => {
            let w = b.initializer(&format!("{name}.weight"), in_dtype(weight, ctx.p.compute(), name)?)?;
            Ok(b.matmul(x, w)?)
        }
        Quantize::Int8 | Quantize::Int8Weights => {
            let q = quant::int8_per_column(&values(&weight, name)?, k, n);
            let ws =
                b.initializer(&format!("{name}.weight_scale"), built(Tensor::from_f32(vec![n], &q.scales), name)?)?;
            if ctx.p.quant_for(part) == Quantize::Int8 {
                let wq = b.initializer(
                    &format!("{name}.weight_quantized"),
                    built(Tensor::from_u8(vec![k, n], &offset_u8(&q.values)), name)?,
                )?;
                let zp = b.initializer(
                    &format!("{name}.weight_zero_point"),
                    built(Tensor::from_u8(vec![n], &offset_u8(&q.zero_points)), name)?,
                )?;
                Ok(dynamic_matmul(b, x, wq, ws, zp)?)
            } else {
                let wq = b.initializer(
                    &format!("{name}.weight_quantized"),
                    built(Tensor::from_i8(vec![k, n], &q.values), name)?,
                )?;
                let w = b.node1(Op::DequantizeLinear { axis: 1, block_size: 0 }, &[wq, ws])?;
                Ok(b.matmul(x, w)?)
            }
        }
        Quantize::Int4 => int4_matmul(b, ctx.p, name, x, &values(&weight, name)?, k, n),
    }
}

/// int8 values as uint8 with the same meaning once the zero point is moved too
/// (`q + 128`; see the module's note on `MatMulInteger`).
fn offset_u8(values: &[i8]) -> Vec<u8> {
    values.iter().map(|&v| (v as u8) ^ 0x80).collect()
}

/// Run-time quantized `x @ W_q` scaled back to f32.
fn dynamic_matmul(
    b: &mut GraphBuilder,
    x: ValueId,
    wq: ValueId,
    w_scale: ValueId,
    w_zp: ValueId,
) -> Result<ValueId, GraphError> {
    let q = b.node(Op::DynamicQuantizeLinear, &[x])?;
    let [xq, x_scale, x_zp] = <[ValueId; 3]>::try_from(q)
        .map_err(|_| GraphError { at: "DynamicQuantizeLinear".into(), message: "expected three outputs".into() })?;
    let product = b.node1(Op::MatMulInteger, &[xq, wq, x_zp, w_zp])?;
    let product = b.cast(product, DType::F32)?;
    let scale = b.mul(x_scale, w_scale)?;
    b.mul(product, scale)
}

const INT4_BLOCK: usize = 32;

/// `x @ W` for `[K, N]` weights packed as `MatMulNBits` takes them (4-bit blocks of 32 along K),
/// with the activations `--int4-activations` chooses.
fn nbits_matmul(
    b: &mut GraphBuilder,
    p: &Precision,
    x: ValueId,
    packed: ValueId,
    scales: ValueId,
    k: usize,
    n: usize,
) -> Result<ValueId, GraphError> {
    let op = Op::MatMulNBits {
        k: k as i64,
        n: n as i64,
        bits: 4,
        block_size: INT4_BLOCK as i64,
        accuracy_level: p.int4_activations().accuracy_level(),
    };
    b.node1(op, &[x, packed, scales])
}

/// `x @ W` with W in 4-bit blocks of 32 along K.
fn int4_matmul(
    b: &mut GraphBuilder,
    p: &Precision,
    name: &str,
    x: ValueId,
    w: &[f32],
    k: usize,
    n: usize,
) -> Result<ValueId, BuildError> {
    let q = quant::int4_blocks(w, k, n, INT4_BLOCK);
    let blocks = k.div_ceil(INT4_BLOCK);
    if p.target == Target::Ort {
        let (packed, scales) = q.matmul_nbits();
        let bq = Tensor::from_bytes(DType::U8, vec![n, blocks, INT4_BLOCK / 2], packed);
        let bq = b.initializer(&format!("{name}.weight_q4"), built(bq, name)?)?;
        let s =
            b.initializer(&format!("{name}.weight_scales"), built(Tensor::from_f32(vec![n * blocks], &scales), name)?)?;
        Ok(nbits_matmul(b, p, x, bq, s, k, n)?)
    } else {
        let wq = b.initializer(
            &format!("{name}.weight_int4"),
            built(Tensor::from_bytes(DType::I4, vec![k, n], q.onnx_int4()), name)?,
        )?;
        let s = b.initializer(
            &format!("{name}.weight_scales"),
            built(Tensor::from_f32(vec![blocks, n], &q.scales), name)?,
        )?;
        let w = b.node1(Op::DequantizeLinear { axis: 0, block_size: INT4_BLOCK as i64 }, &[wq, s])?;
        Ok(b.matmul(x, w)?)
    }
}

/// A `[vocab, n_embd]` table (`wte`, or an untied `lm_head`) and the forms
/// of it the graph uses, each made once.
pub(crate) struct Table {
    name: String,
    source: Tensor,
    float: Option<ValueId>,
    /// int8 values (stored + 128 as uint8), scales and zero points, one per row.
    int8_rows: Option<(ValueId, ValueId, ValueId)>,
}

impl Table {
    pub fn new(name: &str, source: Tensor) -> Table {
        Table { name: name.into(), source, float: None, int8_rows: None }
    }

    fn rows(&self) -> (usize, usize) {
        (self.source.dims.first().copied().unwrap_or(0), self.source.dims.get(1).copied().unwrap_or(0))
    }

    /// The table in the compute float type.
    fn float(&mut self, b: &mut GraphBuilder, dtype: DType) -> Result<ValueId, BuildError> {
        if let Some(v) = self.float {
            return Ok(v);
        }
        let t = in_dtype(self.source.clone(), dtype, &self.name)?;
        let v = b.initializer(&format!("{}.weight", self.name), t)?;
        self.float = Some(v);
        Ok(v)
    }

    /// `h @ tableᵀ` as a 4-bit `MatMulNBits` (the table's rows are the head's columns).
    fn int4_head(&mut self, b: &mut GraphBuilder, p: &Precision, h: ValueId) -> Result<ValueId, BuildError> {
        let (rows, cols) = self.rows();
        let name = &self.name;
        let (packed, scales) = quant::int4_rows_matmul_nbits(&values(&self.source, name)?, rows, cols, INT4_BLOCK);
        let blocks = cols.div_ceil(INT4_BLOCK);
        let q = built(Tensor::from_bytes(DType::U8, vec![rows, blocks, INT4_BLOCK / 2], packed), name)?;
        let q = b.initializer(&format!("{name}.head_q4"), q)?;
        let s = b.initializer(
            &format!("{name}.head_scales"),
            built(Tensor::from_f32(vec![rows * blocks], &scales), name)?,
        )?;
        Ok(nbits_matmul(b, p, h, q, s, cols, rows)?)
    }

    /// The table as int8 (stored as uint8, + 128) with one scale and zero point per token, stored transposed
    /// (`[n_embd, vocab]`): the LM head then is a plain `[K, N]` weight, which runtimes
    /// fuse into their quantized matmuls, and the embedding gathers columns.
    fn int8_rows(&mut self, b: &mut GraphBuilder) -> Result<(ValueId, ValueId, ValueId), BuildError> {
        if let Some(v) = self.int8_rows {
            return Ok(v);
        }
        let (rows, cols) = self.rows();
        let name = &self.name;
        let q = quant::int8_per_row_asymmetric(&values(&self.source, name)?, rows, cols);
        let stored = offset_u8(&q.values);
        let mut transposed = vec![0u8; stored.len()];
        for r in 0..rows {
            for c in 0..cols {
                transposed[c * rows + r] = stored[r * cols + c];
            }
        }
        let wq = b.initializer(
            &format!("{name}.weight_quantized"),
            built(Tensor::from_u8(vec![cols, rows], &transposed), name)?,
        )?;
        let ws =
            b.initializer(&format!("{name}.weight_scale"), built(Tensor::from_f32(vec![rows], &q.scales), name)?)?;
        let zp = b.initializer(
            &format!("{name}.weight_zero_point"),
            built(Tensor::from_u8(vec![rows], &offset_u8(&q.zero_points)), name)?,
        )?;
        self.int8_rows = Some((wq, ws, zp));
        Ok((wq, ws, zp))
    }

    /// Rows of the table for `ids`, as f32 (the embedding lookup).
    pub fn embed(&mut self, b: &mut GraphBuilder, ctx: &Ctx<'_>, ids: ValueId) -> Result<ValueId, BuildError> {
        if ctx.p.quant_for(Part::Embedding) == Quantize::None {
            let table = self.float(b, ctx.p.compute())?;
            let rows = b.gather(table, ids, 0)?;
            return Ok(cast_to(b, rows, DType::F32)?);
        }
        // (q - zero_point) × scale, row by row.
        let (wq, ws, wzp) = self.int8_rows(b)?;
        let columns = b.gather(wq, ids, 1)?;
        let rows = b.transpose(columns, &[1, 2, 0])?;
        let rows = b.cast(rows, DType::F32)?;
        let zero = b.gather(wzp, ids, 0)?;
        let zero = b.cast(zero, DType::F32)?;
        let zero = b.unsqueeze(zero, &[-1])?;
        let rows = b.sub(rows, zero)?;
        let scales = b.gather(ws, ids, 0)?;
        let scales = b.unsqueeze(scales, &[-1])?;
        Ok(b.mul(rows, scales)?)
    }

    /// `h @ tableᵀ`: the LM head, in the head's format; `h` is in the compute type.
    pub fn head(&mut self, b: &mut GraphBuilder, ctx: &Ctx<'_>, h: ValueId) -> Result<ValueId, BuildError> {
        match ctx.p.quant_for(Part::LmHead) {
            Quantize::None => {
                let table = self.float(b, ctx.p.compute())?;
                let t = b.transpose(table, &[1, 0])?;
                Ok(b.matmul(h, t)?)
            }
            // With ONNX Runtime, int4's head is a MatMulNBits of its own over the table's rows (4-bit
            // blocks along n_embd), beside the int8 rows the embedding gathers: a decode step
            // then reads the head in 4.5 bits a weight instead of 8.
            Quantize::Int4 if ctx.p.target == Target::Ort => self.int4_head(b, ctx.p, h),
            // Otherwise int4 keeps the (tied) table as int8 rows: the head runs the int8 dynamic matmul.
            Quantize::Int8 | Quantize::Int4 => {
                let (wq, ws, wzp) = self.int8_rows(b)?;
                Ok(dynamic_matmul(b, h, wq, ws, wzp)?)
            }
            Quantize::Int8Weights => {
                let (wq, ws, wzp) = self.int8_rows(b)?;
                let table = b.node1(Op::DequantizeLinear { axis: 1, block_size: 0 }, &[wq, ws, wzp])?;
                Ok(b.matmul(h, table)?)
            }
        }
    }
}

/// A graph of one GPT-2 `Conv1D` (`y = x @ weight + bias`, weight `[k, n]`) in
/// the given formats: input `x` `[batch_size, sequence_length, k]` f32, output
/// `y` f32. For checking each lowering's numerics against a direct computation.
pub fn single_linear_graph(
    weight: &[f32],
    bias: &[f32],
    k: usize,
    n: usize,
    precision: &Precision,
    opset: i64,
) -> Result<crate::ir::Graph, BuildError> {
    use crate::checkpoint::{InMemoryWeights, Weights};
    use crate::ir::{Dim, ValueType};
    let mut source = InMemoryWeights::new();
    source.insert_f32("layer.weight", &[k, n], weight);
    source.insert_f32("layer.bias", &[n], bias);
    let weights = Weights::new(std::sync::Arc::new(source));
    let config_text = format!(
        r#"{{"n_embd": {k}, "n_head": 1, "n_layer": 1, "vocab_size": 8, "bos_token_id": 0, "eos_token_id": 0}}"#
    );
    let (config, _) = crate::checkpoint::Gpt2Config::parse(std::path::Path::new("config.json"), &config_text)
        .map_err(|e| GraphError { at: "config".into(), message: e.to_string() })?;
    let ctx = Ctx { w: &weights, c: &config, p: precision, last_position_only: false };
    let mut b = GraphBuilder::new("linear", opset);
    let shape = vec![Dim::sym("batch_size"), Dim::sym("sequence_length")];
    let x = b.input("x", ValueType::new(DType::F32, [shape.clone(), vec![Dim::fixed(k as i64)]].concat()))?;
    let xc = cast_to(&mut b, x, precision.compute())?;
    let y = conv1d(&mut b, &ctx, "layer", Part::Mlp, xc, k, n)?;
    let y = cast_to(&mut b, y, DType::F32)?;
    b.output(y, "y", &ValueType::new(DType::F32, [shape, vec![Dim::fixed(n as i64)]].concat()))?;
    Ok(b.finish())
}
