//! `POST /v1/completions`: each prompt of a request runs the generation driver on its own blocking
//! thread over a member of the shared batch; tokens come back as events, assembled into OpenAI's
//! response or streamed as server-sent events.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gpt2c_runtime::batch::Interrupt;
use gpt2c_runtime::generate::{FinishReason, generate};
use gpt2c_runtime::session::{Logits, Observed};
use gpt2c_runtime::{GenerateError, RuntimeError, TextTokenizer};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::request::Completion;
use crate::state::{Loaded, Shared};

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
    Finished { prompt: usize, result: Result<Vec<Choice>, ApiError> },
}

/// One request in flight: what it asks, how to stop it, when it came.
pub struct Job {
    pub completion: Completion,
    pub interrupt: Interrupt,
    pub arrived: Instant,
    first_token: AtomicBool,
}

impl Job {
    pub fn new(completion: Completion, interrupt: Interrupt) -> Job {
        Job { completion, interrupt, arrived: Instant::now(), first_token: AtomicBool::new(false) }
    }
}

/// Sets the request's cancel flag when dropped: a client that went away stops its rows.
pub struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A prompt counted as queued until its prefill returns (or it ends).
struct QueueSlot(Option<Arc<Shared>>);

impl QueueSlot {
    fn release(&mut self) {
        if let Some(s) = self.0.take() {
            s.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// `log_softmax(row)[token]` and the `k` most likely tokens (f64 sums).
fn logprobs_of(row: &[f32], token: u32, k: usize) -> TokenLogprob {
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
pub fn api_error(e: &GenerateError, timeout_s: f64) -> ApiError {
    match e {
        GenerateError::Runtime(RuntimeError::Interrupted(gpt2c_runtime::backend::Interruption::TimedOut)) => {
            ApiError::timeout(timeout_s)
        }
        GenerateError::Runtime(RuntimeError::Interrupted(_)) => ApiError::internal("the request was cancelled"),
        other => match other.param() {
            Some(p) => ApiError::invalid(p, other.to_string()),
            None => ApiError::internal(other.to_string()),
        },
    }
}

/// Runs one prompt to the end on this (blocking) thread, reporting through `tx`.
pub fn run_prompt(
    shared: Arc<Shared>,
    loaded: Arc<Loaded>,
    job: Arc<Job>,
    prompt: usize,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut queue = QueueSlot(Some(shared.clone()));
    let c = &job.completion;
    let want = c.logprobs;
    let n = c.n;
    let base = prompt * n;
    let mut member = loaded.batcher.member(job.interrupt.clone());
    let last: RefCell<Option<Logits>> = RefCell::new(None);
    let queue_cell = RefCell::new(&mut queue);
    let mut on_forward = |l: &Logits| {
        queue_cell.borrow_mut().release();
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
            match last_token.get(seq).copied().flatten() {
                Some(t) => metrics.inter_token_latency.observe(now - t),
                None if !job.first_token.swap(true, Ordering::Relaxed) => {
                    metrics.time_to_first_token.observe(now - job.arrived)
                }
                None => {}
            }
            if let Some(t) = last_token.get_mut(seq) {
                *t = Some(now);
            }
            metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
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
    let result = result.map_err(|e| api_error(&e, shared.options.request_timeout_s)).map(|out| {
        let streamed = c.streams_tokens();
        if !streamed {
            let generated: usize = out.results.iter().map(|r| r.tokens.len()).sum();
            metrics.generated_tokens.fetch_add(generated as u64, Ordering::Relaxed);
            if !job.first_token.swap(true, Ordering::Relaxed) {
                metrics.time_to_first_token.observe(job.arrived.elapsed());
            }
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
    let _ = tx.send(Event::Finished { prompt, result });
}

/// The text a client sees of `tokens`: trailing EOS tokens dropped, cut before the first stop
/// string (as OpenAI does); whether a stop string cut it.
pub fn visible_text(tokenizer: &TextTokenizer, tokens: &[u32], eos: &[u32], stop: &[String]) -> (String, bool) {
    let mut end = tokens.len();
    while end > 0 && eos.contains(&tokens[end - 1]) {
        end -= 1;
    }
    let mut text = tokenizer.decode(&tokens[..end]).unwrap_or_default();
    let cut = stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
    if let Some(at) = cut {
        text.truncate(at);
    }
    (text, cut.is_some())
}

/// OpenAI's finish reason.
pub fn finish_reason(f: FinishReason, cut: bool) -> &'static str {
    match f {
        _ if cut => "stop",
        FinishReason::Eos | FinishReason::StopString => "stop",
        FinishReason::Length | FinishReason::Time => "length",
    }
}

/// Incremental text of one streamed choice: only text that can no longer change is sent (no
/// incomplete UTF-8 at the end, nothing a stop string could still claim).
#[derive(Default)]
pub struct StreamedText {
    pub tokens: Vec<u32>,
    sent: String,
    stopped: bool,
}

impl StreamedText {
    /// The new text after `token`, if any.
    pub fn push(&mut self, token: u32, tokenizer: &TextTokenizer, eos: &[u32], stop: &[String]) -> Option<String> {
        self.tokens.push(token);
        if self.stopped {
            return None;
        }
        let (mut text, cut) = visible_text(tokenizer, &self.tokens, eos, stop);
        self.stopped = cut;
        if !cut {
            while text.ends_with('\u{FFFD}') {
                text.pop();
            }
            // Hold back a tail that may be the start of a stop string.
            let hold = stop
                .iter()
                .flat_map(|s| (1..s.len()).filter(|&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
                .filter(|p| text.ends_with(p))
                .map(str::len)
                .max()
                .unwrap_or(0);
            text.truncate(text.len() - hold);
        }
        self.take(text)
    }

    /// What is left once the choice has finished.
    pub fn finish(&mut self, final_text: &str) -> Option<String> {
        self.take(final_text.to_string())
    }

    fn take(&mut self, text: String) -> Option<String> {
        if text.len() <= self.sent.len() || !text.starts_with(self.sent.as_str()) {
            return None;
        }
        let piece = text[self.sent.len()..].to_string();
        self.sent = text;
        Some(piece)
    }
}

/// The logprobs object of a choice: tokens, their log-probabilities, the top alternatives and
/// each token's character offset, for the tokens inside the returned text.
fn logprobs_json(tokenizer: &TextTokenizer, choice: &Choice, text_len: usize, offset: usize) -> Value {
    let piece = |t: u32| tokenizer.decode(&[t]).unwrap_or_default();
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut at = offset;
    for (t, lp) in choice.tokens.iter().zip(&choice.logprobs) {
        if at >= offset + text_len && !tokens.is_empty() {
            break;
        }
        let p = piece(*t);
        offsets.push(at);
        at += p.chars().count();
        tokens.push(p);
        lps.push(lp.logprob);
        let top: serde_json::Map<String, Value> = lp.top.iter().map(|&(id, v)| (piece(id), json!(v))).collect();
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// A completion id and creation time.
pub fn stamp() -> (String, u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (format!("cmpl-{:x}{:08x}", now.as_nanos(), std::process::id()), now.as_secs())
}

/// `usage`.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens})
}

/// The whole response of a non-streamed request, from every prompt's choices.
pub fn response(loaded: &Loaded, model: &str, c: &Completion, mut choices: Vec<Choice>) -> Value {
    choices.sort_by_key(|ch| ch.index);
    let eos = c.config.eos();
    let (id, created) = stamp();
    let prompt_tokens: usize = c.prompts.iter().map(|p| p.ids.len()).sum();
    let completion_tokens: usize = choices.iter().map(|ch| ch.tokens.len()).sum();
    let out: Vec<Value> = choices
        .iter()
        .map(|ch| {
            let (text, cut) = visible_text(&loaded.tokenizer, &ch.tokens, &eos, &c.stop);
            let prompt_text = if c.echo {
                let p = &c.prompts[ch.index / c.n.max(1)];
                loaded.tokenizer.decode(&p.ids).unwrap_or_default()
            } else {
                String::new()
            };
            let logprobs = c.logprobs.map(|_| logprobs_json(&loaded.tokenizer, ch, text.chars().count(), 0));
            json!({"index": ch.index, "text": format!("{prompt_text}{text}"), "logprobs": logprobs,
                   "finish_reason": finish_reason(ch.finish, cut)})
        })
        .collect();
    json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": out,
           "usage": usage(prompt_tokens, completion_tokens)})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TextTokenizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tokenizer/tokenizer.json");
        TextTokenizer::from_file(&path).unwrap()
    }

    /// Streams `text`'s tokens one by one; returns the pieces and the final text.
    fn stream(t: &TextTokenizer, text: &str, stop: &[&str]) -> (Vec<String>, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let ids = t.encode(text).unwrap();
        let mut s = StreamedText::default();
        let mut pieces: Vec<String> = ids.iter().filter_map(|&id| s.push(id, t, &[50256], &stop)).collect();
        let (final_text, cut) = visible_text(t, &ids, &[50256], &stop);
        pieces.extend(s.finish(&final_text));
        (pieces, final_text, cut)
    }

    #[test]
    fn streamed_pieces_add_up_to_the_final_text() {
        let t = tokenizer();
        for (text, stop, want, cut) in [
            ("Hello, my name is Anna.", vec![], "Hello, my name is Anna.", false),
            // Multi-byte characters split across byte-level tokens are held until complete.
            ("naïve café — 日本語 ok", vec![], "naïve café — 日本語 ok", false),
            // A stop string spanning tokens is cut, and nothing after it is ever sent.
            ("one two three four", vec!["o thr"], "one tw", true),
            ("one two three four", vec!["four", " two"], "one", true),
            ("a stop that never comes", vec!["xyz"], "a stop that never comes", false),
        ] {
            let (pieces, final_text, was_cut) = stream(&t, text, &stop);
            assert_eq!(final_text, want, "{text:?} {stop:?}");
            assert_eq!(was_cut, cut);
            assert_eq!(pieces.concat(), final_text, "{text:?}: {pieces:?}");
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        }
    }

    #[test]
    fn trailing_eos_is_not_text_and_finish_reasons_follow_openai() {
        let t = tokenizer();
        let mut ids = t.encode("The end").unwrap();
        ids.push(50256);
        assert_eq!(visible_text(&t, &ids, &[50256], &[]).0, "The end");
        assert_eq!(finish_reason(FinishReason::Eos, false), "stop");
        assert_eq!(finish_reason(FinishReason::Length, true), "stop");
        assert_eq!(finish_reason(FinishReason::Time, false), "length");
    }

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
