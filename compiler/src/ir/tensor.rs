//! Constant tensors of the IR (weights and small constants) and where their bytes live.
//!
//! Weights are never copied into the graph: a [`TensorData::Shared`] points into
//! the checkpoint's memory map and is streamed to the output file when the
//! model is written, widening f16/bf16 to f32 chunk by chunk when asked. This
//! keeps an export's peak memory near the size of the checkpoint.

use std::fmt;
use std::io::{self, Write};
use std::ops::Range;
use std::sync::Arc;

use half::{bf16, f16};

use super::types::DType;

/// Bytes owned elsewhere (a memory map, a buffer of an in-memory weight source).
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl SharedBytes {
    /// A view of `range` inside `owner`; `None` when the range is out of bounds.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Option<Self> {
        let len = (*owner).as_ref().len();
        (range.start <= range.end && range.end <= len).then_some(SharedBytes { owner, range })
    }

    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        SharedBytes { owner: Arc::new(bytes), range: 0..len }
    }

    pub fn as_slice(&self) -> &[u8] {
        // ok: `new` checked the range against the owner's length, and owners are immutable.
        &(*self.owner).as_ref()[self.range.clone()]
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.len())
    }
}

/// How stored bytes become the tensor's element bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Stored exactly as the tensor's dtype, little-endian.
    Raw,
    /// Stored as IEEE f16, written as f32.
    F16AsF32,
    /// Stored as bfloat16, written as f32.
    Bf16AsF32,
}

/// Where a constant's bytes come from.
#[derive(Clone, Debug)]
pub enum TensorData {
    /// Little-endian element bytes held by the graph (small constants).
    Owned(Arc<[u8]>),
    /// Bytes held by a weight source, converted on the way out per `encoding`.
    Shared { bytes: SharedBytes, encoding: Encoding },
}

/// A constant tensor: element type, dimensions and data.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub data: TensorData,
}

/// Writes in pieces of this many elements when converting.
const CONVERT_CHUNK: usize = 16 * 1024;

impl Tensor {
    /// A tensor from little-endian bytes; the length must match the dims.
    pub fn from_bytes(dtype: DType, dims: Vec<usize>, bytes: Vec<u8>) -> Option<Tensor> {
        let numel: usize = dims.iter().product();
        (dtype.bytes_for(numel) == bytes.len()).then(|| Tensor { dtype, dims, data: TensorData::Owned(bytes.into()) })
    }

    pub fn from_i64(dims: Vec<usize>, values: &[i64]) -> Option<Tensor> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_bytes(DType::I64, dims, bytes)
    }

    pub fn from_f32(dims: Vec<usize>, values: &[f32]) -> Option<Tensor> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_bytes(DType::F32, dims, bytes)
    }

    /// An f16 tensor from f32 values (round to nearest even).
    pub fn f16_from_f32(dims: Vec<usize>, values: &[f32]) -> Option<Tensor> {
        let bytes = values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        Tensor::from_bytes(DType::F16, dims, bytes)
    }

    pub fn from_i8(dims: Vec<usize>, values: &[i8]) -> Option<Tensor> {
        Tensor::from_bytes(DType::I8, dims, values.iter().map(|&v| v as u8).collect())
    }

    pub fn from_u8(dims: Vec<usize>, values: &[u8]) -> Option<Tensor> {
        Tensor::from_bytes(DType::U8, dims, values.to_vec())
    }

    /// Element count.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Size of the element bytes as written to the model.
    pub fn byte_len(&self) -> usize {
        self.dtype.bytes_for(self.numel())
    }

    /// The element bytes when the graph owns them (used to deduplicate constants).
    pub fn owned_bytes(&self) -> Option<&[u8]> {
        match &self.data {
            TensorData::Owned(b) => Some(b),
            TensorData::Shared { .. } => None,
        }
    }

    /// Streams the little-endian element bytes into `out`.
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        match &self.data {
            TensorData::Owned(bytes) => out.write_all(bytes),
            TensorData::Shared { bytes, encoding: Encoding::Raw } => out.write_all(bytes.as_slice()),
            TensorData::Shared { bytes, encoding } => {
                let widen: fn([u8; 2]) -> f32 = match encoding {
                    Encoding::F16AsF32 => |b| f16::from_le_bytes(b).to_f32(),
                    _ => |b| bf16::from_le_bytes(b).to_f32(),
                };
                let mut buf = Vec::with_capacity(CONVERT_CHUNK * 4);
                for chunk in bytes.as_slice().chunks(CONVERT_CHUNK * 2) {
                    buf.clear();
                    for pair in chunk.chunks_exact(2) {
                        buf.extend_from_slice(&widen([pair[0], pair[1]]).to_le_bytes());
                    }
                    out.write_all(&buf)?;
                }
                Ok(())
            }
        }
    }

    /// The values as f32 (for passes and tests that compute with weights).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        let mut bytes = Vec::with_capacity(self.byte_len());
        self.write_to(&mut bytes).ok()?;
        match self.dtype {
            DType::F32 => Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            DType::F16 => Some(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
            DType::BF16 => Some(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_streams_exact_values() {
        let halves: Vec<u8> =
            [1.5f32, -2.25, 65504.0, 0.0].iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        let bytes = SharedBytes::from_vec(halves);
        let t = Tensor {
            dtype: DType::F32,
            dims: vec![4],
            data: TensorData::Shared { bytes, encoding: Encoding::F16AsF32 },
        };
        assert_eq!(t.byte_len(), 16);
        assert_eq!(t.to_f32_vec().unwrap(), vec![1.5, -2.25, 65504.0, 0.0]);
    }

    #[test]
    fn shared_bytes_reject_out_of_range_views() {
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(vec![0u8; 8]);
        assert!(SharedBytes::new(owner.clone(), 0..8).is_some());
        assert!(SharedBytes::new(owner.clone(), 4..9).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 5..4;
        assert!(SharedBytes::new(owner, reversed).is_none());
    }

    #[test]
    fn from_bytes_checks_length() {
        assert!(Tensor::from_bytes(DType::F32, vec![2, 2], vec![0; 16]).is_some());
        assert!(Tensor::from_bytes(DType::F32, vec![2, 2], vec![0; 15]).is_none());
    }
}
