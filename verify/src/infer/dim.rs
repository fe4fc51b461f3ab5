//! Symbolic dims: a known size, a linear expression over the graph's `dim_param`s
//! (`past_sequence_length + sequence_length`), or unknown; parsed from and printed as
//! ONNX writes them, with checked arithmetic and a bounded number of terms.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::MAX_TERMS;

/// One dim: a known integer, a linear expression over `dim_param`s, or unknown.
///
/// `Sym` is normalized (terms sorted by name, no zero coefficients, at least one term), so
/// equality is structural: `sequence_length + past_sequence_length` equals
/// `past_sequence_length + sequence_length`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SymDim {
    Known(i64),
    Sym(SymExpr),
    Unknown,
}

/// One `coefficient·param` of a [`SymExpr`]; `Arc` keeps clones cheap on long names.
pub(crate) type Term = (Arc<str>, i64);

/// `constant + Σ coefficient·param`, with at least one param.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SymExpr {
    constant: i64,
    /// Sorted by name; coefficients are non-zero.
    terms: Vec<Term>,
}

impl SymExpr {
    /// The constant part.
    pub fn constant(&self) -> i64 {
        self.constant
    }

    /// (param, coefficient) pairs, sorted by param.
    pub fn terms(&self) -> impl Iterator<Item = (&str, i64)> {
        self.terms.iter().map(|(n, c)| (&**n, *c))
    }
}

impl SymDim {
    /// The dim named `name`.
    pub fn param(name: &str) -> SymDim {
        SymDim::linear(0, [(Arc::from(name), 1)])
    }

    /// A declared `dim_param`: a linear expression such as `past_sequence_length + sequence_length`
    /// or `2*n - 1` when it parses as one, else an opaque name; empty means unknown.
    pub fn from_dim_param(text: &str) -> SymDim {
        let text = text.trim();
        if text.is_empty() {
            return SymDim::Unknown;
        }
        parse_linear(text).unwrap_or_else(|| SymDim::param(text))
    }

    /// The value, when known.
    pub fn known(&self) -> Option<i64> {
        match self {
            SymDim::Known(n) => Some(*n),
            _ => None,
        }
    }

    /// (constant, terms), or `None` for unknown.
    fn parts(&self) -> Option<(i64, &[Term])> {
        match self {
            SymDim::Known(n) => Some((*n, &[])),
            SymDim::Sym(e) => Some((e.constant, &e.terms)),
            SymDim::Unknown => None,
        }
    }

    /// Normalizes `constant + Σ terms`; overflow or too many terms give unknown.
    fn linear(constant: i64, terms: impl IntoIterator<Item = (Arc<str>, i64)>) -> SymDim {
        let mut sum: BTreeMap<Arc<str>, i64> = BTreeMap::new();
        for (name, c) in terms {
            let slot = sum.entry(name).or_insert(0);
            match slot.checked_add(c) {
                Some(v) => *slot = v,
                None => return SymDim::Unknown,
            }
        }
        sum.retain(|_, c| *c != 0);
        if sum.is_empty() {
            SymDim::Known(constant)
        } else if sum.len() > MAX_TERMS {
            SymDim::Unknown
        } else {
            SymDim::Sym(SymExpr { constant, terms: sum.into_iter().collect() })
        }
    }

    /// `self + sign·other`.
    fn combine(&self, other: &SymDim, sign: i64) -> SymDim {
        let (Some((c1, t1)), Some((c2, t2))) = (self.parts(), other.parts()) else {
            return SymDim::Unknown;
        };
        let Some(constant) = c2.checked_mul(sign).and_then(|c2| c1.checked_add(c2)) else {
            return SymDim::Unknown;
        };
        let mut terms = t1.to_vec();
        for (name, c) in t2 {
            match c.checked_mul(sign) {
                Some(c) => terms.push((name.clone(), c)),
                None => return SymDim::Unknown,
            }
        }
        SymDim::linear(constant, terms)
    }

    /// `self + other`.
    pub fn add(&self, other: &SymDim) -> SymDim {
        self.combine(other, 1)
    }

    /// `self - other`.
    pub fn sub(&self, other: &SymDim) -> SymDim {
        self.combine(other, -1)
    }

    /// `k·self`.
    pub fn scale(&self, k: i64) -> SymDim {
        if k == 0 {
            return SymDim::Known(0);
        }
        let Some((c, terms)) = self.parts() else { return SymDim::Unknown };
        let Some(constant) = c.checked_mul(k) else { return SymDim::Unknown };
        let mut scaled = Vec::with_capacity(terms.len());
        for (name, t) in terms {
            match t.checked_mul(k) {
                Some(t) => scaled.push((name.clone(), t)),
                None => return SymDim::Unknown,
            }
        }
        SymDim::linear(constant, scaled)
    }

    /// `self · other` when one side is known (a product of params is not linear).
    pub fn mul(&self, other: &SymDim) -> SymDim {
        match (self.known(), other.known()) {
            (Some(a), _) => other.scale(a),
            (_, Some(b)) => self.scale(b),
            _ => SymDim::Unknown,
        }
    }

    /// `self / d` when every coefficient divides exactly.
    pub fn div_exact(&self, d: i64) -> Option<SymDim> {
        if d == 0 {
            return None;
        }
        let (c, terms) = self.parts()?;
        let div = |x: i64| if x.checked_rem(d)? == 0 { x.checked_div(d) } else { None };
        let constant = div(c)?;
        let terms: Option<Vec<_>> = terms.iter().map(|(n, t)| Some((n.clone(), div(*t)?))).collect();
        Some(SymDim::linear(constant, terms?))
    }
}

impl fmt::Display for SymDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SymDim::Known(n) => write!(f, "{n}"),
            SymDim::Unknown => f.write_str("?"),
            SymDim::Sym(e) => {
                for (i, (name, c)) in e.terms.iter().enumerate() {
                    let (neg, abs) = (*c < 0, c.unsigned_abs());
                    match (i, neg) {
                        (0, true) => f.write_str("-")?,
                        (0, false) => {}
                        (_, true) => f.write_str(" - ")?,
                        (_, false) => f.write_str(" + ")?,
                    }
                    if abs != 1 {
                        write!(f, "{abs}*")?;
                    }
                    f.write_str(name)?;
                }
                match e.constant {
                    0 => Ok(()),
                    c if c < 0 => write!(f, " - {}", c.unsigned_abs()),
                    c => write!(f, " + {c}"),
                }
            }
        }
    }
}

/// Parses `a + b`, `2*a - 1`, `-a`, `a*2`; `None` when the text is not such a sum. A `-` inside a
/// name (`seq-len`) is part of the name: only a `-` at the start or beside a space subtracts.
pub(crate) fn parse_linear(text: &str) -> Option<SymDim> {
    let mut chunks: Vec<(i64, &str)> = Vec::new();
    let (mut sign, mut start) = (1i64, 0usize);
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let space_before = i == 0 || bytes.get(i.wrapping_sub(1)).is_some_and(u8::is_ascii_whitespace);
        let space_after = bytes.get(i + 1).is_some_and(u8::is_ascii_whitespace);
        let splits = b == b'+' || (b == b'-' && (space_before || space_after));
        if splits {
            chunks.push((sign, text.get(start..i)?));
            sign = if b == b'-' { -1 } else { 1 };
            start = i + 1;
        }
    }
    chunks.push((sign, text.get(start..)?));
    // A leading sign leaves an empty first chunk.
    if chunks.first().is_some_and(|(_, c)| c.trim().is_empty()) && chunks.len() > 1 {
        let (_, first) = chunks.remove(0);
        if !first.trim().is_empty() {
            return None;
        }
    }
    let mut constant = 0i64;
    let mut terms = Vec::new();
    for (sign, chunk) in chunks {
        let (coeff, name) = parse_term(chunk.trim())?;
        let coeff = coeff.checked_mul(sign)?;
        match name {
            None => constant = constant.checked_add(coeff)?,
            Some(name) => terms.push((Arc::from(name), coeff)),
        }
    }
    match SymDim::linear(constant, terms) {
        SymDim::Unknown => None,
        d => Some(d),
    }
}

/// One term: `7`, `name`, `3*name` or `name*3`.
pub(crate) fn parse_term(term: &str) -> Option<(i64, Option<&str>)> {
    let is_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && !s.contains(|c: char| c.is_whitespace() || c == '*' || c == '+')
    };
    if let Some((l, r)) = term.split_once('*') {
        let (l, r) = (l.trim(), r.trim());
        return match (l.parse::<i64>(), r.parse::<i64>()) {
            (Ok(k), Err(_)) if is_name(r) => Some((k, Some(r))),
            (Err(_), Ok(k)) if is_name(l) => Some((k, Some(l))),
            _ => None,
        };
    }
    if let Ok(k) = term.parse::<i64>() {
        return Some((k, None));
    }
    is_name(term).then_some((1, Some(term)))
}

/// Whether two dims can be the same size: unknown agrees with anything; a known size and a
/// symbol may agree at run time; two different symbols or two different sizes do not.
pub(crate) fn unify(a: &SymDim, b: &SymDim) -> Option<SymDim> {
    match (a, b) {
        (SymDim::Unknown, x) | (x, SymDim::Unknown) => Some(x.clone()),
        (SymDim::Known(x), SymDim::Known(y)) => (x == y).then(|| a.clone()),
        (SymDim::Known(_), SymDim::Sym(_)) => Some(a.clone()),
        (SymDim::Sym(_), SymDim::Known(_)) => Some(b.clone()),
        (SymDim::Sym(x), SymDim::Sym(y)) => (x == y).then(|| a.clone()),
    }
}

/// Whether a declared dim agrees with the inferred one: equal where both are known.
pub(crate) fn agrees(declared: &SymDim, inferred: &SymDim) -> bool {
    matches!(declared, SymDim::Unknown) || matches!(inferred, SymDim::Unknown) || declared == inferred
}

/// `[a, b, c]`, or `(unknown rank)`.
pub(crate) fn dims_text(dims: Option<&[SymDim]>) -> String {
    match dims {
        None => "(unknown rank)".into(),
        Some(d) => format!("[{}]", d.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    }
}
