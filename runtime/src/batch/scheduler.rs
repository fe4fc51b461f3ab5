//! The scheduler: one thread owns the engine and runs, in turn, one decode step of every running
//! row and one chunk of the oldest prompt's prefill.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use super::prefix::PrefixCache;
use super::{BatchOptions, Msg, Reply, Stats, Step};
use crate::backend::RuntimeError;
use crate::backend::engine::{Alignment, CachePart, CacheShape, Engine, RowSource, TokenInputs};
use crate::session::Logits;

/// Where a member's rows are.
enum Phase<V> {
    /// Its prompt waits for rows.
    Waiting,
    /// Its prompt is being prefilled: `unique` distinct rows (identical prompt rows, such as a
    /// prompt expanded to beams or samples, are computed once), `done` positions so far.
    Prefilling { cache: Option<CachePart<V>>, done: usize, map: Vec<usize>, unique: Vec<usize> },
    /// Prefilled, not yet in the batch: member row `i` is row `map[i]` of `part`.
    Ready { part: CachePart<V>, map: Vec<usize> },
    /// In the batch: member row `i` is batch row `at[i]`.
    Batched { at: Vec<usize> },
}

struct Member<V> {
    phase: Phase<V>,
    /// Positions each of its rows holds.
    past: usize,
    /// The pass it waits for.
    pending: Option<(Step, mpsc::Sender<Reply>)>,
    /// Set when a selection could not apply: the next pass fails with it.
    broken: Option<RuntimeError>,
}

impl<V> Member<V> {
    fn rows(&self) -> usize {
        match &self.phase {
            Phase::Waiting => self.pending.as_ref().map_or(0, |(s, _)| s.rows),
            Phase::Prefilling { map, .. } | Phase::Ready { map, .. } => map.len(),
            Phase::Batched { at } => at.len(),
        }
    }
}

pub(super) struct Scheduler<E: Engine> {
    engine: E,
    shape: CacheShape,
    options: BatchOptions,
    rx: mpsc::Receiver<Msg>,
    stats: Arc<Stats>,
    members: HashMap<u64, Member<E::Value>>,
    /// Batched members in batch order.
    order: Vec<u64>,
    batch: Option<CachePart<E::Value>>,
    /// Members whose prompt waits or is being prefilled, oldest first.
    prefills: VecDeque<u64>,
    prefix: PrefixCache,
    /// How long decode steps and prefill passes take (per token), averaged as they run: a prefill
    /// pass between two decode steps is sized to take about as long as a decode step.
    timing: Timing,
}

/// Running averages of the engine's speed.
#[derive(Default)]
struct Timing {
    decode_s: Option<f64>,
    prefill_s_per_token: Option<f64>,
}

/// The smallest prefill pass while rows decode: smaller ones cost more per token than they save.
const MIN_PREFILL_CHUNK: usize = 16;

impl Timing {
    fn average(old: Option<f64>, new: f64) -> Option<f64> {
        Some(old.map_or(new, |o| 0.8 * o + 0.2 * new))
    }

    /// Tokens of a prefill pass while rows decode: about one decode step's time for each prompt
    /// waiting (the one being prefilled included), so a queue drains as fast as it fills the batch
    /// and a lone newcomer delays the running rows by about a step; between [`MIN_PREFILL_CHUNK`]
    /// and `max`, and `max` until both speeds are known.
    fn chunk(&self, max: usize, waiting: usize) -> usize {
        match (self.decode_s, self.prefill_s_per_token) {
            (Some(step), Some(per_token)) if per_token > 0.0 => {
                ((step * waiting.max(1) as f64 / per_token) as usize).clamp(MIN_PREFILL_CHUNK.min(max), max)
            }
            _ => max,
        }
    }
}

fn input(name: &str, message: String) -> RuntimeError {
    RuntimeError::Input { name: name.into(), message }
}

/// A copy of an error for every member a failed pass concerned.
fn copy_error(e: &RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::Interrupted(i) => RuntimeError::Interrupted(*i),
        RuntimeError::Setting { field, message } => RuntimeError::Setting { field, message: message.clone() },
        other => RuntimeError::Input { name: "batch".into(), message: other.to_string() },
    }
}

impl<E: Engine> Scheduler<E> {
    pub fn new(
        engine: E,
        shape: CacheShape,
        options: BatchOptions,
        rx: mpsc::Receiver<Msg>,
        stats: Arc<Stats>,
    ) -> Self {
        let prefix = PrefixCache::new(options.prefix_cache_bytes);
        Scheduler {
            engine,
            shape,
            options,
            rx,
            stats,
            members: HashMap::new(),
            order: Vec::new(),
            batch: None,
            prefills: VecDeque::new(),
            prefix,
            timing: Timing::default(),
        }
    }

    pub fn run(mut self) {
        loop {
            let idle = !self.decode_ready() && !self.can_prefill();
            let first = if idle {
                match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            } else {
                None
            };
            if let Some(m) = first {
                self.absorb(m);
            }
            while let Ok(m) = self.rx.try_recv() {
                self.absorb(m);
            }
            self.admit();
            if self.decode_ready() {
                self.decode_step();
            }
            if self.can_prefill() {
                self.prefill_chunk();
            }
            self.publish();
        }
    }

    fn publish(&self) {
        let batch_rows = self.batch.as_ref().map_or(0, |b| b.rows);
        self.stats.batch_rows.store(batch_rows, Ordering::Relaxed);
        let waiting = self.prefills.iter().filter(|id| matches!(self.phase(id), Some(Phase::Waiting))).count();
        self.stats.waiting.store(waiting, Ordering::Relaxed);
        self.stats.prefix_bytes.store(self.prefix.bytes(), Ordering::Relaxed);
    }

    fn phase(&self, id: &u64) -> Option<&Phase<E::Value>> {
        self.members.get(id).map(|m| &m.phase)
    }

    fn absorb(&mut self, msg: Msg) {
        match msg {
            Msg::Forward { id, step, reply } => {
                let member = self.members.entry(id).or_insert_with(|| Member {
                    phase: Phase::Waiting,
                    past: 0,
                    pending: None,
                    broken: None,
                });
                if let Some(e) = member.broken.take() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let fresh = matches!(member.phase, Phase::Waiting) && member.pending.is_none();
                member.pending = Some((step, reply));
                if fresh {
                    self.prefills.push_back(id);
                }
            }
            Msg::Select { id, rows } => {
                let Some(member) = self.members.get_mut(&id) else { return };
                let map = match &mut member.phase {
                    Phase::Ready { map, .. } => map,
                    Phase::Batched { at } => at,
                    Phase::Waiting | Phase::Prefilling { .. } => return,
                };
                match rows.iter().map(|&r| map.get(r).copied()).collect::<Option<Vec<_>>>() {
                    Some(selected) => *map = selected,
                    None => member.broken = Some(input("cache", format!("a row of {rows:?} is out of range"))),
                }
            }
            Msg::Leave { id } => self.leave(id),
        }
    }

    /// Forgets a member; its rows drop out of the batch at the next rebuild.
    fn leave(&mut self, id: u64) {
        let Some(member) = self.members.remove(&id) else { return };
        self.prefills.retain(|&p| p != id);
        match member.phase {
            Phase::Prefilling { cache: Some(part), .. } | Phase::Ready { part, .. } => self.engine.release(part.cache),
            _ => {}
        }
        self.order.retain(|&o| o != id);
        if self.order.is_empty()
            && let Some(batch) = self.batch.take()
        {
            self.engine.release(batch.cache);
        }
    }

    /// Rows in flight: running, prefilled or prefilling.
    fn rows_in_use(&self) -> usize {
        self.members.values().filter(|m| !matches!(m.phase, Phase::Waiting)).map(Member::rows).sum()
    }

    /// Starts the oldest waiting prompts while their rows fit (in order: a large call is not
    /// overtaken forever by small ones).
    fn admit(&mut self) {
        let mut in_use = self.rows_in_use();
        for i in 0..self.prefills.len() {
            let id = self.prefills[i];
            let Some(member) = self.members.get_mut(&id) else { continue };
            if !matches!(member.phase, Phase::Waiting) {
                continue;
            }
            let Some((step, _)) = &member.pending else { continue };
            if in_use + step.rows > self.options.max_rows {
                break;
            }
            in_use += step.rows;
            // Identical rows (a prompt expanded to beams or samples) are prefilled once.
            let total = step.seq;
            let row_of = |r: usize| {
                (&step.input_ids[r * step.seq..(r + 1) * step.seq], &step.attention_mask[r * total..(r + 1) * total])
            };
            let mut unique: Vec<usize> = Vec::new();
            let mut map = Vec::with_capacity(step.rows);
            for r in 0..step.rows {
                match unique.iter().position(|&u| row_of(u) == row_of(r)) {
                    Some(u) => map.push(u),
                    None => {
                        map.push(unique.len());
                        unique.push(r);
                    }
                }
            }
            member.phase = Phase::Prefilling { cache: None, done: 0, map, unique };
        }
    }

    fn can_prefill(&self) -> bool {
        self.prefills.iter().any(|id| matches!(self.phase(id), Some(Phase::Prefilling { .. })))
    }

    /// Every batched member waits for its step, and someone is there to take it.
    fn decode_ready(&self) -> bool {
        let batched_ready = self.order.iter().all(|id| self.members.get(id).is_some_and(|m| m.pending.is_some()));
        let joining = self.members.values().any(|m| matches!(m.phase, Phase::Ready { .. }) && m.pending.is_some());
        batched_ready && (joining || !self.order.is_empty())
    }

    /// One chunk of the oldest prefill in progress.
    fn prefill_chunk(&mut self) {
        let Some(id) =
            self.prefills.iter().copied().find(|id| matches!(self.phase(id), Some(Phase::Prefilling { .. })))
        else {
            return;
        };
        if let Err(e) = self.try_prefill_chunk(id) {
            self.fail(id, e);
        }
    }

    fn try_prefill_chunk(&mut self, id: u64) -> Result<(), RuntimeError> {
        let member = self.members.get_mut(&id).ok_or_else(|| input("batch", "no such member".into()))?;
        let Phase::Prefilling { cache, done, map, unique } = &mut member.phase else { return Ok(()) };
        let (step, _) = member.pending.as_ref().ok_or_else(|| input("batch", "no prompt".into()))?;
        let (seq, u) = (step.seq, unique.len());
        let all_ones = |r: usize| step.attention_mask[r * seq..(r + 1) * seq].iter().all(|&m| m == 1);
        let prompt_tokens = |r: usize| -> Vec<u32> {
            step.input_ids[r * seq..(r + 1) * seq].iter().map(|&t| u32::try_from(t).unwrap_or(u32::MAX)).collect()
        };
        let cacheable = u == 1 && all_ones(unique[0]) && self.options.prefix_cache_bytes > 0;
        // A left-aligned engine (GroupQueryAttention) extends a cache by several positions one row
        // at a time: prompts of several distinct rows are prefilled in one pass.
        let whole = u > 1 && self.engine.alignment() == Alignment::Left;
        if cache.is_none() {
            let shape = [u, self.shape.n_head, 0, self.shape.head_dim];
            let empty = (0..2 * self.shape.n_layer).map(|_| self.engine.empty(&shape)).collect::<Result<_, _>>()?;
            let mut start = CachePart { cache: empty, rows: u, width: 0 };
            if cacheable {
                match self.prefix.lookup(step.tag.partition, &prompt_tokens(unique[0])) {
                    Some((len, tensors)) => {
                        let restored = self.engine.copy_in(&tensors)?;
                        self.engine.release(std::mem::replace(&mut start.cache, restored));
                        start.width = len;
                        *done = len;
                        self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
                        self.stats.prefix_tokens_reused.fetch_add(len as u64, Ordering::Relaxed);
                    }
                    None => {
                        self.stats.prefix_misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            *cache = Some(start);
        }
        // Alone, a prompt is prefilled in passes of --prefill-chunk; beside decoding rows, in passes
        // about a step long per waiting prompt (see `Timing::chunk`).
        let max_chunk = if self.order.is_empty() {
            self.options.prefill_chunk
        } else {
            self.timing.chunk(self.options.prefill_chunk, self.prefills.len())
        };
        let chunk = if whole { seq - *done } else { max_chunk.min(seq - *done) };
        let end = *done + chunk;
        let pick = |data: &[i64], width: usize, from: usize, to: usize| -> Vec<i64> {
            unique.iter().flat_map(|&r| data[r * width + from..r * width + to].iter().copied()).collect()
        };
        let ids = pick(&step.input_ids, seq, *done, end);
        let mask = pick(&step.attention_mask, seq, 0, end);
        let positions = pick(&step.position_ids, seq, *done, end);
        let inputs = TokenInputs {
            rows: u,
            seq: chunk,
            total: end,
            input_ids: &ids,
            attention_mask: &mask,
            position_ids: &positions,
        };
        let part = cache.take().ok_or_else(|| input("batch", "no cache".into()))?;
        self.stats.prefill_chunks.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let (logits, presents) = match self.engine.step(&inputs, &part.cache) {
            Ok(out) => out,
            Err(e) => {
                self.engine.release(part.cache);
                return Err(e);
            }
        };
        let per_token = started.elapsed().as_secs_f64() / (chunk * u) as f64;
        self.timing.prefill_s_per_token = Timing::average(self.timing.prefill_s_per_token, per_token);
        *cache = Some(CachePart { cache: presents, rows: u, width: end });
        *done = end;
        if end < seq {
            return Ok(());
        }
        // The whole prompt is in: hand its last-position logits back, expanded to every row.
        let vocab = logits.vocab;
        if logits.rows != u || logits.positions == 0 || logits.data.len() != u * logits.positions * vocab {
            return Err(input("logits", format!("[{}, {}, {vocab}] for {u} rows", logits.rows, logits.positions)));
        }
        let mut data = Vec::with_capacity(map.len() * vocab);
        for &m in map.iter() {
            data.extend_from_slice(logits.at(m, logits.positions - 1));
        }
        let part = cache.take().ok_or_else(|| input("batch", "no cache".into()))?;
        let map = std::mem::take(map);
        let rows = map.len();
        let partition = step.tag.partition;
        if cacheable && !self.prefix.covers(partition, &prompt_tokens(unique[0])) {
            let host = self.engine.copy_out(&part.cache, u, seq)?;
            let bytes = self.options.cache_bytes_per_position.saturating_mul(seq as u64);
            self.prefix.insert(partition, &prompt_tokens(unique[0]), host, bytes);
        }
        member.phase = Phase::Ready { part, map };
        member.past = seq;
        let (_, reply) = member.pending.take().ok_or_else(|| input("batch", "no prompt".into()))?;
        self.prefills.retain(|&p| p != id);
        let _ = reply.send(Ok(Logits { rows, vocab, data }));
        Ok(())
    }

    /// Fails a member's pending pass and takes it out of the batch.
    fn fail(&mut self, id: u64, e: RuntimeError) {
        if let Some((_, reply)) = self.members.get_mut(&id).and_then(|m| m.pending.take()) {
            let _ = reply.send(Err(e));
        }
        self.leave(id);
    }

    /// One token for every row of every member waiting in or joining the batch.
    fn decode_step(&mut self) {
        let joining: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| matches!(m.phase, Phase::Ready { .. }) && m.pending.is_some())
            .map(|(&id, _)| id)
            .collect();
        let mut joining = joining;
        joining.sort_unstable();
        let participants: Vec<u64> = self.order.iter().copied().chain(joining.iter().copied()).collect();
        // A pass that is not one token per row after the prompt cannot join a decode step.
        for &id in &participants {
            let m = &self.members[&id];
            let bad = m.pending.as_ref().is_some_and(|(s, _)| s.seq != 1 || s.rows != m.rows());
            if bad {
                let e = input("input_ids", "after its prompt, a batched session takes one token per row".into());
                self.fail(id, e);
                return;
            }
        }
        let started = std::time::Instant::now();
        let result = self.rebuild(&participants).and_then(|()| self.run_decode(&participants));
        self.timing.decode_s = Timing::average(self.timing.decode_s, started.elapsed().as_secs_f64());
        if let Err(e) = result {
            for &id in &participants {
                self.fail(id, copy_error(&e));
            }
            if let Some(batch) = self.batch.take() {
                self.engine.release(batch.cache);
            }
            self.order.clear();
        }
    }

    /// Lays out the batch for `participants` (in this order), rows aligned as the engine aligns
    /// them (the longest member's positions set the width); a no-op when nothing moved.
    ///
    /// Right-aligned, each member's rows are contiguous, in order: every row is copied anyway.
    /// Left-aligned (each row keeps its own length), rows already in the batch stay where they are
    /// and rows that join or must move (a beam duplicated by reordering, a row past the new end)
    /// fill the places rows that left have freed, so joining and leaving copy only those rows.
    fn rebuild(&mut self, participants: &[u64]) -> Result<(), RuntimeError> {
        let width = participants.iter().map(|id| self.members[id].past).max().unwrap_or(0);
        let mut parts: Vec<CachePart<E::Value>> = Vec::new();
        let batch_part = self.batch.take();
        let old = batch_part.as_ref().map(|b| (b.rows, b.width));
        if let Some(b) = batch_part {
            parts.push(b);
        }
        // Each member row's source, in participant order.
        let mut wanted: Vec<(u64, Vec<RowSource>)> = Vec::with_capacity(participants.len());
        for &id in participants {
            let member = self.members.get_mut(&id).ok_or_else(|| input("batch", "no such member".into()))?;
            let phase = std::mem::replace(&mut member.phase, Phase::Waiting);
            let rows = match phase {
                Phase::Batched { at } if old.is_some() => at.iter().map(|&row| RowSource { part: 0, row }).collect(),
                Phase::Ready { part, map } => {
                    let p = parts.len();
                    parts.push(part);
                    map.iter().map(|&row| RowSource { part: p, row }).collect()
                }
                other => {
                    member.phase = other;
                    return Err(input("batch", "a member joined the batch before its prefill".into()));
                }
            };
            wanted.push((id, rows));
        }
        let (sources, layout) = match self.engine.alignment() {
            Alignment::Right => contiguous_layout(&wanted),
            Alignment::Left => stable_layout(&wanted),
        };
        let unchanged = parts.len() == 1
            && old == Some((sources.len(), width))
            && sources.iter().enumerate().all(|(i, s)| s.part == 0 && s.row == i);
        let assembled = if unchanged {
            parts.pop().map(|p| p.cache).ok_or_else(|| input("batch", "no cache".into()))
        } else {
            self.engine.assemble(parts, &sources, width)
        };
        let cache = match assembled {
            Ok(cache) => cache,
            Err(e) => {
                for (id, _) in layout {
                    self.members.remove(&id);
                }
                return Err(e);
            }
        };
        for (id, at) in layout {
            if let Some(m) = self.members.get_mut(&id) {
                m.phase = Phase::Batched { at };
            }
        }
        self.order = participants.to_vec();
        self.batch = Some(CachePart { cache, rows: sources.len(), width });
        Ok(())
    }

    fn run_decode(&mut self, participants: &[u64]) -> Result<(), RuntimeError> {
        let batch = self.batch.take().ok_or_else(|| input("batch", "no cache".into()))?;
        let (rows, width) = (batch.rows, batch.width);
        let total = width + 1;
        // Batch row by batch row: its token, position and mask (the member's own mask, padded
        // before it when rows are right-aligned, after it when each row keeps its own length).
        let mut ids = vec![0; rows];
        let mut mask = vec![0; rows * total];
        let mut positions = vec![0; rows];
        let left = self.engine.alignment() == Alignment::Left;
        for id in participants {
            let m = &self.members[id];
            let (step, _) = m.pending.as_ref().ok_or_else(|| input("batch", "no pending step".into()))?;
            let Phase::Batched { at } = &m.phase else { return Err(input("batch", "a member is not batched".into())) };
            let own = m.past + 1;
            if at.len() != step.rows || own > total || at.iter().any(|&b| b >= rows) {
                return Err(input("batch", format!("a member's {} rows do not fit the batch", step.rows)));
            }
            for (r, &b) in at.iter().enumerate() {
                ids[b] = step.input_ids[r];
                positions[b] = step.position_ids[r];
                let start = if left { b * total } else { b * total + total - own };
                mask[start..start + own].copy_from_slice(&step.attention_mask[r * own..(r + 1) * own]);
            }
        }
        let inputs =
            TokenInputs { rows, seq: 1, total, input_ids: &ids, attention_mask: &mask, position_ids: &positions };
        let (logits, presents) = match self.engine.step(&inputs, &batch.cache) {
            Ok(out) => out,
            Err(e) => {
                self.engine.release(batch.cache);
                return Err(e);
            }
        };
        self.batch = Some(CachePart { cache: presents, rows, width: total });
        self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        let live: usize = participants.iter().filter_map(|id| self.members.get(id)).map(Member::rows).sum();
        for id in participants {
            if let Some((step, _)) = self.members.get(id).and_then(|m| m.pending.as_ref()) {
                step.tag.peak_rows.fetch_max(live, Ordering::Relaxed);
            }
        }
        let vocab = logits.vocab;
        if logits.rows != rows || logits.positions == 0 || logits.data.len() != rows * logits.positions * vocab {
            return Err(input("logits", format!("[{}, {}, {vocab}] for {rows} rows", logits.rows, logits.positions)));
        }
        for id in participants {
            let Some(m) = self.members.get_mut(id) else { continue };
            let Phase::Batched { at } = &m.phase else { continue };
            let mut data = Vec::with_capacity(at.len() * vocab);
            for &r in at {
                data.extend_from_slice(logits.at(r, logits.positions - 1));
            }
            m.past += 1;
            if let Some((_, reply)) = m.pending.take() {
                let _ = reply.send(Ok(Logits { rows: at.len(), vocab, data }));
            }
        }
        Ok(())
    }
}

/// Each member's rows contiguous, in participant order: the sources of the new rows and where
/// each member's rows go.
#[allow(clippy::type_complexity)]
fn contiguous_layout(wanted: &[(u64, Vec<RowSource>)]) -> (Vec<RowSource>, Vec<(u64, Vec<usize>)>) {
    let mut sources = Vec::new();
    let mut layout = Vec::with_capacity(wanted.len());
    for (id, rows) in wanted {
        layout.push((*id, (sources.len()..sources.len() + rows.len()).collect()));
        sources.extend_from_slice(rows);
    }
    (sources, layout)
}

/// Rows of the old batch (part 0) stay in place when they still fit and no other row claimed the
/// place; every other row (joining, duplicated, past the new end) fills a free place, lowest
/// first. Returns the sources of the new rows and where each member's rows go.
#[allow(clippy::type_complexity)]
fn stable_layout(wanted: &[(u64, Vec<RowSource>)]) -> (Vec<RowSource>, Vec<(u64, Vec<usize>)>) {
    let total: usize = wanted.iter().map(|(_, rows)| rows.len()).sum();
    let mut placed: Vec<Option<RowSource>> = vec![None; total];
    let mut layout: Vec<(u64, Vec<Option<usize>>)> =
        wanted.iter().map(|(id, rows)| (*id, vec![None; rows.len()])).collect();
    for (m, (_, rows)) in wanted.iter().enumerate() {
        for (j, s) in rows.iter().enumerate() {
            if s.part == 0 && s.row < total && placed[s.row].is_none() {
                placed[s.row] = Some(*s);
                layout[m].1[j] = Some(s.row);
            }
        }
    }
    let mut free = (0..total).filter(|&i| placed[i].is_none()).collect::<Vec<_>>().into_iter();
    for (m, (_, rows)) in wanted.iter().enumerate() {
        for (j, s) in rows.iter().enumerate() {
            if layout[m].1[j].is_none()
                && let Some(at) = free.next()
            {
                placed[at] = Some(*s);
                layout[m].1[j] = Some(at);
            }
        }
    }
    // Every row found a place: as many places as rows.
    let sources = placed.into_iter().flatten().collect();
    let layout = layout.into_iter().map(|(id, at)| (id, at.into_iter().flatten().collect())).collect();
    (sources, layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(part: usize, row: usize) -> RowSource {
        RowSource { part, row }
    }

    #[test]
    fn stable_layout_moves_only_rows_that_must_move() {
        // Old batch rows 0..5; member 1 (rows 0, 1) left; member 2 keeps rows 2, 3; member 3's
        // beams reordered to old rows 4, 4; member 4 joins with two rows of part 1.
        let wanted =
            vec![(2, vec![src(0, 2), src(0, 3)]), (3, vec![src(0, 4), src(0, 4)]), (4, vec![src(1, 0), src(1, 1)])];
        let (sources, layout) = stable_layout(&wanted);
        assert_eq!(sources, vec![src(0, 4), src(1, 0), src(0, 2), src(0, 3), src(0, 4), src(1, 1)]);
        assert_eq!(layout, vec![(2, vec![2, 3]), (3, vec![4, 0]), (4, vec![1, 5])]);
        // Nothing moved: identity.
        let same = vec![(7, vec![src(0, 0), src(0, 1)]), (8, vec![src(0, 2)])];
        let (sources, layout) = stable_layout(&same);
        assert_eq!(sources, vec![src(0, 0), src(0, 1), src(0, 2)]);
        assert_eq!(layout, vec![(7, vec![0, 1]), (8, vec![2])]);
    }

    #[test]
    fn prefill_passes_take_about_a_decode_step() {
        let mut t = Timing::default();
        assert_eq!(t.chunk(256, 1), 256, "unknown speeds: the largest pass");
        t.decode_s = Some(0.080);
        t.prefill_s_per_token = Some(0.0014);
        assert_eq!(t.chunk(256, 1), 57);
        assert_eq!(t.chunk(256, 0), 57);
        assert_eq!(t.chunk(256, 3), 171, "a queue takes longer passes");
        assert_eq!(t.chunk(256, 9), 256);
        assert_eq!(t.chunk(32, 1), 32, "never past --prefill-chunk");
        t.decode_s = Some(0.001);
        assert_eq!(t.chunk(256, 1), MIN_PREFILL_CHUNK);
        assert_eq!(t.chunk(8, 1), 8);
    }

    #[test]
    fn contiguous_layout_keeps_members_in_order() {
        let wanted = vec![(1, vec![src(0, 3)]), (2, vec![src(1, 0), src(1, 0)])];
        let (sources, layout) = contiguous_layout(&wanted);
        assert_eq!(sources, vec![src(0, 3), src(1, 0), src(1, 0)]);
        assert_eq!(layout, vec![(1, vec![0]), (2, vec![1, 2])]);
    }
}
