//! Shape and element-type inference over a whole ONNX graph, for `gpt2c verify`.
//!
//! Independent of the compiler's IR on purpose: verify re-derives every value's type from the
//! ONNX operator specifications, so a mistake in the graph builder's own bookkeeping cannot hide
//! itself. Dims are linear expressions over the graph's `dim_param`s (`past_sequence_length +
//! sequence_length`), and small integer tensors are followed by value, because the graphs compute
//! reshape targets and position ranges from `Shape`. Input files may be hostile: sizes are
//! checked, never trusted, arithmetic is checked, and nothing allocates by a declared size.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use gpt2c_proto::tensor_shape_proto::dimension::Value as DimProto;
use gpt2c_proto::{self as pb, DataType};

/// Most dims a value may have; deeper ranks become unknown (a hostile graph can double a rank per
/// Gather node, and nothing real comes close).
const MAX_RANK: usize = 64;
/// Most elements of an integer tensor followed by value (shape arithmetic is a handful).
const MAX_VALUES: usize = 64;
/// Most parameters in one symbolic dim; longer sums become unknown, which bounds their size.
const MAX_TERMS: usize = 16;
/// `Slice` ends at or past this mean "to the end" when the dim is symbolic (exporters write
/// `i64::MAX` or `i32::MAX`).
const SLICE_TO_END: i64 = i32::MAX as i64;

const FLOAT: i32 = DataType::Float as i32;
const INT32: i32 = DataType::Int32 as i32;
const INT64: i32 = DataType::Int64 as i32;
const UINT8: i32 = DataType::Uint8 as i32;
const INT8: i32 = DataType::Int8 as i32;
const BOOL: i32 = DataType::Bool as i32;
const FLOATS: &[i32] =
    &[DataType::Float as i32, DataType::Float16 as i32, DataType::Bfloat16 as i32, DataType::Double as i32];
const INDEX_TYPES: &[i32] = &[INT32, INT64];

// ─── Dims ────────────────────────────────────────────────────────────────────────────────────────

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
type Term = (Arc<str>, i64);

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
fn parse_linear(text: &str) -> Option<SymDim> {
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
fn parse_term(term: &str) -> Option<(i64, Option<&str>)> {
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
fn unify(a: &SymDim, b: &SymDim) -> Option<SymDim> {
    match (a, b) {
        (SymDim::Unknown, x) | (x, SymDim::Unknown) => Some(x.clone()),
        (SymDim::Known(x), SymDim::Known(y)) => (x == y).then(|| a.clone()),
        (SymDim::Known(_), SymDim::Sym(_)) => Some(a.clone()),
        (SymDim::Sym(_), SymDim::Known(_)) => Some(b.clone()),
        (SymDim::Sym(x), SymDim::Sym(y)) => (x == y).then(|| a.clone()),
    }
}

/// Whether a declared dim agrees with the inferred one: equal where both are known.
fn agrees(declared: &SymDim, inferred: &SymDim) -> bool {
    matches!(declared, SymDim::Unknown) || matches!(inferred, SymDim::Unknown) || declared == inferred
}

/// `[a, b, c]`, or `(unknown rank)`.
fn dims_text(dims: Option<&[SymDim]>) -> String {
    match dims {
        None => "(unknown rank)".into(),
        Some(d) => format!("[{}]", d.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    }
}

fn type_name(t: i32) -> String {
    match DataType::try_from(t) {
        Ok(DataType::Undefined) => "undefined".into(),
        Ok(d) => d.as_str_name().to_lowercase(),
        Err(_) => format!("element type {t}"),
    }
}

// ─── Public results ──────────────────────────────────────────────────────────────────────────────

/// What inference found for one value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueShape {
    /// `TensorProto.DataType`; 0 when unknown.
    pub elem_type: i32,
    /// `None`: unknown rank.
    pub dims: Option<Vec<SymDim>>,
}

impl fmt::Display for ValueShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", type_name(self.elem_type), dims_text(self.dims.as_deref()))
    }
}

/// The first node where inference fails or disagrees with declared types.
///
/// Problems that belong to no node (a graph output nothing produces) have `node_index` equal to the
/// node count and empty `node_name` and `op_type`. `op_type` carries the domain for non-default
/// domains (`com.microsoft.FastGelu`). `value` names the value at fault, empty when none is.
#[derive(Clone, Debug)]
pub struct Disagreement {
    pub node_index: usize,
    pub node_name: String,
    pub op_type: String,
    pub value: String,
    pub message: String,
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op_type.is_empty() {
            write!(f, "graph: {}", self.message)
        } else {
            write!(f, "node {} \"{}\" ({}): {}", self.node_index, self.node_name, self.op_type, self.message)
        }
    }
}

impl std::error::Error for Disagreement {}

// ─── Values during inference ─────────────────────────────────────────────────────────────────────

/// A value's type and, for small integer tensors, its elements (row-major).
#[derive(Clone, Debug)]
struct Val {
    elem: i32,
    dims: Option<Vec<SymDim>>,
    /// Only for integer tensors with known dims and at most [`MAX_VALUES`] elements.
    data: Option<Vec<SymDim>>,
}

impl Val {
    fn new(elem: i32, dims: Option<Vec<SymDim>>) -> Val {
        let dims = dims.filter(|d| d.len() <= MAX_RANK);
        Val { elem, dims, data: None }
    }

    /// A value with elements, kept only where they fit the dims and are integers.
    fn with_data(elem: i32, dims: Option<Vec<SymDim>>, data: Option<Vec<SymDim>>) -> Val {
        let mut v = Val::new(elem, dims);
        let count = v.dims.as_deref().and_then(element_count);
        v.data = data.filter(|d| is_int(elem) && d.len() <= MAX_VALUES && count == Some(d.len()));
        v
    }

    fn dims(&self) -> Option<&[SymDim]> {
        self.dims.as_deref()
    }

    fn rank(&self) -> Option<usize> {
        self.dims.as_ref().map(Vec::len)
    }

    fn data(&self) -> Option<&[SymDim]> {
        self.data.as_deref()
    }

    /// The elements, when every one is a known integer.
    fn ints(&self) -> Option<Vec<i64>> {
        self.data.as_ref()?.iter().map(SymDim::known).collect()
    }

    /// The single element of a scalar (or one-element) tensor.
    fn scalar(&self) -> Option<&SymDim> {
        match self.data.as_deref() {
            Some([x]) => Some(x),
            _ => None,
        }
    }

    fn shape(&self) -> ValueShape {
        ValueShape { elem_type: self.elem, dims: self.dims.clone() }
    }
}

fn is_int(t: i32) -> bool {
    use DataType as D;
    matches!(
        DataType::try_from(t),
        Ok(D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::Uint8 | D::Uint16 | D::Uint32 | D::Uint64)
    )
}

/// The product of known dims, checked.
fn element_count(dims: &[SymDim]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, d| acc.checked_mul(usize::try_from(d.known()?).ok()?))
}

fn known_sizes(dims: &[SymDim]) -> Option<Vec<usize>> {
    dims.iter().map(|d| usize::try_from(d.known()?).ok()).collect()
}

/// The product of dims as a linear expression: every factor known but at most one.
fn product(dims: &[SymDim]) -> SymDim {
    dims.iter().fold(SymDim::Known(1), |acc, d| acc.mul(d))
}

/// A declared `TypeProto`'s tensor type, or `None` when it is not a tensor.
fn declared(ty: Option<&pb::TypeProto>) -> Option<ValueShape> {
    match ty?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => Some(ValueShape {
            elem_type: t.elem_type.unwrap_or(0),
            dims: t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(DimProto::DimValue(n)) if *n >= 0 => SymDim::Known(*n),
                        Some(DimProto::DimParam(p)) => SymDim::from_dim_param(p),
                        _ => SymDim::Unknown,
                    })
                    .collect()
            }),
        }),
        _ => None,
    }
}

/// A tensor (initializer or Constant attribute): its type, dims and, for small integer tensors
/// stored inline, its elements.
fn tensor_val(t: &pb::TensorProto) -> Val {
    let elem = t.data_type.unwrap_or(0);
    let dims: Vec<SymDim> = t.dims.iter().map(|&d| if d >= 0 { SymDim::Known(d) } else { SymDim::Unknown }).collect();
    let count = element_count(&dims);
    let external = t.data_location == Some(pb::tensor_proto::DataLocation::External as i32);
    let data = match count {
        Some(n) if n <= MAX_VALUES && !external => tensor_ints(t, elem, n),
        _ => None,
    };
    Val::with_data(elem, Some(dims), data.map(|v| v.into_iter().map(SymDim::Known).collect()))
}

/// The `n` elements of an int32/int64 tensor, from `raw_data` or the typed field.
fn tensor_ints(t: &pb::TensorProto, elem: i32, n: usize) -> Option<Vec<i64>> {
    let raw = t.raw_data.as_deref().filter(|r| !r.is_empty());
    let values: Vec<i64> = match (elem, raw) {
        (INT64, Some(raw)) => {
            raw.chunks_exact(8).map(|c| c.try_into().map(i64::from_le_bytes).unwrap_or_default()).take(n + 1).collect()
        }
        (INT32, Some(raw)) => raw
            .chunks_exact(4)
            .map(|c| c.try_into().map(i32::from_le_bytes).map(i64::from).unwrap_or_default())
            .take(n + 1)
            .collect(),
        (INT64, None) => t.int64_data.iter().copied().take(n + 1).collect(),
        (INT32, None) => t.int32_data.iter().map(|&v| i64::from(v)).take(n + 1).collect(),
        _ => return None,
    };
    let exact_raw = raw.is_none_or(|r| r.len() == n.saturating_mul(if elem == INT64 { 8 } else { 4 }));
    (values.len() == n && exact_raw).then_some(values)
}

// ─── The walk over the graph ─────────────────────────────────────────────────────────────────────

/// Infers every value from graph inputs, initializers and Constant nodes in node order, checking
/// each node's inputs have the element types its op requires and compatible shapes; compares
/// every value that has declared type info (graph outputs, value_info) with the inferred one.
///
/// Declared info also refines what inference leaves unknown, as ONNX's own inference does.
pub fn infer_graph(graph: &pb::GraphProto) -> Result<HashMap<String, ValueShape>, Disagreement> {
    let mut env: HashMap<&str, Val> = HashMap::new();
    for init in &graph.initializer {
        env.insert(init.name(), tensor_val(init));
    }
    // A graph input shadows an initializer of the same name (the initializer is its default).
    for input in &graph.input {
        let v = declared(input.r#type.as_ref()).unwrap_or(ValueShape { elem_type: 0, dims: None });
        env.insert(input.name(), Val::new(v.elem_type, v.dims));
    }
    let mut declared_types: HashMap<&str, ValueShape> = HashMap::new();
    for vi in graph.value_info.iter().chain(&graph.output) {
        if let Some(v) = declared(vi.r#type.as_ref()) {
            declared_types.insert(vi.name(), v);
        }
    }

    for (index, node) in graph.node.iter().enumerate() {
        let fail = |value: &str, message: String| Disagreement {
            node_index: index,
            node_name: node.name().to_string(),
            op_type: match node.domain() {
                "" | "ai.onnx" => node.op_type().to_string(),
                d => format!("{d}.{}", node.op_type()),
            },
            value: value.to_string(),
            message,
        };
        let mut inputs = Vec::with_capacity(node.input.len());
        for name in &node.input {
            if name.is_empty() {
                inputs.push(None);
                continue;
            }
            match env.get(name.as_str()) {
                Some(v) => inputs.push(Some(v)),
                None => {
                    return Err(fail(
                        name,
                        format!(
                            "input \"{name}\" is never produced (not a graph input, an initializer or an earlier node's output)"
                        ),
                    ));
                }
            }
        }
        let first_output = node.output.iter().find(|o| !o.is_empty()).map(String::as_str).unwrap_or("");
        let n = Node { proto: node, inputs };
        let outputs = infer_node(&n).map_err(|m| fail(first_output, m))?;
        if node.output.len() > outputs.len() {
            return Err(fail(
                first_output,
                format!("has {} outputs; the op produces at most {}", node.output.len(), outputs.len()),
            ));
        }
        for (name, mut val) in node.output.iter().zip(outputs) {
            if name.is_empty() {
                continue;
            }
            if env.contains_key(name.as_str()) {
                return Err(fail(name, format!("output \"{name}\" is already defined earlier in the graph")));
            }
            // Sizes computed from tensor values (Expand, Tile, ...) can come out negative.
            if val.dims().is_some_and(|d| d.iter().any(|x| x.known().is_some_and(|k| k < 0))) {
                return Err(fail(
                    name,
                    format!("output \"{name}\" would have a negative dimension: {}", dims_text(val.dims())),
                ));
            }
            if let Some(d) = declared_types.get(name.as_str()) {
                check_declared(name, &val, d).map_err(|m| fail(name, m))?;
                refine(&mut val, d);
            }
            env.insert(name.as_str(), val);
        }
    }

    for out in &graph.output {
        let graph_fail = |message: String| Disagreement {
            node_index: graph.node.len(),
            node_name: String::new(),
            op_type: String::new(),
            value: out.name().to_string(),
            message,
        };
        let name = out.name();
        let Some(val) = env.get(name) else {
            return Err(graph_fail(format!(
                "output \"{name}\" is never produced (not a node output, a graph input or an initializer)"
            )));
        };
        if let Some(d) = declared_types.get(name) {
            check_declared(name, val, d).map_err(graph_fail)?;
        }
    }
    Ok(env.into_iter().map(|(k, v)| (k.to_string(), v.shape())).collect())
}

/// Compares an inferred value with its declared type.
fn check_declared(name: &str, inferred: &Val, declared: &ValueShape) -> Result<(), String> {
    if declared.elem_type != 0 && inferred.elem != 0 && declared.elem_type != inferred.elem {
        return Err(format!(
            "output \"{name}\" inferred {} but declared {}",
            type_name(inferred.elem),
            type_name(declared.elem_type)
        ));
    }
    if let (Some(i), Some(d)) = (inferred.dims(), declared.dims.as_deref())
        && (i.len() != d.len() || i.iter().zip(d).any(|(i, d)| !agrees(d, i)))
    {
        return Err(format!("output \"{name}\" inferred {} but declared {}", dims_text(Some(i)), dims_text(Some(d))));
    }
    Ok(())
}

/// Fills what inference left unknown from the declared type.
fn refine(val: &mut Val, declared: &ValueShape) {
    if val.elem == 0 {
        val.elem = declared.elem_type;
    }
    match (&mut val.dims, &declared.dims) {
        (None, Some(d)) if d.len() <= MAX_RANK => val.dims = Some(d.clone()),
        (Some(i), Some(d)) => {
            for (i, d) in i.iter_mut().zip(d) {
                if *i == SymDim::Unknown {
                    *i = d.clone();
                }
            }
        }
        _ => {}
    }
}

/// One node and its resolved inputs (`None`: an omitted optional input).
struct Node<'a> {
    proto: &'a pb::NodeProto,
    inputs: Vec<Option<&'a Val>>,
}

type R<T> = Result<T, String>;

impl<'a> Node<'a> {
    fn input(&self, i: usize) -> R<&'a Val> {
        self.opt(i).ok_or_else(|| format!("input {i} is missing; {} needs it", self.proto.op_type()))
    }

    fn opt(&self, i: usize) -> Option<&'a Val> {
        self.inputs.get(i).copied().flatten()
    }

    fn attr(&self, name: &str) -> Option<&'a pb::AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name() == name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(|a| a.i).unwrap_or(default)
    }

    fn ints(&self, name: &str) -> Option<&'a [i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }

    fn outputs(&self) -> usize {
        self.proto.output.len()
    }
}

/// Checks `v`'s element type is one of `allowed` (unknown passes).
fn want(v: &Val, what: &str, allowed: &[i32]) -> R<()> {
    if v.elem == 0 || allowed.contains(&v.elem) {
        return Ok(());
    }
    let names: Vec<String> = allowed.iter().map(|&t| type_name(t)).collect();
    Err(format!("{what} must be {}, got {}", names.join(" or "), type_name(v.elem)))
}

/// The common element type of `vals` (unknown ones pass).
fn same_type(vals: &[(&str, &Val)]) -> R<i32> {
    let mut common: Option<(&str, i32)> = None;
    for (what, v) in vals {
        if v.elem == 0 {
            continue;
        }
        match common {
            None => common = Some((what, v.elem)),
            Some((first, t)) if t != v.elem => {
                return Err(format!("{first} is {} but {what} is {}", type_name(t), type_name(v.elem)));
            }
            Some(_) => {}
        }
    }
    Ok(common.map_or(0, |(_, t)| t))
}

fn numeric(v: &Val, what: &str) -> R<()> {
    if matches!(DataType::try_from(v.elem), Ok(DataType::Bool | DataType::String)) {
        return Err(format!("{what} must be numeric, got {}", type_name(v.elem)));
    }
    Ok(())
}

/// `axis` in `[-rank, rank)` as an index.
fn norm_axis(axis: i64, rank: usize) -> R<usize> {
    let r = i64::try_from(rank).unwrap_or(i64::MAX);
    let a = if axis < 0 { axis.saturating_add(r) } else { axis };
    if (0..r).contains(&a) {
        usize::try_from(a).map_err(|_| format!("axis {axis} is out of range for rank {rank}"))
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}

/// Normalizes a list of axes for `rank`, refusing duplicates.
fn norm_axes(axes: &[i64], rank: usize) -> R<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len().min(MAX_RANK));
    for &a in axes {
        let a = norm_axis(a, rank)?;
        if out.contains(&a) {
            return Err(format!("axis {a} is repeated"));
        }
        out.push(a);
    }
    Ok(out)
}

// ─── Broadcasting ────────────────────────────────────────────────────────────────────────────────

fn broadcast_dim(a: &SymDim, b: &SymDim) -> R<SymDim> {
    use SymDim::{Known, Sym, Unknown};
    Ok(match (a, b) {
        (Known(1), x) | (x, Known(1)) => x.clone(),
        (Known(x), Known(y)) if x != y => return Err(format!("dimensions {x} and {y} do not broadcast")),
        (Known(x), _) | (_, Known(x)) => Known(*x),
        (Sym(x), Sym(y)) if x != y => return Err(format!("dimensions {a} and {b} do not broadcast")),
        (Sym(_), Sym(_)) => a.clone(),
        (Unknown, _) | (_, Unknown) => Unknown,
    })
}

/// Numpy broadcasting of several shapes; unknown rank when any is.
fn broadcast(shapes: &[Option<&[SymDim]>]) -> R<Option<Vec<SymDim>>> {
    let rank = shapes.iter().flatten().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![SymDim::Known(1); rank.min(MAX_RANK)];
    for s in shapes.iter().flatten() {
        for (o, d) in out.iter_mut().rev().zip(s.iter().rev()) {
            *o = broadcast_dim(o, d).map_err(|e| {
                let all: Vec<String> = shapes.iter().map(|s| dims_text(*s)).collect();
                format!("shapes {} do not broadcast: {e}", all.join(", "))
            })?;
        }
    }
    Ok(if shapes.iter().any(Option::is_none) || rank > MAX_RANK { None } else { Some(out) })
}

/// `data` (of shape `from`) broadcast to shape `to`, all known and small.
fn broadcast_data(to: &[usize], from: &[usize], data: &[SymDim]) -> Option<Vec<SymDim>> {
    let total = to.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if total > MAX_VALUES || from.len() > to.len() {
        return None;
    }
    let pad = to.len() - from.len();
    let mut out = Vec::with_capacity(total);
    for flat in 0..total {
        let (mut rem, mut index, mut stride) = (flat, 0usize, 1usize);
        for (k, &size) in to.iter().enumerate().rev() {
            let coord = rem.checked_rem(size)?;
            rem /= size;
            if let Some(k) = k.checked_sub(pad) {
                let f = *from.get(k)?;
                index = index.checked_add(if f == 1 { 0 } else { coord }.checked_mul(stride)?)?;
                stride = stride.checked_mul(f)?;
            }
        }
        out.push(data.get(index)?.clone());
    }
    Some(out)
}

/// Element-wise `f` over two followed values broadcast to `out`.
fn zip_data(a: &Val, b: &Val, out: Option<&[SymDim]>, f: impl Fn(&SymDim, &SymDim) -> SymDim) -> Option<Vec<SymDim>> {
    let out = known_sizes(out?)?;
    let da = broadcast_data(&out, &known_sizes(a.dims()?)?, a.data()?)?;
    let db = broadcast_data(&out, &known_sizes(b.dims()?)?, b.data()?)?;
    Some(da.iter().zip(&db).map(|(x, y)| f(x, y)).collect())
}

/// Integer division as ONNX runtimes do it, where truncation and flooring agree.
fn div_dim(a: &SymDim, b: &SymDim) -> SymDim {
    let Some(d) = b.known().filter(|&d| d != 0) else { return SymDim::Unknown };
    match a {
        SymDim::Known(x) => {
            let exact = x.checked_rem(d) == Some(0);
            if exact || (*x >= 0) == (d > 0) {
                x.checked_div(d).map_or(SymDim::Unknown, SymDim::Known)
            } else {
                SymDim::Unknown
            }
        }
        _ => a.div_exact(d).unwrap_or(SymDim::Unknown),
    }
}

fn known_op(a: &SymDim, b: &SymDim, f: impl Fn(i64, i64) -> i64) -> SymDim {
    match (a.known(), b.known()) {
        (Some(x), Some(y)) => SymDim::Known(f(x, y)),
        _ => SymDim::Unknown,
    }
}

// ─── Operators ───────────────────────────────────────────────────────────────────────────────────

/// Output types of one node, in output order.
fn infer_node(n: &Node<'_>) -> R<Vec<Val>> {
    let domain = match n.proto.domain() {
        "" | "ai.onnx" => "",
        d => d,
    };
    match (domain, n.proto.op_type()) {
        ("", "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Max" | "Min" | "Sum" | "Mean") => arithmetic(n),
        ("", "Pow") => pow(n),
        ("", "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual") => compare(n),
        ("", "And" | "Or" | "Xor") => logical(n),
        ("", "Not") => unary(n, &[BOOL]),
        ("", "IsNaN" | "IsInf") => {
            let x = n.input(0)?;
            want(x, "the input", FLOATS)?;
            Ok(vec![Val::new(BOOL, x.dims.clone())])
        }
        ("", "Where") => where_(n),
        ("", "Neg" | "Abs" | "Relu" | "Sign" | "Identity") => unary(n, &[]),
        (
            "",
            "Sqrt" | "Exp" | "Log" | "Tanh" | "Erf" | "Sigmoid" | "Softplus" | "Softsign" | "LeakyRelu" | "HardSigmoid"
            | "HardSwish" | "Mish" | "Gelu" | "Elu" | "Selu" | "Celu" | "Reciprocal" | "Floor" | "Ceil" | "Round"
            | "Sin" | "Cos",
        ) => unary(n, FLOATS),
        ("", "Clip") => clip(n),
        ("", "Cast") => cast(n),
        ("", "CastLike") => cast_like(n),
        ("", "Constant") => constant(n),
        ("", "ConstantOfShape") => constant_of_shape(n),
        ("", "MatMul") => matmul(n),
        ("", "MatMulInteger") => matmul_integer(n),
        ("", "Gemm") => gemm(n),
        ("", "Gather") => gather(n),
        ("", "GatherElements") => gather_elements(n),
        ("", "GatherND") => gather_nd(n),
        ("", "Concat") => concat(n),
        ("", "Split") => split(n),
        ("", "Slice") => slice(n),
        ("", "Transpose") => transpose(n),
        ("", "Reshape") => reshape(n),
        ("", "Flatten") => flatten(n),
        ("", "Unsqueeze") => unsqueeze(n),
        ("", "Squeeze") => squeeze(n),
        ("", "Expand") => expand(n),
        ("", "Tile") => tile(n),
        ("", "Shape") => shape(n),
        ("", "Size") => size(n),
        ("", "Range") => range(n),
        ("", "Softmax" | "LogSoftmax" | "Hardmax") => softmax(n),
        ("", "LayerNormalization") => layer_norm(n),
        (
            "",
            "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceSum" | "ReduceProd" | "ReduceL1" | "ReduceL2"
            | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare",
        ) => reduce(n),
        ("", "ArgMax" | "ArgMin") => arg_reduce(n),
        ("", "CumSum") => cum_sum(n),
        ("", "Trilu") => trilu(n),
        ("", "DynamicQuantizeLinear") => dynamic_quantize(n),
        ("", "DequantizeLinear") => dequantize(n),
        ("", "QuantizeLinear") => quantize(n),
        ("", "Attention") => attention(n),
        ("com.microsoft", "MatMulNBits") => matmul_nbits(n),
        ("com.microsoft", "SkipLayerNormalization") => skip_layer_norm(n),
        ("com.microsoft", "FastGelu" | "BiasGelu") => bias_gelu(n),
        ("com.microsoft", "Attention") => ms_attention(n),
        ("com.microsoft", "MultiHeadAttention") => ms_multi_head_attention(n),
        ("com.microsoft", "GroupQueryAttention") => ms_group_query_attention(n),
        _ => Err("unsupported op (shape inference does not know it)".into()),
    }
}

/// All present inputs, in order; `min` of them required.
fn present<'a>(n: &Node<'a>, min: usize) -> R<Vec<&'a Val>> {
    let vals: Vec<&Val> = n.inputs.iter().flatten().copied().collect();
    if vals.len() < min || n.inputs.len() != vals.len() {
        return Err(format!("takes {min} or more inputs, none of them omitted; got {}", n.inputs.len()));
    }
    Ok(vals)
}

fn arithmetic(n: &Node<'_>) -> R<Vec<Val>> {
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

fn pow(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, y) = (n.input(0)?, n.input(1)?);
    numeric(x, "the base")?;
    numeric(y, "the exponent")?;
    Ok(vec![Val::new(x.elem, broadcast(&[x.dims(), y.dims()])?)])
}

fn compare(n: &Node<'_>) -> R<Vec<Val>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    same_type(&[("A", a), ("B", b)])?;
    Ok(vec![Val::new(BOOL, broadcast(&[a.dims(), b.dims()])?)])
}

fn logical(n: &Node<'_>) -> R<Vec<Val>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    want(a, "A", &[BOOL])?;
    want(b, "B", &[BOOL])?;
    Ok(vec![Val::new(BOOL, broadcast(&[a.dims(), b.dims()])?)])
}

fn where_(n: &Node<'_>) -> R<Vec<Val>> {
    let (c, x, y) = (n.input(0)?, n.input(1)?, n.input(2)?);
    want(c, "the condition", &[BOOL])?;
    let elem = same_type(&[("X", x), ("Y", y)])?;
    Ok(vec![Val::new(elem, broadcast(&[c.dims(), x.dims(), y.dims()])?)])
}

/// Same type and shape out; `allowed` empty means any numeric type. Identity and Neg keep values.
fn unary(n: &Node<'_>, allowed: &[i32]) -> R<Vec<Val>> {
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

fn clip(n: &Node<'_>) -> R<Vec<Val>> {
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

fn valid_type(t: i32) -> bool {
    !matches!(DataType::try_from(t), Err(_) | Ok(DataType::Undefined))
}

fn cast(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let to = n.attr("to").and_then(|a| a.i).ok_or("Cast needs a `to` attribute")?;
    let to = i32::try_from(to).ok().filter(|&t| valid_type(t)).ok_or(format!("Cast to {to}: not an element type"))?;
    let data = if is_int(to) && is_int(x.elem) { x.data.clone() } else { None };
    Ok(vec![Val::with_data(to, x.dims.clone(), data)])
}

fn cast_like(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, like) = (n.input(0)?, n.input(1)?);
    let data = if is_int(like.elem) && is_int(x.elem) { x.data.clone() } else { None };
    Ok(vec![Val::with_data(like.elem, x.dims.clone(), data)])
}

fn constant(n: &Node<'_>) -> R<Vec<Val>> {
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
fn shape_from(v: &Val, what: &str) -> R<Option<Vec<SymDim>>> {
    want(v, what, &[INT64])?;
    if let Some(r) = v.rank().filter(|&r| r != 1) {
        return Err(format!("{what} must be 1-D, got rank {r}"));
    }
    Ok(v.data.clone())
}

/// Rank of a shape tensor when its length is known.
fn shape_len(v: &Val) -> Option<usize> {
    match v.dims() {
        Some([d]) => usize::try_from(d.known()?).ok().filter(|&r| r <= MAX_RANK),
        _ => None,
    }
}

fn constant_of_shape(n: &Node<'_>) -> R<Vec<Val>> {
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

/// Numpy matmul shapes; `inner` checks the contracted dims.
fn matmul_dims(a: Option<&[SymDim]>, b: Option<&[SymDim]>) -> R<Option<Vec<SymDim>>> {
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

fn matmul(n: &Node<'_>) -> R<Vec<Val>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    let elem = same_type(&[("A", a), ("B", b)])?;
    numeric(a, "A")?;
    Ok(vec![Val::new(elem, matmul_dims(a.dims(), b.dims())?)])
}

fn matmul_integer(n: &Node<'_>) -> R<Vec<Val>> {
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

fn gemm(n: &Node<'_>) -> R<Vec<Val>> {
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

fn gather(n: &Node<'_>) -> R<Vec<Val>> {
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

fn gather_elements(n: &Node<'_>) -> R<Vec<Val>> {
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

fn gather_nd(n: &Node<'_>) -> R<Vec<Val>> {
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

fn concat(n: &Node<'_>) -> R<Vec<Val>> {
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
fn check_sizes(sizes: &[i64], outputs: usize, dim: &SymDim) -> R<Vec<SymDim>> {
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

fn split(n: &Node<'_>) -> R<Vec<Val>> {
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
fn slice_len(dim: &SymDim, start: i64, end: i64, step: i64) -> SymDim {
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

fn slice(n: &Node<'_>) -> R<Vec<Val>> {
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

fn transpose(n: &Node<'_>) -> R<Vec<Val>> {
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
fn reshape_solve(input: &[SymDim], target: &[SymDim], infer: Option<usize>) -> R<SymDim> {
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

fn reshape(n: &Node<'_>) -> R<Vec<Val>> {
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

fn flatten(n: &Node<'_>) -> R<Vec<Val>> {
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
fn axes_of(n: &Node<'_>, input: usize) -> R<Option<Option<Vec<i64>>>> {
    match n.opt(input) {
        Some(v) => {
            want(v, "axes", &[INT64])?;
            Ok(Some(v.ints()))
        }
        None => Ok(n.ints("axes").map(|a| Some(a.to_vec()))),
    }
}

fn unsqueeze(n: &Node<'_>) -> R<Vec<Val>> {
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

fn squeeze(n: &Node<'_>) -> R<Vec<Val>> {
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

fn expand(n: &Node<'_>) -> R<Vec<Val>> {
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

fn tile(n: &Node<'_>) -> R<Vec<Val>> {
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

fn shape(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let Some(d) = x.dims() else { return Ok(vec![Val::new(INT64, Some(vec![SymDim::Unknown]))]) };
    let r = i64::try_from(d.len()).unwrap_or(i64::MAX);
    let clamp = |v: i64| usize::try_from(if v < 0 { v.saturating_add(r) } else { v }.clamp(0, r)).unwrap_or(0);
    let (start, end) = (clamp(n.int("start", 0)), clamp(n.int("end", r)));
    let dims: Vec<SymDim> = d.get(start..end.max(start)).unwrap_or(&[]).to_vec();
    let len = SymDim::Known(i64::try_from(dims.len()).unwrap_or(i64::MAX));
    Ok(vec![Val::with_data(INT64, Some(vec![len]), Some(dims))])
}

fn size(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    let count = x.dims().map_or(SymDim::Unknown, product);
    Ok(vec![Val::with_data(INT64, Some(Vec::new()), Some(vec![count]))])
}

fn range(n: &Node<'_>) -> R<Vec<Val>> {
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

fn softmax(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    want(x, "the input", FLOATS)?;
    if let Some(r) = x.rank() {
        norm_axis(n.int("axis", -1), r)?;
    }
    Ok(vec![Val::new(x.elem, x.dims.clone())])
}

/// Checks a per-feature parameter broadcasts onto `features` without growing it.
fn check_feature_param(what: &str, p: &Val, features: &[SymDim]) -> R<()> {
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

fn layer_norm(n: &Node<'_>) -> R<Vec<Val>> {
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
fn reduced(d: &[SymDim], axes: &[usize], keep: bool) -> Vec<SymDim> {
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

fn reduce(n: &Node<'_>) -> R<Vec<Val>> {
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

fn arg_reduce(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    numeric(x, "the input")?;
    let Some(d) = x.dims() else { return Ok(vec![Val::new(INT64, None)]) };
    let a = norm_axis(n.int("axis", 0), d.len())?;
    Ok(vec![Val::new(INT64, Some(reduced(d, &[a], n.int("keepdims", 1) != 0)))])
}

fn cum_sum(n: &Node<'_>) -> R<Vec<Val>> {
    let (x, axis) = (n.input(0)?, n.input(1)?);
    numeric(x, "the input")?;
    want(axis, "axis", INDEX_TYPES)?;
    if let (Some(r), Some(a)) = (x.rank(), axis.scalar().and_then(SymDim::known)) {
        norm_axis(a, r)?;
    }
    Ok(vec![Val::new(x.elem, x.dims.clone())])
}

fn trilu(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    if let Some(r) = x.rank().filter(|&r| r < 2) {
        return Err(format!("Trilu needs rank 2 or more, got {r}"));
    }
    if let Some(k) = n.opt(1) {
        want(k, "k", &[INT64])?;
    }
    Ok(vec![Val::new(x.elem, x.dims.clone())])
}

// ─── Quantization ────────────────────────────────────────────────────────────────────────────────

fn dynamic_quantize(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    want(x, "x", &[FLOAT])?;
    let scalar = || Some(Vec::new());
    Ok(vec![Val::new(UINT8, x.dims.clone()), Val::new(FLOAT, scalar()), Val::new(UINT8, scalar())])
}

/// Checks a (de)quantization scale's shape: per tensor, per axis or blocked along `axis`.
fn check_quant_scale(x: &Val, scale: &Val, axis: i64, block: i64) -> R<()> {
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

fn dequantize(n: &Node<'_>) -> R<Vec<Val>> {
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

fn quantize(n: &Node<'_>) -> R<Vec<Val>> {
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
fn matmul_nbits(n: &Node<'_>) -> R<Vec<Val>> {
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

// ─── Fused blocks ────────────────────────────────────────────────────────────────────────────────

/// `com.microsoft.SkipLayerNormalization`: LayerNorm(input + skip + bias) over the last dim.
fn skip_layer_norm(n: &Node<'_>) -> R<Vec<Val>> {
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
fn bias_gelu(n: &Node<'_>) -> R<Vec<Val>> {
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
fn same_dim(what: &str, a: &SymDim, b: &SymDim) -> R<SymDim> {
    unify(a, b).ok_or_else(|| format!("{what} differ: {a} vs {b}"))
}

/// Dim `i` of `v`, or unknown.
fn dim(v: &Val, i: usize) -> SymDim {
    v.dims().and_then(|d| d.get(i)).cloned().unwrap_or(SymDim::Unknown)
}

/// `hidden / heads`, refusing a known size that does not divide.
fn per_head(hidden: &SymDim, heads: i64, what: &str) -> R<SymDim> {
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
fn attention(n: &Node<'_>) -> R<Vec<Val>> {
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
fn ms_attention(n: &Node<'_>) -> R<Vec<Val>> {
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
fn ms_multi_head_attention(n: &Node<'_>) -> R<Vec<Val>> {
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
fn ms_group_query_attention(n: &Node<'_>) -> R<Vec<Val>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn dim_proto(d: &str) -> pb::tensor_shape_proto::Dimension {
        let value = match d.parse::<i64>() {
            Ok(n) => DimProto::DimValue(n),
            Err(_) => DimProto::DimParam(d.to_string()),
        };
        pb::tensor_shape_proto::Dimension { value: Some(value), denotation: None }
    }

    fn vi(name: &str, elem: i32, dims: &[&str]) -> pb::ValueInfoProto {
        pb::ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: Some(elem),
                    shape: Some(pb::TensorShapeProto { dim: dims.iter().map(|d| dim_proto(d)).collect() }),
                })),
                denotation: None,
            }),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
        pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(format!("/{op}")),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        }
    }

    fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
        pb::AttributeProto {
            name: Some(name.into()),
            r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
            i: Some(v),
            ..Default::default()
        }
    }

    fn i64_init(name: &str, dims: &[i64], values: &[i64]) -> pb::TensorProto {
        pb::TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(INT64),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        }
    }

    fn f32_init(name: &str, dims: &[i64]) -> pb::TensorProto {
        pb::TensorProto { name: Some(name.into()), dims: dims.to_vec(), data_type: Some(FLOAT), ..Default::default() }
    }

    fn dims_of(map: &HashMap<String, ValueShape>, name: &str) -> String {
        dims_text(map.get(name).and_then(|v| v.dims.as_deref()))
    }

    #[test]
    fn dim_params_parse_and_print_as_linear_expressions() {
        let d = SymDim::from_dim_param("sequence_length + past_sequence_length");
        assert_eq!(d, SymDim::param("past_sequence_length").add(&SymDim::param("sequence_length")));
        assert_eq!(d.to_string(), "past_sequence_length + sequence_length");
        let e = SymDim::from_dim_param("2*n - 1");
        assert_eq!(e.to_string(), "2*n - 1");
        assert_eq!(SymDim::from_dim_param(&e.to_string()), e);
        assert_eq!(SymDim::from_dim_param("seq-len").to_string(), "seq-len");
        assert_eq!(SymDim::from_dim_param("-a + b").to_string(), "-a + b");
        assert_eq!(SymDim::from_dim_param("a b").to_string(), "a b");
        assert_eq!(d.sub(&SymDim::param("sequence_length")), SymDim::param("past_sequence_length"));
        assert_eq!(SymDim::param("x").sub(&SymDim::param("x")), SymDim::Known(0));
        assert_eq!(SymDim::Known(i64::MAX).add(&SymDim::Known(1)), SymDim::Unknown);
        assert_eq!(SymDim::Unknown.to_string(), "?");
    }

    #[test]
    fn mismatching_declared_output_dim_reports_the_node() {
        let graph = pb::GraphProto {
            input: vec![vi("x", FLOAT, &["batch_size", "4"])],
            initializer: vec![f32_init("w", &[4, 8])],
            node: vec![node("MatMul", &["x", "w"], &["y"], vec![])],
            output: vec![vi("y", FLOAT, &["batch_size", "16"])],
            ..Default::default()
        };
        let err = infer_graph(&graph).unwrap_err();
        assert_eq!(err.node_index, 0);
        assert_eq!(err.value, "y");
        assert_eq!(
            err.to_string(),
            "node 0 \"/MatMul\" (MatMul): output \"y\" inferred [batch_size, 8] but declared [batch_size, 16]"
        );
        // A symbolic declared dim must match too.
        let mut graph = graph;
        graph.output = vec![vi("y", FLOAT, &["sequence_length", "8"])];
        assert!(infer_graph(&graph).unwrap_err().message.contains("declared [sequence_length, 8]"));
        graph.output = vec![vi("y", DataType::Float16 as i32, &["batch_size", "8"])];
        assert!(infer_graph(&graph).unwrap_err().message.contains("inferred float but declared float16"));
    }

    #[test]
    fn matmul_with_incompatible_inner_dims() {
        let graph = pb::GraphProto {
            input: vec![vi("x", FLOAT, &["b", "32"])],
            initializer: vec![f32_init("w", &[64, 8])],
            node: vec![node("MatMul", &["x", "w"], &["y"], vec![])],
            ..Default::default()
        };
        let err = infer_graph(&graph).unwrap_err();
        assert_eq!(err.to_string(), "node 0 \"/MatMul\" (MatMul): inner dimensions differ: 32 vs 64");
    }

    #[test]
    fn input_never_produced() {
        let graph = pb::GraphProto {
            input: vec![vi("x", FLOAT, &["2"])],
            node: vec![node("Relu", &["x"], &["a"], vec![]), node("Add", &["a", "ghost"], &["b"], vec![])],
            ..Default::default()
        };
        let err = infer_graph(&graph).unwrap_err();
        assert_eq!((err.node_index, err.op_type.as_str(), err.value.as_str()), (1, "Add", "ghost"));
        assert!(err.to_string().contains("input \"ghost\" is never produced"), "{err}");
        // Optional inputs left empty are fine.
        let graph = pb::GraphProto {
            input: vec![vi("x", FLOAT, &["2"])],
            node: vec![node("Clip", &["x", "", ""], &["y"], vec![])],
            ..Default::default()
        };
        assert!(infer_graph(&graph).is_ok());
    }

    #[test]
    fn concat_on_the_past_axis_is_symbolic() {
        let graph = pb::GraphProto {
            input: vec![
                vi("past", FLOAT, &["batch_size", "4", "past_sequence_length", "8"]),
                vi("new", FLOAT, &["batch_size", "4", "sequence_length", "8"]),
            ],
            node: vec![node("Concat", &["past", "new"], &["present"], vec![int_attr("axis", -2)])],
            output: vec![vi("present", FLOAT, &["batch_size", "4", "sequence_length + past_sequence_length", "8"])],
            ..Default::default()
        };
        let map = infer_graph(&graph).unwrap();
        assert_eq!(dims_of(&map, "present"), "[batch_size, 4, past_sequence_length + sequence_length, 8]");
        // Mismatched non-axis dims are refused.
        let mut bad = graph.clone();
        bad.input[1] = vi("new", FLOAT, &["batch_size", "4", "sequence_length", "16"]);
        assert!(infer_graph(&bad).unwrap_err().message.contains("inputs differ in dimension 3: 8 vs 16"));
    }

    #[test]
    fn shape_gather_range_values_propagate() {
        // positions = Range(total - seq, total, 1): length `sequence_length`.
        let graph = pb::GraphProto {
            input: vec![
                vi("ids", INT64, &["batch_size", "sequence_length"]),
                vi("mask", INT64, &["batch_size", "past_sequence_length + sequence_length"]),
            ],
            initializer: vec![i64_init("one_idx", &[], &[1]), i64_init("one", &[], &[1])],
            node: vec![
                node("Shape", &["mask"], &["ms"], vec![]),
                node("Gather", &["ms", "one_idx"], &["total"], vec![int_attr("axis", 0)]),
                node("Shape", &["ids"], &["is"], vec![]),
                node("Gather", &["is", "one_idx"], &["seq"], vec![]),
                node("Sub", &["total", "seq"], &["past"], vec![]),
                node("Range", &["past", "total", "one"], &["pos"], vec![]),
                node("Range", &["one", "seq", "one"], &["tail"], vec![]),
            ],
            output: vec![vi("pos", INT64, &["sequence_length"])],
            ..Default::default()
        };
        let map = infer_graph(&graph).unwrap();
        assert_eq!(dims_of(&map, "pos"), "[sequence_length]");
        assert_eq!(dims_of(&map, "tail"), "[sequence_length - 1]");
        assert_eq!(dims_of(&map, "total"), "[]");
        // Known limits give a known length, max(ceil((limit - start) / delta), 0).
        let graph = pb::GraphProto {
            initializer: vec![i64_init("s", &[], &[10]), i64_init("l", &[], &[1]), i64_init("d", &[], &[-4])],
            node: vec![
                node("Range", &["s", "l", "d"], &["r"], vec![]),
                node("Range", &["l", "s", "d"], &["e"], vec![]),
            ],
            ..Default::default()
        };
        let map = infer_graph(&graph).unwrap();
        assert_eq!((dims_of(&map, "r"), dims_of(&map, "e")), ("[3]".into(), "[0]".into()));
    }

    #[test]
    fn reshape_with_zero_and_minus_one() {
        let graph = pb::GraphProto {
            input: vec![vi("x", FLOAT, &["batch_size", "sequence_length", "32"])],
            initializer: vec![
                i64_init("split_heads", &[4], &[0, 0, 4, -1]),
                i64_init("merge", &[3], &[0, 0, -1]),
                i64_init("flat", &[2], &[-1, 8]),
                i64_init("bad", &[3], &[0, 0, 5]),
            ],
            node: vec![
                node("Reshape", &["x", "split_heads"], &["h"], vec![]),
                node("Reshape", &["h", "merge"], &["m"], vec![]),
                node("Reshape", &["x", "flat"], &["f"], vec![]),
            ],
            output: vec![vi("m", FLOAT, &["batch_size", "sequence_length", "32"])],
            ..Default::default()
        };
        let map = infer_graph(&graph).unwrap();
        assert_eq!(dims_of(&map, "h"), "[batch_size, sequence_length, 4, 8]");
        assert_eq!(dims_of(&map, "m"), "[batch_size, sequence_length, 32]");
        assert_eq!(dims_of(&map, "f"), "[?, 8]");
        let mut bad = graph.clone();
        bad.node = vec![node("Reshape", &["x", "bad"], &["y"], vec![])];
        bad.output.clear();
        let mut known = bad.clone();
        known.input = vec![vi("x", FLOAT, &["2", "3", "32"])];
        assert!(infer_graph(&known).unwrap_err().message.contains("cannot reshape"));
        // allowzero keeps a literal 0.
        let graph = pb::GraphProto {
            input: vec![vi("x", FLOAT, &["0", "4"])],
            initializer: vec![i64_init("s", &[2], &[0, 4])],
            node: vec![node("Reshape", &["x", "s"], &["y"], vec![int_attr("allowzero", 1)])],
            ..Default::default()
        };
        assert_eq!(dims_of(&infer_graph(&graph).unwrap(), "y"), "[0, 4]");
    }

    fn ints_attr(name: &str, v: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: Some(name.into()),
            r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn slice_split_squeeze_transpose_follow_the_spec() {
        let graph = pb::GraphProto {
            input: vec![vi("x", FLOAT, &["batch_size", "sequence_length", "10"])],
            initializer: vec![
                i64_init("from1", &[1], &[1]),
                i64_init("to_end", &[1], &[i64::MAX]),
                i64_init("last", &[1], &[-1]),
                i64_init("ax1", &[1], &[1]),
                i64_init("ax2", &[1], &[2]),
                i64_init("s8", &[1], &[8]),
                i64_init("e1", &[1], &[1]),
                i64_init("m3", &[1], &[-3]),
                i64_init("axes", &[2], &[-1, 0]),
                i64_init("neg", &[4], &[-5, 1, 1, 1]),
            ],
            node: vec![
                node("Slice", &["x", "from1", "to_end", "ax1"], &["tail"], vec![]),
                node("Slice", &["x", "last", "to_end", "ax1"], &["last_row"], vec![]),
                node("Slice", &["x", "s8", "e1", "ax2", "m3"], &["back"], vec![]),
                node("Split", &["x"], &["p0", "p1", "p2"], vec![int_attr("axis", 2), int_attr("num_outputs", 3)]),
                node("Unsqueeze", &["x", "axes"], &["u"], vec![]),
                node("Squeeze", &["last_row", "ax1"], &["sq"], vec![]),
                node("Transpose", &["x"], &["t"], vec![ints_attr("perm", &[2, 0, 1])]),
            ],
            ..Default::default()
        };
        let map = infer_graph(&graph).unwrap();
        assert_eq!(dims_of(&map, "tail"), "[batch_size, sequence_length - 1, 10]");
        assert_eq!(dims_of(&map, "last_row"), "[batch_size, 1, 10]");
        assert_eq!(dims_of(&map, "back"), "[batch_size, sequence_length, 3]");
        assert_eq!(
            (dims_of(&map, "p0"), dims_of(&map, "p2")),
            ("[batch_size, sequence_length, 4]".into(), "[batch_size, sequence_length, 2]".into())
        );
        assert_eq!(dims_of(&map, "u"), "[1, batch_size, sequence_length, 10, 1]");
        assert_eq!(dims_of(&map, "sq"), "[batch_size, 10]");
        assert_eq!(dims_of(&map, "t"), "[10, batch_size, sequence_length]");
        let mut bad = graph.clone();
        bad.node = vec![node("Squeeze", &["x", "ax2"], &["y"], vec![])];
        assert!(infer_graph(&bad).unwrap_err().message.contains("cannot squeeze axis 2 of size 10"));
        bad.node = vec![node("Split", &["x"], &["a", "b", "c"], vec![int_attr("axis", 2)])];
        assert!(infer_graph(&bad).unwrap_err().message.contains("does not split into 3 equal parts"));
        bad.node = vec![node("Expand", &["x", "last"], &["y"], vec![])];
        assert!(infer_graph(&bad).unwrap_err().message.contains("dimensions 10 and -1 do not broadcast"));
        bad.node = vec![node("Expand", &["x", "neg"], &["y"], vec![])];
        assert!(infer_graph(&bad).unwrap_err().message.contains("negative dimension: [-5, batch_size"));
    }

    #[test]
    fn type_checks_and_unsupported_ops() {
        let graph = pb::GraphProto {
            input: vec![vi("x", FLOAT, &["2", "3"]), vi("i", FLOAT, &["2"])],
            node: vec![node("Gather", &["x", "i"], &["y"], vec![])],
            ..Default::default()
        };
        assert!(infer_graph(&graph).unwrap_err().message.contains("indices must be int32 or int64"));
        let graph = pb::GraphProto {
            input: vec![vi("c", FLOAT, &["2"]), vi("x", FLOAT, &["2"])],
            node: vec![node("Where", &["c", "x", "x"], &["y"], vec![])],
            ..Default::default()
        };
        assert!(infer_graph(&graph).unwrap_err().message.contains("condition must be bool"));
        let graph = pb::GraphProto {
            input: vec![vi("x", FLOAT, &["2"])],
            node: vec![node("Frobnicate", &["x"], &["y"], vec![])],
            ..Default::default()
        };
        assert!(infer_graph(&graph).unwrap_err().message.contains("unsupported op"));
        let graph = pb::GraphProto { output: vec![vi("nothing", FLOAT, &["2"])], ..Default::default() };
        assert!(infer_graph(&graph).unwrap_err().to_string().starts_with("graph: output \"nothing\""));
    }

    #[test]
    fn hostile_graphs_do_not_blow_up() {
        // Gather of a value by itself doubles the rank each time: capped, not allocated.
        let mut nodes = vec![node("Cast", &["x"], &["v0"], vec![int_attr("to", INT64.into())])];
        for i in 0..40 {
            let (a, b) = (format!("v{i}"), format!("v{}", i + 1));
            nodes.push(node("Gather", &[&a, &a], &[&b], vec![]));
        }
        let graph = pb::GraphProto { input: vec![vi("x", FLOAT, &["2", "2", "2"])], node: nodes, ..Default::default() };
        assert!(infer_graph(&graph).is_ok());
        // A huge declared Range or ConstantOfShape is a dim, not an allocation.
        let graph = pb::GraphProto {
            initializer: vec![i64_init("z", &[], &[0]), i64_init("big", &[], &[i64::MAX]), i64_init("one", &[], &[1])],
            node: vec![
                node("Range", &["z", "big", "one"], &["r"], vec![]),
                node("Shape", &["r"], &["s"], vec![]),
                node("ConstantOfShape", &["s"], &["c"], vec![]),
                node("Reshape", &["c", "s"], &["d"], vec![]),
            ],
            ..Default::default()
        };
        let map = infer_graph(&graph).unwrap();
        assert_eq!(dims_of(&map, "d"), format!("[{}]", i64::MAX));
    }

    /// Real exports mutated (attributes, initializer values and dims, declared dims, rewired and
    /// omitted inputs, dropped nodes, swapped op types) give Ok or a Disagreement, never a panic or
    /// an arithmetic overflow.
    #[test]
    fn mutated_exports_never_panic() {
        use crate::gpt2::{GraphOptions, Precision, Quantize, Target};
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let tmp = tempfile::tempdir().unwrap();
        let mut graphs = Vec::new();
        for (i, (model, quantize, target, opset)) in [
            ("tiny-default", Quantize::Int8, Target::Portable, 18),
            ("tiny-default", Quantize::Int4, Target::Ort, 23),
            ("tiny-default", Quantize::Int4, Target::Portable, 21),
            ("heads/double-heads-mean", Quantize::None, Target::Portable, 14),
        ]
        .into_iter()
        .enumerate()
        {
            let precision = Precision { quantize, target, ..Default::default() };
            let options =
                crate::ExportOptions { graph: GraphOptions { opset, precision, task: None }, ..Default::default() };
            let out = tmp.path().join(format!("m{i}"));
            crate::export(&models.join(model), &out, &options, &mut |_| {}).unwrap();
            let bytes = std::fs::read(out.join(crate::export::MODEL_FILE)).unwrap();
            graphs.push(gpt2c_proto::decode_model(&bytes).unwrap().graph.unwrap());
        }
        let mut state = 7u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let odd = [0i64, 1, -1, 2, -2, 3, 64, -100, 1 << 40, i32::MAX as i64, i64::MAX, i64::MIN];
        let params = ["a - a", "2*x", "-", "+", "x*y", "9223372036854775807 + a", "a + 9223372036854775807 + 1", ""];
        let (mut ok, mut refused) = (0, 0);
        for round in 0..3000 {
            let mut g = graphs[next() % graphs.len()].clone();
            for _ in 0..1 + next() % 4 {
                let i = next() % g.node.len().max(1);
                let pick = next();
                match (next() % 8, g.node.get(pick % g.node.len().max(1)).and_then(|n| n.output.first().cloned())) {
                    (0, _) => g.node.get_mut(i).into_iter().flat_map(|n| &mut n.attribute).for_each(|a| {
                        a.i = a.i.map(|_| odd[pick % odd.len()]);
                        a.ints.iter_mut().for_each(|v| *v = odd[(pick / 3) % odd.len()]);
                    }),
                    (1, _) if i < g.node.len() => drop(g.node.remove(i)),
                    (2, Some(other)) => g.node.get_mut(i).into_iter().for_each(|n| n.input.insert(0, other.clone())),
                    (3, _) => g.initializer.iter_mut().filter(|t| t.data_type == Some(INT64)).for_each(|t| {
                        let len = t.raw_data.as_ref().map_or(0, Vec::len) / 8;
                        t.raw_data = Some(odd[pick % odd.len()].to_le_bytes().repeat(len));
                    }),
                    (4, _) => g.initializer.iter_mut().step_by(1 + pick % 7).for_each(|t| {
                        t.dims.iter_mut().for_each(|d| *d = odd[pick % odd.len()]);
                    }),
                    (5, _) => g
                        .node
                        .get_mut(i)
                        .into_iter()
                        .for_each(|n| n.input.insert(pick % (n.input.len() + 1), String::new())),
                    (6, _) => {
                        for input in &mut g.input {
                            if let Some(pb::type_proto::Value::TensorType(t)) =
                                input.r#type.as_mut().and_then(|t| t.value.as_mut())
                            {
                                let dims = t.shape.as_mut().map(|s| &mut s.dim);
                                if let Some(d) = dims.and_then(|d| d.first_mut()) {
                                    d.value = Some(DimProto::DimParam(params[pick % params.len()].into()));
                                }
                            }
                        }
                    }
                    _ => {
                        let op = g.node.get(pick % g.node.len().max(1)).map(|n| n.op_type.clone());
                        if let (Some(n), Some(op)) = (g.node.get_mut(i), op) {
                            n.op_type = op;
                            n.output.push(format!("extra{round}"));
                        }
                    }
                }
            }
            match infer_graph(&g) {
                Ok(_) => ok += 1,
                Err(_) => refused += 1,
            }
        }
        assert!(ok > 0 && refused > 0, "{ok} accepted, {refused} refused");
    }

    /// Exports real graphs in every format gpt2c writes and checks inference reproduces the declared
    /// outputs exactly.
    #[test]
    fn exported_graphs_infer_to_their_declared_outputs() {
        use crate::gpt2::{DEFAULT_OPSET, FloatType, GraphOptions, Precision, Quantize, Target, Task};
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let tmp = tempfile::tempdir().unwrap();
        let mut cases: Vec<(&str, Precision, Option<Task>, Option<i64>)> = Vec::new();
        for target in [Target::Portable, Target::Ort] {
            for quantize in [Quantize::None, Quantize::Int8, Quantize::Int8Weights, Quantize::Int4] {
                cases.push(("tiny-default", Precision { quantize, target, ..Default::default() }, None, None));
            }
            for io_dtype in [FloatType::Fp32, FloatType::Fp16] {
                let p = Precision { dtype: FloatType::Fp16, io_dtype, target, ..Default::default() };
                cases.push(("tiny-default", p, None, None));
            }
            for task in [Task::TextGeneration, Task::FeatureExtraction, Task::FeatureExtractionWithPast] {
                cases.push(("tiny-default", Precision { target, ..Default::default() }, Some(task), None));
            }
            for head in [
                "heads/base",
                "heads/cross",
                "heads/seq-cls",
                "heads/seq-cls-nopad",
                "heads/tok-cls",
                "heads/qa",
                "heads/double-heads",
                "heads/double-heads-last",
                "heads/double-heads-mean",
                "heads/act-gelu_10",
                "heads/act-mish",
                "heads/act-leaky_relu",
                "heads/act-quick_gelu",
                "heads/act-relu2",
                "tiny-scaled-attn",
                "tiny-untied",
            ] {
                cases.push((head, Precision { target, ..Default::default() }, None, None));
            }
            let q = Precision { quantize: Quantize::Int8, target, ..Default::default() };
            cases.push(("heads/cross", q.clone(), None, None));
            cases.push(("heads/double-heads", q, None, None));
        }
        for opset in [14, 16] {
            cases.push(("tiny-default", Precision::default(), None, Some(opset)));
            let q = Precision { quantize: Quantize::Int8, ..Default::default() };
            cases.push(("heads/double-heads-mean", q, None, Some(opset)));
        }
        let skip = Precision { quantize: Quantize::Int4, skip: vec![crate::gpt2::Part::Attn], ..Default::default() };
        cases.push(("tiny-default", skip, None, None));

        let mut failures = Vec::new();
        for (i, (model, precision, task, opset)) in cases.into_iter().enumerate() {
            let label = format!("{model} {precision:?} {task:?} opset {opset:?}");
            let opset = opset.unwrap_or(DEFAULT_OPSET.max(precision.min_opset()));
            let options = crate::ExportOptions { graph: GraphOptions { opset, precision, task }, ..Default::default() };
            let out = tmp.path().join(format!("case{i}"));
            crate::export(&models.join(model), &out, &options, &mut |_| {}).unwrap_or_else(|e| panic!("{label}: {e}"));
            let bytes = std::fs::read(out.join(crate::export::MODEL_FILE)).unwrap();
            let model = gpt2c_proto::decode_model(&bytes).unwrap();
            let graph = model.graph.unwrap();
            if let Err(e) = infer_graph(&graph) {
                failures.push(format!("{label}: {e}"));
                continue;
            }
            // Without the declared output types, nothing can fill in what inference left unknown.
            let mut bare = graph.clone();
            bare.output.iter_mut().for_each(|o| o.r#type = None);
            bare.value_info.clear();
            let inferred = match infer_graph(&bare) {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("{label} (outputs undeclared): {e}"));
                    continue;
                }
            };
            for o in &graph.output {
                let declared = declared(o.r#type.as_ref()).unwrap();
                let got = inferred.get(o.name()).unwrap();
                if *got != declared {
                    failures.push(format!("{label}: output {} inferred {got} declared {declared}", o.name()));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
