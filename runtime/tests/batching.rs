//! Continuous batching over an engine whose arithmetic is exact: a request's tokens, scores and
//! finish reasons are the same alone (a session of its own) and in a batch of others joining,
//! leaving, sharing prefixes, reordering beams and prefilling in chunks; a cancelled request
//! leaves the batch.
//!
//! The toy engine keeps each position's token in its cache and scores the next token from the
//! tokens the attention mask shows, so any row that sees a padding slot, another row's cache or
//! a wrongly aligned position changes its tokens. It runs both ways rows of different lengths
//! share a cache: right-aligned (any graph) and left-aligned, each row reading its own length from
//! its mask as GroupQueryAttention does (`--kv-cache shared`).

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gpt2c_runtime::backend::RuntimeError;
use gpt2c_runtime::backend::assemble::assemble_parts;
use gpt2c_runtime::backend::engine::Alignment;
use gpt2c_runtime::batch::{BatchOptions, Batcher, Interrupt};
use gpt2c_runtime::generate::{GenerationConfig, ModelLimits, generate};
use gpt2c_runtime::session::{AllLogits, CachePart, CacheShape, CachedSession, Engine, RowSource, TokenInputs};
use gpt2c_runtime::tensor::{ElemType, HostTensor};
use serde_json::{Map, Value, json};

const VOCAB: usize = 50;
const SHAPE: CacheShape = CacheShape { n_layer: 1, n_head: 1, head_dim: 1, vocab: VOCAB };

/// Keys hold token ids, values position ids; logits hash the visible tokens and positions.
/// Left-aligned (`left`), a row's keys start at position 0 and its length is its mask's last set
/// position + 1 − the new tokens; positions past a row's length are never read.
#[derive(Clone, Copy, Default)]
struct ToyEngine {
    left: bool,
}

#[allow(non_upper_case_globals)]
const ToyEngine: ToyEngine = ToyEngine { left: false };
const LEFT: ToyEngine = ToyEngine { left: true };

fn scores(visible: &[(i64, i64)]) -> Vec<f32> {
    let mut h: u64 = 1469598103934665603;
    for &(t, p) in visible {
        h = (h ^ (t as u64 + 1)).wrapping_mul(1099511628211);
        h = (h ^ (p as u64 + 7)).wrapping_mul(1099511628211);
    }
    (0..VOCAB as u64).map(|v| (((h ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 7) % 4096) as f32 / 256.0).collect()
}

impl Engine for ToyEngine {
    type Value = HostTensor;

    fn cache_type(&self) -> ElemType {
        ElemType::F32
    }

    fn empty(&self, shape: &[usize]) -> Result<HostTensor, RuntimeError> {
        Ok(HostTensor::empty(shape.to_vec(), ElemType::F32))
    }

    fn step(
        &mut self,
        t: &TokenInputs<'_>,
        cache: &[HostTensor],
    ) -> Result<(AllLogits, Vec<HostTensor>), RuntimeError> {
        let past = t.total - t.seq;
        let (keys, values) = (cache[0].as_f32().unwrap(), cache[1].as_f32().unwrap());
        assert_eq!(keys.len(), t.rows * past, "the cache holds rows × past positions");
        let mut logits = Vec::new();
        let (mut new_keys, mut new_values) = (Vec::new(), Vec::new());
        for r in 0..t.rows {
            let mask = &t.attention_mask[r * t.total..(r + 1) * t.total];
            // Left-aligned, the row holds positions up to its mask's last set one.
            let own = if self.left { mask.iter().rposition(|&m| m == 1).map_or(0, |p| p + 1) } else { t.total };
            assert!(own >= t.seq, "a row's mask ends before its new tokens");
            let row_past = own - t.seq;
            let mut row: Vec<(i64, i64)> =
                (0..row_past).map(|p| (keys[r * past + p] as i64, values[r * past + p] as i64)).collect();
            row.extend((0..t.seq).map(|s| (t.input_ids[r * t.seq + s], t.position_ids[r * t.seq + s])));
            let visible: Vec<(i64, i64)> = row.iter().zip(mask).filter(|(_, m)| **m == 1).map(|(x, _)| *x).collect();
            logits.extend(scores(&visible));
            // Positions past the row's length hold junk, which no row may read.
            row.resize(t.total, (-99, -99));
            new_keys.extend(row.iter().map(|x| x.0 as f32));
            new_values.extend(row.iter().map(|x| x.1 as f32));
        }
        let shape = vec![t.rows, 1, t.total, 1];
        let presents =
            vec![HostTensor::f32(shape.clone(), new_keys).unwrap(), HostTensor::f32(shape, new_values).unwrap()];
        Ok((AllLogits { rows: t.rows, positions: 1, vocab: VOCAB, data: logits }, presents))
    }

    fn select_rows(&mut self, cache: &[HostTensor], rows: &[usize]) -> Result<Vec<HostTensor>, RuntimeError> {
        Ok(cache.iter().map(|t| t.gather_rows(rows).unwrap()).collect())
    }

    fn assemble(
        &mut self,
        parts: Vec<CachePart<HostTensor>>,
        sources: &[RowSource],
        width: usize,
    ) -> Result<Vec<HostTensor>, RuntimeError> {
        if !self.left {
            return assemble_parts(&parts, sources, width, |t| Ok(Cow::Borrowed(t)));
        }
        // Each row's first positions at its start, junk after them.
        (0..2)
            .map(|j| {
                let mut data = vec![-77.0; sources.len() * width];
                for (i, s) in sources.iter().enumerate() {
                    let part = &parts[s.part];
                    let keep = width.min(part.width);
                    let src = part.cache[j].as_f32().unwrap();
                    data[i * width..i * width + keep]
                        .copy_from_slice(&src[s.row * part.width..s.row * part.width + keep]);
                }
                Ok(HostTensor::f32(vec![sources.len(), 1, width, 1], data).unwrap())
            })
            .collect()
    }

    fn copy_out(&mut self, cache: &[HostTensor], _: usize, _: usize) -> Result<Vec<HostTensor>, RuntimeError> {
        Ok(cache.to_vec())
    }

    fn copy_in(&mut self, tensors: &[HostTensor]) -> Result<Vec<HostTensor>, RuntimeError> {
        Ok(tensors.to_vec())
    }

    fn last_logits_only(&self) -> bool {
        true
    }

    fn alignment(&self) -> Alignment {
        if self.left { Alignment::Left } else { Alignment::Right }
    }
}

fn limits() -> ModelLimits {
    ModelLimits::new(VOCAB, 64)
}

fn config(settings: Value) -> GenerationConfig {
    let mut o: Map<String, Value> = settings.as_object().unwrap().clone();
    o.insert("eos_token_id".into(), json!(0));
    o.insert("pad_token_id".into(), json!(0));
    GenerationConfig::from_json(&Map::new(), &o).unwrap()
}

/// Prompts of several lengths, three sharing a prefix, and settings of every kind.
fn requests() -> Vec<(Vec<u32>, GenerationConfig)> {
    let shared: Vec<u32> = (1..=12).map(|i| (i * 7 % 49) + 1).collect();
    let with_shared = |tail: &[u32]| [shared.as_slice(), tail].concat();
    vec![
        (vec![3, 4, 5], config(json!({"max_new_tokens": 12}))),
        (vec![9; 20], config(json!({"max_new_tokens": 6}))),
        (vec![2, 8], config(json!({"max_new_tokens": 10, "num_beams": 3, "num_return_sequences": 2}))),
        (vec![5, 6, 7, 8], config(json!({"max_new_tokens": 15, "do_sample": true, "seed": 1, "top_k": 10}))),
        (vec![11], config(json!({"max_new_tokens": 9, "do_sample": true, "seed": 2, "num_return_sequences": 3}))),
        (with_shared(&[30]), config(json!({"max_new_tokens": 8}))),
        (with_shared(&[31, 32]), config(json!({"max_new_tokens": 8, "repetition_penalty": 1.5}))),
        (with_shared(&[33]), config(json!({"max_new_tokens": 7, "do_sample": true, "seed": 3, "temperature": 0.7}))),
        (vec![4, 4, 4], config(json!({"max_new_tokens": 11, "num_beams": 2, "do_sample": true, "seed": 4}))),
        (vec![12, 13, 14, 15, 16, 17, 18], config(json!({"max_new_tokens": 20, "no_repeat_ngram_size": 2}))),
        (vec![21, 22], config(json!({"max_new_tokens": 5, "num_beams": 4, "length_penalty": 0.5}))),
        ((1..=30).collect(), config(json!({"max_new_tokens": 4, "min_new_tokens": 4}))),
    ]
}

type Outcome = Vec<(Vec<u32>, String, Option<f32>)>;

fn outcome(session: &mut dyn gpt2c_runtime::DecoderSession, prompt: &[u32], config: &GenerationConfig) -> Outcome {
    let out = generate(session, limits(), &[prompt.to_vec()], config, None, &mut |_, _| {}).unwrap();
    out.results.into_iter().map(|r| (r.tokens, format!("{:?}", r.finish_reason), r.score)).collect()
}

fn batcher(max_rows: usize) -> Batcher {
    batcher_over(ToyEngine, max_rows)
}

fn batcher_over(engine: ToyEngine, max_rows: usize) -> Batcher {
    let options = BatchOptions { max_rows, prefill_chunk: 3, prefix_cache_bytes: 1 << 20, cache_bytes_per_position: 8 };
    Batcher::start(move || Ok((engine, ())), SHAPE, options).unwrap().0
}

#[test]
fn requests_in_a_batch_equal_requests_alone() {
    requests_in_company_equal_requests_alone(ToyEngine);
}

/// Left-aligned: rows of different lengths share the cache without padding, rows stay where they
/// are when others join or leave, beams are reordered in place.
#[test]
fn requests_in_a_left_aligned_batch_equal_requests_alone() {
    requests_in_company_equal_requests_alone(LEFT);
}

fn requests_in_company_equal_requests_alone(engine: ToyEngine) {
    let requests = requests();
    // Alone: a session of its own over the right-aligned engine (every row the same length).
    let alone: Vec<Outcome> =
        requests.iter().map(|(p, c)| outcome(&mut CachedSession::new(ToyEngine, &SHAPE), p, c)).collect();
    assert!(alone.iter().any(|o| o.iter().any(|(t, _, _)| t.last() == Some(&0))), "some request stops at EOS");
    // Enough rows for everyone, then too few: requests wait for rows and join as others leave.
    for max_rows in [32, 5] {
        let b = batcher_over(engine, max_rows);
        let together: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = requests
                .iter()
                .map(|(p, c)| {
                    let mut member = b.member(Interrupt::default());
                    s.spawn(move || outcome(&mut member, p, c))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(together.len(), alone.len());
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a, t, "request {i} with {max_rows} rows (left-aligned: {})", engine.left);
        }
        let stats = b.stats();
        assert!(stats.prefix_hits.load(Ordering::Relaxed) >= 1, "the shared prefix was reused");
        assert!(
            stats.prefill_chunks.load(Ordering::Relaxed) > requests.len() as u64,
            "long prompts took several chunks"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.batch_rows.load(Ordering::Relaxed) != 0 {
            assert!(Instant::now() < deadline, "rows stayed in the batch");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_cancelled_request_leaves_and_the_others_finish() {
    let b = batcher(8);
    let interrupt = Interrupt::default();
    let cancel = interrupt.cancelled.clone();
    let long = config(json!({"max_new_tokens": 60, "min_new_tokens": 60}));
    let short = config(json!({"max_new_tokens": 40, "min_new_tokens": 40}));
    let alone = outcome(&mut CachedSession::new(ToyEngine, &SHAPE), &[7, 8], &short);
    let (cancelled, other) = std::thread::scope(|s| {
        let mut m = b.member(interrupt);
        let long = &long;
        let first = s.spawn(move || {
            let mut seen = 0;
            // Its owner gives up after 20 tokens (a client that hangs up).
            generate(&mut m, limits(), &[vec![1, 2, 3]], long, None, &mut |_, _| {
                seen += 1;
                if seen == 20 {
                    cancel.store(true, Ordering::Relaxed);
                }
            })
        });
        let mut m = b.member(Interrupt::default());
        let second = s.spawn(move || outcome(&mut m, &[7, 8], &short));
        (first.join().unwrap(), second.join().unwrap())
    });
    assert_eq!(other, alone);
    assert!(
        matches!(cancelled, Err(gpt2c_runtime::GenerateError::Runtime(RuntimeError::Interrupted(_)))),
        "{:?}",
        cancelled.map(|o| o.results[0].tokens.len())
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.stats().batch_rows.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "the cancelled rows stayed");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_call_wider_than_the_batch_is_refused() {
    let b = batcher(2);
    assert!(b.is_running());
    let wide = config(json!({"max_new_tokens": 3, "num_beams": 3}));
    let err = generate(&mut b.member(Interrupt::default()), limits(), &[vec![1, 2]], &wide, None, &mut |_, _| {})
        .unwrap_err();
    assert!(err.to_string().contains("max_batch_rows"), "{err}");
}
