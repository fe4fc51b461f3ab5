//! The decoding engine over ONNX Runtime: every cache buffer allocated once and bound
//! (IoBinding), two buffer sets alternating as past and present.

use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorRef, TensorRefMut};

use super::OrtRunner;
use crate::backend::engine::{AllLogits, CacheShape, Engine, TokenInputs, cache_names};
use crate::backend::{GraphRunner, RuntimeError};
use crate::tensor::ElemType;

/// The ONNX Runtime engine of a decoding session, with every cache buffer
/// allocated once and reused (IoBinding): two buffer sets, one per cache
/// tensor each, alternate as past (input views) and present (output views),
/// so no step allocates, and beam reordering is one gather pass into the
/// other set. Logits are written into a buffer kept across steps too.
pub struct OrtEngine {
    runner: OrtRunner,
    past_names: Vec<String>,
    present_names: Vec<String>,
    cache_type: ElemType,
    n_head: usize,
    head_dim: usize,
    vocab: usize,
    buffers: Buffers,
    /// Rows and cached positions of the live buffer set.
    rows: usize,
    past: usize,
}

/// The two buffer sets and the logits buffer, in the graph's float type.
enum Buffers {
    F32(Sets<f32>),
    F16(Sets<half::f16>),
}

struct Sets<T> {
    /// `[set][tensor]`: set `live` holds the cache.
    sets: [Vec<Vec<T>>; 2],
    live: usize,
    logits: Vec<T>,
}

impl<T: Copy + Default> Sets<T> {
    fn new(tensors: usize) -> Self {
        Sets { sets: [vec![Vec::new(); tensors], vec![Vec::new(); tensors]], live: 0, logits: Vec::new() }
    }

    /// Grows every buffer of the spare set to hold `len` elements (never shrinks).
    fn reserve_spare(&mut self, len: usize) {
        for b in &mut self.sets[1 - self.live] {
            if b.len() < len {
                b.resize(len, T::default());
            }
        }
    }

    /// (live set, spare set), borrowed apart.
    fn split(&mut self) -> (&Vec<Vec<T>>, &mut Vec<Vec<T>>) {
        let [a, b] = &mut self.sets;
        if self.live == 0 { (a, b) } else { (b, a) }
    }
}

impl OrtEngine {
    pub fn new(runner: OrtRunner, shape: &CacheShape) -> OrtEngine {
        let (past_names, present_names) = cache_names(shape.n_layer);
        let cache_type = past_names.first().and_then(|k| runner.input_type(k)).unwrap_or(ElemType::F32);
        let tensors = past_names.len();
        let buffers = match cache_type {
            ElemType::F16 => Buffers::F16(Sets::new(tensors)),
            _ => Buffers::F32(Sets::new(tensors)),
        };
        OrtEngine {
            runner,
            past_names,
            present_names,
            cache_type,
            n_head: shape.n_head,
            head_dim: shape.head_dim,
            vocab: shape.vocab,
            buffers,
            rows: 0,
            past: 0,
        }
    }

    pub fn runner(&self) -> &OrtRunner {
        &self.runner
    }

    fn err(&self, e: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Ort { library: self.runner.library.clone(), message: e.to_string() }
    }
}

fn i64_value(shape: [usize; 2], data: &[i64]) -> Result<DynValue, ort::Error> {
    Ok(Tensor::from_array(([shape[0] as i64, shape[1] as i64], data.to_vec()))?.into_dyn())
}

/// One step over buffer sets of element type `T`.
#[allow(clippy::too_many_arguments)]
fn step_with<T>(
    session: &mut Session,
    sets: &mut Sets<T>,
    names: (&[String], &[String]),
    inputs: [&DynValue; 3],
    cache_shape: [usize; 4],
    seq: usize,
    logits_shape: [usize; 3],
) -> Result<Vec<f32>, String>
where
    T: Copy + Default + ort::value::PrimitiveTensorElementType + std::fmt::Debug + ToF32 + 'static,
{
    let [rows, heads, past, dim] = cache_shape;
    let (past_len, present_len) = (rows * heads * past * dim, rows * heads * (past + seq) * dim);
    sets.reserve_spare(present_len);
    let logits_len: usize = logits_shape.iter().product();
    if sets.logits.len() < logits_len {
        sets.logits.resize(logits_len, T::default());
    }
    let shape = |t: usize| vec![rows as i64, heads as i64, t as i64, dim as i64];
    let mut logits_buf = std::mem::take(&mut sets.logits);
    let result = {
        let (live, spare) = sets.split();
        let mut binding = session.create_binding().map_err(|e| e.to_string())?;
        for (name, value) in ["input_ids", "attention_mask", "position_ids"].iter().zip(inputs) {
            super::binding::bind_input(&mut binding, name, value)?;
        }
        let past_views = live
            .iter()
            .map(|b| TensorRef::from_array_view((shape(past), &b[..past_len])))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for (name, view) in names.0.iter().zip(&past_views) {
            super::binding::bind_input(&mut binding, name, &**view)?;
        }
        let present_views = spare
            .iter_mut()
            .map(|b| TensorRefMut::from_array_view_mut((shape(past + seq), &mut b[..present_len])))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for (name, view) in names.1.iter().zip(&present_views) {
            super::binding::bind_output(&mut binding, name, &**view)?;
        }
        let logits_dims: Vec<i64> = logits_shape.iter().map(|&d| d as i64).collect();
        let logits_view = TensorRefMut::from_array_view_mut((logits_dims, &mut logits_buf[..logits_len]))
            .map_err(|e| e.to_string())?;
        super::binding::bind_output(&mut binding, "logits", &*logits_view)?;
        super::binding::run(session, &binding)
    };
    let logits: Vec<f32> = logits_buf[..logits_len].iter().map(|&x| x.to_f32()).collect();
    sets.logits = logits_buf;
    result?;
    sets.live = 1 - sets.live;
    Ok(logits)
}

/// The float types a cache or logits buffer holds.
trait ToF32 {
    fn to_f32(self) -> f32;
}

impl ToF32 for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl ToF32 for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// Copies rows of the live set's tensors (`[rows, ...]`, `per_row` elements each) into the spare set.
fn gather_with<T: Copy + Default>(sets: &mut Sets<T>, per_row: usize, rows: &[usize]) {
    sets.reserve_spare(per_row * rows.len());
    let (live, spare) = sets.split();
    for (src, dst) in live.iter().zip(spare.iter_mut()) {
        for (i, &r) in rows.iter().enumerate() {
            dst[i * per_row..(i + 1) * per_row].copy_from_slice(&src[r * per_row..(r + 1) * per_row]);
        }
    }
    sets.live = 1 - sets.live;
}

/// The cache lives in the engine's buffers; the session's cache entries only mark its presence.
#[derive(Clone, Copy, Debug)]
pub struct InBuffers;

impl Engine for OrtEngine {
    type Value = InBuffers;

    fn cache_type(&self) -> ElemType {
        self.cache_type
    }

    fn empty(&self, shape: &[usize]) -> Result<InBuffers, RuntimeError> {
        if shape.get(2) != Some(&0) {
            return Err(self.err("an empty cache has 0 positions"));
        }
        Ok(InBuffers)
    }

    fn step(&mut self, t: &TokenInputs<'_>, cache: &[InBuffers]) -> Result<(AllLogits, Vec<InBuffers>), RuntimeError> {
        if cache.len() != self.past_names.len() {
            return Err(self.err("cache size mismatch"));
        }
        let past = t.total - t.seq;
        if past == 0 {
            self.rows = t.rows;
        }
        if t.rows != self.rows || past != self.past && past != 0 {
            return Err(self.err(format!("the cache holds {} rows × {} positions", self.rows, self.past)));
        }
        let ids = i64_value([t.rows, t.seq], t.input_ids).map_err(|e| self.err(e))?;
        let mask = i64_value([t.rows, t.total], t.attention_mask).map_err(|e| self.err(e))?;
        let positions = i64_value([t.rows, t.seq], t.position_ids).map_err(|e| self.err(e))?;
        let logit_positions = if self.runner.last_only { 1 } else { t.seq };
        let cache_shape = [t.rows, self.n_head, past, self.head_dim];
        let logits_shape = [t.rows, logit_positions, self.vocab];
        let names = (self.past_names.as_slice(), self.present_names.as_slice());
        let inputs = [&ids, &mask, &positions];
        let session = &mut self.runner.session;
        let data = match &mut self.buffers {
            Buffers::F32(sets) => step_with(session, sets, names, inputs, cache_shape, t.seq, logits_shape),
            Buffers::F16(sets) => step_with(session, sets, names, inputs, cache_shape, t.seq, logits_shape),
        }
        .map_err(|e| RuntimeError::Ort { library: self.runner.library.clone(), message: e })?;
        self.past = t.total;
        let logits = AllLogits { rows: t.rows, positions: logit_positions, vocab: self.vocab, data };
        Ok((logits, vec![InBuffers; self.present_names.len()]))
    }

    fn select_rows(&mut self, cache: &[InBuffers], rows: &[usize]) -> Result<Vec<InBuffers>, RuntimeError> {
        if let Some(&r) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(self.err(format!("row {r} out of range ({} rows)", self.rows)));
        }
        let per_row = self.n_head * self.past * self.head_dim;
        match &mut self.buffers {
            Buffers::F32(sets) => gather_with(sets, per_row, rows),
            Buffers::F16(sets) => gather_with(sets, per_row, rows),
        }
        self.rows = rows.len();
        Ok(cache.to_vec())
    }

    fn last_logits_only(&self) -> bool {
        self.runner.last_only
    }

    fn reset(&mut self) {
        self.rows = 0;
        self.past = 0;
    }
}
