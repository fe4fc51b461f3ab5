//! The decoding engine over ONNX Runtime: every cache buffer allocated once and bound
//! (IoBinding), two buffer sets alternating as past and present.

use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorRef, TensorRefMut};

use super::OrtRunner;
use crate::backend::engine::{AllLogits, CachePart, CacheShape, Engine, RowSource, TokenInputs, cache_names};
use crate::backend::{GraphRunner, RuntimeError, assemble};
use crate::tensor::{ElemType, HostData, HostTensor};

/// The ONNX Runtime engine of a decoding session, with every cache buffer
/// allocated once and reused (IoBinding): a pool of buffer sets, one buffer
/// per cache tensor each. A step binds its past set as input views and a free
/// set as output views, then frees the past set, so a lone session alternates
/// between two sets and no step allocates; beam reordering and batch assembly
/// are one gather pass into a free set. Logits are written into a buffer kept
/// across steps too.
pub struct OrtEngine {
    runner: OrtRunner,
    past_names: Vec<String>,
    present_names: Vec<String>,
    cache_type: ElemType,
    n_head: usize,
    head_dim: usize,
    vocab: usize,
    buffers: Buffers,
}

/// The buffer pool and the logits buffer, in the graph's float type.
enum Buffers {
    F32(Pool<f32>),
    F16(Pool<half::f16>),
}

/// One cache: a buffer per tensor, and the rows and positions they hold.
struct BufferSet<T> {
    tensors: Vec<Vec<T>>,
    rows: usize,
    past: usize,
}

struct Pool<T> {
    sets: Vec<BufferSet<T>>,
    free: Vec<usize>,
    tensors: usize,
    logits: Vec<T>,
}

impl<T: Copy + Default> Pool<T> {
    fn new(tensors: usize) -> Self {
        Pool { sets: Vec::new(), free: Vec::new(), tensors, logits: Vec::new() }
    }

    /// A free set whose buffers hold at least `len` elements each (buffers grow, never shrink).
    fn take(&mut self, len: usize) -> usize {
        let i = self.free.pop().unwrap_or_else(|| {
            self.sets.push(BufferSet { tensors: vec![Vec::new(); self.tensors], rows: 0, past: 0 });
            self.sets.len() - 1
        });
        for b in &mut self.sets[i].tensors {
            if b.len() < len {
                b.resize(len, T::default());
            }
        }
        i
    }

    fn give(&mut self, slot: Slot) {
        if slot != Slot::EMPTY && slot.0 < self.sets.len() && !self.free.contains(&slot.0) {
            self.free.push(slot.0);
        }
    }

    /// The set a cache names, with its rows and positions.
    fn get(&self, slot: Slot) -> Option<&BufferSet<T>> {
        self.sets.get(slot.0).filter(|_| !self.free.contains(&slot.0))
    }
}

/// A cache held in the engine's buffers: every tensor of one cache names the same buffer set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(usize);

impl Slot {
    /// No buffers: a cache of 0 positions.
    const EMPTY: Slot = Slot(usize::MAX);
}

impl OrtEngine {
    pub fn new(runner: OrtRunner, shape: &CacheShape) -> OrtEngine {
        let (past_names, present_names) = cache_names(shape.n_layer);
        let cache_type = past_names.first().and_then(|k| runner.input_type(k)).unwrap_or(ElemType::F32);
        let tensors = past_names.len();
        let buffers = match cache_type {
            ElemType::F16 => Buffers::F16(Pool::new(tensors)),
            _ => Buffers::F32(Pool::new(tensors)),
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

/// One step over the pool of element type `T`: reads set `past_slot` (or nothing for an empty
/// cache), writes the presents into a free set, frees the past set; returns the logits and the
/// presents' set.
#[allow(clippy::too_many_arguments)]
fn step_with<T>(
    session: &mut Session,
    pool: &mut Pool<T>,
    names: (&[String], &[String]),
    inputs: [&DynValue; 3],
    past_slot: Slot,
    cache_shape: [usize; 4],
    seq: usize,
    logits_shape: [usize; 3],
) -> Result<(Vec<f32>, usize), String>
where
    T: Copy + Default + ort::value::PrimitiveTensorElementType + std::fmt::Debug + ToF32 + 'static,
{
    let [rows, heads, past, dim] = cache_shape;
    let (past_len, present_len) = (rows * heads * past * dim, rows * heads * (past + seq) * dim);
    let out = pool.take(present_len);
    let logits_len: usize = logits_shape.iter().product();
    if pool.logits.len() < logits_len {
        pool.logits.resize(logits_len, T::default());
    }
    let shape = |t: usize| vec![rows as i64, heads as i64, t as i64, dim as i64];
    let mut logits_buf = std::mem::take(&mut pool.logits);
    let mut presents = std::mem::take(&mut pool.sets[out].tensors);
    let no_past: Vec<Vec<T>> = vec![Vec::new(); pool.tensors];
    let result = {
        let live = if past_slot == Slot::EMPTY { &no_past } else { &pool.sets[past_slot.0].tensors };
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
        let present_views = presents
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
    pool.logits = logits_buf;
    pool.sets[out].tensors = presents;
    if let Err(e) = result {
        pool.give(Slot(out));
        return Err(e);
    }
    pool.sets[out].rows = rows;
    pool.sets[out].past = past + seq;
    pool.give(past_slot);
    Ok((logits, out))
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

/// Assembles rows of the pool's sets into a free set (see [`Engine::assemble`]), frees the parts.
fn assemble_with<T: Copy + Default>(
    pool: &mut Pool<T>,
    parts: &[(Slot, usize, usize)],
    sources: &[RowSource],
    (heads, dim, width): (usize, usize, usize),
) -> Result<usize, RuntimeError> {
    let plane = heads * dim;
    for &(slot, rows, past) in parts {
        let fits = match pool.get(slot) {
            Some(set) => (set.rows, set.past) == (rows, past),
            None => slot == Slot::EMPTY && past == 0,
        };
        if !fits {
            return Err(RuntimeError::Input {
                name: "cache".into(),
                message: format!("a cache part of {rows} rows × {past} positions is not one this engine holds"),
            });
        }
    }
    let len = sources.len().checked_mul(plane * width).ok_or_else(|| RuntimeError::Input {
        name: "cache".into(),
        message: "the assembled cache's size overflows".into(),
    })?;
    let out = pool.take(len);
    let mut dst = std::mem::take(&mut pool.sets[out].tensors);
    let empty: Vec<T> = Vec::new();
    let mut result = Ok(());
    for (j, d) in dst.iter_mut().enumerate() {
        let views: Vec<assemble::Part<'_, T>> = parts
            .iter()
            .map(|&(slot, rows, past)| assemble::Part {
                data: pool.get(slot).map_or(&empty[..], |s| &s.tensors[j][..rows * plane * past]),
                rows,
                width: past,
            })
            .collect();
        result = assemble::assemble_rows(&views, sources, heads, dim, width, &mut d[..len]);
        if result.is_err() {
            break;
        }
    }
    pool.sets[out].tensors = dst;
    if let Err(e) = result {
        pool.give(Slot(out));
        return Err(e);
    }
    pool.sets[out].rows = sources.len();
    pool.sets[out].past = width;
    for &(slot, ..) in parts {
        pool.give(slot);
    }
    Ok(out)
}

fn copy_out_with<T: Copy + Default>(
    pool: &Pool<T>,
    slot: Slot,
    shape: [usize; 4],
    wrap: fn(Vec<T>) -> HostData,
) -> Vec<HostTensor> {
    let len: usize = shape.iter().product();
    match pool.get(slot) {
        Some(set) => {
            set.tensors.iter().map(|b| HostTensor { shape: shape.to_vec(), data: wrap(b[..len].to_vec()) }).collect()
        }
        None => (0..pool.tensors).map(|_| HostTensor { shape: shape.to_vec(), data: wrap(Vec::new()) }).collect(),
    }
}

impl OrtEngine {
    /// The buffer set every tensor of `cache` names.
    fn slot_of(&self, cache: &[Slot]) -> Result<Slot, RuntimeError> {
        match cache.first() {
            Some(&slot) if cache.len() == self.past_names.len() && cache.iter().all(|&s| s == slot) => Ok(slot),
            _ => Err(self.err(format!("a cache of {} tensors, expected {}", cache.len(), self.past_names.len()))),
        }
    }

    /// Rows and positions of the set `slot` names (`(0, 0)` for the empty cache), if it is live.
    fn held(&self, slot: Slot) -> Option<(usize, usize)> {
        if slot == Slot::EMPTY {
            return Some((0, 0));
        }
        match &self.buffers {
            Buffers::F32(p) => p.get(slot).map(|s| (s.rows, s.past)),
            Buffers::F16(p) => p.get(slot).map(|s| (s.rows, s.past)),
        }
    }
}

impl Engine for OrtEngine {
    type Value = Slot;

    fn cache_type(&self) -> ElemType {
        self.cache_type
    }

    fn empty(&self, shape: &[usize]) -> Result<Slot, RuntimeError> {
        if shape.get(2) != Some(&0) {
            return Err(self.err("an empty cache has 0 positions"));
        }
        Ok(Slot::EMPTY)
    }

    fn step(&mut self, t: &TokenInputs<'_>, cache: &[Slot]) -> Result<(AllLogits, Vec<Slot>), RuntimeError> {
        let slot = self.slot_of(cache)?;
        let past = t.total - t.seq;
        let fits = match self.held(slot) {
            Some(_) if slot == Slot::EMPTY => past == 0,
            Some((rows, held)) => rows == t.rows && held == past,
            None => false,
        };
        if !fits {
            return Err(self.err(format!("the cache does not hold {} rows × {past} positions", t.rows)));
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
        let (data, out) = match &mut self.buffers {
            Buffers::F32(pool) => step_with(session, pool, names, inputs, slot, cache_shape, t.seq, logits_shape),
            Buffers::F16(pool) => step_with(session, pool, names, inputs, slot, cache_shape, t.seq, logits_shape),
        }
        .map_err(|e| RuntimeError::Ort { library: self.runner.library.clone(), message: e })?;
        let logits = AllLogits { rows: t.rows, positions: logit_positions, vocab: self.vocab, data };
        Ok((logits, vec![Slot(out); self.present_names.len()]))
    }

    fn select_rows(&mut self, cache: &[Slot], rows: &[usize]) -> Result<Vec<Slot>, RuntimeError> {
        let slot = self.slot_of(cache)?;
        let (held_rows, past) = self.held(slot).ok_or_else(|| self.err("the cache was released"))?;
        if let Some(&r) = rows.iter().find(|&&r| r >= held_rows) {
            return Err(self.err(format!("row {r} out of range ({held_rows} rows)")));
        }
        let part = CachePart { cache: cache.to_vec(), rows: held_rows, width: past };
        let sources: Vec<RowSource> = rows.iter().map(|&row| RowSource { part: 0, row }).collect();
        self.assemble(vec![part], &sources, past)
    }

    fn assemble(
        &mut self,
        parts: Vec<CachePart<Slot>>,
        sources: &[RowSource],
        width: usize,
    ) -> Result<Vec<Slot>, RuntimeError> {
        let slots =
            parts.iter().map(|p| Ok((self.slot_of(&p.cache)?, p.rows, p.width))).collect::<Result<Vec<_>, _>>()?;
        let sizes = (self.n_head, self.head_dim, width);
        let out = match &mut self.buffers {
            Buffers::F32(pool) => assemble_with(pool, &slots, sources, sizes),
            Buffers::F16(pool) => assemble_with(pool, &slots, sources, sizes),
        }?;
        Ok(vec![Slot(out); self.present_names.len()])
    }

    fn copy_out(&mut self, cache: &[Slot], rows: usize, width: usize) -> Result<Vec<HostTensor>, RuntimeError> {
        let slot = self.slot_of(cache)?;
        let fits = if slot == Slot::EMPTY { width == 0 } else { self.held(slot) == Some((rows, width)) };
        if !fits {
            return Err(self.err(format!("the cache does not hold {rows} rows × {width} positions")));
        }
        let shape = [rows, self.n_head, width, self.head_dim];
        Ok(match &self.buffers {
            Buffers::F32(pool) => copy_out_with(pool, slot, shape, HostData::F32),
            Buffers::F16(pool) => copy_out_with(pool, slot, shape, HostData::F16),
        })
    }

    fn copy_in(&mut self, tensors: &[HostTensor]) -> Result<Vec<Slot>, RuntimeError> {
        let first = tensors.first().filter(|_| tensors.len() == self.past_names.len());
        let Some([rows, heads, width, dim]) = first.and_then(|t| <[usize; 4]>::try_from(&t.shape[..]).ok()) else {
            return Err(self.err(format!(
                "{} host tensors, expected {} of rank 4",
                tensors.len(),
                self.past_names.len()
            )));
        };
        if (heads, dim) != (self.n_head, self.head_dim) || tensors.iter().any(|t| t.shape != tensors[0].shape) {
            return Err(self.err("host cache tensors of another shape"));
        }
        let len = rows * heads * width * dim;
        fn fill<T: Copy + Default>(pool: &mut Pool<T>, data: &[&[T]], len: usize, rows: usize, width: usize) -> usize {
            let out = pool.take(len);
            for (b, d) in pool.sets[out].tensors.iter_mut().zip(data) {
                b[..len].copy_from_slice(d);
            }
            pool.sets[out].rows = rows;
            pool.sets[out].past = width;
            out
        }
        let library = self.runner.library.clone();
        let wrong = || RuntimeError::Ort { library, message: "host cache tensors of another element type".into() };
        let out = match &mut self.buffers {
            Buffers::F32(pool) => {
                let data = tensors.iter().map(|t| t.as_f32().filter(|d| d.len() == len)).collect::<Option<Vec<_>>>();
                fill(pool, &data.ok_or_else(wrong)?, len, rows, width)
            }
            Buffers::F16(pool) => {
                let data = tensors
                    .iter()
                    .map(|t| match &t.data {
                        HostData::F16(v) if v.len() == len => Some(v.as_slice()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>();
                fill(pool, &data.ok_or_else(wrong)?, len, rows, width)
            }
        };
        Ok(vec![Slot(out); self.present_names.len()])
    }

    fn release(&mut self, cache: Vec<Slot>) {
        if let Ok(slot) = self.slot_of(&cache) {
            match &mut self.buffers {
                Buffers::F32(pool) => pool.give(slot),
                Buffers::F16(pool) => pool.give(slot),
            }
        }
    }

    fn last_logits_only(&self) -> bool {
        self.runner.last_only
    }

    fn reset(&mut self) {
        match &mut self.buffers {
            Buffers::F32(pool) => pool.free = (0..pool.sets.len()).collect(),
            Buffers::F16(pool) => pool.free = (0..pool.sets.len()).collect(),
        }
    }
}
