//! Normalizations and reductions: Softmax family, LayerNormalization, Reduce*, ArgMax/ArgMin,
//! CumSum and Trilu.

use super::*;

pub(crate) fn softmax(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    want(x, "the input", FLOATS)?;
    if let Some(r) = x.rank() {
        norm_axis(n.int("axis", -1), r)?;
    }
    Ok(vec![Val::new(x.elem, x.dims.clone())])
}

/// Checks a per-feature parameter broadcasts onto `features` without growing it.
pub(crate) fn check_feature_param(what: &str, p: &Val, features: &[SymDim]) -> R<()> {
    let Some(pd) = p.dims() else { return Ok(()) };
    if pd.len() > features.len() {
        return Err(format!(
            "{what} {} has more dims than the normalized {}",
            dims_text(Some(pd)),
            dims_text(Some(features))
        ));
    }
    for (x, f) in pd.iter().rev().zip(features.iter().rev()) {
        if x.known() != Some(1) && unify(x, f).is_none() {
            return Err(format!(
                "{what} {} does not match the normalized {}",
                dims_text(Some(pd)),
                dims_text(Some(features))
            ));
        }
    }
    Ok(())
}

pub(crate) fn layer_norm(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, scale) = (n.input(0)?, n.input(1)?);
    want(x, "X", FLOATS)?;
    let mut typed = vec![("X", x), ("Scale", scale)];
    if let Some(b) = n.opt(2) {
        typed.push(("B", b));
    }
    same_type(&typed)?;
    let stash = i32::try_from(n.int("stash_type", 1)).unwrap_or(FLOAT);
    let Some(d) = x.dims() else {
        return Ok(vec![Val::new(x.elem, None), Val::new(stash, None), Val::new(stash, None)]);
    };
    let a = norm_axis(n.int("axis", -1), d.len())?;
    let features = d.get(a..).unwrap_or(&[]);
    check_feature_param("Scale", scale, features)?;
    if let Some(b) = n.opt(2) {
        check_feature_param("B", b, features)?;
    }
    let stats: Vec<SymDim> =
        d.iter().enumerate().map(|(i, x)| if i < a { x.clone() } else { SymDim::Known(1) }).collect();
    Ok(vec![Val::new(x.elem, Some(d.to_vec())), Val::new(stash, Some(stats.clone())), Val::new(stash, Some(stats))])
}

/// Dims after reducing `axes` (all when empty).
pub(crate) fn reduced(d: &[SymDim], axes: &[usize], keep: bool) -> Vec<SymDim> {
    let all = axes.is_empty();
    d.iter()
        .enumerate()
        .filter_map(|(i, x)| match (all || axes.contains(&i), keep) {
            (false, _) => Some(x.clone()),
            (true, true) => Some(SymDim::Known(1)),
            (true, false) => None,
        })
        .collect()
}

pub(crate) fn reduce(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    numeric(x, "the input")?;
    let keep = n.int("keepdims", 1) != 0;
    let noop = n.int("noop_with_empty_axes", 0) != 0;
    let axes = axes_of(n, 1)?;
    let Some(d) = x.dims() else { return Ok(vec![Val::new(x.elem, None)]) };
    let out = match axes {
        Some(None) => keep.then(|| vec![SymDim::Unknown; d.len()]),
        Some(Some(a)) if !a.is_empty() => {
            let mut axes = Vec::new();
            for &ax in &a {
                let ax = norm_axis(ax, d.len())?;
                if !axes.contains(&ax) {
                    axes.push(ax);
                }
            }
            Some(reduced(d, &axes, keep))
        }
        _ if noop => Some(d.to_vec()),
        _ => Some(reduced(d, &[], keep)),
    };
    Ok(vec![Val::new(x.elem, out)])
}

pub(crate) fn arg_reduce(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    numeric(x, "the input")?;
    let Some(d) = x.dims() else { return Ok(vec![Val::new(INT64, None)]) };
    let a = norm_axis(n.int("axis", 0), d.len())?;
    Ok(vec![Val::new(INT64, Some(reduced(d, &[a], n.int("keepdims", 1) != 0)))])
}

pub(crate) fn cum_sum(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, axis) = (n.input(0)?, n.input(1)?);
    numeric(x, "the input")?;
    want(axis, "axis", INDEX_TYPES)?;
    if let (Some(r), Some(a)) = (x.rank(), axis.scalar().and_then(SymDim::known)) {
        norm_axis(a, r)?;
    }
    Ok(vec![Val::new(x.elem, x.dims.clone())])
}

pub(crate) fn trilu(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    if let Some(r) = x.rank().filter(|&r| r < 2) {
        return Err(format!("Trilu needs rank 2 or more, got {r}"));
    }
    if let Some(k) = n.opt(1) {
        want(k, "k", &[INT64])?;
    }
    Ok(vec![Val::new(x.elem, x.dims.clone())])
}
