//! Operators that build, move and reshape tensors: Constant, ConstantOfShape, Gather*, Concat,
//! Split, Slice, Transpose, Reshape, Flatten, (Un)Squeeze, Expand, Tile, Shape, Size, Range. Small
//! integer tensors are followed by value through them, as shape arithmetic needs.

use super::*;

pub(crate) fn constant(n: &Node<'_>) -> R<Vec<Val>> {
    if !n.inputs.is_empty() {
        return Err("Constant takes no inputs".into());
    }
    let [a] = n.proto.attribute.as_slice() else {
        return Err("Constant needs exactly one value attribute".into());
    };
    let scalar = |elem: i32| Val::new(elem, Some(Vec::new()));
    let list =
        |elem: i32, len: usize| Val::new(elem, Some(vec![SymDim::Known(i64::try_from(len).unwrap_or(i64::MAX))]));
    Ok(vec![match a.name() {
        "value" => tensor_val(a.t.as_ref().ok_or("Constant `value` holds no tensor")?),
        "sparse_value" => {
            let dims = a.sparse_tensor.as_ref().ok_or("Constant `sparse_value` holds no tensor")?.dims.clone();
            let elem = a.sparse_tensor.as_ref().and_then(|s| s.values.as_ref()).and_then(|v| v.data_type).unwrap_or(0);
            Val::new(
                elem,
                Some(dims.into_iter().map(|d| if d >= 0 { SymDim::Known(d) } else { SymDim::Unknown }).collect()),
            )
        }
        "value_int" => Val::with_data(INT64, Some(Vec::new()), a.i.map(|i| vec![SymDim::Known(i)])),
        "value_ints" => {
            let v = list(INT64, a.ints.len());
            let data = (a.ints.len() <= MAX_VALUES).then(|| a.ints.iter().map(|&i| SymDim::Known(i)).collect());
            Val::with_data(INT64, v.dims, data)
        }
        "value_float" => scalar(FLOAT),
        "value_floats" => list(FLOAT, a.floats.len()),
        "value_string" => scalar(DataType::String as i32),
        "value_strings" => list(DataType::String as i32, a.strings.len()),
        other => return Err(format!("unknown Constant attribute `{other}`")),
    }])
}

/// Dims from a followed shape tensor (int64, 1-D).
pub(crate) fn shape_from(v: &Val, what: &str) -> R<Option<Vec<SymDim>>> {
    want(v, what, &[INT64])?;
    if let Some(r) = v.rank().filter(|&r| r != 1) {
        return Err(format!("{what} must be 1-D, got rank {r}"));
    }
    Ok(v.data.clone())
}

/// Rank of a shape tensor when its length is known.
pub(crate) fn shape_len(v: &Val) -> Option<usize> {
    match v.dims() {
        Some([d]) => usize::try_from(d.known()?).ok().filter(|&r| r <= MAX_RANK),
        _ => None,
    }
}

pub(crate) fn constant_of_shape(n: &Node<'_>) -> R<Vec<Val>> {
    let s = n.input(0)?;
    let dims = shape_from(s, "the shape")?;
    if dims.as_ref().is_some_and(|d| d.iter().any(|x| x.known().is_some_and(|k| k < 0))) {
        return Err(format!("negative dimension in {}", dims_text(dims.as_deref())));
    }
    let dims = dims.or_else(|| shape_len(s).map(|r| vec![SymDim::Unknown; r]));
    let (elem, fill) = match n.attr("value").and_then(|a| a.t.as_ref()) {
        Some(t) => {
            let v = tensor_val(t);
            (v.elem, v.scalar().cloned())
        }
        None => (FLOAT, None),
    };
    let count = dims.as_deref().and_then(element_count);
    let data = match (fill, count) {
        (Some(f), Some(c)) if c <= MAX_VALUES => Some(vec![f; c]),
        _ => None,
    };
    Ok(vec![Val::with_data(elem, dims, data)])
}

pub(crate) fn gather(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, idx) = (n.input(0)?, n.input(1)?);
    want(idx, "the indices", INDEX_TYPES)?;
    let axis = n.int("axis", 0);
    let Some(xd) = x.dims() else { return Ok(vec![Val::new(x.elem, None)]) };
    let a = norm_axis(axis, xd.len())?;
    if let (Some(size), Some(vals)) = (xd.get(a).and_then(SymDim::known), idx.ints())
        && let Some(bad) = vals.iter().find(|&&v| v < size.saturating_neg() || v >= size)
    {
        return Err(format!("index {bad} is out of range for axis {a} of size {size}"));
    }
    let dims = idx.dims().map(|id| {
        let mut out: Vec<SymDim> = xd.iter().take(a).cloned().collect();
        out.extend(id.iter().cloned());
        out.extend(xd.iter().skip(a + 1).cloned());
        out
    });
    let data = match (x.data(), idx.ints()) {
        (Some(values), Some(indices)) if xd.len() == 1 => {
            let len = i64::try_from(values.len()).unwrap_or(i64::MAX);
            indices
                .iter()
                .map(|&i| {
                    let i = if i < 0 { i.checked_add(len)? } else { i };
                    values.get(usize::try_from(i).ok()?).cloned()
                })
                .collect()
        }
        _ => None,
    };
    Ok(vec![Val::with_data(x.elem, dims, data)])
}

pub(crate) fn gather_elements(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, idx) = (n.input(0)?, n.input(1)?);
    want(idx, "the indices", INDEX_TYPES)?;
    if let (Some(r), Some(ri)) = (x.rank(), idx.rank()) {
        if r != ri {
            return Err(format!("data has rank {r} but indices rank {ri}; they must match"));
        }
        norm_axis(n.int("axis", 0), r)?;
    }
    Ok(vec![Val::new(x.elem, idx.dims.clone())])
}

pub(crate) fn gather_nd(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, idx) = (n.input(0)?, n.input(1)?);
    want(idx, "the indices", &[INT64])?;
    let b = usize::try_from(n.int("batch_dims", 0)).map_err(|_| "batch_dims must not be negative".to_string())?;
    let (Some(xd), Some(id)) = (x.dims(), idx.dims()) else { return Ok(vec![Val::new(x.elem, None)]) };
    let Some((last, lead)) = id.split_last() else { return Err("indices must have rank 1 or more".into()) };
    let Some(k) = last.known().and_then(|k| usize::try_from(k).ok()) else {
        return Ok(vec![Val::new(x.elem, None)]);
    };
    let tail_from = b
        .checked_add(k)
        .filter(|&t| t <= xd.len())
        .ok_or_else(|| format!("indices address {k} dims after {b} batch dims, but data has rank {}", xd.len()))?;
    let mut out: Vec<SymDim> = lead.to_vec();
    out.extend(xd.iter().skip(tail_from).cloned());
    Ok(vec![Val::new(x.elem, Some(out))])
}

pub(crate) fn concat(n: &Node<'_>) -> R<Vec<Val>> {
    let axis = n.attr("axis").and_then(|a| a.i).ok_or("Concat needs an `axis` attribute")?;
    let vals = present(n, 1)?;
    let named: Vec<(String, &Val)> = vals.iter().enumerate().map(|(i, v)| (format!("input {i}"), *v)).collect();
    let elem = same_type(&named.iter().map(|(s, v)| (s.as_str(), *v)).collect::<Vec<_>>())?;
    let Some(rank) = vals.iter().find_map(|v| v.rank()) else { return Ok(vec![Val::new(elem, None)]) };
    let a = norm_axis(axis, rank)?;
    let mut out: Vec<SymDim> = vec![SymDim::Unknown; rank];
    let mut total = SymDim::Known(0);
    for (i, v) in vals.iter().enumerate() {
        let Some(d) = v.dims() else {
            total = SymDim::Unknown;
            continue;
        };
        if d.len() != rank {
            return Err(format!("input {i} has rank {} but input 0 has rank {rank}", d.len()));
        }
        for (k, (o, x)) in out.iter_mut().zip(d).enumerate() {
            if k == a {
                total = total.add(x);
            } else {
                *o = unify(o, x).ok_or_else(|| format!("inputs differ in dimension {k}: {o} vs {x}"))?;
            }
        }
    }
    if let Some(slot) = out.get_mut(a) {
        *slot = total;
    }
    let data = if rank == 1 {
        vals.iter().try_fold(Vec::new(), |mut acc, v| {
            acc.extend_from_slice(v.data()?);
            (acc.len() <= MAX_VALUES).then_some(acc)
        })
    } else {
        None
    };
    Ok(vec![Val::with_data(elem, Some(out), data)])
}

/// Checks explicit split sizes against the axis.
pub(crate) fn check_sizes(sizes: &[i64], outputs: usize, dim: &SymDim) -> R<Vec<SymDim>> {
    if sizes.len() != outputs {
        return Err(format!("split has {} sizes for {outputs} outputs", sizes.len()));
    }
    if let Some(bad) = sizes.iter().find(|&&s| s < 0) {
        return Err(format!("split size {bad} is negative"));
    }
    let sum = sizes.iter().try_fold(0i64, |a, &s| a.checked_add(s)).ok_or("split sizes overflow")?;
    if let Some(d) = dim.known().filter(|&d| d != sum) {
        return Err(format!("split sizes sum to {sum} but the axis has {d}"));
    }
    Ok(sizes.iter().map(|&s| SymDim::Known(s)).collect())
}

pub(crate) fn split(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let outputs = n.outputs();
    if outputs == 0 {
        return Err("Split has no outputs".into());
    }
    let outs = i64::try_from(outputs).map_err(|_| "too many outputs".to_string())?;
    let a = x.rank().map(|r| norm_axis(n.int("axis", 0), r)).transpose()?;
    let dim = a.and_then(|a| x.dims()?.get(a).cloned()).unwrap_or(SymDim::Unknown);
    let sizes: Vec<SymDim> = if let Some(s) = n.opt(1) {
        want(s, "split", &[INT64])?;
        match s.ints() {
            Some(v) => check_sizes(&v, outputs, &dim)?,
            None => {
                if let Some(len) = shape_len(s).filter(|&l| l != outputs) {
                    return Err(format!("split has {len} sizes for {outputs} outputs"));
                }
                vec![SymDim::Unknown; outputs]
            }
        }
    } else if let Some(v) = n.ints("split") {
        check_sizes(v, outputs, &dim)?
    } else {
        let num = n.attr("num_outputs").and_then(|a| a.i);
        if let Some(k) = num.filter(|&k| k != outs) {
            return Err(format!("num_outputs is {k} but the node has {outputs} outputs"));
        }
        match dim {
            SymDim::Known(d) if num.is_some() => {
                // Opset 18: chunks of ceil(d / n), the last one smaller.
                let chunk = d.checked_add(outs - 1).map(|s| s / outs).ok_or("split size overflows")?;
                let last = chunk.checked_mul(outs - 1).and_then(|u| d.checked_sub(u)).filter(|&l| l >= 0);
                let last = last.ok_or_else(|| format!("axis of size {d} does not split into {outs} parts"))?;
                let mut v = vec![SymDim::Known(chunk); outputs - 1];
                v.push(SymDim::Known(last));
                v
            }
            SymDim::Known(d) => {
                if d % outs != 0 {
                    return Err(format!("axis of size {d} does not split into {outs} equal parts"));
                }
                vec![SymDim::Known(d / outs); outputs]
            }
            other => vec![other.div_exact(outs).unwrap_or(SymDim::Unknown); outputs],
        }
    };
    let mut offset = 0usize;
    let mut vals = Vec::with_capacity(outputs);
    for size in sizes {
        let dims = match (x.dims(), a) {
            (Some(d), Some(a)) => {
                let mut d = d.to_vec();
                if let Some(slot) = d.get_mut(a) {
                    *slot = size.clone();
                }
                Some(d)
            }
            _ => None,
        };
        let data = match (x.data(), size.known().and_then(|s| usize::try_from(s).ok())) {
            (Some(values), Some(s)) if x.rank() == Some(1) => {
                let part = offset.checked_add(s).and_then(|end| values.get(offset..end)).map(<[SymDim]>::to_vec);
                offset = offset.saturating_add(s);
                part
            }
            _ => None,
        };
        vals.push(Val::with_data(x.elem, dims, data));
    }
    Ok(vals)
}

/// The length of `[start:end:step]` over a dim, per the Slice spec's clamping; symbolic dims are
/// assumed at least as long as the slice reaches.
pub(crate) fn slice_len(dim: &SymDim, start: i64, end: i64, step: i64) -> SymDim {
    if let Some(d) = dim.known() {
        let (start, end, step, d) = (i128::from(start), i128::from(end), i128::from(step), i128::from(d));
        let fix = |v: i128| if v < 0 { v + d } else { v };
        let (s, e) = if step > 0 {
            (fix(start).clamp(0, d), fix(end).clamp(0, d))
        } else {
            (fix(start).clamp(0, (d - 1).max(0)), fix(end).clamp(-1, (d - 1).max(-1)))
        };
        let span = if step > 0 { e - s } else { s - e };
        let stride = step.abs();
        let len = if span <= 0 { 0 } else { (span + stride - 1) / stride };
        return i64::try_from(len).map_or(SymDim::Unknown, SymDim::Known);
    }
    if step != 1 {
        return SymDim::Unknown;
    }
    match (start >= 0, end >= SLICE_TO_END, end >= 0) {
        (true, true, _) => dim.sub(&SymDim::Known(start)),
        (false, true, _) => SymDim::Known(start.saturating_neg()),
        (false, false, false) => SymDim::Known(end.saturating_sub(start).max(0)),
        (true, false, false) => dim.add(&SymDim::Known(end)).sub(&SymDim::Known(start)),
        _ => SymDim::Unknown,
    }
}

pub(crate) fn slice(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    // Opset 1-9 attributes, or inputs from opset 10.
    let read = |i: usize, attr: &str| -> R<Option<Option<Vec<i64>>>> {
        match n.opt(i) {
            Some(v) => {
                want(v, attr, INDEX_TYPES)?;
                Ok(Some(v.ints()))
            }
            None => Ok(n.ints(attr).map(|a| Some(a.to_vec()))),
        }
    };
    let starts = read(1, "starts")?.ok_or("Slice needs starts")?;
    let ends = read(2, "ends")?.ok_or("Slice needs ends")?;
    let axes = read(3, "axes")?;
    let steps = read(4, "steps")?;
    let Some(xd) = x.dims() else { return Ok(vec![Val::new(x.elem, None)]) };
    let (Some(starts), Some(ends)) = (starts, ends) else {
        return Ok(vec![Val::new(x.elem, Some(vec![SymDim::Unknown; xd.len()]))]);
    };
    if starts.len() != ends.len() {
        return Err(format!("{} starts but {} ends", starts.len(), ends.len()));
    }
    let axes: Vec<i64> = match axes {
        None => (0..i64::try_from(starts.len()).unwrap_or(i64::MAX)).collect(),
        Some(Some(a)) => a,
        Some(None) => return Ok(vec![Val::new(x.elem, Some(vec![SymDim::Unknown; xd.len()]))]),
    };
    let steps: Vec<i64> = match steps {
        None => vec![1; starts.len()],
        Some(Some(s)) => s,
        Some(None) => return Ok(vec![Val::new(x.elem, Some(vec![SymDim::Unknown; xd.len()]))]),
    };
    if axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(format!("{} starts, {} axes and {} steps must be as many", starts.len(), axes.len(), steps.len()));
    }
    let axes = norm_axes(&axes, xd.len())?;
    let mut out = xd.to_vec();
    let mut ranges = Vec::with_capacity(axes.len());
    for (((&a, &s), &e), &st) in axes.iter().zip(&starts).zip(&ends).zip(&steps) {
        if st == 0 {
            return Err("Slice step is 0".into());
        }
        if let Some(slot) = out.get_mut(a) {
            *slot = slice_len(slot, s, e, st);
        }
        ranges.push((s, e, st));
    }
    // Values of a 1-D tensor with a unit step.
    let data = match (x.data(), ranges.as_slice()) {
        (Some(values), [(s, _, 1)]) if xd.len() == 1 => {
            let len = out.first().and_then(SymDim::known).and_then(|l| usize::try_from(l).ok());
            let n_vals = i64::try_from(values.len()).unwrap_or(i64::MAX);
            let first = if *s < 0 { s.saturating_add(n_vals) } else { *s }.clamp(0, n_vals);
            let first = usize::try_from(first).ok();
            match (first, len) {
                (Some(f), Some(l)) => f.checked_add(l).and_then(|end| values.get(f..end)).map(<[SymDim]>::to_vec),
                _ => None,
            }
        }
        _ => None,
    };
    Ok(vec![Val::with_data(x.elem, Some(out), data)])
}

pub(crate) fn transpose(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let perm = n.ints("perm");
    let Some(d) = x.dims() else {
        let rank = perm.map(<[i64]>::len).filter(|&r| r <= MAX_RANK);
        return Ok(vec![Val::new(x.elem, rank.map(|r| vec![SymDim::Unknown; r]))]);
    };
    let perm: Vec<usize> = match perm {
        None => (0..d.len()).rev().collect(),
        Some(p) => {
            if p.len() != d.len() {
                return Err(format!("perm {p:?} has {} entries for rank {}", p.len(), d.len()));
            }
            let axes = norm_axes(p, d.len()).map_err(|e| format!("perm {p:?}: {e}"))?;
            if p.iter().any(|&a| a < 0) {
                return Err(format!("perm {p:?} has a negative entry"));
            }
            axes
        }
    };
    let out: Vec<SymDim> = perm.iter().filter_map(|&i| d.get(i).cloned()).collect();
    let data = if d.len() <= 1 { x.data.clone() } else { None };
    Ok(vec![Val::with_data(x.elem, Some(out), data)])
}

/// Solves Reshape's `-1` (at `infer`) and checks element counts, cancelling equal symbolic
/// factors on both sides: `[batch, seq, 4, 8] → [0, 0, -1]` gives 32.
pub(crate) fn reshape_solve(input: &[SymDim], target: &[SymDim], infer: Option<usize>) -> R<SymDim> {
    let mut num: Vec<SymDim> = input.to_vec();
    let mut den_known: i64 = 1;
    let mut solvable = true;
    for (i, d) in target.iter().enumerate() {
        if Some(i) == infer {
            continue;
        }
        match d {
            SymDim::Known(k) => match den_known.checked_mul(*k) {
                Some(p) => den_known = p,
                None => solvable = false,
            },
            SymDim::Sym(_) => match num.iter().position(|x| x == d) {
                Some(p) => {
                    num.swap_remove(p);
                }
                None => solvable = false,
            },
            SymDim::Unknown => solvable = false,
        }
    }
    if !solvable {
        return Ok(SymDim::Unknown);
    }
    let mut num_known: i64 = 1;
    let mut syms = Vec::new();
    for d in num {
        match d {
            SymDim::Known(k) => match num_known.checked_mul(k) {
                Some(p) => num_known = p,
                None => return Ok(SymDim::Unknown),
            },
            SymDim::Sym(_) => syms.push(d),
            SymDim::Unknown => return Ok(SymDim::Unknown),
        }
    }
    let shapes = || format!("{} into {}", dims_text(Some(input)), dims_text(Some(target)));
    match (infer, syms.as_slice()) {
        (None, []) if num_known != den_known => {
            Err(format!("cannot reshape {} ({num_known} elements vs {den_known})", shapes()))
        }
        (None, _) => Ok(SymDim::Unknown),
        (Some(_), []) if den_known == 0 => Ok(SymDim::Unknown),
        (Some(_), []) => match (num_known.checked_rem(den_known), num_known.checked_div(den_known)) {
            (Some(0), Some(q)) => Ok(SymDim::Known(q)),
            (Some(_), _) => {
                Err(format!("cannot reshape {}: {num_known} elements do not divide by {den_known}", shapes()))
            }
            _ => Ok(SymDim::Unknown),
        },
        (Some(_), [s]) => match (num_known.checked_rem(den_known), num_known.checked_div(den_known)) {
            (Some(0), Some(q)) => Ok(s.scale(q)),
            _ => Ok(SymDim::Unknown),
        },
        (Some(_), _) => Ok(SymDim::Unknown),
    }
}

pub(crate) fn reshape(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, s) = (n.input(0)?, n.input(1)?);
    let allow_zero = n.int("allowzero", 0) != 0;
    let Some(spec) = shape_from(s, "the shape")? else {
        return Ok(vec![Val::new(x.elem, shape_len(s).map(|r| vec![SymDim::Unknown; r]))]);
    };
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, d) in spec.iter().enumerate() {
        out.push(match d.known() {
            Some(-1) => {
                if infer.replace(i).is_some() {
                    return Err(format!("shape {} has more than one -1", dims_text(Some(&spec))));
                }
                SymDim::Unknown
            }
            Some(0) if !allow_zero => match x.dims() {
                Some(xd) => xd.get(i).cloned().ok_or_else(|| {
                    format!("shape {} copies dim {i} (0) but the input has rank {}", dims_text(Some(&spec)), xd.len())
                })?,
                None => SymDim::Unknown,
            },
            Some(k) if k < -1 => return Err(format!("shape {} has a negative dim {k}", dims_text(Some(&spec)))),
            _ => d.clone(),
        });
    }
    if allow_zero && infer.is_some() && spec.iter().any(|d| d.known() == Some(0)) {
        return Err("allowzero with both 0 and -1 in the shape".into());
    }
    if let Some(xd) = x.dims() {
        let solved = reshape_solve(xd, &out, infer)?;
        if let Some(slot) = infer.and_then(|i| out.get_mut(i)) {
            *slot = solved;
        }
    }
    Ok(vec![Val::with_data(x.elem, Some(out), x.data.clone())])
}

pub(crate) fn flatten(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let Some(d) = x.dims() else { return Ok(vec![Val::new(x.elem, Some(vec![SymDim::Unknown; 2]))]) };
    let r = i64::try_from(d.len()).unwrap_or(i64::MAX);
    let axis = n.int("axis", 1);
    let a = if axis < 0 { axis.saturating_add(r) } else { axis };
    if !(0..=r).contains(&a) {
        return Err(format!("axis {axis} is out of range for rank {r}"));
    }
    let a = usize::try_from(a).unwrap_or(0);
    let (head, tail) = d.split_at(a.min(d.len()));
    Ok(vec![Val::with_data(x.elem, Some(vec![product(head), product(tail)]), x.data.clone())])
}

/// Axes from the opset-13 input or the older attribute: `Some(None)` when given but not followed.
pub(crate) fn axes_of(n: &Node<'_>, input: usize) -> R<Option<Option<Vec<i64>>>> {
    match n.opt(input) {
        Some(v) => {
            want(v, "axes", &[INT64])?;
            Ok(Some(v.ints()))
        }
        None => Ok(n.ints("axes").map(|a| Some(a.to_vec()))),
    }
}

pub(crate) fn unsqueeze(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let axes = axes_of(n, 1)?.ok_or("Unsqueeze needs axes")?;
    let Some(d) = x.dims() else { return Ok(vec![Val::new(x.elem, None)]) };
    let Some(axes) = axes else {
        let extra = n.opt(1).and_then(shape_len);
        return Ok(vec![Val::new(x.elem, extra.map(|k| vec![SymDim::Unknown; d.len().saturating_add(k)]))]);
    };
    let rank = d.len().saturating_add(axes.len());
    if rank > MAX_RANK {
        return Ok(vec![Val::new(x.elem, None)]);
    }
    let axes = norm_axes(&axes, rank)?;
    let mut rest = d.iter();
    let out: Vec<SymDim> = (0..rank)
        .map(|k| if axes.contains(&k) { SymDim::Known(1) } else { rest.next().cloned().unwrap_or(SymDim::Unknown) })
        .collect();
    Ok(vec![Val::with_data(x.elem, Some(out), x.data.clone())])
}

pub(crate) fn squeeze(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let axes = axes_of(n, 1)?;
    let Some(d) = x.dims() else { return Ok(vec![Val::new(x.elem, None)]) };
    let out = match axes {
        Some(None) => None,
        Some(Some(axes)) => {
            let axes = norm_axes(&axes, d.len())?;
            for &a in &axes {
                if let Some(k) = d.get(a).and_then(SymDim::known).filter(|&k| k != 1) {
                    return Err(format!("cannot squeeze axis {a} of size {k}"));
                }
            }
            Some(d.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, x)| x.clone()).collect())
        }
        None if d.iter().all(|x| x.known().is_some()) => {
            Some(d.iter().filter(|x| x.known() != Some(1)).cloned().collect())
        }
        None => None,
    };
    Ok(vec![Val::with_data(x.elem, out, x.data.clone())])
}

pub(crate) fn expand(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, s) = (n.input(0)?, n.input(1)?);
    let dims = match shape_from(s, "the shape")? {
        Some(target) => broadcast(&[x.dims(), Some(&target)])?,
        None => match (x.dims(), shape_len(s)) {
            (Some(d), Some(k)) => {
                let mut out = vec![SymDim::Unknown; d.len().max(k)];
                for (o, x) in out.iter_mut().rev().zip(d.iter().rev()) {
                    if x.known().is_some_and(|k| k != 1) {
                        *o = x.clone();
                    }
                }
                Some(out)
            }
            _ => None,
        },
    };
    let data = match (&dims, x.data(), x.dims()) {
        (Some(out), Some(values), Some(xd)) => {
            known_sizes(out).zip(known_sizes(xd)).and_then(|(o, i)| broadcast_data(&o, &i, values))
        }
        _ => None,
    };
    Ok(vec![Val::with_data(x.elem, dims, data)])
}

pub(crate) fn tile(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, reps) = (n.input(0)?, n.input(1)?);
    want(reps, "repeats", &[INT64])?;
    let Some(d) = x.dims() else { return Ok(vec![Val::new(x.elem, None)]) };
    if let Some(len) = shape_len(reps).filter(|&l| l != d.len()) {
        return Err(format!("{len} repeats for rank {}", d.len()));
    }
    let out = match reps.data() {
        Some(r) => d.iter().zip(r).map(|(x, k)| x.mul(k)).collect(),
        None => vec![SymDim::Unknown; d.len()],
    };
    Ok(vec![Val::new(x.elem, Some(out))])
}

pub(crate) fn shape(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let Some(d) = x.dims() else { return Ok(vec![Val::new(INT64, Some(vec![SymDim::Unknown]))]) };
    let r = i64::try_from(d.len()).unwrap_or(i64::MAX);
    let clamp = |v: i64| usize::try_from(if v < 0 { v.saturating_add(r) } else { v }.clamp(0, r)).unwrap_or(0);
    let (start, end) = (clamp(n.int("start", 0)), clamp(n.int("end", r)));
    let dims: Vec<SymDim> = d.get(start..end.max(start)).unwrap_or(&[]).to_vec();
    let len = SymDim::Known(i64::try_from(dims.len()).unwrap_or(i64::MAX));
    Ok(vec![Val::with_data(INT64, Some(vec![len]), Some(dims))])
}

pub(crate) fn size(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let count = x.dims().map_or(SymDim::Unknown, product);
    Ok(vec![Val::with_data(INT64, Some(Vec::new()), Some(vec![count]))])
}

pub(crate) fn range(n: &Node<'_>) -> R<Vec<Val>> {
    let (s, l, d) = (n.input(0)?, n.input(1)?, n.input(2)?);
    let elem = same_type(&[("start", s), ("limit", l), ("delta", d)])?;
    numeric(s, "start")?;
    for (v, what) in [(s, "start"), (l, "limit"), (d, "delta")] {
        if let Some(r) = v.dims().filter(|d| !d.is_empty()) {
            return Err(format!("{what} must be a scalar, got {}", dims_text(Some(r))));
        }
    }
    let (start, limit, delta) = (s.scalar(), l.scalar(), d.scalar());
    let len = match (start, limit, delta.and_then(SymDim::known)) {
        (_, _, Some(0)) => return Err("delta is 0".into()),
        (Some(SymDim::Known(a)), Some(SymDim::Known(b)), Some(k)) => {
            let (span, k) = (i128::from(*b) - i128::from(*a), i128::from(k));
            let q = span / k;
            let q = if span % k != 0 && (span > 0) == (k > 0) { q + 1 } else { q };
            i64::try_from(q.max(0)).map_or(SymDim::Unknown, SymDim::Known)
        }
        (Some(a), Some(b), Some(1)) => b.sub(a),
        (Some(a), Some(b), Some(-1)) => a.sub(b),
        _ => SymDim::Unknown,
    };
    let len = match len {
        SymDim::Known(k) if k < 0 => SymDim::Known(0),
        other => other,
    };
    let data = match (start, delta, len.known().and_then(|k| usize::try_from(k).ok())) {
        (Some(a), Some(step), Some(count)) if count <= MAX_VALUES => {
            Some((0..count).map(|i| i64::try_from(i).map_or(SymDim::Unknown, |i| a.add(&step.scale(i)))).collect())
        }
        _ => None,
    };
    Ok(vec![Val::with_data(elem, Some(vec![len]), data)])
}
