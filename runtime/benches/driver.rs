//! What the generation driver costs per decode step, next to what a model step costs.
//!
//! `driver/*` runs `generate()` for 64 new tokens over a session that returns
//! fixed gpt2-small-sized logits (50,257 per row) instantly, so everything
//! measured is the driver: logits processors, softmax, sampling or beam
//! bookkeeping, stopping criteria and row selection. `model/decode_step` runs
//! one real decode step (128 cached positions) of the export named by
//! `GPT2C_BENCH_EXPORT` on ONNX Runtime (`ORT_DYLIB_PATH` or the usual
//! search), when both are there, for 1 row (greedy, sampling) and 4 rows
//! (4-beam search). Divide a driver time by 64 and compare it with the model
//! step it accompanies; the goal is under 5%.
//!
//!     GPT2C_BENCH_EXPORT=/tmp/gpt2-small-export cargo bench -p gpt2c-runtime --bench driver

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_runtime::session::{AllLogits, Logits, StepInput};
use gpt2c_runtime::{
    BackendKind, DecoderSession, ExportedModel, GenerationConfig, ModelLimits, RunnerOptions, RuntimeError, generate,
};
use serde_json::{Map, Value, json};

const VOCAB: usize = 50257;
const NEW_TOKENS: usize = 64;
const PROMPT: usize = 128;

/// A session whose logits are fixed pseudo-random rows, shifted by the step so choices vary.
struct FixedLogits {
    table: Vec<f32>,
    past: usize,
}

impl FixedLogits {
    fn new() -> Self {
        let mut x: u64 = 7;
        let table = (0..VOCAB)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 16.0 - 8.0
            })
            .collect();
        FixedLogits { table, past: 0 }
    }

    fn logits(&self, rows: usize) -> Vec<f32> {
        let shift = (self.past * 7919) % VOCAB;
        let mut data = Vec::with_capacity(rows * VOCAB);
        for r in 0..rows {
            let s = (shift + r * 104_729) % VOCAB;
            data.extend_from_slice(&self.table[s..]);
            data.extend_from_slice(&self.table[..s]);
        }
        data
    }
}

impl DecoderSession for FixedLogits {
    fn forward(&mut self, step: &StepInput<'_>) -> Result<Logits, RuntimeError> {
        self.past += step.seq;
        Ok(Logits { rows: step.rows, vocab: VOCAB, data: self.logits(step.rows) })
    }

    fn forward_all(&mut self, step: &StepInput<'_>) -> Result<AllLogits, RuntimeError> {
        let logits = self.forward(step)?;
        Ok(AllLogits { rows: step.rows, positions: 1, vocab: VOCAB, data: logits.data })
    }

    fn select_rows(&mut self, _rows: &[usize]) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn past_len(&self) -> usize {
        self.past
    }

    fn reset(&mut self) {
        self.past = 0;
    }
}

fn prompt() -> Vec<u32> {
    (0..PROMPT as u32).map(|i| (i * 7919) % VOCAB as u32).collect()
}

fn config(overrides: Value) -> GenerationConfig {
    let mut o = json!({ "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "eos_token_id": 50256 });
    if let (Some(base), Value::Object(extra)) = (o.as_object_mut(), overrides) {
        base.extend(extra);
    }
    GenerationConfig::from_json(&Map::new(), o.as_object().expect("an object")).expect("a valid configuration")
}

fn driver(c: &mut Criterion) {
    let limits = ModelLimits::new(VOCAB, 1024);
    let prompts = vec![prompt()];
    let cases = [
        ("greedy", json!({})),
        (
            "sample_top_k_top_p_penalties",
            json!({ "do_sample": true, "seed": 1, "temperature": 0.8, "top_k": 50, "top_p": 0.95,
                    "repetition_penalty": 1.2, "no_repeat_ngram_size": 3 }),
        ),
        ("beam4_penalties", json!({ "num_beams": 4, "repetition_penalty": 1.2, "no_repeat_ngram_size": 3 })),
    ];
    let mut group = c.benchmark_group("driver");
    group.throughput(Throughput::Elements(NEW_TOKENS as u64));
    group.sample_size(20);
    for (name, overrides) in cases {
        let config = config(overrides);
        let mut session = FixedLogits::new();
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = generate(&mut session, limits, &prompts, &config, None, &mut |_, _| {}).expect("generate");
                black_box(out.sequences.len())
            })
        });
    }
    group.finish();
}

/// One decode step of a real export after a 128-token prompt.
fn model_step(c: &mut Criterion) {
    let Some(dir) = std::env::var_os("GPT2C_BENCH_EXPORT") else {
        eprintln!("model/decode_step skipped: set GPT2C_BENCH_EXPORT to an export folder");
        return;
    };
    let model = ExportedModel::open(std::path::Path::new(&dir)).expect("an export folder");
    let options = RunnerOptions { threads: Some(2), logits: LogitsScope::Last, ..Default::default() };
    let mut session = match model.session(BackendKind::Ort, &options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("model/decode_step skipped: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group("model");
    group.sample_size(20);
    // One row (greedy, sampling) and four (4-beam search, batch 4).
    for rows in [1usize, 4] {
        let ids: Vec<i64> = prompt().iter().map(|&t| i64::from(t)).cycle().take(rows * PROMPT).collect();
        let prefill = |session: &mut Box<dyn DecoderSession>| {
            session.reset();
            let positions: Vec<i64> = (0..PROMPT as i64).cycle().take(rows * PROMPT).collect();
            let mask = vec![1i64; rows * PROMPT];
            let step =
                StepInput { rows, seq: PROMPT, input_ids: &ids, attention_mask: &mask, position_ids: &positions };
            session.forward(&step).expect("prefill");
        };
        let name = format!("decode_step/{rows}_rows");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    prefill(&mut session);
                    // Up to 64 steps per prompt keep the cache near 128 positions.
                    for _ in 0..(iters - done).min(NEW_TOKENS as u64) {
                        let past = session.past_len();
                        let mask = vec![1i64; rows * (past + 1)];
                        let (token, position) = (vec![42i64; rows], vec![past as i64; rows]);
                        let step = StepInput {
                            rows,
                            seq: 1,
                            input_ids: &token,
                            attention_mask: &mask,
                            position_ids: &position,
                        };
                        let start = Instant::now();
                        black_box(session.forward(&step).expect("decode step"));
                        total += start.elapsed();
                        done += 1;
                    }
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, driver, model_step);
criterion_main!(benches);
