//! The operators the IR can express and their ONNX attributes; [`infer`] holds the type
//! inference of each.

mod infer;

pub use infer::{InferInput, Inferred, broadcast_shapes, infer};

use super::types::DType;

/// Which of ONNX Runtime's generation operators a [`Op::Search`] node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchKind {
    Greedy,
    Beam,
    Sampling,
}

impl SearchKind {
    /// The ONNX Runtime operator.
    pub fn op_type(self) -> &'static str {
        match self {
            SearchKind::Greedy => "GreedySearch",
            SearchKind::Beam => "BeamSearch",
            SearchKind::Sampling => "Sampling",
        }
    }

    /// The operator's inputs this graph gives, in order, and their ONNX positions (the others stay
    /// empty): `docs/ContribOperators.md`.
    pub fn inputs(self) -> &'static [(&'static str, usize)] {
        match self {
            SearchKind::Greedy => &[
                ("input_ids", 0),
                ("max_length", 1),
                ("min_length", 2),
                ("repetition_penalty", 3),
                ("attention_mask", 6),
            ],
            SearchKind::Sampling => &[
                ("input_ids", 0),
                ("max_length", 1),
                ("min_length", 2),
                ("repetition_penalty", 3),
                ("attention_mask", 6),
                ("seed", 8),
            ],
            SearchKind::Beam => &[
                ("input_ids", 0),
                ("max_length", 1),
                ("min_length", 2),
                ("num_beams", 3),
                ("num_return_sequences", 4),
                ("length_penalty", 5),
                ("repetition_penalty", 6),
                ("attention_mask", 9),
            ],
        }
    }

    fn positions(self) -> &'static [usize] {
        match self {
            SearchKind::Greedy => &[0, 1, 2, 3, 6],
            SearchKind::Sampling => &[0, 1, 2, 3, 6, 8],
            SearchKind::Beam => &[0, 1, 2, 3, 4, 5, 6, 9],
        }
    }
}

/// A graph held by a node attribute (a search operator's decoder). Compared by identity.
#[derive(Clone, Debug)]
pub struct Subgraph(pub std::sync::Arc<super::Graph>);

impl PartialEq for Subgraph {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// An operator with its attributes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    // Elementwise arithmetic and logic (numpy broadcasting).
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    And,
    Less,
    Greater,
    Equal,
    Where,
    // Elementwise unary.
    Neg,
    Sqrt,
    Exp,
    Tanh,
    Erf,
    Sigmoid,
    Relu,
    Softplus,
    Not,
    LeakyRelu {
        alpha: f32,
    },
    /// Inputs: x, min, max (scalars of x's type).
    Clip,
    Cast {
        to: DType,
    },
    Identity,
    /// Elementwise minimum of two inputs (numpy broadcasting).
    Min,
    /// Inputs: data, starts, ends, axes (int64 constants, opset 13 form).
    Slice,
    /// Inputs: x, axes (int64, opset 13 form).
    Squeeze,
    // Linear algebra.
    MatMul,
    Gemm {
        trans_a: bool,
        trans_b: bool,
    },
    // Shape and data movement.
    Gather {
        axis: i64,
    },
    Concat {
        axis: i64,
    },
    /// Inputs: x, split sizes (int64, opset 13 form).
    Split {
        axis: i64,
        outputs: usize,
    },
    Transpose {
        perm: Vec<i64>,
    },
    /// Inputs: x, target shape (int64; 0 copies the input dim).
    Reshape,
    /// Inputs: x, axes (int64, opset 13 form).
    Unsqueeze,
    Shape,
    /// Inputs: start, limit, delta (scalars).
    Range,
    // Normalisation and reductions.
    Softmax {
        axis: i64,
    },
    LayerNormalization {
        axis: i64,
        epsilon: f32,
    },
    /// Before opset 18 the axes are an attribute (`Some`); from 18 an input.
    ReduceMean {
        axes: Option<Vec<i64>>,
        keepdims: bool,
    },
    /// As ReduceMean (the axes attribute before opset 18, an input from 18).
    ReduceMax {
        axes: Option<Vec<i64>>,
        keepdims: bool,
    },
    // Quantization.
    /// x (float) → (uint8 values, float scale, uint8 zero point), computed at run time.
    DynamicQuantizeLinear,
    /// Inputs: a, b, a_zero_point, b_zero_point → int32 product.
    MatMulInteger,
    /// Inputs: x, scale, (zero point) → scale's float type. `block_size` 0 = per tensor / per axis.
    DequantizeLinear {
        axis: i64,
        block_size: i64,
    },
    /// `com.microsoft` 4-bit blocked matmul: inputs A, B (packed uint8 [N, blocks, blob]), scales.
    /// `accuracy_level` 4 quantizes A to int8 in blocks at run time (integer dot products); 0 keeps it float.
    MatMulNBits {
        k: i64,
        n: i64,
        bits: i64,
        block_size: i64,
        accuracy_level: i64,
    },
    // Fused blocks.
    /// Attention (opset 23) with a cache: inputs Q, K, V `[B, S, heads·D]`, an additive mask broadcast
    /// to `[B, heads, S, P+S]`, past key and value `[B, heads, P, D]`; outputs Y `[B, S, heads·D]` and
    /// the present key and value `[B, heads, P+S, D]`.
    Attention {
        heads: i64,
        scale: f32,
    },
    /// `com.microsoft`: `LayerNorm(input + skip + bias)`; inputs input, skip, gamma, beta, bias; outputs
    /// the normalized value, mean, inverse std (both optional) and the sum `input + skip + bias`.
    SkipLayerNormalization {
        epsilon: f32,
    },
    /// `com.microsoft`: the tanh approximation of GELU of `x + bias`.
    FastGelu,
    /// `com.microsoft` GroupQueryAttention with as many key/value heads as query heads: inputs Q, K,
    /// V `[B, S, heads·D]`, past key and value `[B, heads, P, D]`, `seqlens_k` (int32 `[B]`, each
    /// row's last position), `total_sequence_length` (int32 scalar) and an additive bias
    /// `[B, 1, S, T]` (ONNX input 10; 7–9, rotary, stay empty); outputs Y `[B, S, heads·D]` and the
    /// present key and value (the past buffer itself when the caller binds one buffer as both).
    GroupQueryAttention {
        heads: i64,
        scale: f32,
    },
    /// `com.microsoft` GreedySearch, BeamSearch or Sampling: the whole generation loop over
    /// `decoder` (ONNX Runtime's GPT-2 subgraph form; its weights are initializers of the outer
    /// graph). Inputs as [`SearchKind::inputs`] lists them; outputs `sequences` (int32) and, for
    /// beam search, `sequences_scores`.
    Search {
        kind: SearchKind,
        decoder: Subgraph,
        /// The operator's attributes other than `decoder`, in a fixed order.
        attributes: Vec<(&'static str, AttrValue)>,
    },
}

/// An attribute value as ONNX encodes it.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Graph(Subgraph),
}

impl Op {
    /// The ONNX `op_type`.
    pub fn op_type(&self) -> &'static str {
        match self {
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::Div => "Div",
            Op::Pow => "Pow",
            Op::And => "And",
            Op::Less => "Less",
            Op::Greater => "Greater",
            Op::Equal => "Equal",
            Op::Where => "Where",
            Op::Neg => "Neg",
            Op::Sqrt => "Sqrt",
            Op::Exp => "Exp",
            Op::Tanh => "Tanh",
            Op::Erf => "Erf",
            Op::Sigmoid => "Sigmoid",
            Op::Relu => "Relu",
            Op::Softplus => "Softplus",
            Op::Not => "Not",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::Clip => "Clip",
            Op::Cast { .. } => "Cast",
            Op::Identity => "Identity",
            Op::Min => "Min",
            Op::Slice => "Slice",
            Op::Squeeze => "Squeeze",
            Op::MatMul => "MatMul",
            Op::Gemm { .. } => "Gemm",
            Op::Gather { .. } => "Gather",
            Op::Concat { .. } => "Concat",
            Op::Split { .. } => "Split",
            Op::Transpose { .. } => "Transpose",
            Op::Reshape => "Reshape",
            Op::Unsqueeze => "Unsqueeze",
            Op::Shape => "Shape",
            Op::Range => "Range",
            Op::Softmax { .. } => "Softmax",
            Op::LayerNormalization { .. } => "LayerNormalization",
            Op::ReduceMean { .. } => "ReduceMean",
            Op::ReduceMax { .. } => "ReduceMax",
            Op::DynamicQuantizeLinear => "DynamicQuantizeLinear",
            Op::MatMulInteger => "MatMulInteger",
            Op::DequantizeLinear { .. } => "DequantizeLinear",
            Op::MatMulNBits { .. } => "MatMulNBits",
            Op::Attention { .. } => "Attention",
            Op::SkipLayerNormalization { .. } => "SkipLayerNormalization",
            Op::FastGelu => "FastGelu",
            Op::GroupQueryAttention { .. } => "GroupQueryAttention",
            Op::Search { kind, .. } => kind.op_type(),
        }
    }

    /// The operator's domain: the default ONNX domain, or `com.microsoft` for ONNX Runtime's contrib ops.
    pub fn domain(&self) -> &'static str {
        match self {
            Op::MatMulNBits { .. }
            | Op::SkipLayerNormalization { .. }
            | Op::FastGelu
            | Op::GroupQueryAttention { .. }
            | Op::Search { .. } => "com.microsoft",
            _ => "",
        }
    }

    /// The first default-domain opset where this op has the form we emit.
    pub fn min_opset(&self) -> i64 {
        match self {
            Op::Slice | Op::Squeeze => 13,
            Op::LayerNormalization { .. } => 17,
            Op::ReduceMean { axes: None, .. } | Op::ReduceMax { axes: None, .. } => 18,
            Op::DequantizeLinear { block_size, .. } if *block_size > 0 => 21,
            Op::MatMulNBits { .. }
            | Op::SkipLayerNormalization { .. }
            | Op::FastGelu
            | Op::GroupQueryAttention { .. }
            | Op::Search { .. } => 1,
            Op::Attention { .. } => 23,
            _ => 14,
        }
    }

    /// The last opset where the form is valid (ReduceMean's axes attribute was removed in 18).
    pub fn max_opset(&self) -> i64 {
        match self {
            Op::ReduceMean { axes: Some(_), .. } | Op::ReduceMax { axes: Some(_), .. } => 17,
            _ => i64::MAX,
        }
    }

    /// Attributes in a fixed order (output bytes must be deterministic).
    pub fn attributes(&self) -> Vec<(&'static str, AttrValue)> {
        match self {
            Op::LeakyRelu { alpha } => vec![("alpha", AttrValue::Float(*alpha))],
            Op::Cast { to } => vec![("to", AttrValue::Int(to.onnx() as i64))],
            Op::Gemm { trans_a, trans_b } => {
                vec![("transA", AttrValue::Int(*trans_a as i64)), ("transB", AttrValue::Int(*trans_b as i64))]
            }
            Op::Gather { axis } | Op::Concat { axis } | Op::Split { axis, .. } | Op::Softmax { axis } => {
                vec![("axis", AttrValue::Int(*axis))]
            }
            Op::Transpose { perm } => vec![("perm", AttrValue::Ints(perm.clone()))],
            Op::LayerNormalization { axis, epsilon } => {
                vec![("axis", AttrValue::Int(*axis)), ("epsilon", AttrValue::Float(*epsilon))]
            }
            Op::ReduceMean { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
                let mut attrs = Vec::new();
                if let Some(axes) = axes {
                    attrs.push(("axes", AttrValue::Ints(axes.clone())));
                }
                attrs.push(("keepdims", AttrValue::Int(*keepdims as i64)));
                attrs
            }
            Op::DequantizeLinear { axis, block_size } => {
                let mut attrs = vec![("axis", AttrValue::Int(*axis))];
                if *block_size > 0 {
                    attrs.push(("block_size", AttrValue::Int(*block_size)));
                }
                attrs
            }
            Op::MatMulNBits { k, n, bits, block_size, accuracy_level } => {
                let mut attrs = vec![
                    ("K", AttrValue::Int(*k)),
                    ("N", AttrValue::Int(*n)),
                    ("bits", AttrValue::Int(*bits)),
                    ("block_size", AttrValue::Int(*block_size)),
                ];
                if *accuracy_level != 0 {
                    attrs.push(("accuracy_level", AttrValue::Int(*accuracy_level)));
                }
                attrs
            }
            Op::Attention { heads, scale } => vec![
                ("kv_num_heads", AttrValue::Int(*heads)),
                ("q_num_heads", AttrValue::Int(*heads)),
                ("scale", AttrValue::Float(*scale)),
            ],
            Op::SkipLayerNormalization { epsilon } => vec![("epsilon", AttrValue::Float(*epsilon))],
            Op::GroupQueryAttention { heads, scale } => vec![
                ("kv_num_heads", AttrValue::Int(*heads)),
                ("num_heads", AttrValue::Int(*heads)),
                ("scale", AttrValue::Float(*scale)),
            ],
            Op::Search { decoder, attributes, .. } => {
                let mut all = vec![("decoder", AttrValue::Graph(decoder.clone()))];
                all.extend(attributes.iter().cloned());
                all
            }
            _ => Vec::new(),
        }
    }

    /// Outputs a graph may leave out (written with an empty name) when nothing reads them.
    pub fn optional_outputs(&self) -> &'static [usize] {
        match self {
            Op::SkipLayerNormalization { .. } => &[1, 2, 3],
            _ => &[],
        }
    }

    /// The ONNX input position of each input given, for ops whose optional inputs in between stay
    /// empty (written as empty names); `None`: inputs in order.
    pub fn input_positions(&self) -> Option<&'static [usize]> {
        match self {
            Op::GroupQueryAttention { .. } => Some(&[0, 1, 2, 3, 4, 5, 6, 10]),
            Op::Search { kind, .. } => Some(kind.positions()),
            _ => None,
        }
    }

    /// How many inputs the op takes (inclusive range).
    fn arity(&self) -> (usize, usize) {
        match self {
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow | Op::And | Op::Less | Op::Greater | Op::Equal => (2, 2),
            Op::MatMul | Op::Gather { .. } | Op::Split { .. } | Op::Reshape | Op::Unsqueeze => (2, 2),
            Op::Where | Op::Clip | Op::Range | Op::LayerNormalization { .. } => (3, 3),
            Op::Gemm { .. } => (2, 3),
            Op::Concat { .. } => (1, usize::MAX),
            Op::ReduceMean { axes: Some(_), .. } | Op::ReduceMax { axes: Some(_), .. } => (1, 1),
            Op::ReduceMean { axes: None, .. } | Op::ReduceMax { axes: None, .. } => (2, 2),
            Op::DynamicQuantizeLinear => (1, 1),
            Op::MatMulInteger => (4, 4),
            Op::DequantizeLinear { .. } => (2, 3),
            Op::MatMulNBits { .. } => (3, 3),
            Op::Attention { .. } => (6, 6),
            Op::SkipLayerNormalization { .. } => (5, 5),
            Op::FastGelu => (2, 2),
            Op::GroupQueryAttention { .. } => (8, 8),
            Op::Min | Op::Squeeze => (2, 2),
            Op::Slice => (4, 4),
            Op::Search { kind, .. } => (kind.positions().len(), kind.positions().len()),
            _ => (1, 1),
        }
    }
}
