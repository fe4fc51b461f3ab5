//! Shape and element-type inference over a whole ONNX graph, for `gpt2c verify`.
//!
//! Independent of the compiler's IR on purpose: verify re-derives every value's type from the
//! ONNX operator specifications, so a mistake in the graph builder's own bookkeeping cannot hide
//! itself. Dims are linear expressions over the graph's `dim_param`s (`past_sequence_length +
//! sequence_length`), and small integer tensors are followed by value, because the graphs compute
//! reshape targets and position ranges from `Shape`. Input files may be hostile: sizes are
//! checked, never trusted, arithmetic is checked, and nothing allocates by a declared size.

use std::collections::HashMap;
use std::fmt;

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

mod dim;
pub mod ops;
#[cfg(test)]
mod tests;

use dim::*;
pub use dim::{SymDim, SymExpr};

fn type_name(t: i32) -> String {
    match DataType::try_from(t) {
        Ok(DataType::Undefined) => "undefined".into(),
        Ok(d) => d.as_str_name().to_lowercase(),
        Err(_) => format!("element type {t}"),
    }
}

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

/// A value's type and, for small integer tensors, its elements (row-major).
#[derive(Clone, Debug)]
pub(crate) struct Val {
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
pub fn declared(ty: Option<&pb::TypeProto>) -> Option<ValueShape> {
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
        let outputs = ops::infer_node(&n).map_err(|m| fail(first_output, m))?;
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
pub(crate) struct Node<'a> {
    proto: &'a pb::NodeProto,
    inputs: Vec<Option<&'a Val>>,
}

pub(crate) type R<T> = Result<T, String>;

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

/// All present inputs, in order; `min` of them required.
fn present<'a>(n: &Node<'a>, min: usize) -> R<Vec<&'a Val>> {
    let vals: Vec<&Val> = n.inputs.iter().flatten().copied().collect();
    if vals.len() < min || n.inputs.len() != vals.len() {
        return Err(format!("takes {min} or more inputs, none of them omitted; got {}", n.inputs.len()));
    }
    Ok(vals)
}
