//! Element-wise operators: arithmetic, comparisons and logic with numpy broadcasting, unary
//! functions, Clip, Cast and CastLike.

use super::*;

pub(crate) fn arithmetic(n: &Node<'_>) -> R<Vec<Val>> {
    let op = n.proto.op_type();
    let variadic = matches!(op, "Max" | "Min" | "Sum" | "Mean");
    let vals = if variadic { present(n, 1)? } else { vec![n.input(0)?, n.input(1)?] };
    let named: Vec<(String, &Val)> = vals.iter().enumerate().map(|(i, v)| (format!("input {i}"), *v)).collect();
    let named: Vec<(&str, &Val)> = named.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    let elem = same_type(&named)?;
    for (what, v) in &named {
        numeric(v, what)?;
    }
    let dims = broadcast(&vals.iter().map(|v| v.dims()).collect::<Vec<_>>())?;
    let data = match vals.as_slice() {
        [a, b] => zip_data(a, b, dims.as_deref(), |x, y| match op {
            "Add" | "Sum" => x.add(y),
            "Sub" => x.sub(y),
            "Mul" => x.mul(y),
            "Div" => div_dim(x, y),
            "Max" => known_op(x, y, i64::max),
            "Min" => known_op(x, y, i64::min),
            _ => SymDim::Unknown,
        }),
        [a] if matches!(op, "Max" | "Min" | "Sum" | "Mean") => a.data.clone(),
        _ => None,
    };
    Ok(vec![Val::with_data(elem, dims, data)])
}

pub(crate) fn pow(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, y) = (n.input(0)?, n.input(1)?);
    numeric(x, "the base")?;
    numeric(y, "the exponent")?;
    Ok(vec![Val::new(x.elem, broadcast(&[x.dims(), y.dims()])?)])
}

pub(crate) fn compare(n: &Node<'_>) -> R<Vec<Val>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    same_type(&[("A", a), ("B", b)])?;
    Ok(vec![Val::new(BOOL, broadcast(&[a.dims(), b.dims()])?)])
}

pub(crate) fn logical(n: &Node<'_>) -> R<Vec<Val>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    want(a, "A", &[BOOL])?;
    want(b, "B", &[BOOL])?;
    Ok(vec![Val::new(BOOL, broadcast(&[a.dims(), b.dims()])?)])
}

pub(crate) fn where_(n: &Node<'_>) -> R<Vec<Val>> {
    let (c, x, y) = (n.input(0)?, n.input(1)?, n.input(2)?);
    want(c, "the condition", &[BOOL])?;
    let elem = same_type(&[("X", x), ("Y", y)])?;
    Ok(vec![Val::new(elem, broadcast(&[c.dims(), x.dims(), y.dims()])?)])
}

/// Same type and shape out; `allowed` empty means any numeric type. Identity and Neg keep values.
pub(crate) fn unary(n: &Node<'_>, allowed: &[i32]) -> R<Vec<Val>> {
    let x = n.input(0)?;
    if allowed.is_empty() {
        if n.proto.op_type() != "Identity" {
            numeric(x, "the input")?;
        }
    } else {
        want(x, "the input", allowed)?;
    }
    let data = match n.proto.op_type() {
        "Identity" => x.data.clone(),
        "Neg" => x.data.as_ref().map(|d| d.iter().map(|v| v.scale(-1)).collect()),
        "Abs" => {
            x.ints().map(|d| d.into_iter().map(|v| v.checked_abs().map_or(SymDim::Unknown, SymDim::Known)).collect())
        }
        _ => None,
    };
    Ok(vec![Val::with_data(x.elem, x.dims.clone(), data)])
}

pub(crate) fn clip(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    numeric(x, "the input")?;
    for (i, what) in [(1, "min"), (2, "max")] {
        if let Some(b) = n.opt(i) {
            same_type(&[("the input", x), (what, b)])?;
            if b.dims().and_then(element_count).is_some_and(|c| c != 1) {
                return Err(format!("{what} must be a scalar, got {}", dims_text(b.dims())));
            }
        }
    }
    Ok(vec![Val::new(x.elem, x.dims.clone())])
}

pub(crate) fn valid_type(t: i32) -> bool {
    !matches!(DataType::try_from(t), Err(_) | Ok(DataType::Undefined))
}

pub(crate) fn cast(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let to = n.attr("to").and_then(|a| a.i).ok_or("Cast needs a `to` attribute")?;
    let to = i32::try_from(to).ok().filter(|&t| valid_type(t)).ok_or(format!("Cast to {to}: not an element type"))?;
    let data = if is_int(to) && is_int(x.elem) { x.data.clone() } else { None };
    Ok(vec![Val::with_data(to, x.dims.clone(), data)])
}

pub(crate) fn cast_like(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, like) = (n.input(0)?, n.input(1)?);
    let data = if is_int(like.elem) && is_int(x.elem) { x.data.clone() } else { None };
    Ok(vec![Val::with_data(like.elem, x.dims.clone(), data)])
}
