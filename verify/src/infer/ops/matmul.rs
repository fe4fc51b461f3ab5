//! Matrix products: MatMul, MatMulInteger and Gemm.

use super::*;

/// Numpy matmul shapes; `inner` checks the contracted dims.
pub(crate) fn matmul_dims(a: Option<&[SymDim]>, b: Option<&[SymDim]>) -> R<Option<Vec<SymDim>>> {
    let (Some(a), Some(b)) = (a, b) else { return Ok(None) };
    if a.is_empty() || b.is_empty() {
        return Err("MatMul operands must have rank 1 or more".into());
    }
    let one = [SymDim::Known(1)];
    let a2: Vec<SymDim> = if a.len() == 1 { one.iter().chain(a).cloned().collect() } else { a.to_vec() };
    let b2: Vec<SymDim> = if b.len() == 1 { b.iter().chain(&one).cloned().collect() } else { b.to_vec() };
    let (Some((ak, a_rest)), Some((bn, b_rest))) = (a2.split_last(), b2.split_last()) else { return Ok(None) };
    let (Some((am, a_batch)), Some((bk, b_batch))) = (a_rest.split_last(), b_rest.split_last()) else {
        return Ok(None);
    };
    if unify(ak, bk).is_none() {
        return Err(format!("inner dimensions differ: {ak} vs {bk}"));
    }
    let Some(mut out) = broadcast(&[Some(a_batch), Some(b_batch)])? else { return Ok(None) };
    if a.len() > 1 {
        out.push(am.clone());
    }
    if b.len() > 1 {
        out.push(bn.clone());
    }
    Ok(Some(out))
}

pub(crate) fn matmul(n: &Node<'_>) -> R<Vec<Val>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    let elem = same_type(&[("A", a), ("B", b)])?;
    numeric(a, "A")?;
    Ok(vec![Val::new(elem, matmul_dims(a.dims(), b.dims())?)])
}

pub(crate) fn matmul_integer(n: &Node<'_>) -> R<Vec<Val>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    want(a, "A", &[INT8, UINT8])?;
    want(b, "B", &[INT8, UINT8])?;
    if let Some(z) = n.opt(2) {
        same_type(&[("A", a), ("a_zero_point", z)])?;
    }
    if let Some(z) = n.opt(3) {
        same_type(&[("B", b), ("b_zero_point", z)])?;
        if let (Some([zn]), Some(bn)) = (z.dims(), b.dims().and_then(|d| d.last()))
            && unify(zn, bn).is_none()
            && zn.known() != Some(1)
        {
            return Err(format!("b_zero_point has {zn} entries but B has {bn} columns"));
        }
    }
    Ok(vec![Val::new(INT32, matmul_dims(a.dims(), b.dims())?)])
}

pub(crate) fn gemm(n: &Node<'_>) -> R<Vec<Val>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    let elem = same_type(&[("A", a), ("B", b)])?;
    let pick = |v: &Val, trans: bool, what: &str| -> R<Option<(SymDim, SymDim)>> {
        match v.dims() {
            None => Ok(None),
            Some([x, y]) => Ok(Some(if trans { (y.clone(), x.clone()) } else { (x.clone(), y.clone()) })),
            Some(d) => Err(format!("{what} must be 2-D, got {}", dims_text(Some(d)))),
        }
    };
    let ma = pick(a, n.int("transA", 0) != 0, "A")?;
    let mb = pick(b, n.int("transB", 0) != 0, "B")?;
    if let (Some((_, ka)), Some((kb, _))) = (&ma, &mb)
        && unify(ka, kb).is_none()
    {
        return Err(format!("inner dimensions differ: {ka} vs {kb}"));
    }
    let m = ma.map_or(SymDim::Unknown, |(m, _)| m);
    let nn = mb.map_or(SymDim::Unknown, |(_, n)| n);
    let out = vec![m, nn];
    if let Some(c) = n.opt(2) {
        same_type(&[("A", a), ("C", c)])?;
        let target = Some(out.as_slice());
        if broadcast(&[c.dims(), target])?.is_some_and(|d| d.iter().zip(&out).any(|(x, y)| unify(x, y).is_none())) {
            return Err(format!("C {} does not broadcast to {}", dims_text(c.dims()), dims_text(target)));
        }
    }
    Ok(vec![Val::new(elem, Some(out))])
}
