//! Host tensors: the plain shape + data pairs the backends exchange.

/// Element data of a host tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
}

/// Element types the runtime exchanges with a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    F32,
    F16,
    I64,
    I32,
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

    /// An i32 tensor; `None` when the data length does not match the shape.
    pub fn i32(shape: Vec<usize>, data: Vec<i32>) -> Option<HostTensor> {
        (shape.iter().product::<usize>() == data.len()).then_some(HostTensor { shape, data: HostData::I32(data) })
    }

    /// An empty tensor (a zero-length axis) of the given element type.
    pub fn empty(shape: Vec<usize>, elem: ElemType) -> HostTensor {
        let data = match elem {
            ElemType::F32 => HostData::F32(Vec::new()),
            ElemType::F16 => HostData::F16(Vec::new()),
            ElemType::I64 => HostData::I64(Vec::new()),
            ElemType::I32 => HostData::I32(Vec::new()),
        };
        HostTensor { shape, data }
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            HostData::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            HostData::I64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            HostData::I32(v) => Some(v),
            _ => None,
        }
    }

    /// Float data as f32, converting fp16.
    pub fn to_f32(&self) -> Option<std::borrow::Cow<'_, [f32]>> {
        match &self.data {
            HostData::F32(v) => Some(std::borrow::Cow::Borrowed(v)),
            HostData::F16(v) => Some(std::borrow::Cow::Owned(v.iter().map(|x| x.to_f32()).collect())),
            HostData::I64(_) | HostData::I32(_) => None,
        }
    }

    pub fn elem(&self) -> ElemType {
        match self.data {
            HostData::F32(_) => ElemType::F32,
            HostData::F16(_) => ElemType::F16,
            HostData::I64(_) => ElemType::I64,
            HostData::I32(_) => ElemType::I32,
        }
    }

    /// Elements per index of the first axis.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// The rows of the first axis in the given order (rows may repeat); `None` for an index out of range.
    pub fn gather_rows(&self, rows: &[usize]) -> Option<HostTensor> {
        let n = self.shape.first().copied().unwrap_or(0);
        if rows.iter().any(|&r| r >= n) {
            return None;
        }
        let per = self.row_len();
        fn pick<T: Clone>(v: &[T], rows: &[usize], per: usize) -> Vec<T> {
            rows.iter().flat_map(|&r| v[r * per..(r + 1) * per].iter().cloned()).collect()
        }
        let data = match &self.data {
            HostData::F32(v) => HostData::F32(pick(v, rows, per)),
            HostData::F16(v) => HostData::F16(pick(v, rows, per)),
            HostData::I64(v) => HostData::I64(pick(v, rows, per)),
            HostData::I32(v) => HostData::I32(pick(v, rows, per)),
        };
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = rows.len();
        }
        Some(HostTensor { shape, data })
    }

    /// A rank-4 cache tensor `[rows, heads, width, head_dim]` cut to its first `keep` positions;
    /// `None` for another rank or `keep` past `width`.
    pub fn first_positions(&self, keep: usize) -> Option<HostTensor> {
        let &[rows, heads, width, dim] = &self.shape[..] else { return None };
        if keep > width {
            return None;
        }
        fn cut<T: Clone>(v: &[T], lines: usize, width: usize, keep: usize) -> Option<Vec<T>> {
            let mut out = Vec::with_capacity(lines * keep);
            for line in 0..lines {
                out.extend_from_slice(v.get(line * width..line * width + keep)?);
            }
            Some(out)
        }
        let lines = rows * heads;
        let data = match &self.data {
            HostData::F32(v) => HostData::F32(cut(v, lines, width * dim, keep * dim)?),
            HostData::F16(v) => HostData::F16(cut(v, lines, width * dim, keep * dim)?),
            HostData::I64(v) => HostData::I64(cut(v, lines, width * dim, keep * dim)?),
            HostData::I32(v) => HostData::I32(cut(v, lines, width * dim, keep * dim)?),
        };
        Some(HostTensor { shape: vec![rows, heads, keep, dim], data })
    }

    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            HostData::F32(_) => "float",
            HostData::F16(_) => "float16",
            HostData::I64(_) => "int64",
            HostData::I32(_) => "int32",
        }
    }
}
