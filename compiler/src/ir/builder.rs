//! `GraphBuilder`: wires typed values into a [`Graph`], checking as it goes.
//!
//! Every op helper takes value handles and returns value handles; the builder
//! checks arity, element types and shapes with [`ops::infer`], rejects
//! duplicate names, reuses identical constants, and names nodes after the
//! current scope, which mirrors the checkpoint's weight names (`h.3.attn.c_attn`)
//! so a graph reads against `modeling_gpt2.py`.

use std::collections::{HashMap, HashSet};

use super::ops::{self, InferInput, Op};
use super::tensor::Tensor;
use super::types::{DType, Dim, ValueType};
use super::{Graph, Initializer, Node, Value, ValueId};

/// A wiring mistake, with the node (or value) it happened at.
#[derive(Debug, thiserror::Error)]
#[error("graph construction failed at `{at}`: {message}")]
pub struct GraphError {
    pub at: String,
    pub message: String,
}

type Result<T> = std::result::Result<T, GraphError>;

/// Builds a [`Graph`]; see the module docs.
pub struct GraphBuilder {
    graph: Graph,
    names: HashSet<String>,
    /// Contents of small int64 tensors, as symbolic dims.
    known: HashMap<ValueId, Vec<Dim>>,
    constants: HashMap<(DType, Vec<usize>, Vec<u8>), ValueId>,
    scope: Vec<String>,
}

impl GraphBuilder {
    pub fn new(name: &str, opset: i64) -> Self {
        GraphBuilder {
            graph: Graph {
                name: name.to_string(),
                opset,
                values: Vec::new(),
                nodes: Vec::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                initializers: Vec::new(),
            },
            names: HashSet::new(),
            known: HashMap::new(),
            constants: HashMap::new(),
            scope: Vec::new(),
        }
    }

    pub fn opset(&self) -> i64 {
        self.graph.opset
    }

    pub fn ty(&self, v: ValueId) -> &ValueType {
        &self.graph.value(v).ty
    }

    /// The dims of `v`'s shape.
    pub fn shape(&self, v: ValueId) -> &[Dim] {
        &self.graph.value(v).ty.shape
    }

    fn err(&self, at: &str, message: impl Into<String>) -> GraphError {
        GraphError { at: at.to_string(), message: message.into() }
    }

    fn new_value(&mut self, name: String, ty: ValueType) -> Result<ValueId> {
        if !self.names.insert(name.clone()) {
            return Err(self.err(&name, "a value with this name already exists"));
        }
        self.graph.values.push(Value { name, ty });
        Ok(ValueId(self.graph.values.len() - 1))
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, ty: ValueType) -> Result<ValueId> {
        let v = self.new_value(name.to_string(), ty)?;
        self.graph.inputs.push(v);
        Ok(v)
    }

    /// Adds a weight, named as in the checkpoint.
    pub fn initializer(&mut self, name: &str, tensor: Tensor) -> Result<ValueId> {
        self.add_initializer(name, tensor, true)
    }

    /// Takes over an initializer of another graph under its name (a subgraph's weights, read
    /// from this graph's scope).
    pub fn adopt_initializer(&mut self, name: &str, init: super::Initializer) -> Result<ValueId> {
        self.add_initializer(name, init.tensor, init.is_weight)
    }

    fn add_initializer(&mut self, name: &str, tensor: Tensor, is_weight: bool) -> Result<ValueId> {
        let shape = tensor.dims.iter().map(|&d| Dim::fixed(d as i64)).collect();
        let v = self.new_value(name.to_string(), ValueType::new(tensor.dtype, shape))?;
        self.remember_contents(v, &tensor);
        self.graph.initializers.push(Initializer { value: v, tensor, is_weight });
        Ok(v)
    }

    fn remember_contents(&mut self, v: ValueId, tensor: &Tensor) {
        if tensor.dtype != DType::I64 || tensor.dims.len() > 1 {
            return;
        }
        if let Some(bytes) = tensor.owned_bytes() {
            let dims = bytes
                .chunks_exact(8)
                .map(|c| Dim::fixed(i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])))
                .collect();
            self.known.insert(v, dims);
        }
    }

    /// A constant, shared with any identical constant made before.
    pub fn constant(&mut self, tensor: Tensor) -> Result<ValueId> {
        let key = tensor.owned_bytes().map(|b| (tensor.dtype, tensor.dims.clone(), b.to_vec()));
        if let Some(v) = key.as_ref().and_then(|k| self.constants.get(k)) {
            return Ok(*v);
        }
        // Names taken by initializers adopted from a subgraph are skipped.
        let mut k = self.constants.len();
        let mut name = format!("const.{}.{k}", tensor.dtype);
        while self.names.contains(&name) {
            k += 1;
            name = format!("const.{}.{k}", tensor.dtype);
        }
        let v = self.add_initializer(&name, tensor, false)?;
        if let Some(k) = key {
            self.constants.insert(k, v);
        }
        Ok(v)
    }

    /// A 1-D int64 constant.
    pub fn const_i64(&mut self, values: &[i64]) -> Result<ValueId> {
        let t = Tensor::from_i64(vec![values.len()], values).ok_or_else(|| self.err("const", "bad i64 constant"))?;
        self.constant(t)
    }

    /// A 0-D int64 constant.
    pub fn scalar_i64(&mut self, value: i64) -> Result<ValueId> {
        let t = Tensor::from_i64(vec![], &[value]).ok_or_else(|| self.err("const", "bad i64 scalar"))?;
        self.constant(t)
    }

    /// A 0-D float constant of the given float type.
    pub fn scalar_f(&mut self, dtype: DType, value: f32) -> Result<ValueId> {
        let bytes = match dtype {
            DType::F32 => value.to_le_bytes().to_vec(),
            DType::F16 => half::f16::from_f32(value).to_le_bytes().to_vec(),
            DType::BF16 => half::bf16::from_f32(value).to_le_bytes().to_vec(),
            DType::F64 => f64::from(value).to_le_bytes().to_vec(),
            other => return Err(self.err("const", format!("{other} is not a float type"))),
        };
        let t = Tensor::from_bytes(dtype, vec![], bytes).ok_or_else(|| self.err("const", "bad float scalar"))?;
        self.constant(t)
    }

    /// Runs `f` with `name` appended to the scope (`h.3` then `attn` gives `h.3.attn`).
    pub fn scoped<T, E>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.scope.push(name.to_string());
        let out = f(self);
        self.scope.pop();
        out
    }

    /// The current scope as a dotted path.
    pub fn scope_path(&self) -> String {
        self.scope.join(".")
    }

    fn node_name(&self, op_type: &str) -> String {
        let base =
            if self.scope.is_empty() { format!("/{op_type}") } else { format!("{}/{op_type}", self.scope_path()) };
        let mut name = base.clone();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    /// Wires `op` over `inputs`, returning its outputs.
    pub fn node(&mut self, op: Op, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        let name = self.node_name(op.op_type());
        let opset = if op.domain().is_empty() { self.graph.opset } else { 1 };
        if opset < op.min_opset() || opset > op.max_opset() {
            return Err(self.err(&name, format!("this form of {} is not valid in opset {opset}", op.op_type())));
        }
        let infer_inputs: Vec<InferInput<'_>> = inputs
            .iter()
            .map(|&v| InferInput { ty: &self.graph.value(v).ty, known: self.known.get(&v).map(Vec::as_slice) })
            .collect();
        let inferred = ops::infer(&op, &infer_inputs).map_err(|m| self.err(&name, m))?;
        // Node names share the value namespace so that they stay unique too.
        self.names.insert(name.clone());
        let single = inferred.len() == 1;
        let mut outputs = Vec::with_capacity(inferred.len());
        for (i, (ty, known)) in inferred.into_iter().enumerate() {
            let value_name = if single { format!("{name}_output") } else { format!("{name}_output_{i}") };
            let v = self.new_value(value_name, ty)?;
            if let Some(k) = known {
                self.known.insert(v, k);
            }
            outputs.push(v);
        }
        self.graph.nodes.push(Node { name, op, inputs: inputs.to_vec(), outputs: outputs.clone() });
        Ok(outputs)
    }

    /// Wires a single-output op.
    pub fn node1(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        let name = op.op_type();
        let outs = self.node(op, inputs)?;
        match outs.as_slice() {
            [v] => Ok(*v),
            _ => Err(self.err(name, "expected exactly one output")),
        }
    }

    /// Marks `v` as a graph output called `name`, checking it has the declared type.
    pub fn output(&mut self, v: ValueId, name: &str, declared: &ValueType) -> Result<()> {
        let actual = &self.graph.value(v).ty;
        if actual != declared {
            return Err(self.err(name, format!("the graph computes {actual}, the contract declares {declared}")));
        }
        let produced_here = self.graph.nodes.iter().any(|n| n.outputs.contains(&v));
        let v = if produced_here && !self.graph.outputs.contains(&v) { v } else { self.identity(v)? };
        if self.graph.value(v).name != name {
            if !self.names.insert(name.to_string()) {
                return Err(self.err(name, "a value with this name already exists"));
            }
            let old = std::mem::replace(&mut self.graph.values[v.0].name, name.to_string());
            self.names.remove(&old);
        }
        self.graph.outputs.push(v);
        Ok(())
    }

    pub fn finish(self) -> Graph {
        self.graph
    }

    // Typed op helpers.

    pub fn add(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::Add, &[a, b])
    }
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::Sub, &[a, b])
    }
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::Mul, &[a, b])
    }
    pub fn div(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::Div, &[a, b])
    }
    pub fn pow(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::Pow, &[a, b])
    }
    pub fn and(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::And, &[a, b])
    }
    pub fn less(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::Less, &[a, b])
    }
    pub fn where_(&mut self, cond: ValueId, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::Where, &[cond, a, b])
    }
    pub fn unary(&mut self, op: Op, x: ValueId) -> Result<ValueId> {
        self.node1(op, &[x])
    }
    pub fn identity(&mut self, x: ValueId) -> Result<ValueId> {
        self.node1(Op::Identity, &[x])
    }
    pub fn cast(&mut self, x: ValueId, to: DType) -> Result<ValueId> {
        self.node1(Op::Cast { to }, &[x])
    }
    pub fn matmul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::MatMul, &[a, b])
    }
    pub fn gather(&mut self, data: ValueId, indices: ValueId, axis: i64) -> Result<ValueId> {
        self.node1(Op::Gather { axis }, &[data, indices])
    }
    pub fn concat(&mut self, inputs: &[ValueId], axis: i64) -> Result<ValueId> {
        self.node1(Op::Concat { axis }, inputs)
    }
    pub fn transpose(&mut self, x: ValueId, perm: &[i64]) -> Result<ValueId> {
        self.node1(Op::Transpose { perm: perm.to_vec() }, &[x])
    }
    pub fn shape_of(&mut self, x: ValueId) -> Result<ValueId> {
        self.node1(Op::Shape, &[x])
    }
    pub fn softmax(&mut self, x: ValueId, axis: i64) -> Result<ValueId> {
        self.node1(Op::Softmax { axis }, &[x])
    }
    pub fn range(&mut self, start: ValueId, limit: ValueId, delta: ValueId) -> Result<ValueId> {
        self.node1(Op::Range, &[start, limit, delta])
    }

    /// Splits `x` along `axis` into pieces of the given sizes.
    pub fn split(&mut self, x: ValueId, axis: i64, sizes: &[i64]) -> Result<Vec<ValueId>> {
        let sizes_v = self.const_i64(sizes)?;
        self.node(Op::Split { axis, outputs: sizes.len() }, &[x, sizes_v])
    }

    /// Reshapes to a constant target (0 copies the input dim, -1 infers one dim).
    pub fn reshape(&mut self, x: ValueId, target: &[i64]) -> Result<ValueId> {
        let t = self.const_i64(target)?;
        self.node1(Op::Reshape, &[x, t])
    }

    pub fn unsqueeze(&mut self, x: ValueId, axes: &[i64]) -> Result<ValueId> {
        let a = self.const_i64(axes)?;
        self.node1(Op::Unsqueeze, &[x, a])
    }

    /// Dimension `axis` of `x` as an int64 scalar.
    pub fn dim_of(&mut self, x: ValueId, axis: i64) -> Result<ValueId> {
        let shape = self.shape_of(x)?;
        let index = self.scalar_i64(axis)?;
        self.gather(shape, index, 0)
    }

    /// LayerNorm over the last axis: `(x - mean) / sqrt(var + eps) * scale + bias`.
    /// One `LayerNormalization` node from opset 17; before that, its decomposition.
    pub fn layer_norm(&mut self, x: ValueId, scale: ValueId, bias: ValueId, epsilon: f32) -> Result<ValueId> {
        if self.opset() >= 17 {
            return self.node1(Op::LayerNormalization { axis: -1, epsilon }, &[x, scale, bias]);
        }
        let dtype = self.ty(x).dtype;
        let mean = self.reduce_mean_last(x)?;
        let centered = self.sub(x, mean)?;
        let squared = self.mul(centered, centered)?;
        let var = self.reduce_mean_last(squared)?;
        let eps = self.scalar_f(dtype, epsilon)?;
        let var_eps = self.add(var, eps)?;
        let std = self.unary(Op::Sqrt, var_eps)?;
        let normed = self.div(centered, std)?;
        let scaled = self.mul(normed, scale)?;
        self.add(scaled, bias)
    }

    /// Mean over the last axis, keeping it (attribute axes before opset 18, input after).
    pub fn reduce_mean_last(&mut self, x: ValueId) -> Result<ValueId> {
        self.reduce(false, x, &[-1], true)
    }

    /// ReduceMean (`max` false) or ReduceMax over `axes`, in the form the opset takes.
    pub fn reduce(&mut self, max: bool, x: ValueId, axes: &[i64], keepdims: bool) -> Result<ValueId> {
        let (attr, input) =
            if self.opset() >= 18 { (None, Some(self.const_i64(axes)?)) } else { (Some(axes.to_vec()), None) };
        let op = if max { Op::ReduceMax { axes: attr, keepdims } } else { Op::ReduceMean { axes: attr, keepdims } };
        let inputs: Vec<ValueId> = std::iter::once(x).chain(input).collect();
        self.node1(op, &inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_input(b: &mut GraphBuilder, name: &str, dims: &[Dim]) -> ValueId {
        b.input(name, ValueType::new(DType::F32, dims.to_vec())).unwrap()
    }

    #[test]
    fn nodes_are_named_after_scopes_and_unique() {
        let mut b = GraphBuilder::new("g", 18);
        let x = f32_input(&mut b, "x", &[Dim::sym("n"), Dim::fixed(4)]);
        let y = b.scoped("h.0", |b| b.scoped("attn", |b| b.add(x, x))).unwrap();
        let z = b.scoped("h.0", |b| b.scoped("attn", |b| b.add(y, x))).unwrap();
        let g = b.finish();
        assert_eq!(g.nodes[0].name, "h.0.attn/Add");
        assert_eq!(g.nodes[1].name, "h.0.attn/Add_1");
        assert_eq!(g.value(z).name, "h.0.attn/Add_1_output");
    }

    #[test]
    fn identical_constants_are_shared() {
        let mut b = GraphBuilder::new("g", 18);
        let a = b.const_i64(&[0, 2, 1, 3]).unwrap();
        let c = b.const_i64(&[0, 2, 1, 3]).unwrap();
        let d = b.const_i64(&[0, 1]).unwrap();
        assert_eq!(a, c);
        assert_ne!(a, d);
        assert_eq!(b.finish().initializers.len(), 2);
    }

    #[test]
    fn duplicate_names_and_bad_wiring_are_rejected() {
        let mut b = GraphBuilder::new("g", 18);
        let x = f32_input(&mut b, "x", &[Dim::fixed(3)]);
        assert!(b.input("x", ValueType::new(DType::F32, vec![])).is_err());
        let i = b.input("i", ValueType::new(DType::I64, vec![Dim::fixed(3)])).unwrap();
        let err = b.add(x, i).unwrap_err();
        assert!(err.message.contains("share an element type"), "{err}");
    }

    #[test]
    fn outputs_must_match_their_declared_type() {
        let mut b = GraphBuilder::new("g", 18);
        let x = f32_input(&mut b, "x", &[Dim::sym("n")]);
        let y = b.unary(Op::Tanh, x).unwrap();
        assert!(b.output(y, "y", &ValueType::new(DType::F32, vec![Dim::sym("m")])).is_err());
        b.output(y, "y", &ValueType::new(DType::F32, vec![Dim::sym("n")])).unwrap();
        // An input re-exported as an output goes through an Identity.
        b.output(x, "x_out", &ValueType::new(DType::F32, vec![Dim::sym("n")])).unwrap();
        let g = b.finish();
        assert_eq!(g.value(g.outputs[0]).name, "y");
        assert_eq!(g.nodes.last().unwrap().op, Op::Identity);
    }

    #[test]
    fn layer_norm_decomposes_before_opset_17() {
        for (opset, nodes) in [(18, 1), (17, 1), (16, 9)] {
            let mut b = GraphBuilder::new("g", opset);
            let x = f32_input(&mut b, "x", &[Dim::sym("n"), Dim::fixed(4)]);
            let s = f32_input(&mut b, "s", &[Dim::fixed(4)]);
            let c = f32_input(&mut b, "c", &[Dim::fixed(4)]);
            let y = b.layer_norm(x, s, c, 1e-5).unwrap();
            assert_eq!(b.ty(y), b.ty(x));
            assert_eq!(b.finish().nodes.len(), nodes, "opset {opset}");
        }
    }
}
