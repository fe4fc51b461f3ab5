//! Value types of the IR: element types and shapes with symbolic dimensions.
//!
//! A dimension is a small linear expression over named symbols (`batch_size`,
//! `sequence_length`, ...) with integer coefficients and a constant, so the
//! builder can follow shapes through `Concat` (`past_sequence_length +
//! sequence_length`), `Shape`/`Gather` arithmetic and `Range`, and check that
//! what it wires agrees with the export contract. Products of two symbols are
//! not representable: an op that would create one is an error.

use std::collections::BTreeMap;
use std::fmt;

use gpt2c_proto::DataType;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I8,
    U8,
    Bool,
    /// Signed 4-bit, two per byte (ONNX INT4, IR 10).
    I4,
}

impl DType {
    /// Bytes per element (sub-byte types round up to 1; use [`DType::bytes_for`] for sizes).
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 | DType::Bool | DType::I4 => 1,
        }
    }

    /// Bytes that `numel` elements occupy (int4 packs two per byte).
    pub fn bytes_for(self, numel: usize) -> usize {
        match self {
            DType::I4 => numel.div_ceil(2),
            other => numel * other.size(),
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I64 | DType::I32 | DType::I8 | DType::U8 | DType::I4)
    }

    /// The ONNX element type.
    pub fn onnx(self) -> DataType {
        match self {
            DType::F32 => DataType::Float,
            DType::F16 => DataType::Float16,
            DType::BF16 => DataType::Bfloat16,
            DType::F64 => DataType::Double,
            DType::I64 => DataType::Int64,
            DType::I32 => DataType::Int32,
            DType::I8 => DataType::Int8,
            DType::U8 => DataType::Uint8,
            DType::Bool => DataType::Bool,
            DType::I4 => DataType::Int4,
        }
    }

    /// The IR type for an ONNX element type, if the IR has one.
    pub fn from_onnx(dtype: DataType) -> Option<DType> {
        Some(match dtype {
            DataType::Float => DType::F32,
            DataType::Float16 => DType::F16,
            DataType::Bfloat16 => DType::BF16,
            DataType::Double => DType::F64,
            DataType::Int64 => DType::I64,
            DataType::Int32 => DType::I32,
            DataType::Int8 => DType::I8,
            DataType::Uint8 => DType::U8,
            DataType::Bool => DType::Bool,
            DataType::Int4 => DType::I4,
            _ => return None,
        })
    }

    /// Lower-case name as ONNX documentation writes it (`float`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "double",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
            DType::I4 => "int4",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension: `constant + Σ coefficient × symbol`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dim {
    terms: BTreeMap<String, i64>,
    constant: i64,
}

impl Dim {
    pub fn fixed(n: i64) -> Dim {
        Dim { terms: BTreeMap::new(), constant: n }
    }

    pub fn sym(name: &str) -> Dim {
        Dim { terms: BTreeMap::from([(name.to_string(), 1)]), constant: 0 }
    }

    /// The value when the dimension is a known number.
    pub fn as_fixed(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.constant)
    }

    pub fn add(&self, other: &Dim) -> Dim {
        let mut out = self.clone();
        for (name, c) in &other.terms {
            *out.terms.entry(name.clone()).or_insert(0) += c;
        }
        out.terms.retain(|_, c| *c != 0);
        out.constant += other.constant;
        out
    }

    pub fn neg(&self) -> Dim {
        Dim { terms: self.terms.iter().map(|(k, c)| (k.clone(), -c)).collect(), constant: -self.constant }
    }

    pub fn sub(&self, other: &Dim) -> Dim {
        self.add(&other.neg())
    }

    /// Product, defined when at least one side is a known number.
    pub fn mul(&self, other: &Dim) -> Option<Dim> {
        let (scale, expr) = match (self.as_fixed(), other.as_fixed()) {
            (Some(a), _) => (a, other),
            (_, Some(b)) => (b, self),
            _ => return None,
        };
        if scale == 0 {
            return Some(Dim::fixed(0));
        }
        Some(Dim {
            terms: expr.terms.iter().map(|(k, c)| (k.clone(), c * scale)).collect(),
            constant: expr.constant * scale,
        })
    }

    /// Whether the two dims can broadcast against each other, and the result.
    pub fn broadcast(&self, other: &Dim) -> Option<Dim> {
        if self == other {
            Some(self.clone())
        } else if self.as_fixed() == Some(1) {
            Some(other.clone())
        } else if other.as_fixed() == Some(1) {
            Some(self.clone())
        } else {
            None
        }
    }
}

impl fmt::Display for Dim {
    /// Writes `past_sequence_length + sequence_length` style expressions, the
    /// form optimum uses for its dimension names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, &c) in &self.terms {
            let sign = if c < 0 { "-" } else { "+" };
            match (first, c.abs()) {
                (true, 1) if c > 0 => write!(f, "{name}")?,
                (true, 1) => write!(f, "-{name}")?,
                (true, a) => write!(f, "{}{a} * {name}", if c < 0 { "-" } else { "" })?,
                (false, 1) => write!(f, " {sign} {name}")?,
                (false, a) => write!(f, " {sign} {a} * {name}")?,
            }
            first = false;
        }
        if first {
            write!(f, "{}", self.constant)
        } else if self.constant != 0 {
            let sign = if self.constant < 0 { "-" } else { "+" };
            write!(f, " {sign} {}", self.constant.abs())
        } else {
            Ok(())
        }
    }
}

/// A tensor shape.
pub type Shape = Vec<Dim>;

/// Formats a shape as `[batch_size, 12, 64]`.
pub fn shape_string(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// A value's type: element type and shape (rank always known).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValueType {
    pub dtype: DType,
    pub shape: Shape,
}

impl ValueType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        ValueType { dtype, shape }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, shape_string(&self.shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_follow_optimum_naming() {
        let total = Dim::sym("past_sequence_length").add(&Dim::sym("sequence_length"));
        assert_eq!(total.to_string(), "past_sequence_length + sequence_length");
        assert_eq!(total.sub(&Dim::sym("sequence_length")), Dim::sym("past_sequence_length"));
        assert_eq!(Dim::fixed(0).add(&Dim::sym("s")), Dim::sym("s"));
        assert_eq!(Dim::sym("s").sub(&Dim::fixed(1)).to_string(), "s - 1");
        assert_eq!(Dim::fixed(12).mul(&Dim::fixed(64)), Some(Dim::fixed(768)));
        assert_eq!(Dim::sym("a").mul(&Dim::sym("b")), None);
        assert_eq!(Dim::sym("a").mul(&Dim::fixed(2)).map(|d| d.to_string()), Some("2 * a".into()));
    }

    #[test]
    fn broadcast_rules() {
        let b = Dim::sym("batch_size");
        assert_eq!(b.broadcast(&Dim::fixed(1)), Some(b.clone()));
        assert_eq!(Dim::fixed(1).broadcast(&b), Some(b.clone()));
        assert_eq!(b.broadcast(&Dim::sym("other")), None);
        assert_eq!(Dim::fixed(3).broadcast(&Dim::fixed(4)), None);
    }
}
