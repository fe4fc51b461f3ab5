//! Quantization: DynamicQuantizeLinear, DequantizeLinear (blocked too), QuantizeLinear, and
//! com.microsoft MatMulNBits.

use super::*;

pub(crate) fn dynamic_quantize(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    want(x, "x", &[FLOAT])?;
    let scalar = || Some(Vec::new());
    Ok(vec![Val::new(UINT8, x.dims.clone()), Val::new(FLOAT, scalar()), Val::new(UINT8, scalar())])
}

/// Checks a (de)quantization scale's shape: per tensor, per axis or blocked along `axis`.
pub(crate) fn check_quant_scale(x: &Val, scale: &Val, axis: i64, block: i64) -> R<()> {
    let (Some(xd), Some(sd)) = (x.dims(), scale.dims()) else { return Ok(()) };
    if block < 0 {
        return Err(format!("block_size {block} is negative"));
    }
    if block == 0 {
        if sd.is_empty() || (sd.len() == 1 && sd.first().and_then(SymDim::known) == Some(1)) {
            return Ok(());
        }
        let [len] = sd else {
            return Err(format!("the scale {} must be a scalar or 1-D (per axis)", dims_text(Some(sd))));
        };
        let a = norm_axis(axis, xd.len())?;
        let along = xd.get(a).cloned().unwrap_or(SymDim::Unknown);
        if unify(len, &along).is_none() {
            return Err(format!("the scale has {len} entries but axis {a} of x has {along}"));
        }
        return Ok(());
    }
    if sd.len() != xd.len() {
        return Err(format!("blocked scale {} must have the rank of x {}", dims_text(Some(sd)), dims_text(Some(xd))));
    }
    let a = norm_axis(axis, xd.len())?;
    for (i, (s, d)) in sd.iter().zip(xd).enumerate() {
        let want = if i == a {
            match d.known() {
                Some(k) => SymDim::Known(k.saturating_add(block - 1) / block),
                None => SymDim::Unknown,
            }
        } else {
            d.clone()
        };
        if unify(s, &want).is_none() {
            return Err(format!(
                "blocked scale {} does not fit x {} with blocks of {block} on axis {a}",
                dims_text(Some(sd)),
                dims_text(Some(xd))
            ));
        }
    }
    Ok(())
}

pub(crate) fn dequantize(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, scale) = (n.input(0)?, n.input(1)?);
    want(scale, "the scale", FLOATS)?;
    if matches!(DataType::try_from(x.elem), Ok(DataType::Bool | DataType::String)) || FLOATS.contains(&x.elem) {
        return Err(format!("x must be a quantized integer type, got {}", type_name(x.elem)));
    }
    let (axis, block) = (n.int("axis", 1), n.int("block_size", 0));
    check_quant_scale(x, scale, axis, block)?;
    if let Some(z) = n.opt(2) {
        same_type(&[("x", x), ("the zero point", z)])?;
        if let (Some(zd), Some(sd)) = (z.dims(), scale.dims())
            && (zd.len() != sd.len() || zd.iter().zip(sd).any(|(a, b)| unify(a, b).is_none()))
        {
            return Err(format!(
                "zero point {} and scale {} differ in shape",
                dims_text(Some(zd)),
                dims_text(Some(sd))
            ));
        }
    }
    let out = match n.int("output_dtype", 0) {
        0 => scale.elem,
        t => i32::try_from(t)
            .ok()
            .filter(|t| FLOATS.contains(t))
            .ok_or(format!("output_dtype {t} is not a float type"))?,
    };
    Ok(vec![Val::new(out, x.dims.clone())])
}

pub(crate) fn quantize(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, scale) = (n.input(0)?, n.input(1)?);
    want(x, "x", FLOATS.iter().copied().chain([INT32]).collect::<Vec<_>>().as_slice())?;
    check_quant_scale(x, scale, n.int("axis", 1), n.int("block_size", 0))?;
    let out = match (n.opt(2), n.int("output_dtype", 0)) {
        (Some(z), _) => z.elem,
        (None, 0) => UINT8,
        (None, t) => {
            i32::try_from(t).ok().filter(|&t| valid_type(t)).ok_or(format!("output_dtype {t} is not a type"))?
        }
    };
    Ok(vec![Val::new(out, x.dims.clone())])
}

/// `com.microsoft.MatMulNBits`: A `[..., K]` times packed B `[N, blocks, blob]` → `[..., N]`.
pub(crate) fn matmul_nbits(n: &Node<'_>) -> R<Vec<Val>> {
    let (a, b, scales) = (n.input(0)?, n.input(1)?, n.input(2)?);
    want(a, "A", FLOATS)?;
    want(b, "B", &[UINT8, INT32])?;
    same_type(&[("A", a), ("scales", scales)])?;
    let k = n.attr("K").and_then(|x| x.i).ok_or("MatMulNBits needs K")?;
    let nn = n.attr("N").and_then(|x| x.i).ok_or("MatMulNBits needs N")?;
    let bits = n.int("bits", 4);
    let block = n.attr("block_size").and_then(|x| x.i).ok_or("MatMulNBits needs block_size")?;
    if k <= 0 || nn <= 0 || !(2..=8).contains(&bits) || block < 16 || block.count_ones() != 1 {
        return Err(format!("invalid attributes K={k} N={nn} bits={bits} block_size={block}"));
    }
    let blocks = k.saturating_add(block - 1) / block;
    let blob = block.saturating_mul(bits) / 8;
    if let Some(last) = a.dims().and_then(<[SymDim]>::last)
        && unify(last, &SymDim::Known(k)).is_none()
    {
        return Err(format!("A's last dim {last} is not K={k}"));
    }
    if b.elem == UINT8 {
        let want_b = [SymDim::Known(nn), SymDim::Known(blocks), SymDim::Known(blob)];
        if let Some(bd) = b.dims()
            && (bd.len() != 3 || bd.iter().zip(&want_b).any(|(x, y)| unify(x, y).is_none()))
        {
            return Err(format!("B {} is not {} for K={k} N={nn}", dims_text(Some(bd)), dims_text(Some(&want_b))));
        }
    }
    if let Some(sd) = scales.dims() {
        let flat = nn.checked_mul(blocks).map(|c| vec![SymDim::Known(c)]);
        let two = vec![SymDim::Known(nn), SymDim::Known(blocks)];
        let fits = |w: &[SymDim]| sd.len() == w.len() && sd.iter().zip(w).all(|(x, y)| unify(x, y).is_some());
        if !fits(&two) && !flat.as_deref().is_some_and(fits) {
            return Err(format!("scales {} fit neither [{nn} * {blocks}] nor [{nn}, {blocks}]", dims_text(Some(sd))));
        }
    }
    if let Some(bias) = n.opt(5) {
        same_type(&[("A", a), ("bias", bias)])?;
    }
    let dims = a.dims().map(|d| {
        let mut out: Vec<SymDim> = d.iter().take(d.len().saturating_sub(1)).cloned().collect();
        out.push(SymDim::Known(nn));
        out
    });
    Ok(vec![Val::new(a.elem, dims)])
}
