//! Host tensors: the plain shape + data pairs the backends exchange.

/// Element data of a host tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A dense row-major tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    /// An f32 tensor; `None` when the data length does not match the shape.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Option<HostTensor> {
        (shape.iter().product::<usize>() == data.len()).then_some(HostTensor { shape, data: HostData::F32(data) })
    }

    /// An i64 tensor; `None` when the data length does not match the shape.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Option<HostTensor> {
        (shape.iter().product::<usize>() == data.len()).then_some(HostTensor { shape, data: HostData::I64(data) })
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            HostData::F32(v) => Some(v),
            HostData::I64(_) => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            HostData::I64(v) => Some(v),
            HostData::F32(_) => None,
        }
    }

    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            HostData::F32(_) => "float",
            HostData::I64(_) => "int64",
        }
    }
}
