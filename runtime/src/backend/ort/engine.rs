//! The decoding engine over ONNX Runtime: every cache buffer allocated once and bound
//! (IoBinding). A concatenating export alternates two buffer sets as past and present; a
//! `--kv-cache shared` export appends into one set bound as both.

use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorRef, TensorRefMut};

use super::OrtRunner;
use crate::backend::assemble::{self, RowShape, Strided};
use crate::backend::engine::{
    Alignment, AllLogits, CachePart, CacheShape, Engine, RowSource, TokenInputs, cache_names,
};
use crate::backend::{GraphRunner, RuntimeError};
use crate::tensor::{ElemType, HostData, HostTensor};

/// The ONNX Runtime engine of a decoding session, with every cache buffer
/// allocated once and reused (IoBinding): a pool of buffer sets, one buffer
/// per cache tensor each, and a logits buffer kept across steps.
///
/// A concatenating export (`present = Concat(past, new)`) reads its past set and writes a free
/// one, so a lone session alternates between two sets. A `--kv-cache shared` export
/// (GroupQueryAttention) gets one set bound as both past and present, with room for more
/// positions than it holds (its capacity, the row stride): each step appends in place, and the
/// set is copied only when it runs out of room. Such a cache is left-aligned ([`Alignment::Left`]):
/// every row starts at position 0 and the graph reads each row's length from its attention mask,
/// so rows of different lengths share one batch without padding, and joining or leaving moves
/// only the rows concerned. Beam reordering and batch assembly are one gather pass.
pub struct OrtEngine {
    runner: OrtRunner,
    past_names: Vec<String>,
    present_names: Vec<String>,
    cache_type: ElemType,
    sizes: Sizes,
    buffers: Buffers,
}

/// Cache and logits sizes, and whether the cache is shared.
#[derive(Clone, Copy)]
struct Sizes {
    n_head: usize,
    head_dim: usize,
    vocab: usize,
    shared: bool,
}

impl Sizes {
    /// Positions a new shared set holds room for, at least `positions`: the next power of two (at
    /// least [`MIN_CAPACITY`]), so a growing cache is copied a logarithmic number of times.
    /// Concatenating sets hold exactly their positions.
    fn capacity(&self, positions: usize) -> usize {
        if self.shared {
            positions.max(MIN_CAPACITY).checked_next_power_of_two().unwrap_or(positions)
        } else {
            positions
        }
    }

    fn plane(&self) -> usize {
        self.n_head * self.head_dim
    }
}

/// The smallest capacity of a shared buffer set, in positions.
const MIN_CAPACITY: usize = 64;

/// The buffer pool and the logits buffer, in the graph's float type.
enum Buffers {
    F32(Pool<f32>),
    F16(Pool<half::f16>),
}

/// One cache: a buffer per tensor, and the rows and positions they hold.
struct BufferSet<T> {
    tensors: Vec<Vec<T>>,
    rows: usize,
    /// Positions held (the longest row's, when rows differ).
    past: usize,
    /// Positions each row has room for: the row stride.
    capacity: usize,
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
            self.sets.push(BufferSet { tensors: vec![Vec::new(); self.tensors], rows: 0, past: 0, capacity: 0 });
            self.sets.len() - 1
        });
        self.sets[i].grow(len);
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

impl<T: Copy + Default> BufferSet<T> {
    /// Every buffer at least `len` elements long, keeping what it holds.
    fn grow(&mut self, len: usize) {
        for b in &mut self.tensors {
            if b.len() < len {
                b.resize(len, T::default());
            }
        }
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
        let sizes =
            Sizes { n_head: shape.n_head, head_dim: shape.head_dim, vocab: shape.vocab, shared: runner.shared_cache };
        OrtEngine { runner, past_names, present_names, cache_type, sizes, buffers }
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

fn cache_error(message: String) -> RuntimeError {
    RuntimeError::Input { name: "cache".into(), message }
}

/// One step's inputs as the pool sees them.
struct StepShape {
    rows: usize,
    past: usize,
    seq: usize,
    logits: [usize; 3],
}

/// One step over the pool of element type `T`. A concatenating graph reads set `past_slot` (or
/// nothing for an empty cache), writes the presents into a free set and frees the past set; a
/// shared one appends into `past_slot` itself, first copied into a larger set when it lacks room.
/// Returns the logits and the presents' set.
fn step_with<T>(
    session: &mut Session,
    pool: &mut Pool<T>,
    names: (&[String], &[String]),
    inputs: [&DynValue; 3],
    past_slot: Slot,
    step: StepShape,
    sizes: Sizes,
) -> Result<(Vec<f32>, usize), String>
where
    T: Copy + Default + ort::value::PrimitiveTensorElementType + std::fmt::Debug + ToF32 + 'static,
{
    let StepShape { rows, past, seq, logits: logits_shape } = step;
    let (heads, dim, plane) = (sizes.n_head, sizes.head_dim, sizes.plane());
    let total = past + seq;
    let logits_len: usize = logits_shape.iter().product();
    if pool.logits.len() < logits_len {
        pool.logits.resize(logits_len, T::default());
    }
    // Where the presents go, and the capacity of its rows.
    let (out, capacity) = if sizes.shared {
        let fits = pool.get(past_slot).filter(|s| s.capacity >= total);
        match fits {
            Some(set) => (past_slot.0, set.capacity),
            None => {
                let capacity = sizes.capacity(total);
                let out = pool.take(rows * plane * capacity);
                if pool.get(past_slot).is_some() {
                    // Out of room: the rows move to a larger set.
                    let mut dst = std::mem::take(&mut pool.sets[out].tensors);
                    let set = &pool.sets[past_slot.0];
                    let shape = RowShape { heads, head_dim: dim, stride: capacity, width: past };
                    let pairs: Vec<(usize, usize)> = (0..rows).map(|r| (r, r)).collect();
                    let result = set.tensors.iter().zip(dst.iter_mut()).try_for_each(|(src, d)| {
                        assemble::copy_rows_left(Strided { data: src, rows, stride: set.capacity }, d, &pairs, shape)
                    });
                    pool.sets[out].tensors = dst;
                    if let Err(e) = result {
                        pool.give(Slot(out));
                        return Err(e.to_string());
                    }
                }
                pool.give(past_slot);
                (out, capacity)
            }
        }
    } else {
        (pool.take(rows * plane * total), total)
    };
    let shape = |t: usize| vec![rows as i64, heads as i64, t as i64, dim as i64];
    let mut logits_buf = std::mem::take(&mut pool.logits);
    let mut presents = std::mem::take(&mut pool.sets[out].tensors);
    let present_len = rows * plane * capacity;
    let result = (|| {
        let mut binding = session.create_binding().map_err(|e| e.to_string())?;
        for (name, value) in ["input_ids", "attention_mask", "position_ids"].iter().zip(inputs) {
            super::binding::bind_input(&mut binding, name, value)?;
        }
        let present_views = presents
            .iter_mut()
            .map(|b| TensorRefMut::from_array_view_mut((shape(capacity), &mut b[..present_len])))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        // The past: the present buffers themselves (shared), or the past set's (concatenating).
        let no_past: Vec<Vec<T>> = vec![Vec::new(); pool.tensors];
        let past_views = if sizes.shared {
            Vec::new()
        } else {
            let live = pool.get(past_slot).map_or(&no_past, |s| &s.tensors);
            live.iter()
                .map(|b| TensorRef::from_array_view((shape(past), &b[..rows * plane * past])))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?
        };
        for (i, name) in names.0.iter().enumerate() {
            match (past_views.get(i), present_views.get(i)) {
                (Some(view), _) => super::binding::bind_input(&mut binding, name, &**view)?,
                (None, Some(view)) => super::binding::bind_input(&mut binding, name, &**view)?,
                (None, None) => return Err(format!("no buffer for {name}")),
            }
        }
        for (name, view) in names.1.iter().zip(&present_views) {
            super::binding::bind_output(&mut binding, name, &**view)?;
        }
        let logits_dims: Vec<i64> = logits_shape.iter().map(|&d| d as i64).collect();
        let logits_view = TensorRefMut::from_array_view_mut((logits_dims, &mut logits_buf[..logits_len]))
            .map_err(|e| e.to_string())?;
        super::binding::bind_output(&mut binding, "logits", &*logits_view)?;
        super::binding::run(session, &binding)
    })();
    let logits: Vec<f32> = logits_buf[..logits_len].iter().map(|&x| x.to_f32()).collect();
    pool.logits = logits_buf;
    pool.sets[out].tensors = presents;
    if let Err(e) = result {
        pool.give(Slot(out));
        return Err(e);
    }
    let set = &mut pool.sets[out];
    (set.rows, set.past, set.capacity) = (rows, total, capacity);
    if !sizes.shared {
        pool.give(past_slot);
    }
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

/// A part of [`Engine::assemble`] as the pool names it: set, rows, positions.
type PoolPart = (Slot, usize, usize);

/// Checks every part names a live set holding what the caller says it holds.
fn check_parts<T: Copy + Default>(pool: &Pool<T>, parts: &[PoolPart]) -> Result<(), RuntimeError> {
    for &(slot, rows, past) in parts {
        let fits = match pool.get(slot) {
            Some(set) => (set.rows, set.past) == (rows, past),
            None => slot == Slot::EMPTY && past == 0,
        };
        if !fits {
            return Err(cache_error(format!(
                "a cache part of {rows} rows × {past} positions is not one this engine holds"
            )));
        }
    }
    Ok(())
}

/// Assembles rows of the pool's sets right-aligned into a free set of exactly `width` positions
/// (see [`Engine::assemble`]), frees the parts.
fn assemble_right<T: Copy + Default>(
    pool: &mut Pool<T>,
    parts: &[PoolPart],
    sources: &[RowSource],
    sizes: Sizes,
    width: usize,
) -> Result<usize, RuntimeError> {
    let (heads, dim) = (sizes.n_head, sizes.head_dim);
    let len = sources
        .len()
        .checked_mul(sizes.plane() * width)
        .ok_or_else(|| cache_error("the assembled cache's size overflows".into()))?;
    let out = pool.take(len);
    let mut dst = std::mem::take(&mut pool.sets[out].tensors);
    let empty: Vec<T> = Vec::new();
    let mut result = Ok(());
    for (j, d) in dst.iter_mut().enumerate() {
        let views: Vec<assemble::Part<'_, T>> = parts
            .iter()
            .map(|&(slot, rows, past)| assemble::Part {
                data: pool.get(slot).map_or(&empty[..], |s| &s.tensors[j][..rows * sizes.plane() * past]),
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
    let set = &mut pool.sets[out];
    (set.rows, set.past, set.capacity) = (sources.len(), width, width);
    for &(slot, ..) in parts {
        pool.give(slot);
    }
    Ok(out)
}

/// Moves rows of a live set within it, positions `shared..` of each (see [`Engine::reorder_rows`]).
fn move_in_place<T: Copy>(
    pool: &mut Pool<T>,
    slot: Slot,
    moves: &[(usize, usize)],
    sizes: Sizes,
    shared: usize,
) -> Result<(), RuntimeError> {
    if pool.free.contains(&slot.0) {
        return Err(cache_error("the cache was released".into()));
    }
    let set = pool.sets.get_mut(slot.0).ok_or_else(|| cache_error("the cache was released".into()))?;
    let shape = RowShape { heads: sizes.n_head, head_dim: sizes.head_dim, stride: set.capacity, width: set.past };
    set.tensors.iter_mut().try_for_each(|b| assemble::move_row_tails(b, moves, shape, shared))
}

/// Assembles rows left-aligned (see [`Engine::assemble`]). When the first part's set has room for
/// `width` positions, the result is that set: its rows that stay are not copied, rows moving
/// within it are moved in place, rows of other parts are copied in. Otherwise a free set with
/// room is filled. Frees the other parts.
fn assemble_left<T: Copy + Default>(
    pool: &mut Pool<T>,
    parts: &[PoolPart],
    sources: &[RowSource],
    sizes: Sizes,
    width: usize,
) -> Result<usize, RuntimeError> {
    let (heads, dim) = (sizes.n_head, sizes.head_dim);
    if let Some(s) = sources.iter().find(|s| parts.get(s.part).is_none_or(|p| s.row >= p.1)) {
        return Err(cache_error(format!("row {} of part {} does not exist ({} parts)", s.row, s.part, parts.len())));
    }
    let in_place = parts.first().and_then(|&(slot, ..)| pool.get(slot).filter(|s| s.capacity >= width).map(|_| slot));
    let (out, capacity) = match in_place {
        Some(slot) => (slot.0, pool.sets[slot.0].capacity),
        None => {
            let capacity = sizes.capacity(width);
            (pool.take(0), capacity)
        }
    };
    let len = sources
        .len()
        .checked_mul(sizes.plane())
        .and_then(|x| x.checked_mul(capacity))
        .ok_or_else(|| cache_error("the assembled cache's size overflows".into()))?;
    pool.sets[out].grow(len);
    let shape = RowShape { heads, head_dim: dim, stride: capacity, width };
    let mut dst = std::mem::take(&mut pool.sets[out].tensors);
    let result = dst.iter_mut().enumerate().try_for_each(|(j, d)| {
        for (p, &(slot, rows, _)) in parts.iter().enumerate() {
            let pairs: Vec<(usize, usize)> =
                sources.iter().enumerate().filter(|(_, s)| s.part == p).map(|(i, s)| (s.row, i)).collect();
            if pairs.is_empty() {
                continue;
            }
            if p == 0 && in_place.is_some() {
                assemble::move_rows_left(d, &pairs, shape)?;
            } else if let Some(set) = pool.get(slot) {
                let src = Strided { data: &set.tensors[j], rows, stride: set.capacity };
                assemble::copy_rows_left(src, d, &pairs, shape)?;
            }
        }
        Ok::<_, RuntimeError>(())
    });
    pool.sets[out].tensors = dst;
    if let Err(e) = result {
        if in_place.is_none() {
            pool.give(Slot(out));
        }
        return Err(e);
    }
    let set = &mut pool.sets[out];
    (set.rows, set.past, set.capacity) = (sources.len(), width, capacity);
    for &(slot, ..) in parts {
        if slot.0 != out {
            pool.give(slot);
        }
    }
    Ok(out)
}

/// The first `shape[2]` positions of each row of a set, compact (`[rows, heads, width, head_dim]`).
fn copy_out_with<T: Copy + Default>(
    pool: &Pool<T>,
    slot: Slot,
    shape: [usize; 4],
    wrap: fn(Vec<T>) -> HostData,
) -> Vec<HostTensor> {
    let [rows, heads, width, dim] = shape;
    let len: usize = shape.iter().product();
    match pool.get(slot) {
        Some(set) => set
            .tensors
            .iter()
            .map(|b| {
                let data = if set.capacity == width {
                    b[..len].to_vec()
                } else {
                    let mut out = Vec::with_capacity(len);
                    for rh in 0..rows * heads {
                        out.extend_from_slice(&b[rh * set.capacity * dim..][..width * dim]);
                    }
                    out
                };
                HostTensor { shape: shape.to_vec(), data: wrap(data) }
            })
            .collect(),
        None => (0..pool.tensors).map(|_| HostTensor { shape: shape.to_vec(), data: wrap(Vec::new()) }).collect(),
    }
}

/// A set made from compact host data (`[rows, heads, width, head_dim]` each).
fn copy_in_with<T: Copy + Default>(
    pool: &mut Pool<T>,
    data: &[&[T]],
    [rows, heads, width, dim]: [usize; 4],
    sizes: Sizes,
) -> usize {
    let capacity = sizes.capacity(width);
    let out = pool.take(rows * heads * capacity * dim);
    let set = &mut pool.sets[out];
    for (b, d) in set.tensors.iter_mut().zip(data) {
        for rh in 0..rows * heads {
            b[rh * capacity * dim..][..width * dim].copy_from_slice(&d[rh * width * dim..][..width * dim]);
        }
    }
    (set.rows, set.past, set.capacity) = (rows, width, capacity);
    out
}

/// Set `slot` cut to its first `keep` positions, in place: a shared set only forgets the rest (its
/// rows keep their stride); a concatenating set's rows move up to the new, shorter stride, which
/// is what the graph reads as `past` next.
fn truncate_with<T: Copy>(pool: &mut Pool<T>, slot: Slot, keep: usize, sizes: Sizes) -> Result<(), String> {
    let set = match pool.sets.get_mut(slot.0) {
        Some(set) if !pool.free.contains(&slot.0) => set,
        _ => return Err("the cache is not held by this engine".into()),
    };
    if keep > set.past {
        return Err(format!("cannot keep {keep} positions: {} are cached", set.past));
    }
    if !sizes.shared {
        let (dim, lines) = (sizes.head_dim, set.rows * sizes.n_head);
        for b in &mut set.tensors {
            if b.len() < lines * set.capacity * dim {
                return Err("a cache buffer is shorter than its rows".into());
            }
            // Destinations never pass their sources (keep ≤ capacity), so lines move in order.
            for line in 1..lines {
                b.copy_within(line * set.capacity * dim..line * set.capacity * dim + keep * dim, line * keep * dim);
            }
        }
        set.capacity = keep;
    }
    set.past = keep;
    Ok(())
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
        let step = StepShape { rows: t.rows, past, seq: t.seq, logits: [t.rows, logit_positions, self.sizes.vocab] };
        let names = (self.past_names.as_slice(), self.present_names.as_slice());
        let inputs = [&ids, &mask, &positions];
        let session = &mut self.runner.session;
        let sizes = self.sizes;
        let (data, out) = match &mut self.buffers {
            Buffers::F32(pool) => step_with(session, pool, names, inputs, slot, step, sizes),
            Buffers::F16(pool) => step_with(session, pool, names, inputs, slot, step, sizes),
        }
        .map_err(|e| RuntimeError::Ort { library: self.runner.library.clone(), message: e })?;
        let logits = AllLogits { rows: t.rows, positions: logit_positions, vocab: self.sizes.vocab, data };
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

    /// In place: only rows that change, and only their positions from `shared` on.
    fn reorder_rows(&mut self, cache: &[Slot], rows: &[usize], shared: usize) -> Result<Vec<Slot>, RuntimeError> {
        let slot = self.slot_of(cache)?;
        let (held_rows, _) = self.held(slot).ok_or_else(|| self.err("the cache was released"))?;
        if slot == Slot::EMPTY || rows.len() != held_rows {
            return self.select_rows(cache, rows);
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= held_rows) {
            return Err(self.err(format!("row {r} out of range ({held_rows} rows)")));
        }
        let moves: Vec<(usize, usize)> = rows.iter().enumerate().map(|(to, &from)| (from, to)).collect();
        let sizes = self.sizes;
        match &mut self.buffers {
            Buffers::F32(pool) => move_in_place(pool, slot, &moves, sizes, shared),
            Buffers::F16(pool) => move_in_place(pool, slot, &moves, sizes, shared),
        }?;
        Ok(cache.to_vec())
    }

    fn assemble(
        &mut self,
        parts: Vec<CachePart<Slot>>,
        sources: &[RowSource],
        width: usize,
    ) -> Result<Vec<Slot>, RuntimeError> {
        let slots =
            parts.iter().map(|p| Ok((self.slot_of(&p.cache)?, p.rows, p.width))).collect::<Result<Vec<_>, _>>()?;
        let sizes = self.sizes;
        let out = match (&mut self.buffers, sizes.shared) {
            (Buffers::F32(pool), shared) => {
                check_parts(pool, &slots)?;
                if shared {
                    assemble_left(pool, &slots, sources, sizes, width)
                } else {
                    assemble_right(pool, &slots, sources, sizes, width)
                }
            }
            (Buffers::F16(pool), shared) => {
                check_parts(pool, &slots)?;
                if shared {
                    assemble_left(pool, &slots, sources, sizes, width)
                } else {
                    assemble_right(pool, &slots, sources, sizes, width)
                }
            }
        }?;
        Ok(vec![Slot(out); self.present_names.len()])
    }

    fn copy_out(&mut self, cache: &[Slot], rows: usize, width: usize) -> Result<Vec<HostTensor>, RuntimeError> {
        let slot = self.slot_of(cache)?;
        let fits = if slot == Slot::EMPTY { width == 0 } else { self.held(slot) == Some((rows, width)) };
        if !fits {
            return Err(self.err(format!("the cache does not hold {rows} rows × {width} positions")));
        }
        let shape = [rows, self.sizes.n_head, width, self.sizes.head_dim];
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
        if (heads, dim) != (self.sizes.n_head, self.sizes.head_dim)
            || tensors.iter().any(|t| t.shape != tensors[0].shape)
        {
            return Err(self.err("host cache tensors of another shape"));
        }
        let len = rows * heads * width * dim;
        let shape = [rows, heads, width, dim];
        let library = self.runner.library.clone();
        let wrong = || RuntimeError::Ort { library, message: "host cache tensors of another element type".into() };
        let sizes = self.sizes;
        let out = match &mut self.buffers {
            Buffers::F32(pool) => {
                let data = tensors.iter().map(|t| t.as_f32().filter(|d| d.len() == len)).collect::<Option<Vec<_>>>();
                copy_in_with(pool, &data.ok_or_else(wrong)?, shape, sizes)
            }
            Buffers::F16(pool) => {
                let data = tensors
                    .iter()
                    .map(|t| match &t.data {
                        HostData::F16(v) if v.len() == len => Some(v.as_slice()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>();
                copy_in_with(pool, &data.ok_or_else(wrong)?, shape, sizes)
            }
        };
        Ok(vec![Slot(out); self.present_names.len()])
    }

    fn truncate(
        &mut self,
        cache: Vec<Slot>,
        rows: usize,
        width: usize,
        keep: usize,
    ) -> Result<Vec<Slot>, RuntimeError> {
        let slot = self.slot_of(&cache)?;
        if self.held(slot) != Some((rows, width)) {
            return Err(self.err(format!("the cache does not hold {rows} rows × {width} positions")));
        }
        if slot == Slot::EMPTY || keep == width {
            return Ok(cache);
        }
        let sizes = self.sizes;
        let done = match &mut self.buffers {
            Buffers::F32(pool) => truncate_with(pool, slot, keep, sizes),
            Buffers::F16(pool) => truncate_with(pool, slot, keep, sizes),
        };
        done.map_err(cache_error)?;
        Ok(cache)
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

    fn alignment(&self) -> Alignment {
        if self.sizes.shared { Alignment::Left } else { Alignment::Right }
    }

    fn reset(&mut self) {
        match &mut self.buffers {
            Buffers::F32(pool) => pool.free = (0..pool.sets.len()).collect(),
            Buffers::F16(pool) => pool.free = (0..pool.sets.len()).collect(),
        }
    }
}
