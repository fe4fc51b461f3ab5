//! Inference: an admitted prompt runs the generation driver on a blocking thread over a member of
//! the shared batch, reporting its tokens and its end as events.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use gpt2c_runtime::GenerateError;
use gpt2c_runtime::RuntimeError;
use gpt2c_runtime::batch::{Interrupt, MemberTag};
use gpt2c_runtime::generate::{FinishReason, generate};
use gpt2c_runtime::session::{Logits, Observed};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::error::ApiError;
use crate::record::Record;
use crate::state::{Loaded, Shared};
use crate::validation::Completion;

/// A generated token's log-probability under the model's distribution (before temperature and
/// filters), with the most likely alternatives.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// One returned sequence.
#[derive(Clone, Debug)]
pub struct Choice {
    pub index: usize,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub logprobs: Vec<TokenLogprob>,
}

/// What a prompt's worker reports.
pub enum Event {
    Token { choice: usize, token: u32 },
    Finished { result: Result<Vec<Choice>, ApiError> },
}

/// One request in flight: what it asks, how to stop it, what it did.
pub struct Job {
    pub completion: Completion,
    pub interrupt: Interrupt,
    /// The prefix-cache partition its prompts read and fill.
    pub partition: u64,
    pub record: Arc<Record>,
}

/// `log_softmax(row)[token]` and the `k` most likely tokens (f64 sums).
pub fn logprobs_of(row: &[f32], token: u32, k: usize) -> TokenLogprob {
    let max = row.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).filter(|e| e.is_finite()).sum();
    let lse = f64::from(max) + sum.ln();
    let lp = |x: f32| (f64::from(x) - lse) as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &x) in row.iter().enumerate() {
        if top.len() < k || top.last().is_some_and(|&(_, v)| x > v) {
            let at = top.partition_point(|&(_, v)| v >= x);
            top.insert(at, (i as u32, x));
            top.truncate(k);
        }
    }
    let logprob = row.get(token as usize).map_or(f32::NEG_INFINITY, |&x| lp(x));
    TokenLogprob { logprob, top: top.into_iter().map(|(t, x)| (t, lp(x))).collect() }
}

/// The error a failed generation returns to its client.
pub fn api_error(e: &GenerateError, shared: &Shared) -> ApiError {
    use gpt2c_runtime::backend::Interruption;
    match e {
        GenerateError::Runtime(RuntimeError::Interrupted(Interruption::TimedOut)) => {
            ApiError::timeout(shared.options.request_timeout_s)
        }
        GenerateError::Runtime(RuntimeError::Interrupted(_))
            if shared.closing.load(std::sync::atomic::Ordering::SeqCst) =>
        {
            ApiError::unavailable("the server shut down before this request finished")
        }
        GenerateError::Runtime(RuntimeError::Interrupted(_)) => ApiError::internal("the request was cancelled"),
        other => match other.param() {
            Some(p) => ApiError::invalid(p, other.to_string()),
            None => ApiError::internal(other.to_string()),
        },
    }
}

/// Runs prompt `prompt` of `job` to the end on this (blocking) thread, holding its rows
/// (`_rows`) until then, reporting through `tx`.
pub fn run_prompt(
    loaded: Arc<Loaded>,
    shared: Arc<Shared>,
    job: Arc<Job>,
    prompt: usize,
    _rows: OwnedSemaphorePermit,
    tx: mpsc::UnboundedSender<Event>,
) {
    let c = &job.completion;
    let want = c.logprobs;
    let n = c.n;
    let base = prompt * n;
    let tag = MemberTag { partition: job.partition, peak_rows: job.record.peak_rows.clone() };
    let mut member = loaded.batcher.member_with(job.interrupt.clone(), tag);
    let last: RefCell<Option<Logits>> = RefCell::new(None);
    let mut on_forward = |l: &Logits| {
        if want.is_some() {
            *last.borrow_mut() = Some(l.clone());
        }
    };
    let mut observed = Observed { inner: &mut member, on_forward: &mut on_forward };
    let mut last_token: Vec<Option<Instant>> = vec![None; n];
    let mut logprobs: Vec<Vec<TokenLogprob>> = vec![Vec::new(); n];
    let metrics = &shared.metrics;
    let ids = &c.prompts[prompt].ids;
    let result = generate(
        &mut observed,
        loaded.limits,
        std::slice::from_ref(ids),
        &c.config,
        Some(&loaded.tokenizer),
        &mut |seq, token| {
            let now = Instant::now();
            if let Some(t) = last_token.get(seq).copied().flatten() {
                metrics.inter_token_latency.observe(now - t);
            } else {
                job.record.token();
            }
            if let Some(t) = last_token.get_mut(seq) {
                *t = Some(now);
            }
            metrics.generated_tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            job.record.generated_tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let (Some(k), Some(l)) = (want, last.borrow().as_ref())
                && seq < l.rows
                && let Some(list) = logprobs.get_mut(seq)
            {
                list.push(logprobs_of(l.row(seq), token, k));
            }
            let _ = tx.send(Event::Token { choice: base + seq, token });
        },
    );
    drop(member);
    let result = result.map_err(|e| api_error(&e, &shared)).map(|out| {
        if !c.streams_tokens() {
            // Beam search knows its sequences only at the end.
            let generated: usize = out.results.iter().map(|r| r.tokens.len()).sum();
            metrics.generated_tokens.fetch_add(generated as u64, std::sync::atomic::Ordering::Relaxed);
            job.record.generated_tokens.fetch_add(generated, std::sync::atomic::Ordering::Relaxed);
            job.record.token();
        }
        out.results
            .into_iter()
            .enumerate()
            .map(|(i, r)| Choice {
                index: base + i,
                tokens: r.tokens,
                finish: r.finish_reason,
                logprobs: logprobs.get_mut(i).map(std::mem::take).unwrap_or_default(),
            })
            .collect()
    });
    let _ = tx.send(Event::Finished { result });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_alternatives() {
        let row = [1.0f32, 3.0, 2.0, f32::NEG_INFINITY];
        let lp = logprobs_of(&row, 2, 2);
        let lse = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
        assert!((f64::from(lp.logprob) - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|&(t, _)| t).collect::<Vec<_>>(), vec![1, 2]);
        assert!((f64::from(lp.top[0].1) - (3.0 - lse)).abs() < 1e-6);
    }
}
