//! The operators verify knows, in one registry: each entry's domain, name, the first opset
//! version with the form gpt2c and its peers emit, and the rule that infers its outputs. The
//! structural `operators` check and shape inference both read it, so an operator is known to one
//! exactly when it is known to the other.

mod elementwise;
mod fused;
mod matmul;
mod quant;
mod reduce;
mod shape;

pub(crate) use elementwise::*;
pub(crate) use fused::*;
pub(crate) use matmul::*;
pub(crate) use quant::*;
pub(crate) use reduce::*;
pub(crate) use shape::*;

use super::*;

/// One operator verify knows.
pub struct Operator {
    /// `""` for the default ONNX domain, else the domain's name (`com.microsoft`).
    pub domain: &'static str,
    pub op: &'static str,
    /// The first opset version of its domain with the form verify checks.
    pub since: i64,
    rule: Rule,
}

/// Output types of one node, in output order.
pub(crate) type Rule = fn(&Node<'_>) -> R<Vec<Val>>;

const fn onnx(op: &'static str, since: i64, rule: Rule) -> Operator {
    Operator { domain: "", op, since, rule }
}

const fn ms(op: &'static str, rule: Rule) -> Operator {
    Operator { domain: "com.microsoft", op, since: 1, rule }
}

fn is_nan_or_inf(n: &Node<'_>) -> R<Vec<Val>> {
    let x = n.input(0)?;
    want(x, "the input", FLOATS)?;
    Ok(vec![Val::new(BOOL, x.dims.clone())])
}

fn not(n: &Node<'_>) -> R<Vec<Val>> {
    unary(n, &[BOOL])
}

fn any_numeric(n: &Node<'_>) -> R<Vec<Val>> {
    unary(n, &[])
}

fn floating(n: &Node<'_>) -> R<Vec<Val>> {
    unary(n, FLOATS)
}

/// Every operator verify knows.
pub static OPERATORS: &[Operator] = &[
    onnx("Add", 7, arithmetic),
    onnx("Sub", 7, arithmetic),
    onnx("Mul", 7, arithmetic),
    onnx("Div", 7, arithmetic),
    onnx("Mod", 10, arithmetic),
    onnx("Max", 13, arithmetic),
    onnx("Min", 13, arithmetic),
    onnx("Sum", 8, arithmetic),
    onnx("Mean", 8, arithmetic),
    onnx("Pow", 13, pow),
    onnx("Equal", 13, compare),
    onnx("Less", 13, compare),
    onnx("Greater", 13, compare),
    onnx("LessOrEqual", 16, compare),
    onnx("GreaterOrEqual", 16, compare),
    onnx("And", 7, logical),
    onnx("Or", 7, logical),
    onnx("Xor", 7, logical),
    onnx("Not", 1, not),
    onnx("IsNaN", 13, is_nan_or_inf),
    onnx("IsInf", 10, is_nan_or_inf),
    onnx("Where", 9, where_),
    onnx("Neg", 13, any_numeric),
    onnx("Abs", 13, any_numeric),
    onnx("Relu", 13, any_numeric),
    onnx("Sign", 9, any_numeric),
    onnx("Identity", 13, any_numeric),
    onnx("Sqrt", 13, floating),
    onnx("Exp", 13, floating),
    onnx("Log", 13, floating),
    onnx("Tanh", 13, floating),
    onnx("Erf", 13, floating),
    onnx("Sigmoid", 13, floating),
    onnx("Softplus", 1, floating),
    onnx("Softsign", 1, floating),
    onnx("LeakyRelu", 6, floating),
    onnx("HardSigmoid", 6, floating),
    onnx("HardSwish", 14, floating),
    onnx("Mish", 18, floating),
    onnx("Gelu", 20, floating),
    onnx("Elu", 6, floating),
    onnx("Selu", 6, floating),
    onnx("Celu", 12, floating),
    onnx("Reciprocal", 6, floating),
    onnx("Floor", 6, floating),
    onnx("Ceil", 6, floating),
    onnx("Round", 11, floating),
    onnx("Sin", 7, floating),
    onnx("Cos", 7, floating),
    onnx("Clip", 13, clip),
    onnx("Cast", 13, cast),
    onnx("CastLike", 15, cast_like),
    onnx("Constant", 13, constant),
    onnx("ConstantOfShape", 9, constant_of_shape),
    onnx("MatMul", 13, matmul),
    onnx("MatMulInteger", 10, matmul_integer),
    onnx("Gemm", 13, gemm),
    onnx("Gather", 13, gather),
    onnx("GatherElements", 13, gather_elements),
    onnx("GatherND", 13, gather_nd),
    onnx("Concat", 13, concat),
    onnx("Split", 13, split),
    onnx("Slice", 13, slice),
    onnx("Transpose", 13, transpose),
    onnx("Reshape", 14, reshape),
    onnx("Flatten", 13, flatten),
    onnx("Unsqueeze", 13, unsqueeze),
    onnx("Squeeze", 13, squeeze),
    onnx("Expand", 13, expand),
    onnx("Tile", 13, tile),
    onnx("Shape", 13, shape),
    onnx("Size", 1, size),
    onnx("Range", 11, range),
    onnx("Softmax", 13, softmax),
    onnx("LogSoftmax", 13, softmax),
    onnx("Hardmax", 13, softmax),
    onnx("LayerNormalization", 17, layer_norm),
    onnx("ReduceMean", 13, reduce),
    onnx("ReduceMax", 13, reduce),
    onnx("ReduceMin", 13, reduce),
    onnx("ReduceSum", 13, reduce),
    onnx("ReduceProd", 13, reduce),
    onnx("ReduceL1", 13, reduce),
    onnx("ReduceL2", 13, reduce),
    onnx("ReduceLogSum", 13, reduce),
    onnx("ReduceLogSumExp", 13, reduce),
    onnx("ReduceSumSquare", 13, reduce),
    onnx("ArgMax", 13, arg_reduce),
    onnx("ArgMin", 13, arg_reduce),
    onnx("CumSum", 14, cum_sum),
    onnx("Trilu", 14, trilu),
    onnx("DynamicQuantizeLinear", 11, dynamic_quantize),
    onnx("DequantizeLinear", 13, dequantize),
    onnx("QuantizeLinear", 13, quantize),
    onnx("Attention", 23, attention),
    ms("MatMulNBits", matmul_nbits),
    ms("SkipLayerNormalization", skip_layer_norm),
    ms("FastGelu", bias_gelu),
    ms("BiasGelu", bias_gelu),
    ms("Attention", ms_attention),
    ms("MultiHeadAttention", ms_multi_head_attention),
    ms("GroupQueryAttention", ms_group_query_attention),
    ms("GreedySearch", search),
    ms("BeamSearch", search),
    ms("Sampling", search),
];

/// `""` for the default domain under either of its names.
pub fn normalize_domain(domain: &str) -> &str {
    if domain == "ai.onnx" { "" } else { domain }
}

/// The registry's entry for an operator, if verify knows it.
pub fn lookup(domain: &str, op: &str) -> Option<&'static Operator> {
    let domain = normalize_domain(domain);
    OPERATORS.iter().find(|o| o.domain == domain && o.op == op)
}

/// Output types of one node, in output order.
pub(crate) fn infer_node(n: &Node<'_>) -> R<Vec<Val>> {
    match lookup(n.proto.domain(), n.proto.op_type()) {
        Some(o) => (o.rule)(n),
        None => Err("operator unknown to gpt2c verify".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for o in OPERATORS {
            assert!(seen.insert((o.domain, o.op)), "{}.{} listed twice", o.domain, o.op);
            assert!(o.since >= 1);
        }
        assert!(lookup("ai.onnx", "MatMul").is_some() && lookup("", "MatMul").is_some());
        assert!(lookup("com.microsoft", "MatMul").is_none());
    }
}
