//! Fused kernels: the opset-23 Attention with its cache, and com.microsoft Attention,
//! MultiHeadAttention, GroupQueryAttention, SkipLayerNormalization, FastGelu/BiasGelu.

use super::*;

/// `com.microsoft.SkipLayerNormalization`: LayerNorm(input + skip + bias) over the last dim.
pub(crate) fn skip_layer_norm(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, skip, gamma) = (n.input(0)?, n.input(1)?, n.input(2)?);
    want(x, "input", FLOATS)?;
    let mut typed = vec![("input", x), ("skip", skip), ("gamma", gamma)];
    for (i, what) in [(3, "beta"), (4, "bias")] {
        if let Some(v) = n.opt(i) {
            typed.push((what, v));
        }
    }
    same_type(&typed)?;
    if let Some(r) = x.rank().filter(|r| !(2..=3).contains(r)) {
        return Err(format!("input must be 2-D or 3-D, got rank {r}"));
    }
    if let (Some(xd), Some(sd)) = (x.dims(), skip.dims()) {
        let out = broadcast(&[Some(xd), Some(sd)])?;
        if out.is_some_and(|o| o.iter().zip(xd).any(|(a, b)| a != b && *a != SymDim::Unknown)) {
            return Err(format!("skip {} does not broadcast to input {}", dims_text(Some(sd)), dims_text(Some(xd))));
        }
    }
    let hidden: Vec<SymDim> = x.dims().and_then(<[SymDim]>::last).cloned().into_iter().collect();
    for (i, what) in [(2, "gamma"), (3, "beta"), (4, "bias")] {
        if let (Some(v), false) = (n.opt(i), hidden.is_empty()) {
            if v.rank().is_some_and(|r| r != 1) {
                return Err(format!("{what} must be 1-D, got {}", dims_text(v.dims())));
            }
            check_feature_param(what, v, &hidden)?;
        }
    }
    let stats = x.dims().map(|d| {
        let mut s = d.to_vec();
        if let Some(last) = s.last_mut() {
            *last = SymDim::Known(1);
        }
        s
    });
    Ok(vec![
        Val::new(x.elem, x.dims.clone()),
        Val::new(FLOAT, stats.clone()),
        Val::new(FLOAT, stats),
        Val::new(x.elem, x.dims.clone()),
    ])
}

/// `com.microsoft.FastGelu` (optional bias) and `BiasGelu`: elementwise on X (+ bias).
pub(crate) fn bias_gelu(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    want(x, "X", FLOATS)?;
    if let Some(b) = n.opt(1) {
        same_type(&[("X", x), ("bias", b)])?;
        if let (Some(bd), Some(last)) = (b.dims(), x.dims().and_then(<[SymDim]>::last)) {
            check_feature_param("bias", b, std::slice::from_ref(last))
                .map_err(|_| format!("bias {} does not match the last dim {last} of X", dims_text(Some(bd))))?;
        }
    }
    Ok(vec![Val::new(x.elem, x.dims.clone())])
}

/// Unifies two dims or explains which ones differ.
pub(crate) fn same_dim(what: &str, a: &SymDim, b: &SymDim) -> R<SymDim> {
    unify(a, b).ok_or_else(|| format!("{what} differ: {a} vs {b}"))
}

/// Dim `i` of `v`, or unknown.
pub(crate) fn dim(v: &Val, i: usize) -> SymDim {
    v.dims().and_then(|d| d.get(i)).cloned().unwrap_or(SymDim::Unknown)
}

/// `hidden / heads`, refusing a known size that does not divide.
pub(crate) fn per_head(hidden: &SymDim, heads: i64, what: &str) -> R<SymDim> {
    if heads <= 0 {
        return Err(format!("{what}: head count {heads} must be positive"));
    }
    match hidden.div_exact(heads) {
        Some(d) => Ok(d),
        None if hidden.known().is_some() => Err(format!("{what}: {hidden} does not divide into {heads} heads")),
        None => Ok(SymDim::Unknown),
    }
}

/// Opset-23 `Attention`: Q, K, V as `[B, S, heads·D]` or `[B, heads, S, D]`, an optional mask
/// broadcast to `[B, q_heads, S, P+L]`, optional past key/value `[B, kv_heads, P, D]`.
pub(crate) fn attention(n: &Node<'_>) -> R<Vec<Val>> {
    let (q, k, v) = (n.input(0)?, n.input(1)?, n.input(2)?);
    want(q, "Q", FLOATS)?;
    let elem = same_type(&[("Q", q), ("K", k), ("V", v)])?;
    let qh = n.attr("q_num_heads").and_then(|a| a.i);
    let kvh = n.attr("kv_num_heads").and_then(|a| a.i);
    // (batch, heads, sequence, head size) of each of Q, K, V.
    let split = |x: &Val, heads: Option<i64>, what: &str| -> R<Option<[SymDim; 4]>> {
        match x.rank() {
            None => Ok(None),
            Some(3) => {
                let h = heads.ok_or_else(|| format!("3-D {what} needs the head-count attribute"))?;
                let size = per_head(&dim(x, 2), h, what)?;
                Ok(Some([dim(x, 0), SymDim::Known(h), dim(x, 1), size]))
            }
            Some(4) => {
                let count = dim(x, 1);
                if let (Some(d), Some(a)) = (count.known(), heads)
                    && d != a
                {
                    return Err(format!("{what} has {d} heads but the attribute says {a}"));
                }
                Ok(Some([dim(x, 0), count, dim(x, 2), dim(x, 3)]))
            }
            Some(r) => Err(format!("{what} must be 3-D or 4-D, got rank {r}")),
        }
    };
    let (qs, ks, vs) = (split(q, qh, "Q")?, split(k, kvh, "K")?, split(v, kvh, "V")?);
    let unknown = || [SymDim::Unknown, SymDim::Unknown, SymDim::Unknown, SymDim::Unknown];
    let [qb, qn, qlen, qd] = qs.clone().unwrap_or_else(unknown);
    let [kb, kn, klen, kd] = ks.unwrap_or_else(unknown);
    let [vb, vn, vlen, vd] = vs.unwrap_or_else(unknown);
    let batch = same_dim("batch sizes of Q, K and V", &same_dim("batch sizes of Q and K", &qb, &kb)?, &vb)?;
    same_dim("head sizes of Q and K", &qd, &kd)?;
    let kv_heads = same_dim("head counts of K and V", &kn, &vn)?;
    let kv_len = same_dim("sequence lengths of K and V", &klen, &vlen)?;
    if let (Some(a), Some(b)) = (qn.known(), kv_heads.known())
        && a.checked_rem(b).is_none_or(|r| r != 0)
    {
        return Err(format!("{a} query heads are not a multiple of {b} key/value heads"));
    }
    let mut total = kv_len.clone();
    let mut past_len = None;
    for (i, what, size) in [(4, "past_key", &kd), (5, "past_value", &vd)] {
        let Some(p) = n.opt(i) else { continue };
        same_type(&[("Q", q), (what, p)])?;
        if let Some(r) = p.rank().filter(|&r| r != 4) {
            return Err(format!("{what} must be 4-D, got rank {r}"));
        }
        same_dim(&format!("batch sizes of Q and {what}"), &batch, &dim(p, 0))?;
        same_dim(&format!("head counts of K and {what}"), &kv_heads, &dim(p, 1))?;
        same_dim(&format!("head sizes of {what} and its new entries"), size, &dim(p, 3))?;
        let plen = dim(p, 2);
        if let Some(prev) = &past_len {
            same_dim("past lengths of past_key and past_value", prev, &plen)?;
        }
        past_len = Some(plen);
    }
    if let Some(p) = &past_len {
        total = p.add(&kv_len);
    }
    let scores = vec![batch.clone(), qn.clone(), qlen.clone(), total.clone()];
    if let Some(mask) = n.opt(3) {
        if mask.elem != BOOL {
            same_type(&[("Q", q), ("attn_mask", mask)])?;
        }
        let b = broadcast(&[mask.dims(), Some(&scores)])
            .map_err(|e| format!("attn_mask {} vs scores {}: {e}", dims_text(mask.dims()), dims_text(Some(&scores))))?;
        if b.is_some_and(|b| b.iter().zip(&scores).any(|(x, y)| unify(x, y).is_none())) {
            return Err(format!(
                "attn_mask {} does not broadcast to the scores {}",
                dims_text(mask.dims()),
                dims_text(Some(&scores))
            ));
        }
    }
    let y = match qs.as_ref().map(|_| q.rank()) {
        Some(Some(3)) => Some(vec![batch.clone(), qlen.clone(), qn.mul(&vd)]),
        Some(Some(4)) => Some(vec![batch.clone(), qn.clone(), qlen.clone(), vd.clone()]),
        _ => None,
    };
    let present = |size: &SymDim| Some(vec![batch.clone(), kv_heads.clone(), total.clone(), size.clone()]);
    Ok(vec![
        Val::new(elem, y),
        Val::new(elem, present(&kd)),
        Val::new(elem, present(&vd)),
        Val::new(elem, Some(scores)),
    ])
}

/// `com.microsoft.Attention`: input `[B, S, in]`, packed weights `[in, q+k+v]`, optional past
/// `[2, B, heads, P, head]`; output `[B, S, v]`, present `[2, B, heads, P+S, head]`.
pub(crate) fn ms_attention(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, w) = (n.input(0)?, n.input(1)?);
    want(x, "input", FLOATS)?;
    let elem = same_type(&[("input", x), ("weights", w)])?;
    let heads = n.attr("num_heads").and_then(|a| a.i).ok_or("Attention needs num_heads")?;
    if let Some(r) = x.rank().filter(|&r| r != 3) {
        return Err(format!("input must be 3-D, got rank {r}"));
    }
    if let Some(r) = w.rank().filter(|&r| r != 2) {
        return Err(format!("weights must be 2-D, got rank {r}"));
    }
    same_dim("input width and weights rows", &dim(x, 2), &dim(w, 0))?;
    let (q_hidden, v_hidden) = match n.ints("qkv_hidden_sizes") {
        Some([q, _, v]) => (SymDim::Known(*q), SymDim::Known(*v)),
        Some(other) => return Err(format!("qkv_hidden_sizes must have 3 entries, got {}", other.len())),
        None => {
            let each = dim(w, 1).div_exact(3).unwrap_or(SymDim::Unknown);
            (each.clone(), each)
        }
    };
    let head = per_head(&q_hidden, heads, "hidden size")?;
    let (batch, seq) = (dim(x, 0), dim(x, 1));
    let total = match n.opt(4) {
        Some(p) => {
            same_type(&[("input", x), ("past", p)])?;
            if let Some(r) = p.rank().filter(|&r| r != 5) {
                return Err(format!("past must be 5-D, got rank {r}"));
            }
            dim(p, 3).add(&seq)
        }
        None => seq.clone(),
    };
    let present = vec![SymDim::Known(2), batch.clone(), SymDim::Known(heads), total, head];
    Ok(vec![Val::new(elem, Some(vec![batch, seq, v_hidden])), Val::new(elem, Some(present))])
}

/// `com.microsoft.MultiHeadAttention` with separate Q `[B, S, D]`, K/V `[B, L, D]` or
/// `[B, heads, L, head]`, optional past key/value `[B, heads, P, head]`.
pub(crate) fn ms_multi_head_attention(n: &Node<'_>) -> R<Vec<Val>> {
    let q = n.input(0)?;
    want(q, "query", FLOATS)?;
    let heads = n.attr("num_heads").and_then(|a| a.i).ok_or("MultiHeadAttention needs num_heads")?;
    let (batch, seq) = (dim(q, 0), dim(q, 1));
    let (k, v) = (n.opt(1), n.opt(2));
    for (what, x) in [("key", k), ("value", v)] {
        if let Some(x) = x {
            same_type(&[("query", q), (what, x)])?;
        }
    }
    let (kv_len, k_head, v_hidden) = match (q.rank(), k.and_then(Val::rank), v) {
        (Some(3), Some(3), Some(v)) => {
            let k = k.ok_or("key is missing")?;
            (dim(k, 1), per_head(&dim(k, 2), heads, "key")?, dim(v, 2))
        }
        (Some(3), Some(4), Some(v)) => {
            let k = k.ok_or("key is missing")?;
            (dim(k, 2), dim(k, 3), dim(v, 3).scale(heads))
        }
        (Some(3), None, None) if k.is_none() => (seq.clone(), per_head(&dim(q, 2), heads, "query")?, dim(q, 2)),
        _ => (SymDim::Unknown, SymDim::Unknown, SymDim::Unknown),
    };
    let total = match n.opt(6) {
        Some(p) => dim(p, 2).add(&kv_len),
        None => kv_len,
    };
    let v_head = v_hidden.div_exact(heads).unwrap_or(SymDim::Unknown);
    let present = |h: SymDim| Some(vec![batch.clone(), SymDim::Known(heads), total.clone(), h]);
    Ok(vec![
        Val::new(q.elem, Some(vec![batch.clone(), seq.clone(), v_hidden])),
        Val::new(q.elem, present(k_head)),
        Val::new(q.elem, present(v_head)),
    ])
}

/// `com.microsoft.GroupQueryAttention`: output like the query; the present cache length depends on
/// the run-time buffer, so it is left unknown.
pub(crate) fn ms_group_query_attention(n: &Node<'_>) -> R<Vec<Val>> {
    let q = n.input(0)?;
    want(q, "query", FLOATS)?;
    let heads = n.attr("num_heads").and_then(|a| a.i).ok_or("GroupQueryAttention needs num_heads")?;
    let kv_heads = n.attr("kv_num_heads").and_then(|a| a.i).ok_or("GroupQueryAttention needs kv_num_heads")?;
    if heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 {
        return Err(format!("{heads} query heads are not a multiple of {kv_heads} key/value heads"));
    }
    for (i, what) in [(1, "key"), (2, "value"), (3, "past_key"), (4, "past_value")] {
        if let Some(x) = n.opt(i) {
            same_type(&[("query", q), (what, x)])?;
        }
    }
    let packed = n.opt(1).is_none();
    let (batch, seq) = (dim(q, 0), dim(q, 1));
    let head = if packed {
        dim(q, 2).div_exact(heads.saturating_add(kv_heads.saturating_mul(2))).unwrap_or(SymDim::Unknown)
    } else {
        per_head(&dim(q, 2), heads, "query")?
    };
    let present = Some(vec![batch.clone(), SymDim::Known(kv_heads), SymDim::Unknown, head.clone()]);
    Ok(vec![
        Val::new(q.elem, Some(vec![batch, seq, head.scale(heads)])),
        Val::new(q.elem, present.clone()),
        Val::new(q.elem, present),
    ])
}

/// `com.microsoft` GreedySearch, BeamSearch and Sampling: int32 `input_ids` `[batch, sequence]` in,
/// int32 `sequences` `[batch, max_length]` out (`[batch, num_return_sequences, max_length]` and the
/// float `sequences_scores` `[batch, num_return_sequences]` for beam search). The decoder subgraph
/// is checked as a model of its own.
pub(crate) fn search(n: &Node<'_>) -> R<Vec<Val>> {
    let ids = n.input(0)?;
    want(ids, "input_ids", &[INT32])?;
    want(n.input(1)?, "max_length", &[INT32])?;
    if ids.rank().is_some_and(|r| r != 2) {
        return Err(format!("input_ids must be [batch, sequence], got {}", dims_text(ids.dims())));
    }
    if n.attr("decoder").and_then(|a| a.g.as_ref()).is_none() {
        return Err("the decoder subgraph attribute is missing".into());
    }
    let batch = dim(ids, 0);
    Ok(if n.proto.op_type() == "BeamSearch" {
        vec![
            Val::new(INT32, Some(vec![batch.clone(), SymDim::Unknown, SymDim::Unknown])),
            Val::new(FLOAT, Some(vec![batch, SymDim::Unknown])),
        ]
    } else {
        vec![Val::new(INT32, Some(vec![batch, SymDim::Unknown]))]
    })
}
