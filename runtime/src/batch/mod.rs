//! Continuous batching: many generation calls share one engine, one decode step at a time.
//!
//! ```text
//! generate() ─► Member (a DecoderSession) ─┐
//! generate() ─► Member ────────────────────┼─► scheduler thread ─► Engine (one batch cache)
//! generate() ─► Member ────────────────────┘      prefill queue, chunked prefill, prefix cache
//! ```
//!
//! Each call runs the unchanged generation driver ([`crate::generate`]) on its own thread over a
//! [`Member`]; the member hands every forward pass to the scheduler, which owns the engine. At
//! every decode step the rows of every running call go through the graph together: calls that
//! finished have left, calls whose prompt was prefilled join. Prompts are prefilled apart from
//! the batch, in chunks of at most [`BatchOptions::prefill_chunk`] tokens interleaved with decode
//! steps, so a long prompt never stalls the running rows for its whole length. Rows of different
//! lengths share the cache right-aligned (left padding under the attention mask); the cache is
//! rebuilt when rows join or leave, trimmed to the longest row. Since each call keeps its own
//! settings, sampler and stopping, and every row's attention sees only its own tokens, a call's
//! tokens do not depend on the company it runs in (up to float rounding of the batched kernels).
//!
//! Prompts whose first tokens were prefilled before reuse those positions' keys and values from
//! the prefix cache ([`BatchOptions::prefix_cache_bytes`], least recently used evicted first).

mod member;
mod prefix;
mod scheduler;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

pub use member::Member;

use crate::backend::RuntimeError;
use crate::backend::engine::{CacheShape, Engine};

/// How the scheduler batches.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// The most rows in flight at once (running, prefilled or prefilling); a call holds one row
    /// per sequence it generates (`num_beams` with beam search).
    pub max_rows: usize,
    /// The most prompt tokens one prefill pass computes before the running rows take a step.
    pub prefill_chunk: usize,
    /// Bytes of keys and values the prefix cache may keep (0 turns it off).
    pub prefix_cache_bytes: u64,
    /// Bytes of cache per row and position (every layer's key and value).
    pub cache_bytes_per_position: u64,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_rows: 32, prefill_chunk: 256, prefix_cache_bytes: 256 << 20, cache_bytes_per_position: 0 }
    }
}

/// What the scheduler is doing, for metrics; updated as it goes.
#[derive(Debug, Default)]
pub struct Stats {
    /// Rows of the running batch.
    pub batch_rows: AtomicUsize,
    /// Calls whose prompt waits for rows to free up.
    pub waiting: AtomicUsize,
    /// Decode steps run.
    pub decode_steps: AtomicU64,
    /// Prefill passes run (chunks).
    pub prefill_chunks: AtomicU64,
    /// Prompts that reused cached prefix positions, and those that found none.
    pub prefix_hits: AtomicU64,
    pub prefix_misses: AtomicU64,
    /// Prompt positions taken from the prefix cache instead of computed.
    pub prefix_tokens_reused: AtomicU64,
    /// Bytes the prefix cache holds.
    pub prefix_bytes: AtomicU64,
    /// Set while the scheduler thread runs; cleared when it ends, however it ends.
    pub running: AtomicBool,
}

/// Clears [`Stats::running`] when the scheduler thread ends (also by a panic).
struct RunningFlag(Arc<Stats>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// How a call can be stopped from outside: a flag its owner sets, and a deadline.
#[derive(Clone, Debug, Default)]
pub struct Interrupt {
    pub cancelled: Arc<AtomicBool>,
    pub deadline: Option<Instant>,
}

impl Interrupt {
    /// The reason to stop now, if there is one.
    pub fn check(&self) -> Result<(), RuntimeError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(RuntimeError::Interrupted(crate::backend::Interruption::Cancelled));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(RuntimeError::Interrupted(crate::backend::Interruption::TimedOut));
        }
        Ok(())
    }
}

/// What a member brings besides its passes: which prefix-cache partition it reads and fills,
/// and where the scheduler reports the most rows it decoded beside.
#[derive(Clone, Debug, Default)]
pub struct MemberTag {
    /// Prompts reuse cached prefixes only of their own partition (a server's API key, a salt).
    pub partition: u64,
    /// The most rows (its own included) in any decode step it took part in.
    pub peak_rows: Arc<AtomicUsize>,
}

/// One forward pass a member asks for, with its inputs owned.
struct Step {
    tag: MemberTag,
    rows: usize,
    seq: usize,
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
    position_ids: Vec<i64>,
}

/// The last-position logits of a member's rows, or why the pass failed.
type Reply = Result<crate::session::Logits, RuntimeError>;

enum Msg {
    Forward { id: u64, step: Step, reply: mpsc::Sender<Reply> },
    Select { id: u64, rows: Vec<usize> },
    Leave { id: u64 },
}

/// The handle to a running scheduler: makes members. The scheduler stops when the handle and
/// every member are gone.
pub struct Batcher {
    tx: mpsc::Sender<Msg>,
    stats: Arc<Stats>,
    next_id: AtomicU64,
    max_rows: usize,
}

impl Batcher {
    /// Starts the scheduler thread, which builds its engine with `load` (engines need not be
    /// `Send`); returns once the engine is loaded, with what `load` said about it.
    pub fn start<E, F, R>(load: F, shape: CacheShape, options: BatchOptions) -> Result<(Batcher, R), RuntimeError>
    where
        E: Engine + 'static,
        F: FnOnce() -> Result<(E, R), RuntimeError> + Send + 'static,
        R: Send + 'static,
    {
        if options.max_rows == 0 || options.prefill_chunk == 0 {
            return Err(RuntimeError::Setting {
                field: if options.max_rows == 0 { "max_batch_rows" } else { "prefill_chunk" },
                message: "must be at least 1".into(),
            });
        }
        let (tx, rx) = mpsc::channel();
        let (loaded_tx, loaded_rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let max_rows = options.max_rows;
        std::thread::Builder::new()
            .name("gpt2c-scheduler".into())
            .spawn(move || match load() {
                Ok((engine, report)) => {
                    thread_stats.running.store(true, Ordering::SeqCst);
                    let _flag = RunningFlag(thread_stats.clone());
                    let _ = loaded_tx.send(Ok(report));
                    scheduler::Scheduler::new(engine, shape, options, rx, thread_stats).run();
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                }
            })
            .map_err(|e| RuntimeError::Setting {
                field: "threads",
                message: format!("cannot start the scheduler: {e}"),
            })?;
        let report = loaded_rx.recv().map_err(|_| RuntimeError::Setting {
            field: "backend",
            message: "the scheduler stopped while loading".into(),
        })??;
        Ok((Batcher { tx, stats, next_id: AtomicU64::new(0), max_rows }, report))
    }

    /// A new session whose passes run in the shared batch.
    pub fn member(&self, interrupt: Interrupt) -> Member {
        self.member_with(interrupt, MemberTag::default())
    }

    /// A new session with its prefix-cache partition and its company report.
    pub fn member_with(&self, interrupt: Interrupt, tag: MemberTag) -> Member {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Member::new(id, self.tx.clone(), interrupt, self.max_rows, tag)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether the scheduler still runs (a server reports itself unhealthy when it does not).
    pub fn is_running(&self) -> bool {
        self.stats.running.load(Ordering::SeqCst)
    }

    /// The most rows in flight at once.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
}
