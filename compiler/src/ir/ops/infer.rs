//! Type inference of the IR's operators, following the operator specifications for the forms
//! the compiler emits (opsets 14 to 23). It also propagates the contents of small int64 tensors
//! (shapes, indices) as symbolic [`Dim`]s, the way shape arithmetic flows in a real graph, so that
//! `Reshape`, `Range` and `Unsqueeze` outputs have exact shapes.

use super::{Op, SearchKind};
use crate::ir::types::{DType, Dim, Shape, ValueType, shape_string};

/// What inference knows about one input: its type and, for small int64
/// tensors, its contents.
pub struct InferInput<'a> {
    pub ty: &'a ValueType,
    pub known: Option<&'a [Dim]>,
}

/// Inferred outputs: their types and any contents known symbolically.
pub type Inferred = Vec<(ValueType, Option<Vec<Dim>>)>;

/// Infers output types of `op` applied to `inputs`; the error says what disagreed.
pub fn infer(op: &Op, inputs: &[InferInput<'_>]) -> Result<Inferred, String> {
    let (lo, hi) = op.arity();
    if inputs.len() < lo || inputs.len() > hi {
        return Err(format!("{} takes {lo}..={hi} inputs, got {}", op.op_type(), inputs.len()));
    }
    let ty = |i: usize| inputs[i].ty;
    match op {
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow => {
            same_dtype(op, &[ty(0), ty(1)])?;
            let shape = broadcast_shapes(op, &[&ty(0).shape, &ty(1).shape])?;
            let known = match (inputs[0].known, inputs[1].known) {
                (Some(a), Some(b)) => arith(op, a, b),
                _ => None,
            };
            Ok(vec![(ValueType::new(ty(0).dtype, shape), known)])
        }
        Op::Less | Op::Greater | Op::Equal => {
            same_dtype(op, &[ty(0), ty(1)])?;
            let shape = broadcast_shapes(op, &[&ty(0).shape, &ty(1).shape])?;
            Ok(vec![(ValueType::new(DType::Bool, shape), None)])
        }
        Op::And => {
            expect_dtype(op, ty(0), DType::Bool)?;
            expect_dtype(op, ty(1), DType::Bool)?;
            let shape = broadcast_shapes(op, &[&ty(0).shape, &ty(1).shape])?;
            Ok(vec![(ValueType::new(DType::Bool, shape), None)])
        }
        Op::Where => {
            expect_dtype(op, ty(0), DType::Bool)?;
            same_dtype(op, &[ty(1), ty(2)])?;
            let shape = broadcast_shapes(op, &[&ty(0).shape, &ty(1).shape, &ty(2).shape])?;
            Ok(vec![(ValueType::new(ty(1).dtype, shape), None)])
        }
        Op::Not => {
            expect_dtype(op, ty(0), DType::Bool)?;
            Ok(vec![(ty(0).clone(), None)])
        }
        Op::Neg | Op::Sqrt | Op::Exp | Op::Tanh | Op::Erf | Op::Sigmoid | Op::Relu | Op::Softplus => {
            Ok(vec![(ty(0).clone(), None)])
        }
        Op::LeakyRelu { .. } => Ok(vec![(ty(0).clone(), None)]),
        Op::Clip => {
            same_dtype(op, &[ty(0), ty(1), ty(2)])?;
            if ty(1).rank() != 0 || ty(2).rank() != 0 {
                return Err("Clip bounds must be scalars".into());
            }
            Ok(vec![(ty(0).clone(), None)])
        }
        Op::Cast { to } => {
            let known = if to.is_int() && ty(0).dtype.is_int() { inputs[0].known.map(<[Dim]>::to_vec) } else { None };
            Ok(vec![(ValueType::new(*to, ty(0).shape.clone()), known)])
        }
        Op::Identity => Ok(vec![(ty(0).clone(), inputs[0].known.map(<[Dim]>::to_vec))]),
        Op::Min => {
            same_dtype(op, &[ty(0), ty(1)])?;
            let shape = broadcast_shapes(op, &[&ty(0).shape, &ty(1).shape])?;
            Ok(vec![(ValueType::new(ty(0).dtype, shape), None)])
        }
        Op::Slice => {
            let number = |i: usize, what: &str| -> Result<Vec<i64>, String> {
                inputs[i]
                    .known
                    .ok_or(format!("Slice {what} must be constants"))?
                    .iter()
                    .map(|d| d.as_fixed().ok_or(format!("Slice {what} must be numbers")))
                    .collect()
            };
            let (starts, ends, axes) = (number(1, "starts")?, number(2, "ends")?, number(3, "axes")?);
            if starts.len() != axes.len() || ends.len() != axes.len() {
                return Err("Slice starts, ends and axes differ in length".into());
            }
            let mut shape = ty(0).shape.clone();
            for ((&start, &end), &axis) in starts.iter().zip(&ends).zip(&axes) {
                let a = norm_axis(axis, shape.len())?;
                // The forms the compiler emits: the last position, or a fixed range of a fixed dim.
                shape[a] = match (start, end, shape[a].as_fixed()) {
                    (-1, e, _) if e >= i64::MAX / 2 => Dim::fixed(1),
                    (s, e, Some(n)) if s >= 0 && e >= s => Dim::fixed(e.min(n) - s.min(n)),
                    _ => {
                        return Err(format!(
                            "Slice [{start}, {end}) of dim {} is not a form inference follows",
                            shape[a]
                        ));
                    }
                };
            }
            Ok(vec![(ValueType::new(ty(0).dtype, shape), None)])
        }
        Op::Squeeze => {
            let axes = inputs[1].known.ok_or("Squeeze axes must be a constant")?;
            let rank = ty(0).rank();
            let axes: Vec<usize> = axes
                .iter()
                .map(|d| {
                    d.as_fixed().ok_or("Squeeze axes must be numbers".to_string()).and_then(|a| norm_axis(a, rank))
                })
                .collect::<Result<_, _>>()?;
            if let Some(&a) = axes.iter().find(|&&a| ty(0).shape[a].as_fixed() != Some(1)) {
                return Err(format!("Squeeze of axis {a}, whose dim is {}", ty(0).shape[a]));
            }
            let shape =
                ty(0).shape.iter().enumerate().filter(|(d, _)| !axes.contains(d)).map(|(_, d)| d.clone()).collect();
            Ok(vec![(ValueType::new(ty(0).dtype, shape), None)])
        }
        Op::Search { kind, .. } => {
            let names = kind.inputs();
            for (i, &(name, _)) in names.iter().enumerate() {
                let want = match name {
                    "length_penalty" | "repetition_penalty" => DType::F32,
                    _ => DType::I32,
                };
                if ty(i).dtype != want {
                    return Err(format!("{} input `{name}` must be {want}, got {}", kind.op_type(), ty(i)));
                }
            }
            if ty(0).rank() != 2 {
                return Err(format!("{} input_ids must be [batch, sequence], got {}", kind.op_type(), ty(0)));
            }
            let batch = ty(0).shape[0].clone();
            let max_length = Dim::sym("max_length");
            Ok(match kind {
                SearchKind::Beam => {
                    let returned = Dim::sym("num_return_sequences");
                    vec![
                        (ValueType::new(DType::I32, vec![batch.clone(), returned.clone(), max_length]), None),
                        (ValueType::new(DType::F32, vec![batch, returned]), None),
                    ]
                }
                SearchKind::Greedy | SearchKind::Sampling => {
                    vec![(ValueType::new(DType::I32, vec![batch, max_length]), None)]
                }
            })
        }
        Op::MatMul => infer_matmul(op, ty(0), ty(1)),
        Op::Gemm { trans_a, trans_b } => {
            same_dtype(op, &[ty(0), ty(1)])?;
            if ty(0).rank() != 2 || ty(1).rank() != 2 {
                return Err(format!("Gemm needs 2-D inputs, got {} and {}", ty(0), ty(1)));
            }
            let (m, ka) =
                if *trans_a { (&ty(0).shape[1], &ty(0).shape[0]) } else { (&ty(0).shape[0], &ty(0).shape[1]) };
            let (kb, n) =
                if *trans_b { (&ty(1).shape[1], &ty(1).shape[0]) } else { (&ty(1).shape[0], &ty(1).shape[1]) };
            if ka != kb {
                return Err(format!("Gemm inner dimensions differ: {ka} vs {kb}"));
            }
            Ok(vec![(ValueType::new(ty(0).dtype, vec![m.clone(), n.clone()]), None)])
        }
        Op::Gather { axis } => {
            if !matches!(ty(1).dtype, DType::I64 | DType::I32) {
                return Err(format!("Gather indices must be int64 or int32, got {}", ty(1).dtype));
            }
            let a = norm_axis(*axis, ty(0).rank())?;
            let mut shape: Shape = ty(0).shape[..a].to_vec();
            shape.extend(ty(1).shape.iter().cloned());
            shape.extend(ty(0).shape[a + 1..].iter().cloned());
            let known = match (inputs[0].known, inputs[1].known) {
                (Some(data), Some(idx)) if ty(0).rank() == 1 => idx
                    .iter()
                    .map(|i| {
                        let i = i.as_fixed()?;
                        let i = if i < 0 { i + data.len() as i64 } else { i };
                        data.get(usize::try_from(i).ok()?).cloned()
                    })
                    .collect::<Option<Vec<Dim>>>(),
                _ => None,
            };
            Ok(vec![(ValueType::new(ty(0).dtype, shape), known)])
        }
        Op::Concat { axis } => {
            let first = ty(0);
            let a = norm_axis(*axis, first.rank())?;
            let mut total = Dim::fixed(0);
            for input in inputs {
                let t = input.ty;
                if t.dtype != first.dtype || t.rank() != first.rank() {
                    return Err(format!("Concat inputs disagree: {first} vs {t}"));
                }
                for (d, (x, y)) in first.shape.iter().zip(&t.shape).enumerate() {
                    if d != a && x != y {
                        return Err(format!("Concat inputs disagree on axis {d}: {first} vs {t}"));
                    }
                }
                total = total.add(&t.shape[a]);
            }
            let mut shape = first.shape.clone();
            shape[a] = total;
            let known = inputs
                .iter()
                .map(|i| i.known.map(<[Dim]>::to_vec))
                .collect::<Option<Vec<Vec<Dim>>>>()
                .filter(|_| first.rank() == 1)
                .map(|parts| parts.concat());
            Ok(vec![(ValueType::new(first.dtype, shape), known)])
        }
        Op::Split { axis, outputs } => {
            let sizes = inputs[1].known.ok_or("Split sizes must be a constant")?;
            if sizes.len() != *outputs {
                return Err(format!("Split has {outputs} outputs but {} sizes", sizes.len()));
            }
            let a = norm_axis(*axis, ty(0).rank())?;
            let total = sizes.iter().fold(Dim::fixed(0), |acc, s| acc.add(s));
            if total != ty(0).shape[a] {
                return Err(format!("Split sizes add up to {total}, axis {a} of {} is {}", ty(0), ty(0).shape[a]));
            }
            Ok(sizes
                .iter()
                .map(|s| {
                    let mut shape = ty(0).shape.clone();
                    shape[a] = s.clone();
                    (ValueType::new(ty(0).dtype, shape), None)
                })
                .collect())
        }
        Op::Transpose { perm } => {
            if perm.len() != ty(0).rank() {
                return Err(format!("Transpose perm {perm:?} does not fit {}", ty(0)));
            }
            let mut seen = vec![false; perm.len()];
            let mut shape = Vec::with_capacity(perm.len());
            for &p in perm {
                let p = usize::try_from(p).ok().filter(|&p| p < seen.len() && !seen[p]);
                let p = p.ok_or_else(|| format!("Transpose perm {perm:?} is not a permutation"))?;
                seen[p] = true;
                shape.push(ty(0).shape[p].clone());
            }
            Ok(vec![(ValueType::new(ty(0).dtype, shape), None)])
        }
        Op::Reshape => {
            let target = inputs[1].known.ok_or("Reshape target shape must be known")?;
            let shape = reshape(&ty(0).shape, target)?;
            Ok(vec![(ValueType::new(ty(0).dtype, shape), inputs[0].known.map(<[Dim]>::to_vec))])
        }
        Op::Unsqueeze => {
            let axes = inputs[1].known.ok_or("Unsqueeze axes must be a constant")?;
            let out_rank = ty(0).rank() + axes.len();
            let mut axes: Vec<usize> = axes
                .iter()
                .map(|a| a.as_fixed().ok_or("Unsqueeze axes must be numbers".to_string()))
                .map(|a| a.and_then(|a| norm_axis(a, out_rank)))
                .collect::<Result<_, _>>()?;
            axes.sort_unstable();
            axes.dedup();
            if axes.len() + ty(0).rank() != out_rank {
                return Err("Unsqueeze axes repeat".into());
            }
            let mut rest = ty(0).shape.iter();
            let shape = (0..out_rank)
                .map(|d| if axes.contains(&d) { Some(Dim::fixed(1)) } else { rest.next().cloned() })
                .collect::<Option<Shape>>()
                .ok_or("Unsqueeze rank mismatch")?;
            Ok(vec![(ValueType::new(ty(0).dtype, shape), inputs[0].known.map(<[Dim]>::to_vec))])
        }
        Op::Shape => {
            Ok(vec![(ValueType::new(DType::I64, vec![Dim::fixed(ty(0).rank() as i64)]), Some(ty(0).shape.clone()))])
        }
        Op::Range => {
            same_dtype(op, &[ty(0), ty(1), ty(2)])?;
            if inputs.iter().any(|i| i.ty.rank() != 0) {
                return Err("Range inputs must be scalars".into());
            }
            let (start, limit) = match (inputs[0].known, inputs[1].known) {
                (Some([s]), Some([l])) => (s, l),
                _ => return Err("Range start and limit must be known dims".into()),
            };
            if inputs[2].known.and_then(|d| d.first()).and_then(Dim::as_fixed) != Some(1) {
                return Err("Range delta must be 1".into());
            }
            let len = limit.sub(start);
            Ok(vec![(ValueType::new(ty(0).dtype, vec![len]), None)])
        }
        Op::Softmax { axis } => {
            norm_axis(*axis, ty(0).rank())?;
            Ok(vec![(ty(0).clone(), None)])
        }
        Op::LayerNormalization { axis, .. } => {
            let a = norm_axis(*axis, ty(0).rank())?;
            same_dtype(op, &[ty(0), ty(1), ty(2)])?;
            let norm = &ty(0).shape[a..];
            if ty(1).shape != norm || ty(2).shape != norm {
                return Err(format!(
                    "LayerNormalization scale {} / bias {} must match the normalised dims {}",
                    ty(1),
                    ty(2),
                    shape_string(norm)
                ));
            }
            Ok(vec![(ty(0).clone(), None)])
        }
        Op::DynamicQuantizeLinear => {
            expect_dtype(op, ty(0), DType::F32)?;
            Ok(vec![
                (ValueType::new(DType::U8, ty(0).shape.clone()), None),
                (ValueType::new(DType::F32, vec![]), None),
                (ValueType::new(DType::U8, vec![]), None),
            ])
        }
        Op::MatMulInteger => {
            let int8 = |t: &ValueType| matches!(t.dtype, DType::U8 | DType::I8);
            if !int8(ty(0)) || !int8(ty(1)) {
                return Err(format!("MatMulInteger takes 8-bit integers, got {} and {}", ty(0), ty(1)));
            }
            let (a, b) =
                (ValueType::new(DType::F32, ty(0).shape.clone()), ValueType::new(DType::F32, ty(1).shape.clone()));
            let out = infer_matmul(op, &a, &b)?;
            Ok(out.into_iter().map(|(t, k)| (ValueType::new(DType::I32, t.shape), k)).collect())
        }
        Op::DequantizeLinear { .. } => {
            if !ty(0).dtype.is_int() || !ty(1).dtype.is_float() {
                return Err(format!(
                    "DequantizeLinear takes integer values and float scales, got {} and {}",
                    ty(0),
                    ty(1)
                ));
            }
            Ok(vec![(ValueType::new(ty(1).dtype, ty(0).shape.clone()), None)])
        }
        Op::MatMulNBits { k, n, .. } => {
            let a = ty(0);
            if a.shape.last().and_then(Dim::as_fixed) != Some(*k) {
                return Err(format!("MatMulNBits expects A's last dim {k}, got {a}"));
            }
            let mut shape = a.shape.clone();
            if let Some(last) = shape.last_mut() {
                *last = Dim::fixed(*n);
            }
            Ok(vec![(ValueType::new(a.dtype, shape), None)])
        }
        Op::Attention { heads, .. } => {
            let (q, past_k) = (ty(0), ty(4));
            same_dtype(op, &[q, ty(1), ty(2), ty(3), past_k, ty(5)])?;
            if q.rank() != 3 || past_k.rank() != 4 || ty(5).shape != past_k.shape {
                return Err(format!("Attention expects 3-D Q, K, V and 4-D past, got {q} and {past_k}"));
            }
            let width = q.shape[2].as_fixed();
            let head_dim = past_k.shape[3].as_fixed();
            if past_k.shape[1].as_fixed() != Some(*heads) || width != head_dim.map(|d| d * heads) {
                return Err(format!("Attention with {heads} heads: Q {q} does not fit past {past_k}"));
            }
            if ty(1).shape != q.shape || ty(2).shape != q.shape {
                return Err(format!("Attention's K and V must be shaped as Q {q}"));
            }
            let mut present = past_k.shape.clone();
            present[2] = present[2].add(&q.shape[1]);
            let present = ValueType::new(q.dtype, present);
            Ok(vec![(q.clone(), None), (present.clone(), None), (present, None)])
        }
        Op::GroupQueryAttention { heads, .. } => {
            let (q, past_k) = (ty(0), ty(3));
            same_dtype(op, &[q, ty(1), ty(2), past_k, ty(4), ty(7)])?;
            if q.rank() != 3 || past_k.rank() != 4 || ty(4).shape != past_k.shape {
                return Err(format!("GroupQueryAttention expects 3-D Q, K, V and 4-D past, got {q} and {past_k}"));
            }
            let width = q.shape[2].as_fixed();
            let head_dim = past_k.shape[3].as_fixed();
            if past_k.shape[1].as_fixed() != Some(*heads) || width != head_dim.map(|d| d * heads) {
                return Err(format!("GroupQueryAttention with {heads} heads: Q {q} does not fit past {past_k}"));
            }
            if ty(1).shape != q.shape || ty(2).shape != q.shape {
                return Err(format!("GroupQueryAttention's K and V must be shaped as Q {q}"));
            }
            expect_dtype(op, ty(5), DType::I32)?;
            expect_dtype(op, ty(6), DType::I32)?;
            if ty(5).rank() != 1 || ty(6).rank() != 0 || ty(7).rank() != 4 {
                return Err(format!(
                    "GroupQueryAttention expects seqlens_k [batch], a scalar total length and a 4-D bias, got {}, {} and {}",
                    ty(5),
                    ty(6),
                    ty(7)
                ));
            }
            // Without a shared buffer the cache grows by the new positions (with one, the
            // present is the past buffer, whose capacity the caller chose).
            let mut present = past_k.shape.clone();
            present[2] = present[2].add(&q.shape[1]);
            let present = ValueType::new(q.dtype, present);
            Ok(vec![(q.clone(), None), (present.clone(), None), (present, None)])
        }
        Op::SkipLayerNormalization { .. } => {
            let x = ty(0);
            same_dtype(op, &[x, ty(1), ty(2), ty(3), ty(4)])?;
            let width = x.shape.last().cloned().ok_or("SkipLayerNormalization needs a rank-3 input")?;
            if ty(1).shape != x.shape || [2, 3, 4].iter().any(|&i| ty(i).shape != [width.clone()]) {
                return Err(format!(
                    "SkipLayerNormalization: skip must be shaped as {x}, gamma, beta and bias as [{width}]"
                ));
            }
            let mut stat = x.shape.clone();
            if let Some(last) = stat.last_mut() {
                *last = Dim::fixed(1);
            }
            let stat = ValueType::new(DType::F32, stat);
            Ok(vec![(x.clone(), None), (stat.clone(), None), (stat, None), (x.clone(), None)])
        }
        Op::FastGelu => {
            same_dtype(op, &[ty(0), ty(1)])?;
            if ty(1).rank() != 1 || ty(0).shape.last() != ty(1).shape.first() {
                return Err(format!("FastGelu's bias {} must match the last dim of {}", ty(1), ty(0)));
            }
            Ok(vec![(ty(0).clone(), None)])
        }
        Op::ReduceMean { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
            let axes: Vec<i64> = match axes {
                Some(a) => a.clone(),
                None => inputs[1]
                    .known
                    .ok_or("ReduceMean axes must be a constant")?
                    .iter()
                    .map(|d| d.as_fixed().ok_or("ReduceMean axes must be numbers"))
                    .collect::<Result<_, _>>()?,
            };
            let rank = ty(0).rank();
            let axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, rank)).collect::<Result<_, _>>()?;
            let shape = ty(0)
                .shape
                .iter()
                .enumerate()
                .filter_map(|(d, dim)| match (axes.contains(&d), keepdims) {
                    (true, true) => Some(Dim::fixed(1)),
                    (true, false) => None,
                    (false, _) => Some(dim.clone()),
                })
                .collect();
            Ok(vec![(ValueType::new(ty(0).dtype, shape), None)])
        }
    }
}

fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) { Ok(a as usize) } else { Err(format!("axis {axis} is out of range for rank {rank}")) }
}

fn same_dtype(op: &Op, types: &[&ValueType]) -> Result<(), String> {
    match types.iter().find(|t| t.dtype != types[0].dtype) {
        Some(t) => Err(format!("{} inputs must share an element type: {} vs {}", op.op_type(), types[0], t)),
        None => Ok(()),
    }
}

fn expect_dtype(op: &Op, t: &ValueType, dtype: DType) -> Result<(), String> {
    if t.dtype == dtype { Ok(()) } else { Err(format!("{} expects {dtype}, got {t}", op.op_type())) }
}

/// Numpy-style broadcasting of several shapes.
pub fn broadcast_shapes(op: &Op, shapes: &[&Shape]) -> Result<Shape, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(rank);
    for d in 0..rank {
        let mut dim = Dim::fixed(1);
        for s in shapes {
            if let Some(x) = (d + s.len()).checked_sub(rank).map(|i| &s[i]) {
                dim = dim.broadcast(x).ok_or_else(|| {
                    let all: Vec<String> = shapes.iter().map(|s| shape_string(s)).collect();
                    format!("{} cannot broadcast {}", op.op_type(), all.join(" with "))
                })?;
            }
        }
        out.push(dim);
    }
    Ok(out)
}

fn arith(op: &Op, a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    if !(a.len() == n || a.len() == 1) || !(b.len() == n || b.len() == 1) {
        return None;
    }
    (0..n)
        .map(|i| {
            let x = &a[if a.len() == 1 { 0 } else { i }];
            let y = &b[if b.len() == 1 { 0 } else { i }];
            match op {
                Op::Add => Some(x.add(y)),
                Op::Sub => Some(x.sub(y)),
                Op::Mul => x.mul(y),
                _ => None,
            }
        })
        .collect()
}

fn infer_matmul(op: &Op, a: &ValueType, b: &ValueType) -> Result<Inferred, String> {
    same_dtype(op, &[a, b])?;
    if a.rank() < 2 || b.rank() < 2 {
        return Err(format!("MatMul is only emitted for rank >= 2 operands, got {a} and {b}"));
    }
    let (ka, kb) = (&a.shape[a.rank() - 1], &b.shape[b.rank() - 2]);
    if ka != kb {
        return Err(format!("MatMul inner dimensions differ: {a} x {b}"));
    }
    let batch_a: Shape = a.shape[..a.rank() - 2].to_vec();
    let batch_b: Shape = b.shape[..b.rank() - 2].to_vec();
    let mut shape = broadcast_shapes(op, &[&batch_a, &batch_b])?;
    shape.push(a.shape[a.rank() - 2].clone());
    shape.push(b.shape[b.rank() - 1].clone());
    Ok(vec![(ValueType::new(a.dtype, shape), None)])
}

fn reshape(input: &[Dim], target: &[Dim]) -> Result<Shape, String> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, t) in target.iter().enumerate() {
        match t.as_fixed() {
            Some(0) => out.push(input.get(i).cloned().ok_or("Reshape copies a dim the input lacks")?),
            Some(-1) if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(Dim::fixed(1));
            }
            Some(n) if n < 0 => return Err(format!("Reshape target has invalid entry {n}")),
            _ => out.push(t.clone()),
        }
    }
    // Cancel the dims both sides share, then compare what is left as numbers.
    let mut rest_in: Vec<Dim> = input.to_vec();
    let mut rest_out: Vec<Dim> = Vec::new();
    for (i, d) in out.iter().enumerate() {
        if Some(i) == infer_at {
            continue;
        }
        match rest_in.iter().position(|x| x == d) {
            Some(p) => {
                rest_in.remove(p);
            }
            None => rest_out.push(d.clone()),
        }
    }
    let product = |dims: &[Dim]| dims.iter().try_fold(1i64, |acc, d| d.as_fixed().map(|n| acc * n));
    match (product(&rest_in), product(&rest_out), infer_at) {
        (Some(a), Some(b), Some(i)) if b > 0 && a % b == 0 => out[i] = Dim::fixed(a / b),
        // Symbols merged into one dim (batch × choices): a symbol named after the product.
        (None, Some(1), Some(i)) => {
            out[i] = match rest_in.as_slice() {
                [one] => one.clone(),
                dims => Dim::sym(&dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("*")),
            }
        }
        (_, _, Some(_)) => return Err("Reshape with -1 is only inferred over known dims".into()),
        (Some(a), Some(b), None) if a != b => {
            return Err(format!(
                "Reshape changes the element count: {} to {}",
                shape_string(input),
                shape_string(&out)
            ));
        }
        _ => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dtype: DType, dims: &[Dim]) -> ValueType {
        ValueType::new(dtype, dims.to_vec())
    }

    #[test]
    fn matmul_broadcasts_batch_dims() {
        let b = Dim::sym("batch_size");
        let s = Dim::sym("sequence_length");
        let x = t(DType::F32, &[b.clone(), s.clone(), Dim::fixed(8)]);
        let w = t(DType::F32, &[Dim::fixed(8), Dim::fixed(24)]);
        let out =
            infer(&Op::MatMul, &[InferInput { ty: &x, known: None }, InferInput { ty: &w, known: None }]).unwrap();
        assert_eq!(out[0].0, t(DType::F32, &[b, s, Dim::fixed(24)]));
        let bad = t(DType::F32, &[Dim::fixed(9), Dim::fixed(24)]);
        assert!(
            infer(&Op::MatMul, &[InferInput { ty: &x, known: None }, InferInput { ty: &bad, known: None }]).is_err()
        );
    }

    #[test]
    fn shape_arithmetic_feeds_range() {
        let p = Dim::sym("past_sequence_length");
        let s = Dim::sym("sequence_length");
        let scalar = t(DType::I64, &[]);
        let limit = [p.add(&s)];
        let start = [p.clone()];
        let one = [Dim::fixed(1)];
        let out = infer(
            &Op::Range,
            &[
                InferInput { ty: &scalar, known: Some(&start) },
                InferInput { ty: &scalar, known: Some(&limit) },
                InferInput { ty: &scalar, known: Some(&one) },
            ],
        )
        .unwrap();
        assert_eq!(out[0].0.shape, vec![s]);
    }

    #[test]
    fn reshape_splits_and_merges_heads() {
        let b = Dim::sym("b");
        let s = Dim::sym("s");
        let input = [b.clone(), s.clone(), Dim::fixed(768)];
        let split = reshape(&input, &[Dim::fixed(0), Dim::fixed(0), Dim::fixed(12), Dim::fixed(64)]).unwrap();
        assert_eq!(split, vec![b.clone(), s.clone(), Dim::fixed(12), Dim::fixed(64)]);
        assert!(reshape(&input, &[Dim::fixed(0), Dim::fixed(0), Dim::fixed(12), Dim::fixed(60)]).is_err());
    }
}
