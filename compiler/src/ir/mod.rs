//! A small typed graph IR: values with element types and symbolic shapes, nodes
//! over typed ops, and constant tensors that may point into a checkpoint.
//!
//! Graphs are made with [`builder::GraphBuilder`], which checks every wiring
//! as it happens; nodes are kept in creation order, which is a topological
//! order by construction. [`crate::onnx`] turns a graph into ONNX.

pub mod builder;
pub mod ops;
pub mod tensor;
pub mod types;

pub use builder::{GraphBuilder, GraphError};
pub use ops::{AttrValue, Op, SearchKind, Subgraph};
pub use tensor::{Encoding, SharedBytes, Tensor, TensorData};
pub use types::{DType, Dim, Shape, ValueType};

/// Handle of a value in a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(usize);

/// A named, typed value.
#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub ty: ValueType,
}

/// One operator application.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// A constant value of the graph (weights and small constants alike).
#[derive(Clone, Debug)]
pub struct Initializer {
    pub value: ValueId,
    pub tensor: Tensor,
    /// A model weight (from the checkpoint), as opposed to a constant the graph needs.
    pub is_weight: bool,
}

/// A finished graph.
#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    /// The default-domain opset every node is valid in.
    pub opset: i64,
    values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    pub initializers: Vec<Initializer>,
}

impl Graph {
    pub fn value(&self, id: ValueId) -> &Value {
        // ok: ValueIds are only minted by the builder of this graph.
        &self.values[id.0]
    }

    /// Number of model parameters (elements of weight initializers).
    pub fn parameter_count(&self) -> usize {
        self.initializers.iter().filter(|i| i.is_weight).map(|i| i.tensor.numel()).sum()
    }

    /// Bytes of initializer data as written.
    pub fn initializer_bytes(&self) -> usize {
        self.initializers.iter().map(|i| i.tensor.byte_len()).sum()
    }

    /// Takes the initializers out, with their names: a graph that becomes a node's subgraph reads
    /// them from the outer graph, which holds them instead.
    pub fn take_initializers(&mut self) -> Vec<(String, Initializer)> {
        std::mem::take(&mut self.initializers).into_iter().map(|i| (self.value(i.value).name.clone(), i)).collect()
    }
}
